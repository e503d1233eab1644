"""GEMM for the generated kernels: one numba intrinsic that calls a BLAS's ``cblas_?gemm``.

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

The BLAS is chosen once per process, when this module is imported (:func:`choose`):

- the OpenBLAS of the ``scipy-openblas32`` wheel, the build NumPy and SciPy ship, in its newest
  release, rather than the older copy inside SciPy that numba's ``np.dot`` calls: 5-15 % faster
  on the benchmark workloads' shapes (benchmarks/README.md);
- Intel's MKL, where the ``mkl`` wheel is installed (the ``mkl`` extra) and the CPU
  is Intel's, or wherever ``SYMNET_BLAS=mkl`` asks for it (``SYMNET_BLAS=openblas`` keeps
  OpenBLAS). On a 2-core Intel Xeon it trained wide's epochs 11 % and adam-relu's 17 % faster
  than OpenBLAS; on AMD's CPUs it is not measured, so it is not chosen there by default. It runs
  its sequential layer, and conditional numerical reproducibility in strict mode, without which
  a tile's result may depend on where its operands happen to be aligned. MKL loads its parts
  into the process's global symbol scope, so a library that carries MKL of its own and is
  loaded later (PyTorch) calls symnet's instead: one thread, torch's products 2 × slower on 2
  cores. :func:`check_neighbours` warns when that has happened.

Tiles (each a call) of fewer than ``SMALL`` multiply-adds call OpenBLAS either way. Both
choices give any thread count the same bits; the two give different bits from each other. The chosen library's
``cblas_sgemm`` and ``cblas_dgemm`` are given to LLVM under fixed symbol names
(``symnet_cblas_sgemm``, ``symnet_cblas_dgemm``; OpenBLAS's for small products
``symnet_small_sgemm``, ``symnet_small_dgemm``), so machine code in numba's on-disk cache links
against them in every process, whichever library that process chose. It runs one thread:
``gemm_at`` computes one tile of a product, and the kernels' own thread team runs the tiles.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import llvmlite.binding as llvm
import scipy_openblas32
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ..notices import warn

KINDS = {types.float32: "s", types.float64: "d"}  # BLAS's letter for each dtype
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enum values
_INT = ir.IntType(32)  # scipy-openblas32's integers


@dataclass(frozen=True)
class Blas:
    """The library the kernels' products call: ``name`` ("OpenBLAS" or "MKL"), its ``version``
    and ``why`` it was chosen; ``prefix``: its CBLAS functions' prefix."""

    name: str
    version: str
    why: str
    library: ctypes.CDLL = field(repr=False, compare=False)
    prefix: str = field(repr=False, default="cblas_")

    def address(self, kind: str) -> int:
        """The address of its ``cblas_?gemm`` (kind: "s" or "d")."""
        return ctypes.cast(getattr(self.library, f"{self.prefix}{kind}gemm"), ctypes.c_void_p).value


# MKL's enum values (mkl_service.h)
_MKL_INTERFACE_LP64, _MKL_THREADING_SEQUENTIAL = 0, 1
_MKL_CBWR_AUTO, _MKL_CBWR_STRICT, _MKL_CBWR_SUCCESS = 2, 0x10000, 0


def _load_openblas() -> ctypes.CDLL:
    path = Path(scipy_openblas32.get_lib_dir()) / scipy_openblas32.get_library(fullname=True)
    lib = ctypes.CDLL(str(path))
    # One thread: the kernels split products into tiles for their own thread team
    # (codegen.numba.runtime), so a tile's rounding never depends on OpenBLAS's thread count.
    # This OpenBLAS is symnet's own copy: NumPy's and SciPy's keep their threads.
    lib.scipy_openblas_set_num_threads(1)
    lib.scipy_openblas_get_config.restype = ctypes.c_char_p
    return lib


_OPENBLAS = _load_openblas()  # loaded whichever BLAS is chosen: small products call it


def _openblas(why: str) -> Blas:
    version = _OPENBLAS.scipy_openblas_get_config().decode().split()[1]  # "OpenBLAS 0.3.x ..."
    return Blas("OpenBLAS", version, why, _OPENBLAS, "scipy_cblas_")


def _mkl_path() -> Path | None:
    """The ``mkl`` wheel's runtime library (``libmkl_rt``), or None where it is not installed."""
    try:
        files = importlib.metadata.distribution("mkl").files or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.startswith(("libmkl_rt.", "mkl_rt.")):
            return Path(f.locate())
    return None


def _mkl(path: Path, why: str) -> Blas:
    """MKL from ``path``, sequential and reproducible (process-wide settings, which another
    library of this process using the same MKL shares); OSError where that library already runs
    it otherwise."""
    lib = ctypes.CDLL(str(path))
    if (lib.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64) != _MKL_INTERFACE_LP64
            or lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL) != _MKL_THREADING_SEQUENTIAL):
        raise OSError("another library in this process already runs MKL with other settings")
    # MKL's own memory manager is not fork-safe: a child forked after the kernels' team had
    # called MKL spun forever in it in 3 of 40 forks; malloc, which it falls back to, is
    lib.MKL_Disable_Fast_MM()
    if lib.MKL_CBWR_Set(_MKL_CBWR_AUTO | _MKL_CBWR_STRICT) != _MKL_CBWR_SUCCESS:
        raise OSError("MKL has already computed in this process, so its reproducible mode "
                      "cannot be set")
    text = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(text, len(text))
    version = text.value.decode().split("Version ")[-1].split("-")[0].strip()
    return Blas("MKL", version, why, lib)


def _intel() -> bool:
    """Whether this is an Intel CPU (Linux's /proc/cpuinfo; False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.split(":")[-1].strip() == "GenuineIntel"
                       for line in f if line.startswith("vendor_id"))
    except OSError:
        return False


def choose(asked: str | None = None) -> Blas:
    """The BLAS ``SYMNET_BLAS`` (or ``asked``) names: ``openblas``, ``mkl``, or unset for MKL
    where it is installed and the CPU is Intel's, OpenBLAS otherwise. A value it cannot follow
    is warned about, and OpenBLAS runs."""
    if asked is None:
        asked = os.environ.get("SYMNET_BLAS", "")
    asked = asked.strip().lower()
    if asked not in ("", "openblas", "mkl"):
        warn(f"SYMNET_BLAS={asked!r} is neither 'openblas' nor 'mkl'; choosing as if it were "
             f"unset")
        asked = ""
    if asked == "openblas":
        return _openblas("SYMNET_BLAS=openblas")
    path = _mkl_path()
    if path is None:
        if asked == "mkl":
            warn('SYMNET_BLAS=mkl, but MKL is not installed (pip install "mkl>=2026.2"); using '
                 'OpenBLAS')
            return _openblas("SYMNET_BLAS=mkl, but MKL is not installed")
        return _openblas("MKL is not installed")
    if asked == "mkl" or _intel():
        why = "SYMNET_BLAS=mkl" if asked == "mkl" else "installed, on an Intel CPU"
        try:
            return _mkl(path, why)
        except (OSError, AttributeError) as e:
            warn(f"MKL could not be used ({e}); using OpenBLAS. SYMNET_BLAS=openblas chooses "
                 f"OpenBLAS without this warning.")
            return _openblas(f"MKL could not be used: {e}")
    return _openblas("MKL is installed, but this CPU is not Intel's (SYMNET_BLAS=mkl chooses it)")


# Calls (a product's tiles) of fewer multiply-adds go to OpenBLAS whichever BLAS is chosen: its
# small-matrix kernels took 0.69-0.87 × MKL's time on them, and MKL 0.85-0.88 × OpenBLAS's on
# larger ones (a grid of 1,700 shapes of sides 10-256 and inner sizes 32-784 on AVX-512; on AVX2
# the two were level throughout). A tile's library depends on its shape only, and the tiles on
# the product's, so not on the thread count.
SMALL = 1_000_000
_TORCH_FIRST = "torch" in sys.modules
BLAS = choose()  # kept: the library must stay loaded while kernels may call it
_SMALL_CALLS = _openblas(f"calls below {SMALL:,} multiply-adds")
for _kind in KINDS.values():
    llvm.add_symbol(f"symnet_cblas_{_kind}gemm", BLAS.address(_kind))
    llvm.add_symbol(f"symnet_small_{_kind}gemm", _SMALL_CALLS.address(_kind))
_warned_torch = False


def check_neighbours() -> None:
    """Warn, once, when torch was imported after symnet loaded MKL (module docstring)."""
    global _warned_torch
    if (BLAS.name == "MKL" and not _TORCH_FIRST and not _warned_torch
            and "torch" in sys.modules):
        _warned_torch = True
        warn("torch was imported after symnet loaded MKL for its kernels, so torch's own MKL "
             "calls now run on symnet's MKL, on one thread (torch's products took 2 × as long "
             "on 2 cores). Import torch before symnet's first compile or fit, or set "
             "SYMNET_BLAS=openblas.")


def describe() -> str:
    """The BLAS in a line, for reports: its name, version, why it was chosen, and the small
    calls' library where that differs."""
    small = f"; calls below {SMALL:,} multiply-adds: OpenBLAS" if BLAS.name != "OpenBLAS" else ""
    return f"{BLAS.name} {BLAS.version} ({BLAS.why}{small})"


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
    large, small = (cgutils.get_or_insert_function(builder.module, fnty,
                                                   f"symnet_{name}_{KINDS[dtype]}gemm")
                    for name in ("cblas", "small"))
    work = builder.mul(builder.mul(arg(7, types.int64), arg(8, types.int64)), arg(9, types.int64))
    fn = builder.select(builder.icmp_signed("<", work, ir.Constant(ir.IntType(64), SMALL)),
                        small, large)
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
