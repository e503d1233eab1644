"""A small array-program IR and its backends.

``codegen`` knows nothing of SymPy's matrix algebra: it receives a :class:`Program` of typed
instructions over named 2-D buffers whose shapes may use the batch size ``"n"``; the body of an
elementwise map is a SymPy *scalar* expression.
"""

__all__ = ["Buffer", "CodegenError", "Instr", "Op", "Program", "Update"]


def __getattr__(name):
    """The IR's names, imported on first use: a process that only compiles kernels (the numba
    backend's helper) then never imports the IR and SymPy (0.3 s of its start)."""
    if name in __all__:
        from . import ir

        return getattr(ir, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
