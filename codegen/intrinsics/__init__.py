"""numba intrinsics the generated kernels compile in: BLAS products (``blas``), a vectorisable
exp (``vecmath``), flush-to-zero (``fpmode``) and a loop count LLVM cannot see (``opaque``)."""
