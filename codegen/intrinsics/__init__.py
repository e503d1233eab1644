"""numba intrinsics the generated kernels compile in: BLAS products (``blas``), a vectorisable
exp (``vecmath``), flush-to-zero (``fpmode``), a loop count LLVM cannot see (``opaque``) and
dropout masks from a counter-based generator (``random``)."""
