"""GEMM for the generated kernels: one numba intrinsic that calls the BLAS ``np.dot`` calls.

``gemm(ta, a, tb, b, out, alpha, beta, m, n, k)`` computes the top-left m×n block
``out ← alpha·op(a)·op(b) + beta·out``, where ``op`` transposes when the flag is true, op(a) is
m×k and op(b) k×n, each read from the top-left corner of its array: for C-contiguous 2-D float32
or float64 arrays whose row lengths are their BLAS leading dimensions. The generated kernels
keep workspaces sized for the largest batch and pass the current batch's sizes, so they never
take a view (views, with their reference counts and reshape checks, were ~0.7 s of wide's 3.5 s
cold compile). It calls ``numba_xxgemm``, the entry point of numba's helper library into
SciPy's BLAS, which is what ``np.dot`` itself calls. But a transpose is a BLAS flag instead of a
strided view, and alpha and beta are the caller's. ``np.dot`` compiles a separate
implementation for each combination of argument layouts: three for seed002's six products,
0.3–0.4 s of its 2.5 s cold compile (measured). This intrinsic is inlined as a single call.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic
from numba.np.linalg import check_blas_return, ensure_blas, get_blas_kind

ensure_blas()

_CHAR = ir.IntType(8)
_VOID_P = _CHAR.as_pointer()


@intrinsic
def gemm(typingctx, ta, a, tb, b, out, alpha, beta, m, n, k):
    """``out[:m, :n] ← alpha·op(a)·op(b) + beta·out[:m, :n]`` over an inner dimension k; the
    sizes are the caller's to get right."""
    arrays = (a, b, out)
    if not all(isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" for x in arrays):
        raise TypingError("gemm takes C-contiguous 2-D arrays")
    if len({x.dtype for x in arrays}) != 1 or a.dtype not in (types.float32, types.float64):
        raise TypingError("gemm takes float32 or float64 arrays of one dtype")
    dtype = a.dtype

    def codegen(context, builder, signature, args):
        ta_, a_, tb_, b_, out_, alpha_, beta_, m_, n_, k_ = args
        A, B, C = (context.make_array(t)(context, builder, v) for t, v in zip(arrays, (a_, b_, out_)))
        lda, ldb, ldc = (cgutils.unpack_tuple(builder, x.shape, 2)[1] for x in (A, B, C))
        m_, n_, k_ = (context.cast(builder, v, t, types.intp)
                      for v, t in zip((m_, n_, k_), signature.args[7:]))
        ta_, tb_ = (context.cast(builder, v, t, types.boolean)
                    for v, t in ((ta_, signature.args[0]), (tb_, signature.args[2])))

        def trans(flag):
            return builder.select(flag, ir.Constant(_CHAR, ord("t")), ir.Constant(_CHAR, ord("n")))

        def slot(value, ty):
            return builder.bitcast(cgutils.alloca_once_value(
                builder, context.cast(builder, value, ty, dtype)), _VOID_P)

        fnty = ir.FunctionType(ir.IntType(32), [_CHAR, _CHAR, _CHAR, *[cgutils.intp_t] * 3,
                                                _VOID_P, _VOID_P, cgutils.intp_t, _VOID_P,
                                                cgutils.intp_t, _VOID_P, _VOID_P, cgutils.intp_t])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        # row-major arrays are their column-major transposes: outᵀ = op(b)ᵀ·op(a)ᵀ
        kind = ir.Constant(_CHAR, ord(get_blas_kind(dtype, "gemm")))
        res = builder.call(fn, (kind, trans(tb_), trans(ta_), n_, m_, k_,
                                slot(alpha_, signature.args[5]),
                                builder.bitcast(B.data, _VOID_P), ldb,
                                builder.bitcast(A.data, _VOID_P), lda,
                                slot(beta_, signature.args[6]),
                                builder.bitcast(C.data, _VOID_P), ldc))
        check_blas_return(context, builder, res)
        return context.get_dummy_value()

    if not all(isinstance(x, types.Integer) for x in (m, n, k)):
        raise TypingError("gemm takes integer sizes m, n, k")
    return types.none(ta, a, tb, b, out, alpha, beta, m, n, k), codegen
