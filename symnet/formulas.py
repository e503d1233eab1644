"""The derivation as a reader wants to see it: forward, backprop and gradient equations as text
or LaTeX, with ∘ for Hadamard products, sums over rows and columns named, and softmax shown as
softmax."""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from .functions import Elementwise, RowLogSumExp, elementwise_text, is_call
from .grad import Derivation, Equation


def _softmax_arg(e):
    """Z if ``e`` is softmax(Z) = exp.(Z − logsumexp(Z)·1ᵀ), else None."""
    if isinstance(e, Elementwise) and e.body() == sp.exp(e.fn.variables[0]):
        return _log_softmax_arg(e.arg)
    return None


def _log_softmax_arg(e):
    if isinstance(e, sp.MatAdd) and len(e.args) == 2:
        for z, other in (e.args, e.args[::-1]):
            if isinstance(other, sp.MatMul):
                c, mats = other.as_coeff_matrices()
                if (c == -1 and len(mats) == 2 and mats[0] == RowLogSumExp(z)
                        and isinstance(mats[1], sp.OneMatrix)):
                    return z
    return None


def _compound(m) -> bool:
    """A factor of a product that needs parentheses: a sum, a Hadamard product, a scaled product."""
    return isinstance(m, (sp.MatAdd, sp.HadamardProduct)) or (
        isinstance(m, sp.MatMul) and m.as_coeff_matrices()[0] != 1)


def _reduction(e):
    """('sum' | 'colsum' | 'rowsum', coefficient, inner factors) for products with ones."""
    c, mats = e.as_coeff_matrices()
    left = isinstance(mats[0], sp.OneMatrix) and mats[0].shape[0] == 1 and len(mats) > 1
    right = isinstance(mats[-1], sp.OneMatrix) and mats[-1].shape[1] == 1 and len(mats) > 1
    inner = mats[int(left): len(mats) - int(right)]
    if not inner:
        return None
    kind = {(True, True): "sum", (True, False): "colsum", (False, True): "rowsum"}.get((left, right))
    return (kind, c, inner) if kind else None


class FormulaPrinter(StrPrinter):
    """Plain-text formulas: ``δ1 = (δ2·W2ᵀ) ∘ A1∘(1 - A1)``."""

    printmethod = "_symnet_text"  # not _sympystr: the nodes' own printing is for plain str()

    def _print_OneMatrix(self, e):
        return "𝟙"

    def _print_Transpose(self, e):
        arg = self._print(e.arg)
        return f"{arg}ᵀ" if isinstance(e.arg, sp.MatrixSymbol) else f"({arg})ᵀ"

    def _print_MatMul(self, e):
        red = _reduction(e)
        c, mats = e.as_coeff_matrices()
        if red:
            kind, c, inner = red
            if kind == "colsum" and inner[-1].shape[1] == 1:
                kind = "sum"
            inside = self._print(inner[0]) if len(inner) == 1 else self._product(inner)
            body = f"{kind}({inside})"
        else:
            body = self._product(mats)
        return self._scaled(c, body)

    def _product(self, mats):
        return "·".join(self._factor(m) for m in mats)

    def _factor(self, m):
        return f"({self._print(m)})" if _compound(m) else self._print(m)

    def _scaled(self, c, body):
        if c == 1:
            return body
        if c == -1:
            return f"-{body}"
        num, den = sp.fraction(c)
        if num == 1:
            return f"{_wrap(body)}/{self._den(den)}"
        if num == -1:
            return f"-{_wrap(body)}/{self._den(den)}"
        return f"{self._print(c)}·{_wrap(body)}"

    def _den(self, den):
        text = self._print(den)
        return text if re.fullmatch(r"\w+", text) else f"({text})"

    def _print_HadamardProduct(self, e):
        return " ∘ ".join(self._hadamard_factor(a) for a in e.args)

    def _hadamard_factor(self, a):
        text = self._print(a)
        if isinstance(a, sp.MatrixSymbol) or is_call(text):
            return text
        return f"({text})"

    def _print_HadamardPower(self, e):
        return f"{self._factor(e.args[0])}^∘{self._print(e.args[1])}"

    def _print_Elementwise(self, e):
        z = _softmax_arg(e)
        if z is not None:
            return f"softmax({self._print(z)})"
        return elementwise_text(e.fn, self._print(e.arg), latex=False)

    def _print_MatAdd(self, e):
        z = _log_softmax_arg(e)
        if z is not None:
            return f"log_softmax({self._print(z)})"
        parts = []
        terms = sorted(e.args, key=lambda t: self._print(t).startswith("-"))
        for i, t in enumerate(terms):
            text = self._print(t)
            if i and text.startswith("-"):
                parts.append(f" - {text[1:]}")
            else:
                parts.append(("" if not i else " + ") + text)
        return "".join(parts)

    def _print_RowLogSumExp(self, e):
        return f"logsumexp({self._print(e.arg)})"

    def _print_MatrixSymbol(self, e):
        return e.name


def _wrap(text):
    if re.fullmatch(r"\w+", text) or is_call(text, name_optional=True):
        return text
    return f"({text})"


class FormulaLatexPrinter(LatexPrinter):
    """The same formulas as LaTeX."""

    printmethod = "_symnet_latex"

    def _print_OneMatrix(self, e):
        return r"\mathbf{1}"

    def _print_MatrixSymbol(self, e):
        return latex_name(e.name)

    def _print_Transpose(self, e):
        arg = self._print(e.arg)
        if not isinstance(e.arg, sp.MatrixSymbol):
            arg = rf"\left({arg}\right)"
        return rf"{arg}^{{\top}}"

    def _print_MatMul(self, e):
        red = _reduction(e)
        c, mats = e.as_coeff_matrices()
        if red:
            kind, c, inner = red
            body = rf"\operatorname{{{kind}}}\left({self._product(inner)}\right)"
        else:
            body = self._product(mats)
        if c == 1:
            return body
        if c == -1:
            return f"-{body}"
        return rf"{self._print(c)} \left({body}\right)"

    def _product(self, mats):
        return " ".join(self._factor(m) for m in mats)

    def _factor(self, m):
        text = self._print(m)
        return rf"\left({text}\right)" if _compound(m) else text

    def _print_HadamardProduct(self, e):
        return r" \circ ".join(self._factor(a) for a in e.args)

    def _print_Elementwise(self, e):
        z = _softmax_arg(e)
        if z is not None:
            return rf"\operatorname{{softmax}}\left({self._print(z)}\right)"
        return elementwise_text(e.fn, self._print(e.arg), latex=True)

    def _print_RowLogSumExp(self, e):
        return rf"\operatorname{{logsumexp}}\left({self._print(e.arg)}\right)"


def latex_name(name: str) -> str:
    """Z1 → Z_{1}, δ2 → \\delta_{2}, ∂L/∂W1 → \\frac{\\partial L}{\\partial W_{1}}."""
    if name.startswith("∂L/∂"):
        return rf"\frac{{\partial L}}{{\partial {latex_name(name[4:])}}}"
    m = re.fullmatch(r"(δ|[A-Za-z]+?)(\w*?)(\d+)?('*)", name)
    if not m:
        return name
    stem, mid, num, primes = m.groups()
    stem = r"\delta" if stem == "δ" else stem
    sub = (mid or "") + (num or "")
    return stem + (f"_{{{sub}}}" if sub else "") + primes


def text(e) -> str:
    return FormulaPrinter().doprint(e)


def latex(e) -> str:
    return FormulaLatexPrinter().doprint(e)


SECTIONS = ("Forward", "Backprop", "Gradients")


def _sections(d: Derivation):
    return zip(SECTIONS, (d.forward, d.backward, list(d.gradients.values())))


def as_text(d: Derivation, raw: Derivation | None = None, updates=()) -> str:
    """The derivation as aligned text; with ``raw``, each backprop and gradient equation is
    followed by its unsimplified chain-rule form."""
    raw_of = {eq.label: eq for eq in (raw.backward + list(raw.gradients.values()))} if raw else {}
    lines = []
    for title, eqs in _sections(d):
        lines.append(f"{title}:")
        width = max((len(eq.label) for eq in eqs), default=0)
        for eq in eqs:
            lines.append(f"  {eq.label:<{width}} = {text(eq.rhs)}")
            r = raw_of.get(eq.label)
            if r is not None and text(r.rhs) != text(eq.rhs):
                lines.append(f"  {'':<{width}}   raw: {text(r.rhs)}")
    if updates:
        lines.append("Update:")
        lines.extend(f"  {u}" for u in updates)
    return "\n".join(lines)


def as_latex(d: Derivation, updates=()) -> str:
    rows = []
    for title, eqs in _sections(d):
        rows.append(rf"\text{{{title}:}} & \\")
        rows.extend(rf"{latex_name(eq.label)} &= {latex(eq.rhs)} \\" for eq in eqs)
    rows.extend(rf"& {u} \\" for u in updates)
    return "\\begin{aligned}\n" + "\n".join(rows) + "\n\\end{aligned}"


def equation_text(eq: Equation) -> str:
    return f"{eq.label} = {text(eq.rhs)}"
