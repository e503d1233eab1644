"""A model at a glance: its summary (``repr``), its training curves (``History.plot``) and
``model.report(path)``, one self-contained HTML page — MathML formulas, inline SVG plots, no
script, font or stylesheet from the network — that reads the same offline years later."""

from __future__ import annotations

import datetime
import html
import io
from dataclasses import dataclass

import numpy as np

from . import __version__, formulas, validate
from .errors import DataError
from .explain import STYLE, Explanation, explain, html_table, shape
from .formulas import text


@dataclass(frozen=True)
class Layer:
    label: str  # Z1, or P for a prediction that is not a layer's output
    formula: str  # X·W1 + 𝟙·b1
    shape: str
    activation: str  # tanh(Z1), or "" for a linear output
    params: tuple[tuple[str, str], ...]  # (name, shape)
    count: int


def layers(model) -> list[Layer]:
    """The layers of the derivation in order: each named sum with the activation that reads it
    and the parameters it holds, and each layer sum Z that holds none of its own (maxout's
    output, a sum of its pieces)."""
    d = model.derivation
    params = set(model.param_symbols)
    used = set()
    defined = {eq.lhs: eq for eq in d.forward}
    out = []
    for eq in d.forward:
        own = sorted((p for p in eq.rhs.free_symbols if p in params and p not in used),
                     key=model.param_symbols.index)
        if not own and not eq.label.startswith("Z"):
            continue
        used.update(own)
        activation = ", ".join(f"{defined[a].label} = {text(defined[a].rhs)}"
                               for a, _ in d.activations.get(eq.lhs, []) if a in defined)
        out.append(Layer(eq.label, text(eq.rhs), shape(eq.lhs), activation,
                         tuple((p.name, shape(p)) for p in own),
                         sum(int(p.shape[0]) * int(p.shape[1]) for p in own)))
    return out


def summary(model) -> str:
    """What ``repr(model)`` shows: data, layers with shapes and parameter counts, optimizer."""
    total = sum(v.size for v in model.params.values())
    rows = [f"symnet Model ({model.backend} backend, {model.dtype.name}): "
            f"{total:,} parameters in {_arrays(model)}"]
    data = [f"{s.name} {shape(s)}" for s in model.inputs]
    rows.append(f"  inputs:  {', '.join(data)}")
    if model.targets:
        rows.append(f"  targets: {', '.join(f'{s.name} {shape(s)}' for s in model.targets)}")
    found = layers(model)
    if found:
        table = [(f"{ly.label} = {ly.formula}", ly.shape, ly.activation,
                  ", ".join(f"{n} {s}" for n, s in ly.params), f"{ly.count:,}") for ly in found]
        widths = [max(formulas.width(row[i]) for row in table) for i in range(5)]
        rows.append("  layers:")
        for row in table:
            cells = [formulas.pad(c, w) for c, w in zip(row[:4], widths)] + [
                f"{row[4]:>{widths[4]}}"]
            rows.append(("    " + "   ".join(cells)).rstrip())
    d = model.derivation
    defined = {eq.lhs: eq for eq in d.forward}
    for p in d.predictions:
        rows.append(f"  prediction: {defined[p].label} = {text(defined[p].rhs)}" if p in defined
                    else f"  prediction: {text(p)}")
    loss = next(eq for eq in d.forward if eq.lhs == d.loss)
    rows.append(f"  loss: L = {text(loss.rhs)}")
    rows.append(f"  optimizer: {model.optimizer!r}")
    return "\n".join(rows)


# ------------------------------------------------------------------------------- plots


def _pyplot_free_figure():
    """A matplotlib Figure that belongs to no pyplot window (so that a notebook shows it once)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DataError('plotting needs matplotlib: pip install "symnet[plots]" '
                        '(or pip install matplotlib)') from None
    return Figure(figsize=(7.5, 3.6), layout="constrained")


def history_figure(history):
    """loss and val_loss per epoch (log scale when they span a decade), val_accuracy (or a
    regression's val_r2) on a second axis, and the epoch early stopping kept."""
    if not history.loss:
        raise DataError("this History has no epochs to plot: fit(..., epochs=1) or more first")
    fig = _pyplot_free_figure()
    ax = fig.add_subplot()
    epochs = np.arange(1, len(history.loss) + 1)
    marker = "o" if len(epochs) < 20 else None  # a line of one point shows nothing
    ax.plot(epochs, history.loss, label="loss", color="#1f77b4", marker=marker)
    if history.val_loss:
        ax.plot(epochs[:len(history.val_loss)], history.val_loss, label="val_loss",
                color="#ff7f0e", marker=marker)
    values = np.asarray(history.loss + history.val_loss, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and values.max() > 10 * values.min():
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator  # (matplotlib is there: the figure is made)

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
    if len(epochs) == 1:
        ax.set_xlim(0.5, 1.5)
        ax.set_xticks([1])
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    score = next((k for k in ("val_accuracy", "val_r2") if history.history.get(k)), None)
    if score is not None:  # a classifier's accuracy, or a regression's R²
        values = history.history[score]
        acc = ax.twinx()
        acc.plot(epochs[:len(values)], values, label=score, color="#2ca02c", linestyle="--",
                 marker=marker)
        acc.set_ylabel(score)
        h, lab = acc.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if history.best_epoch is not None:
        handles.append(ax.axvline(history.best_epoch, color="0.4", linestyle=":"))
        labels.append(f"kept epoch {history.best_epoch}")
    ax.legend(handles, labels, loc="upper center", frameon=False, ncols=len(labels),
              bbox_to_anchor=(0.5, 1.15))
    ax.grid(alpha=0.3)
    return fig


def _svg(fig) -> str:
    """The figure as inline SVG, glyphs as paths (no font needed to read it)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "symnet"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # without the XML prolog and doctype, to inline it


# ------------------------------------------------------------------------------- the page

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
table.summary td { padding: 0.1em 0.8em 0.1em 0; vertical-align: baseline; }
.muted { color: #666; }
"""


def write(model, path, X=None, Y=None) -> None:
    """Write ``model``'s report to ``path`` (see :meth:`Model.report`)."""
    path = validate.file_name(path, "report(path)", "report.html")
    if X is None and Y is not None:
        raise DataError("report(path, X, Y) checks the gradients on X and Y: pass the inputs "
                        "X as well, or neither")
    if X is not None:
        feeds = model._gradient_feeds(X, Y, "float64")
        with model._lock:
            model._check_params()
            ex = explain(model, feeds, next(iter(feeds.values())).shape[0])
    else:
        with model._lock:
            ex = explain(model, None, 0)
    page = _page(model, ex)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as err:
        raise DataError(f"cannot write the report to {path!s}: {err.strerror or err}; pass a "
                        f"path in a writable directory") from None


def _page(model, ex: Explanation) -> str:
    title = "symnet report"
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{title}</title>", f"<style>{PAGE_STYLE}{STYLE}</style>", "</head>", "<body>",
        f"<h1>{title}</h1>",
        f'<p class="muted">symnet {html.escape(__version__)}, written '
        f'{datetime.datetime.now().isoformat(timespec="seconds")}</p>',
        "<h2>Model</h2>", _summary_html(model),
        "<h2>Derivation</h2>",
        '<p class="muted">Forward equations, the backpropagated adjoints δ and the gradients, as '
        "symnet derived and simplified them, each with its shape, the chain-rule form it was "
        "simplified from and the rewrites that simplified it. "
        + ("Each gradient is checked against float64 central differences on the "
           f"{ex.rows} rows passed to report()." if ex.rows else
           "Pass data to report(path, X, Y) to check each gradient against central "
           "differences.") + "</p>",
        html_table(ex, check=bool(ex.rows)),
        "<h2>Training</h2>", _training_html(model),
        "<h2>Generated code</h2>",
        f'<p class="muted">The {model.backend} backend\'s code, each statement under the '
        "formula it computes.</p>",
        f"<pre>{html.escape(model.source)}</pre>",
        "</body>", "</html>",
    ]
    return "\n".join(parts)


def _summary_html(model) -> str:
    total = sum(v.size for v in model.params.values())
    rows = [("backend", f"{model.backend}, {model.dtype.name}"),
            ("parameters", f"{total:,} in {_arrays(model)}"),
            ("inputs", ", ".join(f"{s.name} {shape(s)}" for s in model.inputs))]
    if model.targets:
        rows.append(("targets", ", ".join(f"{s.name} {shape(s)}" for s in model.targets)))
    for ly in layers(model):
        params = ", ".join(f"{n} {s}" for n, s in ly.params)
        act = f", {ly.activation}" if ly.activation else ""
        held = f"; {params}: {ly.count:,} parameters" if ly.params else ""
        rows.append((f"layer {ly.label}", f"{ly.label} = {ly.formula} ({ly.shape}){act}{held}"))
    rows.append(("optimizer", repr(model.optimizer)))
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                   for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _training_html(model) -> str:
    hist = model.history
    if (hist is None or not hist.loss) and model._steps:  # loaded, unpickled or fresh()
        return (f'<p class="muted">No training curves: the model has taken {model._steps} '
                f'steps, but the curves belong to the fit that took them (a model file keeps '
                f'the parameters and the optimizer state, not the history).</p>')
    if hist is None or not hist.loss:
        return '<p class="muted">Not trained yet: the plots appear once fit has run.</p>'
    count = len(hist.loss)
    last = [f"{count} epoch{'s' * (count != 1)}", f"final loss {hist.loss[-1]:.4g}"]
    if hist.val_loss:
        last.append(f"val_loss {hist.val_loss[-1]:.4g}")
    if hist.val_accuracy:
        last.append(f"val_accuracy {hist.val_accuracy[-1]:.4f}")
    if hist.history.get("val_r2"):
        last.append(f"val_r2 {hist.history['val_r2'][-1]:.4f}")
    if hist.best_epoch is not None:  # the model's own figures: the kept epoch's
        kept = hist.best_epoch - 1
        last.append(f"kept epoch {hist.best_epoch} (val_loss {hist.val_loss[kept]:.4g})"
                    if kept < len(hist.val_loss) else f"kept epoch {hist.best_epoch}")
    text_line = f"<p>{html.escape(', '.join(last))}.</p>"
    try:
        figure = _svg(history_figure(hist))
    except DataError as err:  # no matplotlib: say how to get the plots
        figure = f'<p class="muted">{html.escape(str(err))}</p>'
    return text_line + figure


def _arrays(model) -> str:
    count = len(model.params)
    return f"{count} array{'s' if count != 1 else ''}"
