"""The errors symnet raises. Every message names the offender, what was expected and the fix."""


class SymnetError(Exception):
    """Base class of every error symnet raises on purpose."""


class ShapeError(SymnetError, ValueError):
    """Two matrices that meet in an operation have incompatible shapes."""


class DeclarationError(SymnetError, ValueError):
    """A network, loss or compile call is declared wrongly (bad argument, unknown symbol, ...)."""


class DifferentiationError(SymnetError):
    """An expression contains a function or operation symnet cannot differentiate."""


class DataError(SymnetError, ValueError):
    """Arrays passed to fit / evaluate / predict / loss_and_grad do not fit the model."""
