"""GEMM for the generated kernels: one numba intrinsic that calls OpenBLAS's ``cblas_?gemm``.

``gemm(ta, a, tb, b, out, alpha, beta, m, n, k)`` computes the top-left m×n block
``out ← alpha·op(a)·op(b) + beta·out``, where ``op`` transposes when the flag is true, op(a) is
m×k and op(b) k×n, each read from the top-left corner of its array: for C-contiguous 2-D float32
or float64 arrays whose row lengths are their BLAS leading dimensions (sizes below 2³¹). The
generated kernels keep workspaces sized for the largest batch and pass the current batch's
sizes, so they never take a view (views, with their reference counts and reshape checks, were
~0.7 s of wide's 3.5 s cold compile). A transpose is a BLAS flag instead of a strided view, and
alpha and beta are the caller's. ``np.dot`` would compile a separate implementation for each
combination of argument layouts (three for seed002's six products, 0.3–0.4 s of its 2.5 s cold
compile); this intrinsic is inlined as a single call.

The BLAS is the OpenBLAS of the ``scipy-openblas32`` wheel, the build NumPy and SciPy ship,
in its newest release, rather than the older copy inside SciPy that numba's ``np.dot`` calls:
on this project's machine its sgemm is 5–15 % faster on the benchmark workloads' shapes
(benchmarks/README.md). Its ``cblas_sgemm`` and ``cblas_dgemm`` are given to LLVM under fixed
symbol names (``symnet_cblas_sgemm``, ``symnet_cblas_dgemm``) when this module is imported, so
machine code in numba's on-disk cache links against them in every process. It runs one thread:
``gemm_at`` computes one tile of a product, and the kernels' own thread team runs the tiles.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llvmlite.binding as llvm
import scipy_openblas32
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

KINDS = {types.float32: "s", types.float64: "d"}  # BLAS's letter for each dtype
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enum values
_INT = ir.IntType(32)  # scipy-openblas32's integers


def _register() -> ctypes.CDLL:
    """Load the OpenBLAS library and give LLVM its two GEMMs under symnet's symbol names."""
    path = Path(scipy_openblas32.get_lib_dir()) / scipy_openblas32.get_library(fullname=True)
    lib = ctypes.CDLL(str(path))
    for kind in KINDS.values():
        address = ctypes.cast(getattr(lib, f"scipy_cblas_{kind}gemm"), ctypes.c_void_p).value
        llvm.add_symbol(f"symnet_cblas_{kind}gemm", address)
    return lib


LIBRARY = _register()  # kept: the library must stay loaded while kernels may call it
# One thread: the kernels split products into tiles for their own thread team
# (codegen.numba.runtime), so a tile's rounding never depends on OpenBLAS's thread count. This
# OpenBLAS is symnet's own copy: NumPy's and SciPy's keep their threads.
LIBRARY.scipy_openblas_set_num_threads(1)


def _gemm_call(context, builder, sig, args, offsets):
    """Call ``cblas_?gemm`` on the block of the output starting at ``offsets`` (row, column):
    op(a)'s rows and op(b)'s columns from the same offsets, the top-left corner without them."""
    dtype = sig.args[1].dtype
    A, B, C = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (1, 3, 4))

    def arg(i, ty):  # the i-th argument as a value of numba type ty
        return context.cast(builder, args[i], sig.args[i], ty)

    def trans(i):
        return builder.select(arg(i, types.boolean), ir.Constant(_INT, _TRANS),
                              ir.Constant(_INT, _NO_TRANS))

    lda, ldb, ldc = (builder.trunc(cgutils.unpack_tuple(builder, x.shape, 2)[1], _INT)
                     for x in (A, B, C))
    a, b, c = A.data, B.data, C.data
    if offsets:
        i0, j0 = arg(10, types.int32), arg(11, types.int32)
        ta, tb = arg(0, types.boolean), arg(2, types.boolean)
        a = builder.gep(a, [builder.select(ta, i0, builder.mul(i0, lda))])  # op(a)'s row i0
        b = builder.gep(b, [builder.select(tb, builder.mul(j0, ldb), j0)])  # op(b)'s column j0
        c = builder.gep(c, [builder.add(builder.mul(i0, ldc), j0)])
    real = context.get_value_type(dtype)
    fnty = ir.FunctionType(ir.VoidType(), [_INT] * 6 + [real, real.as_pointer(), _INT,
                                                        real.as_pointer(), _INT, real,
                                                        real.as_pointer(), _INT])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"symnet_cblas_{KINDS[dtype]}gemm")
    builder.call(fn, (ir.Constant(_INT, _ROW_MAJOR), trans(0), trans(2),
                      arg(7, types.int32), arg(8, types.int32), arg(9, types.int32),
                      arg(5, dtype), a, lda, b, ldb, arg(6, dtype), c, ldc))
    return context.get_dummy_value()


def _check(a, b, out, sizes):
    arrays = (a, b, out)
    if not all(isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" for x in arrays):
        raise TypingError("gemm takes C-contiguous 2-D arrays")
    if len({x.dtype for x in arrays}) != 1 or a.dtype not in KINDS:
        raise TypingError("gemm takes float32 or float64 arrays of one dtype")
    if not all(isinstance(x, types.Integer) for x in sizes):
        raise TypingError("gemm takes integer sizes and offsets")


@intrinsic
def gemm(typingctx, ta, a, tb, b, out, alpha, beta, m, n, k):
    """``out[:m, :n] ← alpha·op(a)·op(b) + beta·out[:m, :n]`` over an inner dimension k; the
    sizes are the caller's to get right."""
    _check(a, b, out, (m, n, k))

    def codegen(context, builder, sig, args):
        return _gemm_call(context, builder, sig, args, offsets=False)

    return types.none(ta, a, tb, b, out, alpha, beta, m, n, k), codegen


@intrinsic
def gemm_at(typingctx, ta, a, tb, b, out, alpha, beta, m, n, k, i0, j0):
    """``out[i0:i0+m, j0:j0+n] ← alpha·op(a)[i0:i0+m, :k]·op(b)[:k, j0:j0+n] + beta·(the
    same block)``: one tile of a product, a one-thread BLAS call (codegen.numba.plan)."""
    _check(a, b, out, (m, n, k, i0, j0))

    def codegen(context, builder, sig, args):
        return _gemm_call(context, builder, sig, args, offsets=True)

    return types.none(ta, a, tb, b, out, alpha, beta, m, n, k, i0, j0), codegen
