"""The numba backend: Programs and an Update → one generated module of kernels that a thread
team runs (``runtime``), planned once (``plan``), printed (``emit``, ``printer``), cached on
disk (``cache``) and called (``runner``)."""

from .runner import NumbaRunner, warm_up

__all__ = ["NumbaRunner", "warm_up"]
