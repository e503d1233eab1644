"""A small array-program IR and its backends.

``codegen`` knows nothing of SymPy's matrix algebra: it receives a :class:`Program` of typed
instructions over named 2-D buffers whose shapes may use the batch size ``"n"``; the body of an
elementwise map is a SymPy *scalar* expression.
"""

from .ir import Buffer, CodegenError, Instr, Op, Program, Update

__all__ = ["Buffer", "CodegenError", "Instr", "Op", "Program", "Update"]
