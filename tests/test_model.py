"""compile → fit / predict / evaluate, the optimizers' update rules, and the demo."""

import io
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

import symnet as sn
from symnet.cli import main


def digits_model(optimizer=None, seed=0):
    X, Y = sn.Input("X", 64), sn.Input("Y", 10)
    out = sn.dense(sn.dense(X, 16, sn.sigmoid), 10)
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], prediction=out,
                      optimizer=optimizer or sn.optim.SGD(lr=0.5), seed=seed)


def test_fit_learns_digits_and_reports_history():
    (Xtr, Ytr), (Xte, Yte) = sn.datasets.load_digits()
    model = digits_model()
    before = model.evaluate(Xte, Yte)
    hist = model.fit(Xtr, Ytr, epochs=3, batch_size=32, validation_data=(Xte, Yte), verbose=False)
    after = model.evaluate(Xte, Yte)
    assert len(hist.loss) == len(hist.val_loss) == len(hist.val_accuracy) == len(hist.seconds) == 3
    assert hist.history["loss"] == hist.loss
    assert hist.loss[-1] < hist.loss[0] and after["loss"] < before["loss"]
    assert after["accuracy"] > 0.85
    assert after["accuracy"] == pytest.approx(hist.val_accuracy[-1])
    assert model.predict(Xte).shape == (len(Xte), 10)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_fit_draws_a_bar_on_a_terminal_and_writes_lines_to_a_log(terminal, capsys, monkeypatch):
    (Xtr, Ytr), _ = sn.datasets.load_digits()
    screen = _Terminal()
    if terminal:
        monkeypatch.setattr(sys, "stderr", screen)
    hist = digits_model().fit(Xtr, Ytr, epochs=40, batch_size=32)
    out, err = capsys.readouterr()
    if terminal:  # the bar, and no lines: its epochs ran several to a call
        assert "40/40" in screen.getvalue() and "epoch/s" in screen.getvalue()
        assert "epoch" not in out
        return
    lines = out.splitlines()  # in a log: a line for each call, the last epoch's loss in each
    assert err == "" and "\r" not in out and 1 < len(lines) < 40
    assert lines[0] == f"epoch 1/40 - loss {hist.loss[0]:.4f} - {hist.seconds[0]:.3g} s"
    assert lines[-1].startswith("epochs ") and "-40/40 - loss" in lines[-1]
    assert lines[-1].endswith(" s an epoch") and f"loss {hist.loss[-1]:.4f}" in lines[-1]

def test_fit_takes_keras_verbose_numbers(capsys, monkeypatch):
    (Xtr, Ytr), _ = sn.datasets.load_digits()
    model = digits_model()
    model.fit(Xtr, Ytr, epochs=2, verbose=0)
    assert capsys.readouterr() == ("", "")
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    hist = model.fit(Xtr, Ytr, epochs=3, verbose=2)  # lines, although stderr is a terminal
    lines = capsys.readouterr().out.splitlines()
    assert screen.getvalue() == "" and 1 <= len(lines) <= 3
    assert f"loss {hist.loss[-1]:.4f}" in lines[-1]
    for bad in (3, -1, "yes", 1.0):
        with pytest.raises(sn.DataError, match=r"verbose must be True, False, 0, 1 or 2, got .*"
                                               r"verbose=2 for lines, as in a log"):
            model.fit(Xtr, Ytr, epochs=1, verbose=bad)



def test_params_are_live_and_seed_is_reproducible():
    a, b = digits_model(seed=3), digits_model(seed=3)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    X = np.random.default_rng(0).normal(size=(2, 64))
    a.params["W2"][...] = 0
    a.params["b2"][...] = 1.0
    np.testing.assert_array_equal(a.predict(X), np.ones((2, 10)))


def test_sigmoid_weights_get_xavier_times_four():
    model = digits_model()
    limit = 4 * np.sqrt(6 / (64 + 16))
    w = model.params["W1"]
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit
    assert not model.params["b1"].any()


def test_source_lists_each_statement_under_its_formula():
    src = digits_model().source
    call = src[src.index("# X·W1\n"):].splitlines()[1]  # the call under the formula
    stage = src[src.index(f"def {call.split('= ')[1].split('(')[0]}("):]
    assert "gemm_at(" in stage[:stage.index("return base")]  # X·W1 is a BLAS call
    assert "# (softmax(P) − Y)/n\n" in src
    # the learning rate is read at run time: the source is the same for every rate
    assert "def train_epochs(" in src and "# update: lr ← rate; p ← p − g·lr" in src
    assert "],  # W1\n" in src  # its rows in the update table


def test_demo_runs_and_reports(capsys):
    assert main(["demo", "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "δ2 = (δ3·W3ᵀ) ∘ (A2∘(1 − A2))" in out
    assert "test accuracy" in out and "(2 epochs, batch 100, AdaGrad lr 0.1)" in out
    total, *parts = map(float, re.search(r"compile ([\d.]+) s: symbolic ([\d.]+) s, code "
                                         r"generation ([\d.]+) s, kernels ([\d.]+) s", out).groups())
    assert sum(parts) == pytest.approx(total, abs=0.02)  # its parts add up to the whole


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: '0' is not a positive integer"),
    (["--batch-size", "-5"], "--batch-size: '-5' is not a positive integer"),
    (["--hidden", "0"], "--hidden: '0' is not a positive integer"),
    (["--lr", "nan"], "--lr: 'nan' is not a positive finite number"),
    (["--seed", "-1"], "--seed: '-1' is not a non-negative integer"),
    (["--report", "/no/such/dir/out.html"], "--report: the directory /no/such/dir does not exist"),
    (["--report", "."], "is a directory; name a file in it"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_demo_refuses_bad_options_before_it_trains(argv, message, capsys):
    """A usage error (exit code 2), not a traceback after the kernels have compiled."""
    with pytest.raises(SystemExit) as stop:
        main(["demo", *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "symnet demo: error:" in err and message in err, err


def test_symnet_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"symnet {sn.__version__}\n"
    run = subprocess.run([sys.executable, "-m", "symnet", "--version"], capture_output=True,
                         text=True, timeout=120)  # where the script is not on PATH
    assert run.returncode == 0 and run.stdout == f"symnet {sn.__version__}\n", run.stderr


def test_a_demo_piped_into_head_ends_without_a_traceback(tmp_path):
    """symnet demo | head -3: BrokenPipeError's traceback, exit code 1."""
    env = {**os.environ, "SYMNET_CACHE_DIR": str(tmp_path)}
    run = subprocess.run(f"{shlex.quote(sys.executable)} -m symnet demo --backend numpy --epochs 1 "
                         f"--hidden 8 --quiet | head -1", shell=True, capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.stdout.startswith("digits:") and "Traceback" not in run.stderr, run.stderr


def test_bench_refuses_an_output_path_it_cannot_write_before_it_runs(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--out", str(tmp_path / "afile" / "sub"), "--peers", "symnet",
              "--workload", "tiny"])
    assert stop.value.code == 2 and "--out " in capsys.readouterr().err


def test_a_demo_that_diverges_ends_with_the_error_and_no_traceback(capsys):
    assert main(["demo", "--backend", "numpy", "--hidden", "8", "--epochs", "1", "--quiet",
                 "--lr", "1e40"]) == 2
    assert "symnet demo: the update in epoch 1" in capsys.readouterr().err


def test_gradients_are_keyed_by_symbol_and_found_by_name():
    model = digits_model()
    W1 = next(p for p in model.gradients if p.name == "W1")
    assert model.gradients["W1"] == model.gradients[W1]
    assert "W1" in model.gradients and W1 in model.gradients and "W9" not in model.gradients
    assert model.gradients.get("b2") == model.gradients.get(next(p for p in model.gradients
                                                                 if p.name == "b2"))
    assert model.gradients.get("W9") is None
    with pytest.raises(KeyError, match=r"'W9' is not a parameter of this model; its parameters "
                                       r"are \['W1', 'W2', 'b1', 'b2'\]"):
        model.gradients["W9"]
