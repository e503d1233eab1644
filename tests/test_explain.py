"""model.explain, model.report, History.plot, the Model repr and the progress bar in notebooks."""

import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import make_data
from test_formulas import DECLARATIONS, need, network

import symnet as sn
from symnet import formulas, rewrite
from symnet.gradcheck import parameter_errors

RULES = {r.name for r in rewrite.FORWARD + rewrite.ADJOINT}


def xml(fragment: str):
    """Parse an HTML fragment as XML: it must be well formed (MathML is XML)."""
    return ET.fromstring(f"<div>{fragment.replace('&#x2061;', chr(0x2061))}</div>")


@pytest.mark.parametrize("name", DECLARATIONS)
def test_explain_shows_every_equation_with_shape_raw_form_rewrites_and_check(name, tmp_path):
    model, Xb, Yb = network(name)
    ex = model.explain(Xb, Yb)
    shown = str(ex)
    d = model.derivation
    trained = [ln for ln in ex.lines if ln.section != formulas.PREDICT]
    assert [ln.label for ln in trained] == [eq.label for eq in d.equations]
    assert [(ln.label, ln.rhs) for ln in ex.lines if ln.section == formulas.PREDICT] == [
        (eq.label, eq.rhs) for eq in model._predict_equations()]
    for ln, eq in zip(trained, d.equations):
        rows, cols = eq.lhs.shape
        assert ln.shape == f"{rows}×{cols}"
        line = next(s for s in shown.splitlines() if re.match(rf"\s*{re.escape(eq.label)} += ", s))
        assert formulas.text(eq.rhs) in line and line.rstrip().split()[-1 - (
            ln.error is not None)] == ln.shape
        assert set(ln.rewrites) <= RULES
        if ln.raw is not None:
            assert f"chain rule: {formulas.text(ln.raw)}" in shown
            assert ln.rewrites, f"{eq.label} changed without a rule named"
    errors = {ln.label: ln.error for ln in ex.lines if ln.section == "Gradients"}
    assert set(errors) == {eq.label for eq in d.gradients.values()}
    assert all(e is not None and e < 1e-6 for e in errors.values()), errors
    for label, e in errors.items():
        assert re.search(rf"{re.escape(label)} += .* {e:.1e}$", shown, re.M)
    html = ex._repr_html_()
    assert html.count("<math") >= len(d.equations)
    xml(html)
    model.report(tmp_path / "report.html", Xb, Yb)  # and the report of the same network
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert page.count("<math") >= len(d.equations) and f"{ex.max_error:.1e}" in page


def test_explain_names_the_rules_of_the_bce_adjoint():
    X, Y = sn.Input("X", 4), sn.Input("Y", 1)
    out = sn.dense(sn.dense(X, 5, sn.tanh), 1)
    model = sn.compile(sn.binary_cross_entropy(sn.sigmoid(out), Y), inputs=[X], targets=[Y],
                       prediction=sn.sigmoid(out), dtype="float64", backend="numpy")
    Xb, Yb = make_data(out=1, kind="prob", seed=2)
    ex = model.explain(Xb, np.round(Yb))
    delta = next(ln for ln in ex.lines if ln.label == "δ2")
    assert formulas.text(delta.rhs) == "(σ(Z2) − Y)/n"
    assert "logistic_form" in delta.rewrites and delta.raw is not None
    loss = next(ln for ln in ex.lines if ln.label == "L")
    assert "fuse_entrywise" in loss.rewrites and "stable_log_sigmoid" in loss.rewrites
    assert ex.max_error < 1e-6


def test_the_check_finds_a_wrong_gradient():
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 2))}

    def loss_and_grad(scale):
        W = params["W"]
        return lambda: (float(np.sum(np.sin(W))), {"W": scale * np.cos(W)})

    assert parameter_errors(loss_and_grad(1.0), params)["W"] < 1e-9
    assert parameter_errors(loss_and_grad(1.01), params)["W"] == pytest.approx(0.005, rel=0.01)


def test_a_step_across_a_kink_does_not_fail_a_correct_gradient():
    """relu(W) summed, with an entry 3e-6 from the kink: a step of ±1e-5 crosses it and the
    difference quotient is off by a third; a smaller step agrees. A wrong gradient still fails."""
    params = {"W": np.array([[3e-6, -0.5, 0.8]])}

    def loss_and_grad(scale):
        W = params["W"]
        return lambda: (float(np.maximum(W, 0).sum()), {"W": scale * (W > 0).astype(float)})

    assert parameter_errors(loss_and_grad(1.0), params)["W"] < 1e-9
    assert parameter_errors(loss_and_grad(1.01), params)["W"] == pytest.approx(0.005, rel=0.01)


def test_explain_refuses_bad_data_with_a_symnet_error():
    model, Xb, Yb = network("teacher")
    with pytest.raises(sn.DataError, match="targets"):
        model.explain(Xb)
    with pytest.raises(sn.DataError):
        model.explain(Xb[:, :2], Yb)


# ---------------------------------------------------------------------------------- report


def trained(tmp_path=None):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 6, sn.relu), 3)
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                       prediction=sn.softmax(out), optimizer=sn.optim.Adam(0.05), seed=1,
                       backend="numpy")
    Xb, Yb = make_data(n=60, kind="onehot", seed=3)
    model.fit(Xb, Yb, epochs=12, batch_size=20, validation_data=(Xb[:20], Yb[:20]),
              early_stopping=20, verbose=False)
    return model, Xb, Yb


def assert_self_contained(page: str):
    """Nothing is loaded from anywhere: no script, stylesheet link, image source or import."""
    assert "<script" not in page and "<link" not in page and "<iframe" not in page
    assert not re.search(r"""\b(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(?!#)", page)  # url(#clip) names a local SVG element


def test_report_is_one_offline_page_with_formulas_plots_and_source(tmp_path):
    model, Xb, Yb = trained()
    path = tmp_path / "report.html"
    model.report(path, Xb[:20], Yb[:20])
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert_self_contained(page)
    body = re.sub(r"<pre>.*?</pre>", "", page[page.index("<body>"):], flags=re.S)
    xml(body.replace("</html>", ""))
    assert page.count("<math") >= len(model.derivation.equations)
    assert "<svg" in page and "val_loss" in page  # the training curves, inline
    assert "check (20 rows)" in page and "rewrites: " in page
    assert "n×6" in page and "W1 4×6" in page
    import html
    assert html.escape(model.source) in page


def test_report_before_fit_and_without_data(tmp_path):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(X, 3)
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], backend="numpy")
    model.report(str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Not trained yet" in page and "<svg" not in page and "check (" not in page
    model.fit(np.ones((4, 4)), np.ones((4, 3)), epochs=1, batch_size=2, verbose=False)
    model.save(tmp_path / "m.npz")  # a loaded model has taken steps, and has no curves
    sn.load(tmp_path / "m.npz").report(str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "No training curves: the model has taken 2 steps" in page and "Not trained" not in page
    with pytest.raises(sn.DataError, match="file name"):
        model.report(3)
    with pytest.raises(sn.DataError, match="pass the inputs"):
        model.report(tmp_path / "r.html", Y=np.ones((2, 3)))
    with pytest.raises(sn.DataError, match="cannot write the report"):
        model.report(tmp_path / "missing" / "r.html")


def test_report_renders_in_a_real_browser(tmp_path):
    need("chromium", "chromium")
    model, Xb, Yb = trained()
    page = tmp_path / "report.html"
    model.report(page, Xb[:20], Yb[:20])
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    ink = (pixels.mean(axis=2) < 0.5).mean()  # dark pixels: text, formulas, plot lines
    assert pixels.std() > 0.05 and 0.002 < ink < 0.5, (pixels.std(), ink)


def test_demo_writes_the_report(tmp_path):
    from symnet.cli import main

    path = tmp_path / "out.html"
    assert main(["demo", "--backend", "numpy", "--epochs", "2", "--hidden", "8", "--quiet",
                 "--report", str(path)]) == 0
    page = path.read_text(encoding="utf-8")
    assert "<svg" in page and "check (200 rows)" in page
    assert_self_contained(page)


# ------------------------------------------------------------------------- notebook niceties


def test_history_plot_draws_the_curves_and_marks_the_kept_epoch():
    model, _, _ = trained()
    fig = model.history.plot()
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert {"loss", "val_loss", "val_accuracy"} <= set(labels)
    kept = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"]
    assert kept and kept[0].get_xdata()[0] == model.history.best_epoch
    loss = next(line for line in fig.axes[0].get_lines() if line.get_label() == "loss")
    np.testing.assert_array_equal(loss.get_ydata(), model.history.loss)
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) >= 2 and np.array_equal(ticks, np.round(ticks))  # whole epochs only


def test_one_epoch_is_a_marked_point_at_epoch_1(tmp_path):
    """A one-point line draws nothing: a one-epoch fit's chart was empty, its axis ran over
    fractions of an epoch, and the report read "1 epochs"."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(X, 3, name="1")
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                       prediction=out, seed=0, backend="numpy")
    Xd, labels = np.ones((8, 4)), np.arange(8) % 3
    model.fit(Xd, labels, epochs=1, verbose=False)
    (line,) = model.history.plot().axes[0].get_lines()
    assert line.get_marker() == "o" and list(line.get_xdata()) == [1]
    assert list(model.history.plot().axes[0].get_xticks()) == [1]
    model.report(tmp_path / "r.html")
    assert "1 epoch, final loss" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_a_regression_plots_and_reports_its_val_r2(tmp_path):
    X, Y = sn.Input("X", 4), sn.Input("Y", 2)
    out = sn.dense(X, 2, name="1")
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, seed=0,
                       backend="numpy")
    rng = np.random.default_rng(0)
    Xd = rng.normal(size=(20, 4))
    hist = model.fit(Xd, Xd[:, :2] * 2, epochs=3, validation_data=(Xd, Xd[:, :2] * 2),
                     verbose=False)
    r2 = next(line for ax in hist.plot().axes for line in ax.get_lines()
              if line.get_label() == "val_r2")
    np.testing.assert_array_equal(r2.get_ydata(), hist.val_r2)
    model.report(tmp_path / "r.html")
    assert f"val_r2 {hist.val_r2[-1]:.4f}" in (tmp_path / "r.html").read_text(encoding="utf-8")
    unvalidated = model.fit(Xd, Xd[:, :2] * 2, epochs=1, verbose=False)
    assert unvalidated.val_r2 == [] == unvalidated.val_accuracy  # not an AttributeError


def test_the_report_gives_the_kept_epochs_validation_loss(tmp_path):
    """With early stopping the model is the kept epoch's: its val_loss, not only the last's."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 2)
    out = sn.dense(X, 2, name="1")
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, seed=0,
                       backend="numpy", optimizer=sn.optim.SGD(lr=0.5))
    rng = np.random.default_rng(0)
    Xd = rng.normal(size=(20, 4))
    hist = model.fit(Xd, Xd[:, :2], epochs=30, batch_size=5, early_stopping=2,
                     validation_data=(Xd, -Xd[:, :2]), verbose=False)  # val_loss rises
    assert hist.best_epoch < len(hist.loss)
    model.report(tmp_path / "r.html")
    kept = f"kept epoch {hist.best_epoch} (val_loss {hist.val_loss[hist.best_epoch - 1]:.4g})"
    assert kept in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_history_plot_without_matplotlib_says_what_to_install(monkeypatch):
    model, _, _ = trained()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(sn.DataError, match=r"symnet\[plots\]"):
        model.history.plot()
    with pytest.raises(sn.DataError, match="no epochs"):
        sn.History().plot()


def test_model_repr_lists_layers_shapes_and_parameter_counts():
    model, _, _ = network("teacher")
    shown = repr(model)
    assert shown.startswith("symnet Model (numpy backend, float64): 84 parameters in 8 arrays")
    assert re.search(r"Z1 = X·W1 \+ 𝟙·b1 +n×5 +A1 = tanh\(Z1\) +W1 4×5, b1 1×5 +25$", shown,
                     re.M)
    assert re.search(r"Z4 = A3·W4 \+ 𝟙·b4 +n×3 +W4 4×3, b4 1×3 +15$", shown, re.M)
    assert "prediction: P = softmax(Z4)" in shown and "optimizer: Adam(" in shown


def test_model_repr_shows_a_layer_sum_that_holds_no_parameters_of_its_own():
    """maxout's output is the sum of its pieces, whose parameters its pieces' rows list; the
    next layer reads it, so it is a row too."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 5, sn.relu, name="1"), 3, sn.maxout(2), name="2")
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                       backend="numpy")
    shown = repr(model)
    assert re.search(r"^ +Z3 = A1·W2_1 \+ 𝟙·b2_1 \+ A2 +n×3 +0$", shown, re.M), shown
    assert "loss: L = (sum(logsumexp(Z3)) − sum(Z3 ∘ Y))/n" in shown
    from symnet.report import _summary_html

    assert "layer Z3</td><td>Z3 = A1·W2_1 + 𝟙·b2_1 + A2 (n×3)</td>" in _summary_html(model)


def test_no_warning_in_a_notebook_kernel_without_ipywidgets(tmp_path):
    """tqdm.auto warns on import inside a Jupyter kernel that lacks ipywidgets; symnet picks its
    progress bar when fit runs, and the console bar when widgets are missing."""
    fake = tmp_path / "fake"
    (fake / "IPython").mkdir(parents=True)
    (fake / "ipykernel").mkdir()
    (fake / "IPython" / "__init__.py").write_text(textwrap.dedent("""
        class _Shell:
            config = {"IPKernelApp": {}}
        def get_ipython():
            return _Shell()
    """))
    (fake / "ipykernel" / "__init__.py").write_text("")
    (fake / "ipykernel" / "zmqshell.py").write_text("")  # what tqdm.auto looks for
    script = textwrap.dedent("""
        import IPython, ipykernel.zmqshell
        import numpy as np, symnet as sn
        X, Y = sn.Input("X", 2), sn.Input("Y", 1)
        model = sn.compile(sn.mse(sn.dense(X, 1), Y), inputs=[X], targets=[Y], backend="numpy")
        model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=2, verbose=True)
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), *sys.path])}
    run = subprocess.run([sys.executable, "-W", "always", "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr
    assert "Warning" not in run.stderr
