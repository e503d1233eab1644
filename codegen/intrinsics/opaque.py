"""``opaque(x)``: the integer ``x``, hidden from LLVM's constant folding.

A batch-minor loop nest (``codegen.numba.emit.KernelWriter.fused``) runs over its few columns outside and
over the batch inside. With a constant column count, LLVM unrolls the outer loop fully, which
copies the vectorised inner loop, with its runtime alias checks and remainder loops, once per
column. The inner loop, which does the work, is the same either way; only the compile pays. Over
``range(opaque(10))``, wide's ``train_epochs`` has 6,700 lines of optimised LLVM IR instead of
12,600, and a benchmark child's cold setup on wide or adam-relu is 0.3–0.35 s shorter.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def opaque(typingctx, x):
    """``x`` through an empty inline-assembly statement, which LLVM cannot look into."""
    if not isinstance(x, types.Integer):
        return None
    result = types.unliteral(x)

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[0], signature.args[0], result)
        ty = context.get_value_type(result)
        return builder.asm(ir.FunctionType(ty, [ty]), "", "=r,0", [value], side_effect=False)

    return result(x), codegen
