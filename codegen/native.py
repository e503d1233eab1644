"""Calls the generated kernels' machine code through ctypes, without numba's CPython wrapper.

Beside each function that Python calls, numba compiles a wrapper that turns the Python
arguments into native values, and for a kernel of many arrays that wrapper is the costliest
part of its cold compile: seed002's ``train_epochs`` takes 40 arrays, and compiles in
1.6–1.7 s without the wrapper against 2.0–2.4 s with it (measured). So the kernels are
compiled without it (``no_cpython_wrapper``), and ``NativeCall`` calls the machine code in
numba's native calling convention, ``status = f(&result, &exception, *arguments)``, in which
an array is passed as the members of its data model: meminfo, parent, item count, item size,
data pointer, shape, strides. The meminfo and the parent (the reference-counted owner, and the
Python array) are null: the caller holds the arrays for the call, and the kernels neither keep
nor return them. ctypes releases the GIL for the call.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from llvmlite import ir
from numba import types

from .cache import compile_healing
from .ir import CodegenError

_OK, _NONE = 0, -2  # numba's status codes for a return with a value, and without one


def _ctype(ty: ir.Type):
    """The ctypes type that passes an argument of LLVM type ``ty`` in the C calling convention."""
    if isinstance(ty, ir.PointerType):
        return ctypes.c_void_p
    if isinstance(ty, ir.IntType) and ty.width in (8, 32, 64):
        return {8: ctypes.c_int8, 32: ctypes.c_int32, 64: ctypes.c_int64}[ty.width]
    if isinstance(ty, ir.DoubleType):
        return ctypes.c_double
    if isinstance(ty, ir.FloatType):
        return ctypes.c_float
    raise TypeError(f"no ctypes type for an argument of LLVM type {ty}")


def _members(ty) -> int:
    """How many native arguments pass an argument of numba type ``ty``."""
    if isinstance(ty, types.Array):
        return 5 + 2 * ty.ndim
    if isinstance(ty, (types.Integer, types.Float)):
        return 1
    raise TypeError(f"NativeCall does not pass arguments of type {ty}")


def _flat(value) -> list:
    """An argument as its data model's members (an array's, or a number itself)."""
    if isinstance(value, np.ndarray):
        return [None, None, value.size, value.itemsize, value.ctypes.data,
                *value.shape, *value.strides]
    return [value]


class _Entry:
    """The machine code of one compiled signature and its ctypes prototype."""

    def __init__(self, dispatcher, argtypes: tuple):
        members = sum(map(_members, argtypes))
        compile_healing(dispatcher, argtypes)  # or loads it from numba's cache
        cres = dispatcher.overloads[argtypes]
        self.library = cres.library  # keeps the machine code loaded
        self.restype = cres.signature.return_type
        if not (self.restype is types.none or (isinstance(self.restype, types.UniTuple)
                and isinstance(self.restype.dtype, types.Integer) and self.restype.count <= 8)):
            raise TypeError(f"NativeCall does not return values of type {self.restype}")
        fnty = cres.target_context.call_conv.get_function_type(self.restype, argtypes)
        if members != len(fnty.args) - 2:  # numba's data model changed
            raise TypeError(f"{dispatcher.py_func.__name__} takes {len(fnty.args) - 2} native "
                            f"arguments, not {members}")
        address = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        prototype = ctypes.CFUNCTYPE(ctypes.c_int32, *map(_ctype, fnty.args))
        self.function = prototype(address)
        self.name = dispatcher.py_func.__name__

    def __call__(self, args):
        result = (ctypes.c_int64 * 8)()  # room for the return value: up to 8 integers
        exception = ctypes.c_void_p()
        flat = [m for a in args for m in _flat(a)]
        status = self.function(result, ctypes.byref(exception), *flat)
        if status not in (_OK, _NONE):
            raise CodegenError(f"the generated kernel {self.name} failed (status {status})")
        return None if self.restype is types.none else tuple(result[: self.restype.count])


class NativeCall:
    """``dispatcher``'s machine code for the argument types of each call, compiled (or loaded
    from numba's cache) on the first call with those types, as numba's own dispatch does."""

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.entries: dict[tuple, _Entry] = {}

    def __call__(self, *args):
        argtypes = tuple(numba.typeof(a) for a in args)
        entry = self.entries.get(argtypes)
        if entry is None:
            entry = self.entries[argtypes] = _Entry(self.dispatcher, argtypes)
        return entry(args)

    @property
    def stats(self):
        return self.dispatcher.stats

