"""``model.explain(X, Y)``: the derivation line by line, with what a reader needs to trust it.

Every equation comes with its shape, the raw chain-rule form it was simplified from, the names of
the rewrites that simplified it, and for every gradient a float64 central-difference check on the
given batch. The check runs on the NumPy reference backend whatever the model's backend, so that
it needs no float64 kernels to be compiled and tests the derivation, not the code generator.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import sympy as sp

from . import formulas
from .formulas import TextPrinter, sections, text

CHECK = "float64 central differences, ε = 1e-5, up to 30 entries per parameter"


@dataclass(frozen=True)
class Line:
    """One equation of the explanation."""

    section: str  # "Forward", "Backprop" or "Gradients"
    label: str  # Z1, δ2, ∂L/∂W1
    rhs: sp.MatrixExpr
    shape: str  # n×6
    raw: sp.MatrixExpr | None  # the chain-rule form, when it differs from rhs
    rewrites: tuple[str, ...]  # the rules that turned raw into rhs, in the order they first fired
    error: float | None  # gradients: max relative error against central differences


class Explanation:
    """What :meth:`Model.explain` returns: ``str()`` is the text, ``_repr_html_`` the same as a
    table with MathML formulas for a notebook. ``lines`` holds the :class:`Line` records,
    ``update`` the optimizer's rule as text, ``rows`` the size of the checked batch."""

    def __init__(self, lines: list[Line], update: list[str], update_mathml: list[str], rows: int):
        self.lines = lines
        self.update = update
        self._update_mathml = update_mathml
        self.rows = rows

    @property
    def max_error(self) -> float:
        """The largest relative error of any gradient."""
        return max((ln.error for ln in self.lines if ln.error is not None), default=0.0)

    def __str__(self):
        out = []
        for title in formulas.SECTIONS:
            lines = [ln for ln in self.lines if ln.section == title]
            if not lines:
                continue
            width = max(formulas.width(ln.label) for ln in lines)
            main = [f"  {formulas.pad(ln.label, width)} = {text(ln.rhs)}" for ln in lines]
            column = max((formulas.width(m) for m in main if formulas.width(m) <= 64),
                         default=64) + 3
            head = f"{title}:"
            if title == "Gradients":
                head = f"{head:<{column}}shape     check ({self.rows} rows)"
            else:
                head = f"{head:<{column}}shape"
            out.append(head)
            for ln, m in zip(lines, main):
                row = f"{formulas.pad(m, column - 1)} {ln.shape}"
                if ln.error is not None:
                    row = f"{formulas.pad(row, column + 9)} {ln.error:.1e}"
                out.append(row)
                indent = " " * (width + 5)
                if ln.raw is not None:
                    out.append(f"{indent}chain rule: {text(ln.raw)}")
                if ln.rewrites:
                    out.append(f"{indent}rewrites: {', '.join(ln.rewrites)}")
        out.append("Update:")
        out.extend(f"  {u}" for u in self.update)
        out.append(f"check: max relative error of each gradient against {CHECK}; "
                   f"largest {self.max_error:.1e}")
        return "\n".join(out)

    def __repr__(self):
        return str(self)

    def _repr_html_(self):
        return html_table(self)


def explain(model, feeds, rows: int) -> Explanation:
    """The explanation of ``model``'s derivation, its gradients checked on ``feeds`` (not
    checked when ``feeds`` is None)."""
    d = model.derivation
    raw = model.raw_derivation()
    raw_of = {eq.label: eq.rhs for eq in raw.backward + list(raw.gradients.values())}
    errors = _errors(model, feeds) if feeds is not None else {}
    names = {eq.lhs: p.name for p, eq in d.gradients.items()}
    lines = []
    for title, eqs in sections(d, model._predict_equations()):
        for eq in eqs:
            rewrites = eq.rewrites
            if eq.lhs == d.loss:
                rewrites = model.forward_rewrites.get("loss", ())
            elif eq.lhs in d.predictions:
                rewrites = model.forward_rewrites.get("prediction", ())
            chain = raw_of.get(eq.label)
            if chain is not None and text(chain) == text(eq.rhs):
                chain = None
            lines.append(Line(title, eq.label, eq.rhs, shape(eq.lhs), chain, rewrites,
                              errors.get(names.get(eq.lhs))))
    printer = formulas.FormulaMathMLPrinter()
    running = model._running_updates(d)
    update_mathml = [printer.assignment(lhs, rhs)
                     for lhs, rhs in formulas.update_pairs(model.optimizer, running)]
    return Explanation(lines, formulas.update_lines(model.optimizer, TextPrinter(), running),
                       update_mathml, rows)


def shape(m) -> str:
    """``n×6`` for a matrix of batch rows and 6 columns."""
    return "×".join(str(s) for s in m.shape)


def _errors(model, feeds) -> dict[str, float]:
    from codegen.numpy_backend import NumpyBackend

    from .gradcheck import parameter_errors

    reference = NumpyBackend({"loss_and_grad": model._programs["loss_and_grad"]}, None, "float64")
    params = {k: np.array(v, dtype=np.float64) for k, v in model.params.items()}
    constants = {k: np.array(v, dtype=np.float64) for k, v in model.constants.items()}

    def loss_and_grad():
        out = reference.run("loss_and_grad", {**feeds, **params, **constants})
        return float(out.pop("loss")[0, 0]), out

    return parameter_errors(loss_and_grad, params)


# ----------------------------------------------------------------------------------- HTML

STYLE = """
.symnet-scroll { overflow-x: auto; max-width: 100%; }
.symnet-explain { border-collapse: collapse; font-family: system-ui, sans-serif; }
.symnet-explain th { text-align: left; white-space: nowrap; padding: 0.6em 0.5em 0.2em;
                     border-bottom: 1px solid #999; }
.symnet-explain td { padding: 0.15em 0.5em; vertical-align: baseline; }
.symnet-explain td.lhs { text-align: right; white-space: nowrap; }
.symnet-explain td.note { color: #555; font-size: 0.85em; padding-bottom: 0.5em; }
.symnet-explain td.num { font-family: ui-monospace, monospace; white-space: nowrap; }
.symnet-explain math { font-size: 1.1em; }
"""


def html_table(ex: Explanation, check: bool = True) -> str:
    """The explanation as an HTML table (inline MathML, no script), for notebooks and reports;
    ``check=False`` leaves out the finite-difference column."""
    mml = formulas.FormulaMathMLPrinter()
    # in a box of its own width that scrolls: long adjoints made the table wider than a page,
    # and its shape and check columns fell off the side
    rows = [f"<style>{STYLE}</style>", '<div class="symnet-scroll">',
            '<table class="symnet-explain">']
    for title in formulas.SECTIONS:
        lines = [ln for ln in ex.lines if ln.section == title]
        if not lines:
            continue
        check_head = f"check ({ex.rows} rows)" if title == "Gradients" and check else ""
        rows.append(f'<tr><th colspan="3">{title}</th><th>shape</th><th>{check_head}</th></tr>')
        for ln in lines:
            lhs = formulas.math_element(formulas.mathml_name(ln.label))
            rhs = formulas.math_element(mml._print(ln.rhs))
            err = f"{ln.error:.1e}" if ln.error is not None else ""
            rows.append(f'<tr><td class="lhs">{lhs}</td><td>=</td><td>{rhs}</td>'
                        f'<td class="num">{html.escape(ln.shape)}</td>'
                        f'<td class="num">{err}</td></tr>')
            notes = []
            if ln.raw is not None:
                notes.append(f"chain rule: {formulas.math_element(mml._print(ln.raw))}")
            if ln.rewrites:
                notes.append(f"rewrites: {html.escape(', '.join(ln.rewrites))}")
            if notes:
                rows.append(f'<tr><td></td><td></td><td class="note" colspan="3">'
                            f'{"<br/>".join(notes)}</td></tr>')
    rows.append('<tr><th colspan="5">Update</th></tr>')
    for u in ex._update_mathml:
        rows.append(f'<tr><td></td><td></td><td colspan="3">{formulas.math_element(u)}</td></tr>')
    if check:
        rows.append(f'<tr><td class="note" colspan="5">check: max relative error of each gradient '
                    f'against {html.escape(CHECK)}; largest {ex.max_error:.1e}</td></tr>')
    rows.append("</table></div>")
    return "\n".join(rows)
