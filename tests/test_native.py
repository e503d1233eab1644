"""codegen.native: the kernels' machine code called through ctypes, without numba's wrapper."""

import numba as nb
import numpy as np
import pytest

from codegen import CodegenError
from codegen.native import NativeCall

BARE = {"no_cpython_wrapper": True, "no_cfunc_wrapper": True}


@nb.njit(**BARE)
def _scale_rows(n, a, out, factor):
    total = 0
    for i in range(n):
        for j in range(a.shape[1]):
            out[i, j] = a[i, j] * factor
        total += i
    return total, n, a.shape[1]


@nb.njit(**BARE)
def _fill(v, x):
    for i in range(v.shape[0]):
        v[i] = x


@nb.njit(**BARE)
def _check(n):
    if n < 0:
        raise ValueError("negative")
    return n, n


def test_arrays_scalars_and_an_integer_tuple_pass_both_ways():
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = np.zeros((4, 3), np.float32)
    assert NativeCall(_scale_rows)(3, a, out, 2.5) == (0 + 1 + 2, 3, 3)
    np.testing.assert_array_equal(out[:3], a[:3] * 2.5)
    assert not out[3].any()  # only the first n rows


def test_a_function_without_a_return_value_and_other_dtypes():
    v = np.zeros(5)
    call = NativeCall(_fill)
    assert call(v, 1.5) is None
    np.testing.assert_array_equal(v, 1.5)
    w = np.zeros(3, np.int64)
    call(w, 7)  # a second signature, compiled on first use as numba's dispatch does
    np.testing.assert_array_equal(w, 7)
    assert len(call.entries) == 2


def test_strided_views_are_passed_with_their_strides():
    a = np.arange(20, dtype=np.float64).reshape(4, 5)[::2, 1::2]  # not contiguous
    out = np.zeros((2, 2))
    NativeCall(_scale_rows)(2, a, out, 1.0)
    np.testing.assert_array_equal(out, a)


def test_an_exception_inside_the_kernel_is_an_error_naming_it():
    call = NativeCall(_check)
    assert call(4) == (4, 4)
    with pytest.raises(CodegenError, match="_check failed"):
        call(-1)


def test_arguments_it_cannot_pass_are_refused_by_type():
    with pytest.raises(TypeError, match="does not pass arguments of type"):
        NativeCall(_check)((1, 2))
