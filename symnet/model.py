"""``compile`` and ``Model``: declaration → derivation → programs → training."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from tqdm.auto import tqdm

from codegen.numpy_backend import NumpyRunner

from . import formulas, optim
from . import init as initialisers
from .declare import batch
from .errors import DataError, DeclarationError
from .functions import ScalarActivation
from .grad import _dag, canonical, derive
from .lower import lower
from .rewrite import simplify_adjoint, simplify_forward

BACKENDS = ("numpy",)


# The API name sn.compile shadows the builtin inside this module on purpose.
def compile(loss, *, inputs, targets=(), prediction=None, optimizer=None, dtype="float32",
            seed=None, init="auto", backend="numpy") -> Model:
    """Differentiate ``loss`` symbolically, simplify, lower and build a trainable :class:`Model`.

    ``inputs`` and ``targets`` are the data matrices (``sn.Input``); every other MatrixSymbol of
    the loss is a parameter. ``prediction`` is what ``predict`` returns.
    """
    return Model(loss, inputs=inputs, targets=targets, prediction=prediction, optimizer=optimizer,
                 dtype=dtype, seed=seed, init=init, backend=backend)


@dataclass
class History:
    """Per-epoch training record: ``loss``, ``val_loss``, ``val_accuracy``, ``seconds``."""

    history: dict = field(default_factory=lambda: {"loss": [], "val_loss": [], "val_accuracy": [],
                                                   "seconds": []})

    def __getattr__(self, name):
        try:
            return self.__dict__["history"][name]
        except KeyError:
            raise AttributeError(name) from None


class Model:
    """A compiled network: live parameters, derived formulas, and programs that compute them."""

    def __init__(self, loss, *, inputs, targets, prediction, optimizer, dtype, seed, init, backend):
        start = time.perf_counter()
        self.inputs = _symbols(inputs, "inputs")
        self.targets = _symbols(targets, "targets")
        self.dtype = _dtype(dtype)
        if backend not in BACKENDS:
            raise DeclarationError(f"backend={backend!r} is not available; use one of {BACKENDS}")
        self.backend = backend
        self.optimizer = optimizer if optimizer is not None else optim.SGD(lr=0.1)
        if not isinstance(self.optimizer, optim.Optimizer):
            raise DeclarationError(
                f"optimizer must be one of sn.optim's optimizers such as sn.optim.SGD(lr=0.1), "
                f"got {optimizer!r}")
        data = set(self.inputs) | set(self.targets)
        self.loss_expr = _check_loss(loss, data)
        self.param_symbols = _parameters(self.loss_expr, data)
        self.prediction_expr = None
        if prediction is not None:
            self.prediction_expr = canonical(prediction, {batch})
            stray = {s for s in self.prediction_expr.free_symbols if isinstance(s, sp.MatrixSymbol)}
            stray -= set(self.inputs) | set(self.param_symbols)
            if stray:
                raise DeclarationError(
                    f"the prediction uses {sorted(map(str, stray))}, which are not inputs or "
                    f"parameters of the loss; predict() gets only the inputs")
        self._taken = {s.name for s in data | set(self.param_symbols)}
        self.stable_loss = simplify_forward(self.loss_expr)
        pred = simplify_forward(self.prediction_expr) if prediction is not None else None
        self.derivation = derive(self.stable_loss, self.param_symbols, prediction=pred,
                                 simplify=simplify_adjoint, taken=self._taken)
        self._raw = None
        self._programs = self._lower()
        self.symbolic_seconds = time.perf_counter() - start
        self.params = self._initial_params(np.random.default_rng(seed), init)
        self._state = {p.name: {} for p in self.param_symbols}
        self._steps = 0
        self._runners = {}

    # ------------------------------------------------------------------ formulas
    @property
    def gradients(self) -> dict:
        """``{P: ∂L/∂P}``: each simplified gradient as a SymPy matrix expression in the inputs,
        targets and parameters only."""
        return {p: self.derivation.expand(eq.lhs) for p, eq in self.derivation.gradients.items()}

    def raw_derivation(self):
        """The derivation before simplification: the plain chain rule."""
        if self._raw is None:
            pred = self.derivation.prediction
            self._raw = derive(self.stable_loss, self.param_symbols,
                               prediction=self.derivation.expand(pred) if pred is not None else None,
                               taken=self._taken)
        return self._raw

    def formulas(self, raw: bool = False) -> str:
        """Forward, backprop and gradient equations, and the optimizer's update, as text. With
        ``raw=True`` each backprop equation is followed by its unsimplified chain-rule form."""
        return formulas.as_text(self.derivation, self.raw_derivation() if raw else None,
                                updates=self.optimizer.describe())

    def latex(self) -> str:
        return formulas.as_latex(self.derivation)

    def _repr_latex_(self):
        return f"$${self.latex()}$$"

    @property
    def source(self) -> str:
        """The compiled programs as listings, each statement under the formula it computes."""
        return "\n\n".join(f"## {name}\n{prog.listing()}" for name, prog in self._programs.items())

    # ------------------------------------------------------------------ programs
    def _lower(self):
        d = self.derivation
        leaves = {s: "input" for s in [*self.inputs, *self.targets]}
        leaves.update({p: "param" for p in self.param_symbols})
        defs = d.definitions()
        roots = {"loss": d.loss, **{p.name: eq.lhs for p, eq in d.gradients.items()}}
        programs = {"loss_and_grad": lower(defs, roots, leaves)}
        programs["loss"] = lower(defs, {"loss": d.loss}, leaves)
        if d.prediction is not None:
            pred_leaves = {s: r for s, r in leaves.items() if s not in self.targets}
            programs["predict"] = lower(defs, {"prediction": d.prediction}, pred_leaves)
        return programs

    def _runner(self, name, dtype=None):
        key = (name, np.dtype(dtype or self.dtype).name)
        if key not in self._runners:
            self._runners[key] = NumpyRunner(self._programs[name], key[1])
        return self._runners[key]

    def _run(self, name, feeds, dtype=None):
        dtype = np.dtype(dtype or self.dtype)
        params = {k: v.astype(dtype, copy=False) for k, v in self.params.items()}
        return self._runner(name, dtype).run({**feeds, **params})

    # ------------------------------------------------------------------ parameters
    def _initial_params(self, rng, scheme):
        acts = _activation_of_weights(self.derivation)
        out = {}
        for p in self.param_symbols:
            shape = (int(p.shape[0]), int(p.shape[1]))
            role = _role(p)
            value = initialisers.initial_value(rng, p.name, shape, role, acts.get(p), scheme)
            out[p.name] = np.ascontiguousarray(value, dtype=self.dtype)
        return out

    # ------------------------------------------------------------------ data
    def _feeds(self, X, Y=None, need_targets=True, dtype=None):
        """Check the data arrays and convert them to ``dtype`` (default: the model's)."""
        dtype = np.dtype(dtype or self.dtype)
        feeds = {}
        arrays = [X] if len(self.inputs) == 1 else list(X)
        if len(arrays) != len(self.inputs):
            raise DataError(f"expected {len(self.inputs)} input arrays, got {len(arrays)}")
        for sym, arr in zip(self.inputs, arrays):
            feeds[sym.name] = _as_data(arr, sym, dtype)
        if need_targets and self.targets:
            if Y is None:
                raise DataError(f"targets {[t.name for t in self.targets]} are needed")
            ys = [Y] if len(self.targets) == 1 else list(Y)
            for sym, arr in zip(self.targets, ys):
                feeds[sym.name] = _as_data(arr, sym, dtype)
        rows = {k: v.shape[0] for k, v in feeds.items()}
        if len(set(rows.values())) > 1:
            raise DataError(f"inputs and targets must have the same number of rows, got {rows}")
        return feeds

    # ------------------------------------------------------------------ API
    # Each public method validates its arrays once (``_feeds``) and hands the checked feeds to a
    # private twin, which fit, evaluate and gradcheck call directly in their loops.

    def loss_and_grad(self, X, Y=None, dtype=None):
        """The loss and ``{parameter name: gradient}`` on one batch."""
        return self._loss_and_grad(self._feeds(X, Y, dtype=dtype), dtype)

    def _loss_and_grad(self, feeds, dtype=None):
        out = self._run("loss_and_grad", feeds, dtype)
        return float(out.pop("loss")[0, 0]), out

    def predict(self, X, batch_size: int = 4096):
        """The value of ``prediction`` for every row of X."""
        if "predict" not in self._programs:
            raise DeclarationError("this model was compiled without prediction=; nothing to predict")
        return self._predict(self._feeds(X, need_targets=False), batch_size)

    def _predict(self, feeds, batch_size):
        inputs = {s.name: feeds[s.name] for s in self.inputs}
        return np.concatenate([self._run("predict", chunk)["prediction"]
                               for chunk in _chunks(inputs, batch_size)])

    def evaluate(self, X, Y, batch_size: int = 4096) -> dict:
        """``{"loss": mean loss}``, plus ``"accuracy"`` (argmax agreement) when Y has ≥ 2 columns."""
        return self._evaluate(self._feeds(X, Y), batch_size)

    def _evaluate(self, feeds, batch_size=4096):
        total = sum(float(self._run("loss", chunk)["loss"][0, 0]) * _rows(chunk)
                    for chunk in _chunks(feeds, batch_size))
        result = {"loss": total / _rows(feeds)}
        target = feeds[self.targets[0].name] if self.targets else None
        if target is not None and target.shape[1] >= 2 and "predict" in self._programs:
            pred = self._predict(feeds, batch_size)
            result["accuracy"] = float(np.mean(pred.argmax(1) == target.argmax(1)))
        return result

    def fit(self, X, Y=None, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
            validation_data=None, verbose: bool = True, seed: int | None = 0) -> History:
        """Train with the model's optimizer; returns the per-epoch :class:`History`."""
        if not isinstance(epochs, int) or epochs < 0:
            raise DataError(f"epochs must be a non-negative integer, got {epochs!r}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        feeds = self._feeds(X, Y)
        val_feeds = self._feeds(*validation_data) if validation_data is not None else None
        n = _rows(feeds)
        rng = np.random.default_rng(seed)
        updater = _Updater(self.optimizer)
        hist = History()
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            order = rng.permutation(n) if shuffle else np.arange(n)
            batches = range(0, n, batch_size)
            bar = tqdm(batches, desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not verbose,
                       leave=False)
            losses = []
            for i in bar:
                idx = order[i:i + batch_size]
                loss, grads = self._loss_and_grad({k: v[idx] for k, v in feeds.items()})
                if not np.isfinite(loss):
                    raise DataError(f"the loss became {loss} in epoch {epoch} at the batch starting "
                                    f"at row {i}; parameters are those from before this step")
                self._steps += 1
                updater.step(self.params, grads, self._state, self._steps)
                losses.append(loss * len(idx))
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # redraw at tqdm's own pace
            bar.close()
            hist.history["loss"].append(float(np.sum(losses) / n))
            hist.history["seconds"].append(time.perf_counter() - start)
            if val_feeds is not None:
                res = self._evaluate(val_feeds)
                hist.history["val_loss"].append(res["loss"])
                if "accuracy" in res:
                    hist.history["val_accuracy"].append(res["accuracy"])
            if verbose:
                tqdm.write(_epoch_line(epoch, epochs, hist))
        return hist


def _rows(feeds):
    return next(iter(feeds.values())).shape[0]


def _chunks(feeds, size):
    """Consecutive row slices of every array in ``feeds``, ``size`` rows at a time."""
    for i in range(0, _rows(feeds), size):
        yield {k: v[i:i + size] for k, v in feeds.items()}


def _epoch_line(epoch, epochs, hist):
    h = hist.history
    parts = [f"epoch {epoch}/{epochs}", f"loss {h['loss'][-1]:.4f}"]
    if h["val_loss"]:
        parts.append(f"val_loss {h['val_loss'][-1]:.4f}")
    if h["val_accuracy"]:
        parts.append(f"val_accuracy {h['val_accuracy'][-1]:.4f}")
    parts.append(f"{h['seconds'][-1]:.2f} s")
    return " - ".join(parts)


class _Updater:
    """Applies an optimizer's symbolic update rule with NumPy, entry by entry."""

    def __init__(self, optimizer):
        self.rule = optimizer.rule()
        names = [optim.p, optim.g, optim.t, *optimizer.symbols().values()]
        self.names = [s.name for s in names]
        self.fns = [(lhs.name, sp.lambdify(names, rhs, "numpy")) for lhs, rhs in self.rule]
        self.state_names = list(optimizer.symbols())

    def step(self, params, grads, state, t):
        for name, value in params.items():
            st = state[name]
            env = {"p": value, "g": grads[name], "t": t}
            for s in self.state_names:
                env[s] = st.get(s, np.zeros_like(value))
            for lhs, f in self.fns:
                env[lhs] = np.asarray(f(*[env[k] for k in self.names]), dtype=value.dtype)
            value[...] = env["p"]
            for s in self.state_names:
                st[s] = env[s]


# ---------------------------------------------------------------------- helpers


def _symbols(items, what):
    if isinstance(items, sp.MatrixSymbol):
        items = [items]
    out = []
    for s in items:
        if not isinstance(s, sp.MatrixSymbol):
            raise DeclarationError(f"{what} must be MatrixSymbols made by sn.Input, got {s!r}")
        if s.shape[0] != batch:
            raise DeclarationError(
                f"{what}: {s.name} has {s.shape[0]} rows; data matrices have sn.batch rows "
                f"(make it with sn.Input({s.name!r}, {s.shape[1]}))")
        out.append(s)
    return out


def _check_loss(loss, data):
    if not getattr(loss, "is_Matrix", False) or tuple(loss.shape) != (1, 1):
        shape = getattr(loss, "shape", None)
        raise DeclarationError(
            f"the loss must be a 1×1 matrix expression such as sn.mse(out, Y), got "
            f"{'shape ' + str(shape) if shape else repr(loss)}; reduce it with sn.sum or a loss")
    loss = canonical(loss, {batch})
    names = {}
    for s in loss.free_symbols:
        if isinstance(s, sp.MatrixSymbol):
            if s.name in names and names[s.name] != s:
                a, b = names[s.name], s
                raise DeclarationError(
                    f"the name {s.name} is used for two matrices, {a.shape[0]}×{a.shape[1]} and "
                    f"{b.shape[0]}×{b.shape[1]}; give each parameter its own name")
            names[s.name] = s
    if not any(d in loss.free_symbols for d in data):
        raise DeclarationError("the loss uses none of the inputs or targets")
    return loss


def _parameters(loss, data):
    order, _, _ = _dag([loss])
    params = [e for e in order if isinstance(e, sp.MatrixSymbol) and e not in data]
    for p in params:
        if not (p.shape[0].is_Integer and p.shape[1].is_Integer):
            raise DeclarationError(
                f"{p.name} ({p.shape[0]}×{p.shape[1]}) is not an input or target, so it is a "
                f"parameter, but its shape is not fixed; list it in inputs= or targets=")
    return params


def _role(p):
    if p.shape[0] == 1:
        return "slope" if re.fullmatch(r"a\w*", p.name) else "bias"
    return "weight"


def _activation_of_weights(d):
    """The name of the activation applied to the layer each weight feeds (None: affine)."""
    act_of = {}
    for eq in d.forward:
        rhs = eq.rhs
        if hasattr(rhs, "fn") and isinstance(rhs.arg, sp.MatrixSymbol):
            body = rhs.fn.expr
            if isinstance(body, ScalarActivation):
                act_of[rhs.arg] = re.sub(r"\[.*", "", type(body).__name__)
    out = {}
    for eq in d.forward:
        for s in eq.rhs.free_symbols:
            if isinstance(s, sp.MatrixSymbol) and s not in out:
                out[s] = act_of.get(eq.lhs)
    return out


def _dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype("float32"), np.dtype("float64")):
        raise DeclarationError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


def _as_data(arr, sym, dtype):
    name, cols = sym.name, int(sym.shape[1])
    a = np.asarray(arr)
    if a.dtype == object or a.dtype.kind in "USV":
        raise DataError(f"{name}: expected a numeric array, got dtype {a.dtype}; convert it with "
                        f"np.asarray(data, dtype=float)")
    if a.dtype.kind == "b":
        a = a.astype(dtype)
    if a.ndim == 1 and cols == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array with {cols} columns, got shape {a.shape}")
    if a.shape[1] != cols:
        raise DataError(f"{name} has {cols} columns in the model but the data has {a.shape[1]}")
    if a.shape[0] == 0:
        raise DataError(f"{name}: the data has no rows")
    a = np.ascontiguousarray(a, dtype=dtype)
    bad = ~np.isfinite(a)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{name} has a non-finite value ({a[row, col]}) in row {row}, column "
                        f"{col}; clean or impute the data first")
    return a
