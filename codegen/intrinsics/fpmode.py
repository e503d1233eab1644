"""Flush-to-zero for the training kernels: read and write the x86 MXCSR register from numba.

Optimizer state that decays geometrically (Adam's m for a weight that never gets a gradient,
such as a border pixel's) becomes subnormal after a few hundred steps, and arithmetic on
subnormal floats is ~100× slower. XLA flushes them to zero; the generated ``train_epochs`` kernel sets
FTZ and DAZ on entry and restores the caller's mode on exit. On other architectures these are
no-ops.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
FTZ_DAZ = 0x8040  # MXCSR bits 15 (flush to zero) and 6 (denormals are zero)


def _mxcsr_call(builder, name, slot):
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])


@intrinsic
def get_fpmode(typingctx):
    """The MXCSR register (0 off x86)."""

    def codegen(context, builder, signature, args):
        if not X86:
            return ir.Constant(ir.IntType(32), 0)
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.load(slot)

    return types.uint32(), codegen


@intrinsic
def set_fpmode(typingctx, value):
    """Write the MXCSR register (nothing off x86)."""

    def codegen(context, builder, signature, args):
        if X86:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()

    return types.none(types.uint32), codegen
