"""What symnet shows means what it computes: every equation's text, LaTeX and MathML are read
back (tests/formula_reader.py), must group every product alike, and must compute the numbers
``sn.evaluate`` gives for the equation; the LaTeX must compile with pdflatex."""

import os
import shutil
import subprocess
from functools import cache

import numpy as np
import pytest
import sympy as sp
from conftest import compiled, make_data
from formula_reader import evaluate, latex_to_text, mathml_to_text, parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gradients import ACTIVATIONS, LOSSES

import symnet as sn
from symnet import formulas
from symnet.functions import (
    DropoutMask,
    Elementwise,
    Entrywise,
    ScalarActivation,
    as_numeric,
    latex_escape,
    x,
)

REQUIRE_TOOLS = os.environ.get("SYMNET_REQUIRE_TOOLS") == "1"  # set by .ci/run


def need(tool, package):
    if shutil.which(tool) is None:
        message = f"{tool} is not installed (apt-get install {package})"
        if REQUIRE_TOOLS:
            pytest.fail(message)
        pytest.skip(message)


def _teacher():
    """tanh → relu → sigmoid → softmax cross-entropy with an L2 penalty, Adam with clipping."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.dense(sn.dense(sn.dense(X, 5, sn.tanh), 4, sn.relu), 4, sn.sigmoid)
    out = sn.dense(h, 3)
    weights = [w for w in sn.weights(out) if w.name.startswith("W")]
    loss = sn.softmax_cross_entropy(out, Y) + sn.l2(1e-4, *weights)
    return loss, X, Y, sn.softmax(out), "onehot"


def _declarations():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    for name, act in ACTIVATIONS.items():
        out = sn.dense(sn.dense(X, 5, act), 3)
        yield f"act-{name}", (sn.mse(out, Y), X, Y, out, "real")
    for name, (build, kind) in LOSSES.items():
        out = sn.dense(sn.dense(X, 5, sn.tanh), 3)
        yield f"loss-{name}", (build(out, Y), X, Y, out, kind)
    out = sn.dense(sn.dense(X, 5, sn.elu(0.5)), 3)
    yield "l1", (sn.mse(out, Y) + sn.l1(1e-3, *sn.weights(out)), X, Y, out, "real")
    yield "teacher", _teacher()
    out = sn.dense(sn.dense(X, 5, sn.relu), 3)
    loss = sn.softmax_cross_entropy(out, Y) + sn.l2(ALPHA, *sn.weights(out))
    yield "l2-constant", (loss, X, Y, out, "onehot")
    for name, norm in (("batch_norm", sn.batch_norm), ("layer_norm", sn.layer_norm)):
        out = sn.dense(sn.relu(norm(sn.dense(X, 5, name="1"), "1")), 3, name="2")
        yield f"block-{name}", (sn.softmax_cross_entropy(out, Y), X, Y, out, "onehot")
    out = sn.dense(sn.dropout(sn.dense(X, 5, sn.tanh), 0.3), 3)
    yield "block-dropout", (sn.softmax_cross_entropy(out, Y), X, Y, out, "onehot")
    out = sn.dense(sn.abs(sn.tanh(sn.dense(X, 5))), 3)  # |·| of an activation: a real function
    yield "abs-of-tanh", (sn.mse(out, Y), X, Y, out, "real")


ALPHA = sn.Constant("alpha")
DECLARATIONS = dict(_declarations())


@cache
def network(name):
    loss, X, Y, prediction, kind = DECLARATIONS[name]
    model = compiled(loss, X, Y, prediction=prediction,
                     constants={ALPHA: 0.3} if ALPHA in loss.free_symbols else None,
                     optimizer=sn.optim.Adam(1e-3, clip_norm=1.0))  # its rule is shown too
    Xb, Yb = make_data(kind=kind, seed=4)
    return model, Xb * 1.5, Yb


def activations_of(model):
    """The numeric function of every named activation the formulas may call, by text name and
    by the name its LaTeX reads back as."""
    found = {}
    for eq in model.derivation.equations + model.raw_derivation().equations:
        for node in sp.preorder_traversal(eq.rhs):
            if isinstance(node, (Elementwise, Entrywise)):
                found.update({type(a): None for a in sp.preorder_traversal(node.fn.expr)
                              if isinstance(a, ScalarActivation)})
    table = Functions()
    for cls in found:
        name = formulas.function_name(cls)
        table[name] = sp.lambdify(x, as_numeric(cls(x)), modules=["numpy", "scipy"])
        read = latex_to_text(formulas.FormulaLatexPrinter()._call(cls, "x")).split("@")[0]
        table.latex_names[read.strip()] = name
    return table


class Functions(dict):
    """Text name → NumPy function; ``latex_names``: the name LaTeX reads back as → text name."""

    def __init__(self):
        super().__init__()
        self.latex_names = {}


def same_tree(a, b):
    """Equal syntax trees, numbers compared to rounding (5·10⁻⁵ is 5.000000000000001e-05)."""
    if a[0] == "num" and b[0] == "num":
        return np.isclose(a[1], b[1], rtol=1e-12, atol=0)
    if a[0] != b[0] or len(a) != len(b):
        return False
    return all(same_tree(p, q) if isinstance(p, tuple) else p == q for p, q in zip(a[1:], b[1:]))


def renamed(tree, names):
    """``tree`` with its functions called by their text names (σ → sigmoid)."""
    if tree[0] == "call":
        return ("call", names.get(tree[1], tree[1]), *[renamed(a, names) for a in tree[2:]])
    return tuple(renamed(a, names) if isinstance(a, tuple) else a for a in tree)


def check_equation(eq, values, functions):
    shown = formulas.text(eq.rhs)
    trees = {"text": parse(shown),
             "latex": renamed(parse(latex_to_text(formulas.latex(eq.rhs)), implicit=True),
                              functions.latex_names),
             "mathml": parse(mathml_to_text(formulas.mathml(eq.rhs)))}
    for form in ("latex", "mathml"):
        assert same_tree(trees["text"], trees[form]), (
            f"{eq.label}: the {form} groups differently from the text {shown!r}:\n"
            f"{trees['text']}\n{trees[form]}")
    want = sn.evaluate(eq.rhs, values)
    got = np.broadcast_to(evaluate(trees["text"], values, functions), want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12,
                               err_msg=f"{eq.label} = {shown} computes something else")


def check_model(model, Xb, Yb):
    values = {"X": Xb, "Y": Yb, "n": Xb.shape[0], **model.params, **model.constants}
    rng = np.random.default_rng(0)
    for eq in model.derivation.equations:  # dropout masks: any 0/1 matrices of their shapes
        for m in sp.preorder_traversal(eq.rhs):
            if isinstance(m, DropoutMask) and m.name not in values:
                values[m.name] = rng.integers(0, 2, (Xb.shape[0], int(m.shape[1])))
    functions = activations_of(model)
    for derivation in (model.derivation, model.raw_derivation()):
        env = dict(values)
        for eq in derivation.equations:
            check_equation(eq, env, functions)
            env[eq.label] = sn.evaluate(eq.rhs, env)


@pytest.mark.parametrize("name", DECLARATIONS)
def test_text_latex_and_mathml_read_back_as_what_is_computed(name):
    check_model(*network(name))


@pytest.mark.parametrize("name", ["block-batch_norm", "block-dropout"])
def test_the_predict_equations_read_back_as_what_predict_computes(name):
    """The formulas' "In predict and evaluate" section (batch norm on its running statistics,
    dropout the identity), with the forward equations it leaves alone, computes predict."""
    model, Xb, Yb = network(name)
    model = model.fresh(seed=0)
    rng = np.random.default_rng(1)
    for v in model.running.values():  # not the starting 0 and 1, which would hide a swap
        v[...] = rng.uniform(0.5, 2.0, v.shape)
    at_prediction = {eq.lhs: eq for eq in model._predict_equations()}
    shown = model.formulas().split("In predict and evaluate:\n")[1].split("Backprop:")[0]
    assert shown.splitlines() == [f"  {eq.label} = {formulas.text(eq.rhs)}"
                                  for eq in at_prediction.values()]
    env = {"X": Xb, "Y": Yb, "n": Xb.shape[0], **model.params, **model.running}
    functions = activations_of(model)
    for eq in model.derivation.forward:
        eq = at_prediction.get(eq.lhs, eq)
        check_equation(eq, env, functions)
        env[eq.label] = sn.evaluate(eq.rhs, env)
    np.testing.assert_allclose(env["P"], model.predict(Xb), rtol=1e-12)


def test_update_rules_read_back_in_every_form():
    model, _, _ = network("teacher")
    lines = formulas.update_lines(model.optimizer, formulas.TextPrinter())
    assert lines[-3:] == ["m ← 0.9·m + 0.1·g", "v ← 0.999·v + 0.001·g²",
                          "p ← p − 0.001·m/((1 − 0.9ᵗ)·(√v/√(1 − 0.999ᵗ) + 1e-8))"]
    env = {"m": 0.3, "v": 0.2, "g": -0.5, "p": 1.5, "t": 3.0, "clip": 1.0, "‖g‖₂": 2.0}
    for lhs, rhs in formulas.update_pairs(model.optimizer):
        want = float(rhs.subs({sp.Symbol(k, real=True): v for k, v in env.items()})
                     .subs({sp.Symbol(k): v for k, v in env.items()}))
        for form, tree in (
                ("text", parse(formulas.text(rhs).replace("‖g‖₂", "gnorm"))),
                ("latex", parse(latex_to_text(formulas.latex(rhs)
                                              .replace(r"\lVert g\rVert_{2}", "gnorm")), True)),
                ("mathml", parse(mathml_to_text(formulas.mathml(rhs).replace(
                    "<msub><mrow><mo>‖</mo><mi>g</mi><mo>‖</mo></mrow><mn>2</mn></msub>",
                    "<mi>gnorm</mi>"))))):
            got = evaluate(tree, {**env, "gnorm": env["‖g‖₂"]}, {})
            assert got == pytest.approx(want, rel=1e-12), (form, lhs, formulas.text(rhs))


def pdflatex(tmp_path, blocks):
    need("pdflatex", "texlive-latex-base")
    body = "\n".join(f"\\[\n{b}\n\\]\n\\clearpage" for b in blocks)
    (tmp_path / "f.tex").write_text("\\documentclass{article}\n\\usepackage{amsmath}\n"
                                    "\\begin{document}\n" + body + "\n\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "f.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = run.stdout
    assert run.returncode == 0 and "Undefined control sequence" not in log, log[-3000:]
    assert (tmp_path / "f.pdf").stat().st_size > 1000


def test_latex_of_every_test_network_compiles_with_pdflatex(tmp_path):
    pdflatex(tmp_path, [network(name)[0].latex() for name in DECLARATIONS])


def test_latex_of_names_outside_ascii_compiles_with_pdflatex(tmp_path):
    """An input θ, a layer α, a parameter Σ and a constant ж were written into the LaTeX as
    they are, where pdflatex stops ("Unicode character θ (U+03B8)")."""
    X, Y = sn.Input("θ", 3), sn.Input("Y", 2)
    h = sn.dense(X, 4, sn.activation("ψ_é", sp.tanh(sp.Symbol("x")), sp.Symbol("x")), name="α")
    c = sn.Constant("ж")
    Σ = sp.MatrixSymbol("Σ", 1, 2)
    out = sn.dense(h, 2, name="2") + sp.OneMatrix(sn.batch, 1) * Σ
    model = sn.compile(sn.mse(out, Y) + sn.l2(c, *sn.weights(out)), inputs=[X], targets=[Y],
                       constants={c: 0.1}, backend="numpy")
    shown = model.latex()
    for name in (r"\theta", r"W\alpha", r"\Sigma", r"\text{U+0436}",
                 r"\operatorname{\psi \_\text{é}}"):
        assert name in shown, shown
    pdflatex(tmp_path, [shown])
    assert latex_escape("µ") != latex_escape("μ")  # the micro sign is not Greek mu


def test_latex_and_mathml_of_a_norm_named_by_a_word_subscript_the_name(tmp_path):
    """A batch norm named "enc" gave \\mathit{X\\text{U+0302}enc}: its X̂ spelled as a code
    point; MathML gave <mi>X̂enc</mi>, which a browser drew without the hat."""
    X, Y = sn.Input("X", 3), sn.Input("Y", 2)
    h = sn.relu(sn.batch_norm(sn.dense(X, 4, name="1"), "enc"))
    model = sn.compile(sn.mse(sn.dense(h, 2, name="2"), Y), inputs=[X], targets=[Y],
                       backend="numpy")
    shown = model.latex()
    for name in (r"\hat{X}_{\mathit{enc}}", r"\mu_{\mathit{enc}}", r"\sigma_{\mathit{enc}}"):
        assert name in shown, shown
    assert "U+" not in shown
    pdflatex(tmp_path, [shown])
    page = model.explain(np.ones((4, 3)), np.ones((4, 2)))._repr_html_()
    for name in ("<msub><mover><mi>X</mi><mo>^</mo></mover><mi>enc</mi></msub>",
                 "<msub><mi>μ</mi><mi>enc</mi></msub>", "<msub><mi>σ</mi><mi>enc</mi></msub>"):
        assert name in page
    assert "X̂enc" not in page


HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus", "hard_tanh", "swish",
          "identity"]


@st.composite
def architectures(draw):
    """A random MLP: 1–3 hidden layers of 1–5 units, any activation, each with a batch or layer
    norm or a dropout or neither, any loss, an optional penalty, the prediction given or not."""
    X, Y = sn.Input("X", 3), sn.Input("Y", 2)
    h = X
    for k in range(1, draw(st.integers(1, 3)) + 1):
        act = ACTIVATIONS[draw(st.sampled_from(HIDDEN))]
        norm = draw(st.sampled_from([None, sn.batch_norm, sn.layer_norm]))
        if norm is None:
            h = sn.dense(h, draw(st.integers(1, 5)), act, name=str(k))
            h = sn.dropout(h, draw(st.sampled_from([0, 0.5])))
        else:  # a norm between the layer and its activation
            h = act(norm(sn.dense(h, draw(st.integers(2, 5)), name=str(k)), str(k)))
    out = sn.dense(h, 2)
    loss_name = draw(st.sampled_from(sorted(LOSSES)))
    build, kind = LOSSES[loss_name]
    loss = build(out, Y)
    penalty = draw(st.sampled_from([None, "l1", "l2"]))
    if penalty:
        weights = [w for w in sn.weights(out) if w.name.startswith("W")]
        loss = loss + getattr(sn, penalty)(draw(st.sampled_from([1e-4, 0.01, 2])), *weights)
    prediction = draw(st.sampled_from([None, out]))
    return loss, X, Y, prediction, kind


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(architectures())
def test_random_architectures_read_back_and_compile_with_pdflatex(tmp_path_factory, declaration):
    loss, X, Y, prediction, kind = declaration
    model = compiled(loss, X, Y, prediction=prediction,
                     constants={ALPHA: 0.3} if ALPHA in loss.free_symbols else None)
    Xb, Yb = make_data(n=4, cols=3, out=2, kind=kind, seed=5)
    check_model(model, Xb, Yb)
    if shutil.which("pdflatex") or REQUIRE_TOOLS:
        pdflatex(tmp_path_factory.mktemp("tex"), [model.latex()])


def test_update_rules_put_the_assigned_variable_first_and_drop_a_unit_rate_in_every_form():
    adam = sn.optim.Adam(1e-2)
    assert adam.describe()[0] == "m ← 0.9·m + 0.1·g"
    model, _, _ = network("teacher")
    assert r"m &\leftarrow 0.9 m + 0.1 g \\" in formulas.as_latex(model.derivation, adam)
    printer = formulas.FormulaMathMLPrinter()
    m, rhs = formulas.update_pairs(adam)[0]
    assert mathml_to_text(printer.assignment(m, rhs)).replace(" ", "") == "m←0.9·m+0.1·g"
    assert sn.optim.AdaDelta().describe()[-1] == "p ← p − delta"  # lr=1.0, not "1·delta"


def test_a_name_of_letters_is_one_symbol_and_only_an_adjoint_takes_a_letter_subscript():
    """lr (a schedule's rate) read as l with subscript r in LaTeX and MathML; δP is P's adjoint."""
    for name, latex, mathml in [
            ("lr", r"\mathit{lr}", "<mi>lr</mi>"), ("wd", r"\mathit{wd}", "<mi>wd</mi>"),
            ("δP", r"\delta_{P}", "<msub><mi>δ</mi><mi>P</mi></msub>"),
            ("δN1", r"\delta_{N1}", "<msub><mi>δ</mi><mi>N1</mi></msub>"),
            ("W2", "W_{2}", "<msub><mi>W</mi><mn>2</mn></msub>")]:
        assert (formulas.latex_name(name), formulas.mathml_name(name)) == (latex, mathml)
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    model = compiled(sn.mse(sn.dense(X, 3), Y), X, Y,
                     optimizer=sn.optim.SGD(lr=sn.schedules.exponential(0.5, 0.9)))
    assert r"\mathit{lr} &\leftarrow 0.5 {0.9}^{" in model.latex()
    assert r"p &\leftarrow p - g \mathit{lr}" in model.latex()


def test_a_prelu_layer_computes_its_product_once_and_keeps_its_number():
    """prelu was relu(Z) − (𝟙·a)∘relu(−Z): −Z became a layer of its own, whose product A1·W2
    was computed (and back-propagated) a second time, and the next layers' numbers moved on.
    Its two functions of Z2 are one activation, A2."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.dense(sn.dense(X, 5, sn.tanh), 6, sn.prelu)
    model = compiled(sn.softmax_cross_entropy(sn.dense(h, 3), Y), X, Y)
    lines = model.formulas()
    for line in ("Z2 = A1·W2 + 𝟙·b2", "A2 = (𝟙·a2) ∘ relu_min(Z2) + relu(Z2)",  # one activation
                 "Z3 = A2·W3 + 𝟙·b3", "∂L/∂W2 = A1ᵀ·δ2", "∂L/∂W3 = A2ᵀ·δ3",
                 "δ1 = (δ2·W2ᵀ) ∘ (1 − A1²)"):
        assert line in lines, line
    assert lines.count("A1·W2") == 1
    assert sn.gradcheck(model, *make_data(kind="onehot", seed=4)) < 1e-6


def test_the_abs_of_an_activation_is_differentiated_as_a_real_function():
    """|tanh(z)|' = sign(tanh(z))·(1 − tanh(z)²), as |z|' = sign(z): not SymPy's complex form
    re(tanh)·sign(tanh)/tanh, which is 0/0 where z = 0."""
    model, Xb, Yb = network("abs-of-tanh")
    delta = next(line for line in model.formulas().splitlines() if "δ1 " in line)
    assert delta.endswith("((1 − tanh(Z1)²)∘sign(tanh(Z1)))"), delta
    assert "re(" not in model.latex() and "slot" not in model.latex()
    Xb = Xb.copy()
    Xb[0] = 0  # Z1 = b1 = 0 in row 0, where |tanh| has the subgradient 0, as torch's abs
    _, grads = model.loss_and_grad(Xb, Yb)
    assert all(np.isfinite(g).all() for g in grads.values())
    assert sn.gradcheck(model, Xb[1:], Yb[1:]) < 1e-6


def test_a_matrix_power_is_shown_as_the_product_it_is_in_every_form():
    """SymPy folds W·W into W**2, which the printers showed raw (``\\mathit{W**2}``); W² would
    read as this notation's entrywise square."""
    X, W = sn.Input("X", 4), sp.MatrixSymbol("W", 4, 4)
    Z = sn.dense(X, 4, name="p")
    assert formulas.text(X * (W + W * W)) == "X·(W·W + W)"
    assert formulas.text(Z * Z) == "(X·Wp + 𝟙·bp)·(X·Wp + 𝟙·bp)"
    assert formulas.latex(X * W**3) == r"X \left(W W W\right)"
    assert mathml_to_text(formulas.mathml(X * W**3)).replace(" ", "") == "X·(W·W·W)"


@pytest.mark.parametrize("thing", [None, "X", [sn.Input("X", 4)]], ids=["None", "str", "list"])
def test_the_printers_refuse_what_is_not_an_expression(thing):
    for show in (formulas.text, formulas.latex, formulas.mathml):
        with pytest.raises(sn.DeclarationError, match=r"shows a SymPy expression such as "
                                                      r"sn\.dense\(X, 10\), got .*model\.formulas"):
            show(thing)
    assert formulas.text(2) == "2"


def test_the_weighted_losss_tilde_omega_and_leaky_relu_are_named_alike_in_every_form(tmp_path):
    """The weights ω̃ were typeset as ω followed by the text "U+0303" (its combining tilde), and
    leaky_relu was lrelu in LaTeX alone."""
    X, Y = sn.Input("X", 3), sn.Input("Y", 2)
    out = sn.dense(sn.dense(X, 4, sn.leaky_relu(0.1), name="1"), 2, name="2")
    model = compiled(sn.softmax_cross_entropy(out, Y), X, Y)
    shown = model.latex(weighted=True)
    assert r"\tilde{\omega}" in shown and "U+" not in shown
    assert r"\operatorname{leaky\_relu}_{0.1}" in shown
    pdflatex(tmp_path, [shown])


def test_a_loss_without_adjoints_shows_no_empty_backprop_section(tmp_path):
    X, W = sn.Input("X", 2), sp.MatrixSymbol("W", 2, 1)
    model = sn.compile(sn.sum(X * W) / sn.batch, inputs=[X], targets=[], backend="numpy")
    assert model.formulas().startswith("Forward:\n  L = sum(X·W)/n\nGradients:\n")
    model.report(tmp_path / "r.html")
    assert "Backprop" not in model.latex() and "Backprop" not in (tmp_path / "r.html").read_text()
    assert "2 parameters in 1 array\n" in repr(model)  # not "1 arrays"


def test_mathml_of_an_expression_is_a_whole_math_element():
    """A browser showed the bare presentation tags of A/3 as "A3"."""
    A = sp.MatrixSymbol("A", sn.batch, 3)
    markup = formulas.mathml(A / 3)
    assert markup.startswith('<math xmlns="http://www.w3.org/1998/Math/MathML"><mrow><mfrac>')
    assert markup.endswith("</mfrac></mrow></math>")
    assert parse(mathml_to_text(markup)) == parse("A/3")


def test_a_schedule_shows_its_formula_in_symnets_notation():
    """The report's model line printed raw SymPy (0.005*cos(pi*Min(100, ...)))."""
    shown = repr(sn.optim.Adam(lr=sn.schedules.cosine(0.01, 100)))
    assert "cosine: lr(t) = 0.005 + 0.005·cos(π·min(100, floor(t) − 1)/100)" in shown
