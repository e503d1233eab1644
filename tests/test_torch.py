"""Gradients of whole networks against PyTorch autograd (skipped where torch is absent)."""

import numpy as np
import pytest
from conftest import assert_formulas_are_computed, compiled, make_data

import symnet as sn

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_grads(model, Xb, Yb, forward_loss):
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in model.params.items()}
    loss = forward_loss(params, torch.tensor(Xb), torch.tensor(Yb))
    loss.backward()
    return loss.item(), {k: p.grad.numpy() for k, p in params.items()}


def compare(model, Xb, Yb, forward_loss):
    loss, grads = model.loss_and_grad(Xb, Yb)
    t_loss, t_grads = torch_grads(model, Xb, Yb, forward_loss)
    assert loss == pytest.approx(t_loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], t_grads[k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert_formulas_are_computed(model, Xb, Yb)


def test_sigmoid_mlp_with_softmax_cross_entropy():
    X, Y = sn.Input("X", 6), sn.Input("Y", 4)
    out = sn.dense(sn.dense(sn.dense(X, 5, sn.sigmoid), 5, sn.sigmoid), 4)
    model = compiled(sn.softmax_cross_entropy(out, Y), X, Y, prediction=out)

    def ref(p, X, Y):
        a1 = torch.sigmoid(X @ p["W1"] + p["b1"])
        a2 = torch.sigmoid(a1 @ p["W2"] + p["b2"])
        return F.cross_entropy(a2 @ p["W3"] + p["b3"], Y.argmax(1))

    compare(model, *make_data(n=7, cols=6, out=4), ref)


def test_tanh_relu_mse_with_l2():
    X, Y = sn.Input("X", 4), sn.Input("Y", 2)
    h = sn.dense(sn.dense(X, 6, sn.tanh), 6, sn.relu)
    out = sn.dense(h, 2)
    loss = sn.mse(out, Y) + sn.l2(0.01, *sn.weights(out))
    model = compiled(loss, X, Y, prediction=out)

    def ref(p, X, Y):
        h = torch.relu(torch.tanh(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
        reg = sum((p[w] ** 2).sum() for w in ("W1", "W2", "W3")) * 0.01 / 2
        return F.mse_loss(h @ p["W3"] + p["b3"], Y) + reg

    compare(model, *make_data(n=6, out=2, kind="real"), ref)


def test_elu_softplus_gelu_binary_cross_entropy_with_l1():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.dense(sn.dense(sn.dense(X, 5, sn.elu(1.0)), 5, sn.softplus), 5, sn.gelu)
    P = sn.sigmoid(sn.dense(h, 3))
    loss = sn.binary_cross_entropy(P, Y) + sn.l1(0.001, *sn.weights(P))
    model = compiled(loss, X, Y, prediction=P)

    def ref(p, X, Y):
        h = F.elu(X @ p["W1"] + p["b1"])
        h = F.softplus(h @ p["W2"] + p["b2"])
        h = F.gelu(h @ p["W3"] + p["b3"])
        reg = sum(p[w].abs().sum() for w in ("W1", "W2", "W3", "W4")) * 0.001
        return F.binary_cross_entropy(torch.sigmoid(h @ p["W4"] + p["b4"]), Y) + reg

    compare(model, *make_data(kind="prob"), ref)


def test_prelu_swish_hardtanh_sse():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.dense(sn.dense(sn.dense(X, 5, sn.prelu), 5, sn.swish), 5, sn.hard_tanh)
    out = sn.dense(h, 3)
    model = compiled(sn.sse(out, Y), X, Y, prediction=out)

    def ref(p, X, Y):
        h = F.prelu(X @ p["W1"] + p["b1"], p["a1"].reshape(-1))
        h = F.silu(h @ p["W2"] + p["b2"])
        h = F.hardtanh(h @ p["W3"] + p["b3"])
        return ((h @ p["W4"] + p["b4"] - Y) ** 2).sum(1).mean()

    compare(model, *make_data(kind="real"), ref)


def test_prelu_at_exactly_zero_has_torchs_slope():
    """A dead relu before a prelu layer (biases start at 0) puts its Z at exactly 0, where
    torch's prelu' is the slope a; symnet's was 0 (both sides' indicators vanished there), and
    gradcheck failed on it."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(sn.dense(X, 5, sn.relu), 5, sn.prelu), 3)
    model = compiled(sn.sse(out, Y), X, Y, prediction=out)
    model.params["b1"][...] = -100.0  # every relu dead: the prelu layer's Z2 is b2 = 0

    def ref(p, X, Y):
        h = F.prelu(F.relu(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], p["a2"].reshape(-1))
        return ((h @ p["W3"] + p["b3"] - Y) ** 2).sum(1).mean()

    Xb, Yb = make_data(kind="real")
    compare(model, Xb, Yb, ref)
    assert np.abs(model.loss_and_grad(Xb, Yb)[1]["b2"]).max() > 0.01
    assert sn.gradcheck(model, Xb, Yb) < 1e-6


@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_label_smoothing_matches_torch_cross_entropy(eps):
    X, Y = sn.Input("X", 6), sn.Input("Y", 4)
    out = sn.dense(sn.dense(X, 5, sn.tanh), 4)
    model = compiled(sn.softmax_cross_entropy(out, Y, label_smoothing=eps), X, Y,
                     prediction=sn.softmax(out))

    def ref(p, X, Y):
        z = torch.tanh(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
        return F.cross_entropy(z, Y.argmax(1), label_smoothing=eps)

    compare(model, *make_data(n=7, cols=6, out=4), ref)
    smoothed = {0.1: "9·Y/10 − 𝟙/40", 0.25: "3·Y/4 − 𝟙/16"}[eps]  # (1 − ε)·Y and ε/k
    assert f"  δ2 = (softmax(Z2) − {smoothed})/n\n" in model.formulas()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_tied_autoencoder_matches_torch_and_names_its_decoder_layer(backend):
    """The decoder's X·Wᵀ is a layer of its own (Z2, δ2), so W's gradient is the textbook sum
    of the encoder's and the decoder's parts, not σ(…) written out six times."""
    import sympy as sp

    X = sn.Input("X", 6)
    W, b, c = sp.MatrixSymbol("W", 6, 3), sp.MatrixSymbol("b", 1, 3), sp.MatrixSymbol("c", 1, 6)
    one = sp.OneMatrix(sn.batch, 1)
    P = sn.sigmoid(sn.tanh(X * W + one * b) * W.T + one * c)
    model = sn.compile(sn.mse(P, X), inputs=[X], targets=[], prediction=P, dtype="float64",
                       seed=0, backend=backend)
    shown = model.formulas()
    for line in ("  Z2 = A1·Wᵀ + 𝟙·c\n", "  P  = σ(Z2)\n", "  δ2 = δP ∘ (P∘(1 − P))\n",
                 "  δ1 = (δ2·W) ∘ (1 − A1²)\n", "  ∂L/∂W = Xᵀ·δ1 + δ2ᵀ·A1\n"):
        assert line in shown, shown
    Xb = make_data(n=7, cols=6)[0]
    loss, grads = model.loss_and_grad(Xb)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    x = torch.tensor(Xb)
    recon = torch.sigmoid(torch.tanh(x @ p["W"] + p["b"]) @ p["W"].T + p["c"])
    t_loss = F.mse_loss(recon, x)
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], p[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    assert model.evaluate(Xb)["loss"] == pytest.approx(t_loss.item(), rel=1e-12)  # no Y to pass


def test_a_residual_connection_matches_torch_and_reads_as_the_textbook():
    """relu(A1·W2 + 𝟙·b2 + A1): the skip joins the layer's sum, and its adjoint adds δ2 to the
    product's δ2·W2ᵀ."""
    X, Y = sn.Input("X", 6), sn.Input("Y", 4)
    h = sn.dense(X, 5, sn.tanh)
    out = sn.dense(sn.relu(sn.dense(h, 5) + h), 4)
    model = compiled(sn.softmax_cross_entropy(out, Y), X, Y, prediction=sn.softmax(out))

    def ref(p, X, Y):
        a1 = torch.tanh(X @ p["W1"] + p["b1"])
        a2 = torch.relu(a1 @ p["W2"] + p["b2"] + a1)
        return F.cross_entropy(a2 @ p["W3"] + p["b3"], Y.argmax(1))

    compare(model, *make_data(n=7, cols=6, out=4), ref)
    shown = model.formulas()
    for line in ("  Z2 = A1·W2 + 𝟙·b2 + A1\n", "  A2 = relu(Z2)\n",
                 "  δ2 = (δ3·W3ᵀ) ∘ [A2 > 0]\n", "  δ1 = (δ2·W2ᵀ + δ2) ∘ (1 − A1²)\n"):
        assert line in shown, shown
