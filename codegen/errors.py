"""The backends' error, in a module of its own: the kernel-compiling helper process imports the
numba backend's cache without the IR (and SymPy, which the IR's expressions are)."""


class CodegenError(Exception):
    """A program a backend cannot compile (a function it cannot print, a JIT failure)."""
