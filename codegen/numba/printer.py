"""Printing for the generated modules: scalar SymPy bodies as numba source, comments that stay
comments, identifiers that cannot collide, and indented lines."""

from __future__ import annotations

import contextlib
import keyword

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from ..ir import CodegenError, floor_quotient


class ScalarPrinter(PythonCodePrinter):
    """Prints a scalar body for numba: every number in the kernel's dtype (``DT(0.5)``), so that
    float32 kernels stay float32; small integer powers as products; a symbol only as the
    kernel's own name for it (``strict``: anything it cannot print fails by name)."""

    def __init__(self, names: dict[sp.Symbol, str], cast: str = "DT"):
        super().__init__({"strict": True, "fully_qualified_modules": True})
        self.names = names
        self.cast = cast

    def _number(self, text):
        return f"{self.cast}({text})" if self.cast else text

    def _print_Symbol(self, expr):
        # SymPy names come from declarations and model files: never printed as written
        if expr in self.names:
            return self.names[expr]
        raise CodegenError(f"the kernel has no value for the symbol {expr.name!r}")

    def _print_Keep(self, expr):
        """A dropout mask's entry: the key as integers, p in float64 on every dtype (the
        reference backend compares in float64 too)."""
        seed, step, stream, row, col, p = expr.args
        key = ", ".join([self._print(seed), self._print(step), str(int(stream)), self._print(row),
                         self._print(col), repr(float(p))])
        return f"keep({key})"

    def _print_Integer(self, expr):
        return self._number(f"{int(expr)}.0")

    def _print_Rational(self, expr):
        return self._number(repr(float(expr)))

    def _print_Float(self, expr):
        return self._number(repr(float(expr)))

    def _print_Half(self, expr):
        return self._number("0.5")

    def _print_Pow(self, expr, rational=False):
        base, e = expr.args
        b = self.parenthesize(base, 1000)
        if e == sp.S.Half:
            return f"math.sqrt({self._print(base)})"
        if e == -sp.S.Half:
            return f"({self._number('1.0')} / math.sqrt({self._print(base)}))"
        if e.is_Integer and 1 <= abs(int(e)) <= 4:
            prod = " * ".join([b] * abs(int(e)))
            return f"({prod})" if e > 0 else f"({self._number('1.0')} / ({prod}))"
        return f"{b} ** {self.parenthesize(e, 1000)}"

    def _print_floor(self, expr):
        num, den = floor_quotient(expr.args[0])
        return f"math.floor({self.parenthesize(num, 50)} / {self.parenthesize(den, 50)})"

    def _print_exp(self, expr):
        return f"vexp({self._print(expr.args[0])})"  # codegen.intrinsics.vecmath: vectorisable

    def _print_Exp1(self, expr):
        return self._number("math.e")

    def _print_Pi(self, expr):
        return self._number("math.pi")


def comment_text(text: str) -> str:
    """``text`` made safe to follow a ``#`` in generated source: every character that is not
    printable (a line break of any kind, a control character) is written as its escape, so no
    name or formula can end the comment and become code."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Lines:
    """Collects indented source lines."""

    def __init__(self):
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line=""):
        self.lines.append("    " * self.depth + line if line else "")

    def comment(self, text: str):
        """``# text`` on one line, whatever ``text`` holds (see :func:`comment_text`)."""
        self(f"# {comment_text(text)}")

    @contextlib.contextmanager
    def block(self, head: str):
        """``head`` (ending in a colon) and the lines written inside the ``with``, indented."""
        self(head)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def text(self):
        return "\n".join(self.lines) + "\n"


# Names the generated modules use themselves; a buffer may not take one of them.
RESERVED = {"np", "nb", "math", "rt", "DT", "FASTMATH", "STAGE", "CACHE", "n", "nf", "i", "j", "k",
            "e", "s", "r", "t", "t0", "p", "q", "a_ki", "mode", "get_fpmode", "set_fpmode",
            "FTZ_DAZ", "tf", "g", "acc", "top", "sq", "clip", "loss", "losses", "rows", "batch",
            "batches", "start", "orders", "gemm", "gemm_at", "update_entries", "sum_of_squares",
            "ps", "gs", "v", "vexp", "r0", "r1", "lo", "first", "last", "opaque", "blk", "blk_addr",
            "tid", "team", "base", "going", "limit", "stop", "fbuf", "bad", "size", "count",
            "P", "c", "ta", "tb", "length", "w", "x", "rate", "seed", "slots", "e1", "s1", "keep",
            "forward", "loss_and_grad", "train_epochs", "exp32", "cache", "codegen", "numba",
            "numpy", "runtime", "fastmath", "error_model", "no_cfunc_wrapper",
            "no_cpython_wrapper"}


def identifier(name: str, used: set[str]) -> str:
    """``name`` if it is a free ASCII Python identifier the module does not use itself, else a
    fresh ``_b{k}`` (the stage functions rename arrays by ASCII patterns: an input named ω or α
    kept its name and was read as an undefined global); recorded in ``used``."""
    ok = name.isascii() and name.isidentifier() and not keyword.iskeyword(name)
    ok = ok and name not in RESERVED
    ok = ok and not name.startswith(("_", "s_", "d_", "z_", "acc_", "P_", "sz_"))
    out = name if ok and name not in used else f"_b{len(used)}"
    used.add(out)
    return out
