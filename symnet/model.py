"""``compile`` and ``Model``: declaration → derivation → programs → training."""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.special
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

from codegen import notices
from codegen.intrinsics.random import keep
from codegen.ir import CodegenError, Status
from codegen.numpy_backend import NumpyBackend, NumpyUpdater

from . import formulas, interrupts, optim, serialize, validate, weighting
from . import init as initialisers
from .blocks import batch_norms as _batch_norms
from .blocks import numbered_masks
from .declare import ConstantSymbol, batch
from .errors import DataError, DeclarationError
from .evaluate import evaluate
from .functions import (
    Dropout,
    DropoutMask,
    Elementwise,
    Entrywise,
    RowLogSumExp,
    ScalarActivation,
    matrix_symbols,
)
from .functions import sigmoid as _sigmoid
from .grad import _dag, canonical, derive, entrywise
from .lower import lower
from .rewrite import definition, layer_sums, simplify_adjoint, simplify_forward

BACKENDS = ("numba", "numpy")


def _backend_class(name: str):
    """The runner of backend ``name``. numba's is imported on first use, so that a model on
    the numpy backend works wherever numba does not (an unsupported version, say)."""
    if name == "numpy":
        return NumpyBackend
    from codegen.numba import NumbaRunner

    return NumbaRunner


ONE_ROW = ("batch norm normalises each column over the batch, and a 1-row batch has no variance "
           "(torch refuses it too)")
SECONDS_PER_CALL = 0.25  # fit showing progress without validation: training per kernel call


# The API name sn.compile shadows the builtin inside this module on purpose.
def compile(loss, *, inputs, targets=(), prediction=None, optimizer=None, dtype="float32",
            seed=None, init="auto", backend="numba", constants=None) -> Model:
    """Differentiate ``loss`` symbolically, simplify, lower and build a trainable :class:`Model`.

    ``inputs`` and ``targets`` are the data matrices (``sn.Input``); every other MatrixSymbol of
    the loss is a parameter. ``prediction`` is what ``predict`` returns. ``optimizer`` defaults
    to ``sn.optim.SGD(lr=0.1)``. ``backend="numba"``
    generates and jit-compiles kernels (on first use, cached on disk); ``"numpy"`` interprets the
    same programs and is the reference. ``seed`` fixes the initial parameters and the shuffling
    of every ``fit``, so a run is reproducible bit for bit. ``constants`` (``{symbol: value}``,
    symbols made by ``sn.Constant``) are coefficients the kernels read at run time, such as an
    L2 penalty's: ``model.constants[name][...] = value`` changes one without compiling again.
    """
    with validate.deep_recursion("sn.compile"):
        return Model(loss, inputs=inputs, targets=targets, prediction=prediction,
                     optimizer=optimizer, dtype=dtype, seed=seed, init=init, backend=backend,
                     constants=constants)


class Gradients(dict):
    """``{P: ∂L/∂P}`` by the parameters' MatrixSymbols, which also answers to their names, as
    ``model.params`` and the gradients of ``loss_and_grad`` are keyed."""

    def _symbol(self, key):
        if isinstance(key, str):
            return next((p for p in self if p.name == key), key)
        return key

    def __missing__(self, key):
        symbol = self._symbol(key)
        if symbol is not key:
            return self[symbol]
        raise KeyError(f"{key!r} is not a parameter of this model; its parameters are "
                       f"{sorted(p.name for p in self)}")

    def __contains__(self, key):
        return dict.__contains__(self, self._symbol(key))

    def get(self, key, default=None):
        return dict.get(self, self._symbol(key), default)


@dataclass
class History:
    """Per-epoch training record: ``loss``, ``val_loss``, ``val_accuracy`` (classification) or
    ``val_r2`` (regression, once validated), ``seconds``; with early stopping, ``best_epoch`` is
    the epoch whose parameters the model kept."""

    history: dict = field(default_factory=lambda: {"loss": [], "val_loss": [], "val_accuracy": [],
                                                   "seconds": []})
    best_epoch: int | None = None

    def __getattr__(self, name):
        try:
            return self.__dict__["history"][name]
        except KeyError:
            if name == "val_r2":  # as val_accuracy: empty until an epoch is validated
                return []
            raise AttributeError(name) from None

    def plot(self):
        """The training curves as a matplotlib Figure: loss and val_loss per epoch, val_accuracy
        (or val_r2) on a second axis, the kept epoch of early stopping marked. A Figure of its own, not
        pyplot's (a notebook shows it once): a script saves it, ``hist.plot().savefig(path)``.
        Needs matplotlib (``pip install "symnet[plots]"``)."""
        from .report import history_figure

        return history_figure(self)


class Model:
    """A compiled network: live parameters, derived formulas, and programs that compute them."""

    # what a DataError for a diverging step suggests (the scikit-learn estimators name theirs)
    remedy = "A smaller learning rate, clip_norm= or scaled inputs usually help."
    kernels_cached: bool | None = None  # set by compile_kernels

    def __init__(self, loss, *, inputs, targets, prediction, optimizer, dtype, seed, init, backend,
                 constants=None, saved=False):
        start = time.perf_counter()
        self.inputs = _symbols(inputs, "inputs")
        self.targets = _symbols(targets, "targets", taken=self.inputs)
        self.dtype = _dtype(dtype)
        self.backend = validate.choice(backend, "backend", BACKENDS)
        validate.choice(init, "init", ["auto", *initialisers.INITIALISERS])
        seed = validate.seed(seed)
        self.optimizer = optimizer if optimizer is not None else optim.SGD(lr=0.1)
        if not isinstance(self.optimizer, optim.Optimizer):
            raise DeclarationError(
                f"optimizer must be one of sn.optim's optimizers such as sn.optim.SGD(lr=0.1), "
                f"got {optimizer!r}")
        data = set(self.inputs) | set(self.targets)
        self._constant_symbols, self.constants = _constants(constants, data, self.dtype)
        data |= set(self._constant_symbols)
        self.loss_expr = _check_loss(loss, data, self.optimizer)
        self.param_symbols = _parameters(self.loss_expr, data,
                                         _bytes_per_entry(self.dtype, self.optimizer))
        # predict returns a tuple for prediction=[P1, P2, …], an array for prediction=P
        self.prediction_exprs = _check_predictions(prediction, self.inputs, self.param_symbols)
        self.loss_expr, *predictions = numbered_masks(self.loss_expr, *self.prediction_exprs)
        self.prediction_exprs = tuple(predictions)
        self._several = isinstance(prediction, (list, tuple))
        # a saved model's inputs and targets were accepted when it was saved, before an unused
        # one was refused: it loads as it was
        _check_used({"constants": self._constant_symbols} if saved else
                    {"inputs": self.inputs, "targets": self.targets,
                     "constants": self._constant_symbols}, self.loss_expr, self.prediction_exprs)
        _check_activation_names(self.loss_expr, *self.prediction_exprs)
        self._taken = {s.name for s in data | set(self.param_symbols)}
        layers = layer_sums(self.loss_expr, *self.prediction_exprs)
        fired = {"loss": [], "prediction": []}
        self.stable_loss = simplify_forward(self.loss_expr, layers, fired["loss"])
        pred = tuple(simplify_forward(p, layers, fired["prediction"])
                     for p in self.prediction_exprs)
        # the rules that turned the declared loss and prediction into the differentiated form
        self.forward_rewrites = {k: tuple(dict.fromkeys(v)) for k, v in fired.items()}
        self.derivation = derive(self.stable_loss, self.param_symbols, prediction=pred,
                                 simplify=simplify_adjoint, taken=self._taken)
        self._raw = None
        self._norms = _batch_norms(self.derivation)
        self._distributions = _distribution_targets(self.loss_expr, self.targets)
        self._probabilities = _probability_targets(self.loss_expr, self.targets)
        self._label_threshold = _label_threshold(self.loss_expr, self.prediction_expr, self.targets)
        self._programs = self._lower(self.derivation, self._norms)
        self._weighted = None  # (derivation, programs, runners) of fit(sample_weight=...)
        self._update = self.optimizer.update()
        self._compiled_optimizer = repr(self.optimizer)  # what an error on changing it suggests
        self.symbolic_seconds = time.perf_counter() - start
        self._init = init
        self._runners = {}
        self._start(seed)
        self._runner(self.dtype)  # generate (and for numba, import) the kernels now

    def _start(self, seed):
        """Fresh parameters (from ``seed``), optimizer state, running statistics and generators."""
        init_seq, shuffle_seq, dropout_seq = np.random.SeedSequence(seed).spawn(3)
        init_rng, self._shuffle_rng = map(np.random.default_rng, (init_seq, shuffle_seq))
        self.dropout_seed = int(dropout_seq.generate_state(1)[0])  # keys every dropout mask
        self.params = self._initial_params(init_rng, self._init)
        self._state = {p: {s: np.zeros_like(v) for s in self._update.state}
                       for p, v in self.params.items()}
        # batch norm's running mean (starts at 0) and variance (at 1): model state, not parameters
        self.running = {s.name: np.full((1, int(s.shape[1])), start, self.dtype)
                        for norm in self._norms for s, start in zip(norm.running, (0.0, 1.0))}
        self._steps = 0  # the updates applied so far: Adam's bias correction and schedules read it
        self._lock = threading.RLock()  # one call at a time uses the kernels' workspaces
        self._training = False  # a fit call is running (see _after_fork)
        _MODELS.add(self)
        self._stop = np.zeros(1, np.int64)  # set by Ctrl-C during fit: stop after this step
        self.history = None  # the History of the last fit

    def fresh(self, seed=None, optimizer=None) -> Model:
        """A new model of the same declaration, initialised from ``seed`` as ``sn.compile(...,
        seed=seed)`` would, that shares this one's derivation and compiled kernels: restarts
        and the folds of a search skip the symbolic work and the kernel loading. ``optimizer``
        may replace the model's by one that differs in its learning rate only (the kernels
        read the rate at run time)."""
        seed = validate.seed(seed)
        if optimizer is not None and (not isinstance(optimizer, optim.Optimizer)
                                      or optimizer.update() != self._update):
            raise DeclarationError(
                f"fresh(optimizer=...) shares the compiled kernels, so the optimizer may differ "
                f"from {self.optimizer!r} only in its learning rate; got {optimizer!r}. Compile "
                f"a new model for another optimizer.")
        new = object.__new__(Model)  # not copy.copy: that would go through __reduce__
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("kernels_cached", None)  # None until its own compile_kernels
        new.constants = {k: v.copy() for k, v in self.constants.items()}
        if optimizer is not None:
            new.optimizer = optimizer
        new._start(seed)
        return new

    @property
    def prediction_expr(self):
        """The (first) prediction in canonical form, or None."""
        return self.prediction_exprs[0] if self.prediction_exprs else None

    # ------------------------------------------------------------------ formulas
    @property
    def gradients(self) -> dict:
        """``{P: ∂L/∂P}``: each simplified gradient as a SymPy matrix expression in the inputs,
        targets and parameters only; ``gradients["W1"]`` finds it by name too."""
        return Gradients({p: self.derivation.expand(eq.lhs)
                          for p, eq in self.derivation.gradients.items()})

    def raw_derivation(self):
        """The derivation before simplification: the plain chain rule."""
        if self._raw is None:
            self._raw = derive(self.stable_loss, self.param_symbols,
                               prediction=tuple(map(self.derivation.expand,
                                                    self.derivation.predictions)),
                               taken=self._taken)
        return self._raw

    def formulas(self, raw: bool = False, weighted: bool = False) -> str:
        """Forward, backprop and gradient equations, and the optimizer's update, as text; with
        batch norm or dropout, also the forward equations that predict and evaluate compute
        otherwise (running statistics; no dropout). With ``raw=True`` each backprop equation is
        followed by its unsimplified chain-rule form; with ``weighted=True`` they are those of
        ``fit(sample_weight=...)``, whose batch means weigh each row by ω."""
        raw = validate.flag(raw, "raw", where="formulas")
        self._check_optimizer()
        if validate.flag(weighted, "weighted", where="formulas"):
            d = self._weighted_variant()[0]
            return formulas.as_text(d, optimizer=self.optimizer,
                                    running=self._running_updates(d))
        return formulas.as_text(self.derivation, self.raw_derivation() if raw else None,
                                optimizer=self.optimizer, predict=self._predict_equations(),
                                running=self._running_updates(self.derivation))

    def _check_optimizer(self) -> None:
        """``model.optimizer`` as the kernels were compiled for: after compile it may take
        another numeric learning rate, which the kernels read at run time, and nothing else."""
        if self.optimizer is None or not isinstance(self.optimizer, optim.Optimizer):
            raise DeclarationError(f"model.optimizer must be one of sn.optim's optimizers, got "
                                   f"{validate.describe(self.optimizer)}")
        seen = (self.optimizer, dict(vars(self.optimizer)))
        if self.__dict__.get("_optimizer_checked") == seen:
            return  # building the rule takes up to 1 ms, half of a tiny fit(epochs=1000)
        update = self.optimizer.update()
        if update != self._update:
            now, compiled = ("; ".join(u.notes) for u in (update, self._update))
            numeric = any(rhs == optim.RATE for _, rhs in self._update.steps)
            may = ("only a numeric learning rate may change (model.optimizer.lr = 0.01)" if numeric
                   else "the learning-rate schedule it was compiled with cannot change")
            raise DeclarationError(
                f"model.optimizer was changed after compile to {self.optimizer!r}, whose update "
                f"({now}) is not the one the kernels were compiled with ({compiled}); {may}. "
                f"Set it back to what it was compiled with, {self._compiled_optimizer}, or "
                f"compile the network again with the new optimizer=...")
        self._optimizer_checked = seen

    @staticmethod
    def _running_updates(d) -> list:
        """``(running statistic, its value after a training step)`` of each batch norm of the
        derivation ``d``: what the training kernel assigns (:meth:`_lower`) and the formulas
        show."""
        defs = d.definitions()
        return [pair for norm in _batch_norms(d) for pair in norm.updates(defs)]

    def _predict_equations(self) -> list:
        """The forward equations that predict and evaluate compute otherwise than training."""
        forward = self.derivation.forward
        at = _at_prediction({eq.lhs: eq.rhs for eq in forward}, self._norms)
        return [replace(eq, rhs=at[eq.lhs], rewrites=()) for eq in forward
                if at[eq.lhs] != eq.rhs]

    def latex(self, weighted: bool = False) -> str:
        """The derivation and the update as one LaTeX ``aligned`` block (amsmath); with
        ``weighted=True``, those of ``fit(sample_weight=...)``, as :meth:`formulas` gives them."""
        self._check_optimizer()
        if validate.flag(weighted, "weighted", where="latex"):
            d = self._weighted_variant()[0]
            return formulas.as_latex(d, optimizer=self.optimizer,
                                     running=self._running_updates(d))
        return formulas.as_latex(self.derivation, optimizer=self.optimizer,
                                 predict=self._predict_equations(),
                                 running=self._running_updates(self.derivation))

    def explain(self, X, Y=None):
        """Every equation of the derivation with its shape, the raw chain-rule form, the rewrites
        that simplified it and, for every gradient, the max relative error against float64 central
        differences on this batch. ``str()`` of the result is text; in a notebook it shows as a
        table of MathML formulas."""
        from .explain import explain

        self._check_optimizer()
        feeds = self._gradient_feeds(X, Y, "float64")
        with self._lock:  # the parameters of one moment, not of a fit running beside it
            self._check_params()
            return explain(self, feeds, _rows(feeds))

    def report(self, path, X=None, Y=None) -> None:
        """Write one self-contained HTML page to ``path``: the model's summary, the derivation
        as MathML with shapes and rewrites (checked against central differences on X, Y when
        given), the training curves of the last ``fit`` and the generated kernel source. It
        loads nothing from the network."""
        from .report import write

        self._check_optimizer()
        write(self, path, X, Y)

    def __repr__(self):
        from .report import summary

        return summary(self)

    def _repr_latex_(self):
        return f"$${self.latex()}$$"

    @property
    def source(self) -> str:
        """The generated code, each statement under the formula it computes: the numba module,
        or for the numpy backend the programs it interprets."""
        return self._runner(self.dtype).source

    # ------------------------------------------------------------------ programs
    def _lower(self, d, norms, weights=()):
        """The programs: ``loss_and_grad`` on the batch's statistics; ``train`` (with batch
        norm) the same, and the running statistics updated in place; ``loss`` (evaluate,
        validation) and ``forward`` (predict) on the running statistics, with dropout the
        identity. With ``weights`` (the input ω of a weighted derivation), the first two only."""
        leaves = {s: "input" for s in [*self.inputs, *self.targets, *weights]}
        leaves.update({p: "param" for p in self.param_symbols})
        leaves.update({c: "state" for c in self._constant_symbols})  # read, never written
        defs = d.definitions()
        roots = {"loss": d.loss, **{p.name: eq.lhs for p, eq in d.gradients.items()}}
        programs = {"loss_and_grad": lower(defs, roots, leaves)}
        running = {s: "state" for norm in norms for s in norm.running}
        if running:
            assigns = dict(self._running_updates(d))  # as formulas() shows them
            programs["train"] = lower(defs, roots, {**leaves, **running}, assigns)
        if weights:
            return programs
        defs = _at_prediction(defs, norms)
        leaves.update(running)
        # the loss and the first prediction, which evaluate scores: one pass over the data,
        # not a second one through the forward kernel for the metric
        scored = dict(zip(_prediction_outputs(1), d.predictions[:1]))
        programs["loss"] = lower(defs, {"loss": d.loss, **scored}, leaves)
        if d.predictions:
            pred_leaves = {s: r for s, r in leaves.items() if s not in self.targets}
            programs["forward"] = lower(defs, dict(zip(_prediction_outputs(len(d.predictions)),
                                                       d.predictions)), pred_leaves)
        return programs

    def _runner(self, dtype=None, weighted=False):
        """The backend's runner of the model's programs in ``dtype``, or of the weighted ones."""
        programs, runners = (self._weighted_variant()[1:] if weighted
                             else (self._programs, self._runners))
        key = np.dtype(dtype or self.dtype).name
        if key not in runners:
            with _backend_errors(self.backend):
                runners[key] = _backend_class(self.backend)(programs, self._update, key)
        return runners[key]

    def _weighted_variant(self):
        """``(derivation, programs, runners)`` of the loss whose batch means weigh each row by
        the input ω (:mod:`symnet.weighting`); derived and lowered on first use."""
        if self._weighted is None:
            loss = weighting.weighted(self.stable_loss)
            if loss == self.stable_loss:
                raise DataError(
                    f"sample_weight and class_weight weigh each row's term in the loss's sums "
                    f"over the batch (𝟙ᵀ·M, as in sn.mean, sn.mse and the cross-entropies), and "
                    f"the loss {formulas.text(self.stable_loss)} has none; train it without "
                    f"weights, or write it as a sum or mean over the rows")
            d = derive(loss, self.param_symbols,
                       prediction=tuple(map(self.derivation.expand, self.derivation.predictions)),
                       simplify=simplify_adjoint, taken=self._taken | {weighting.OMEGA.name})
            self._weighted = (d, self._lower(d, _batch_norms(d), [weighting.OMEGA]), {})
        return self._weighted

    def _run(self, name, feeds, dtype=None):
        dtype = np.dtype(dtype or self.dtype)
        with self._lock:
            params = {k: np.ascontiguousarray(v, dtype=dtype)
                      for k, v in {**self.params, **self._kept()}.items()}
            with _backend_errors(self.backend):  # dropout: the masks of the next step
                return self._runner(dtype).run(name, {**feeds, **params}, self.dropout_seed,
                                               self._steps)

    def compile_kernels(self) -> float:
        """JIT-compile the kernels that fit, evaluate and predict use now instead of on first use
        (numba backend; ``loss_and_grad`` still compiles on its first call). Returns the seconds
        it took and sets ``kernels_cached`` (True if loaded from the disk cache, or compiled
        before in this process for a model of the same declaration; None before the call)."""
        start = time.perf_counter()
        self._check_params()
        runner = self._runner()
        if self.backend == "numba":
            from codegen.numba import warm_up

            with _backend_errors(self.backend):
                self.kernels_cached = warm_up(runner)
        else:
            self.kernels_cached = True
        return time.perf_counter() - start

    # ------------------------------------------------------------------ parameters
    def _initial_params(self, rng, scheme):
        acts = initialisers.activations(self.derivation, (self.loss_expr, *self.prediction_exprs))
        roles = initialisers.roles(self.loss_expr)
        out = {}
        for p in self.param_symbols:
            shape = (int(p.shape[0]), int(p.shape[1]))
            role = roles.get(p, "weight")
            value = initialisers.initial_value(rng, p.name, shape, role, acts.get(p), scheme)
            out[p.name] = np.ascontiguousarray(value, dtype=self.dtype)
        return out

    # ------------------------------------------------------------------ data
    def _feeds(self, X, Y=None, need_targets=True, dtype=None, check_finite=True, lazy=False):
        """Check the data arrays and convert them to ``dtype`` (default: the model's); with
        ``check_finite``, check too that every entry is finite in it. ``lazy`` leaves an input
        that would need a copy as it is, for :func:`_chunks` to convert and check by batches."""
        dtype = np.dtype(dtype or self.dtype)
        bundled = (len(self.inputs) == 1 and isinstance(X, (list, tuple)) and len(X) >= 2
                   and all(hasattr(a, "__array__") and np.ndim(a) == 2 for a in X))
        missing = need_targets and self.targets and Y is None
        if bundled and not (missing and len(X) == 2 and len(self.targets) == 1):
            raise DataError(f"{self.inputs[0].name} came as a {type(X).__name__} of {len(X)} "
                            f"2-D arrays, and this model has one input: pass its array alone"
                            + (", and the targets after it" if need_targets and self.targets else ""))
        if missing:
            raise DataError(
                f"this call needs the targets {[t.name for t in self.targets]} too: pass "
                f"them after the inputs, as in model.fit(X, Y) or model.evaluate(X, Y)"
                + (f"; the data came as one {type(X).__name__} (X, Y): unpack it, model.fit(*data)"
                   if bundled else ""))
        feeds = {}
        for sym, arr in zip(self.inputs, _arrays(X, self.inputs, "inputs")):
            feeds[sym.name] = _as_data(arr, sym, dtype, check_finite, convert=not lazy)
        if need_targets and self.targets:
            for sym, arr in zip(self.targets, _arrays(Y, self.targets, "targets")):
                feeds[sym.name] = _as_data(_one_hot(arr, sym, dtype), sym, dtype, check_finite)
                if sym in self._distributions:
                    _check_distributions(feeds[sym.name], sym.name)
                if sym in self._probabilities:
                    _check_probabilities(feeds[sym.name], sym.name)
        elif need_targets and Y is not None:
            raise DataError(f"this model has no targets (its loss reads only "
                            f"{[s.name for s in self.inputs]}), but targets were passed; call it "
                            f"with the inputs only")
        rows = {k: v.shape[0] for k, v in feeds.items()}
        if len(set(rows.values())) > 1:
            raise DataError(f"inputs and targets must have the same number of rows, got {rows}")
        return feeds

    def _validation_feeds(self, validation_data):
        """The checked arrays of ``validation_data``: the pair (X_val, Y_val), or (X_val,) for a
        model without targets; None when not given."""
        if validation_data is None:
            return None
        want = "(X_val, Y_val)" if self.targets else "(X_val,)"
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 1 + bool(
                self.targets):
            raise DataError(f"validation_data must be the tuple {want}, got "
                            f"{validate.describe(validation_data)}; pass validation_data={want}")
        try:
            return self._feeds(*validation_data)
        except DataError as err:  # the same checks as fit's data: say which data failed them
            raise DataError(f"in validation_data: {err}") from None

    def _check_whole(self):
        """Refuse a model that a forked child holds half-trained (:func:`_after_fork`)."""
        if self._training is _FORKED:
            raise DataError("this process was forked while another thread of its parent was "
                            "training this model (fit), so its parameters here may be half a "
                            "step's: load a saved copy (sn.load), or fork when no fit is running")

    def _check_params(self):
        """Check ``model.params`` before a kernel reads it: each declared parameter is still an
        array of its declared shape, real and finite, and nothing else is in the dict. An array of
        another dtype or layout is converted to the model's and stored back (it stays live)."""
        self._check_whole()
        declared = {p.name: (int(p.shape[0]), int(p.shape[1])) for p in self.param_symbols}
        with self._lock:  # not while another thread's fit writes them
            extra = sorted(map(str, set(self.params) - set(declared)))
            if extra:
                raise DataError(f"model.params has {extra}, which are not parameters of this "
                                f"model (those are {sorted(declared)}); remove them")
            for name, shape in declared.items():
                self.params[name] = _param_array(self.params.get(name), name, shape, self.dtype)
            for symbol in self._constant_symbols:
                name, shape = symbol.name, (int(symbol.shape[0]), int(symbol.shape[1]))
                self.constants[name] = _param_array(self.constants.get(name), name, shape,
                                                    self.dtype, "constants")
            for norm in self._norms:
                for symbol in norm.running:
                    name, shape = symbol.name, (1, int(symbol.shape[1]))
                    self.running[name] = _running_array(self.running.get(name), name, shape,
                                                        self.dtype)

    # ------------------------------------------------------------------ API
    # Each public method validates its arrays once (``_feeds``) and hands the checked feeds to a
    # private twin, which fit, evaluate and gradcheck call directly in their loops.

    def loss_and_grad(self, X, Y=None, dtype=None):
        """The loss and ``{parameter name: gradient}`` on one batch; ``dtype`` ('float32' or
        'float64') computes in another precision than the model's."""
        if dtype is not None:
            dtype = _dtype(dtype, "loss_and_grad(dtype=...)", DataError)
        self._check_params()
        return self._loss_and_grad(self._gradient_feeds(X, Y, dtype), dtype)

    def _gradient_feeds(self, X, Y, dtype):
        """The feeds of a batch whose gradients are asked for (``loss_and_grad``, ``gradcheck``,
        ``explain``, ``report``): with batch norm, of 2 rows or more."""
        feeds = self._feeds(X, Y, dtype=dtype)
        if self._norms and _rows(feeds) < 2:
            raise DataError(f"{ONE_ROW}; pass at least 2 rows")
        return feeds

    def _loss_and_grad(self, feeds, dtype=None):
        out = self._run("loss_and_grad", feeds, dtype)
        return float(out.pop("loss")[0, 0]), out

    def predict(self, X, batch_size: int = 4096):
        """The value of ``prediction`` for every row of X; for ``prediction=[P1, P2, …]`` a tuple
        of their values."""
        if "forward" not in self._programs:
            raise DeclarationError("this model was compiled without prediction=; nothing to predict")
        if isinstance(batch_size, (np.ndarray, list, tuple)):
            raise DataError(f"predict takes the inputs only, and got "
                            f"{validate.describe(batch_size)} as batch_size; to score predictions "
                            f"against targets, call evaluate(X, Y)")
        batch_size = validate.integer(batch_size, "batch_size", low=1, error=DataError)
        self._check_params()
        values = self._predict_all(self._feeds(X, need_targets=False, lazy=True), batch_size)
        bad = np.zeros(len(values[0]), bool)
        for value in values:
            bad |= ~np.isfinite(value).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = f"{', '.join(map(str, rows[:5]))}{', …' if len(rows) > 5 else ''}"
            self._warn_not_finite(f"the prediction is not finite (NaN or ±inf) in {len(rows)} "
                                  f"of {len(bad)} rows (rows {shown})")
        return tuple(values) if self._several else values[0]

    def _warn_not_finite(self, what: str) -> None:
        """Warn that ``what`` (predict's or evaluate's result) is not finite, naming the largest
        parameter: after a fit that diverged, parameters ~1e30 overflow float32 silently."""
        name, size = max(((k, float(np.abs(v).max(initial=0.0))) for k, v in self.params.items()),
                         key=lambda item: item[1], default=(None, 0.0))
        if size > np.sqrt(np.finfo(self.dtype).max):  # their products overflow
            hint = (f"the largest parameter entry is {size:.3g}, in {name}: such values come "
                    f"from a fit that diverged. Train a fresh model; "
                    f"{self.remedy[0].lower()}{self.remedy[1:]}")
        else:
            hint = ("the formulas (model.formulas()) leave the range of "
                    f"{np.dtype(self.dtype).name} for these inputs: check their scale")
        notices.warn(f"{what}; {hint}", RuntimeWarning)

    def _predict_all(self, feeds, batch_size) -> list[np.ndarray]:
        inputs = {s.name: feeds[s.name] for s in self.inputs}
        chunks = [self._run("forward", chunk) for chunk in _chunks(inputs, batch_size, self.dtype)]
        return [np.concatenate([c[name] for c in chunks])
                for name in _prediction_outputs(len(self.prediction_exprs))]

    def evaluate(self, X, Y=None, batch_size: int = 4096) -> dict:
        """``{"loss": mean loss}``, plus ``"accuracy"``: argmax agreement when Y has ≥ 2 columns
        of class distributions (one-hot or probabilities), and for other 0/1 targets of a
        prediction σ(Z) (one column, or several labels per row) the share of labels right at the
        threshold 0.5 (at 0 for logits P whose σ(P) the loss reads); for other targets of the
        prediction's shape ``"r2"``, R² averaged over the columns (of σ(P), for such logits).
        Only the loss for a model of several targets: which prediction answers which target is
        not for evaluate to guess (score each of predict's outputs on its own).
        Y may be integer class labels of shape (n,) for a target of k ≥ 2 columns, and is left
        out for a model without targets (an autoencoder's loss reads its inputs only)."""
        batch_size = validate.integer(batch_size, "batch_size", low=1, error=DataError)
        self._check_params()
        result = self._evaluate(self._feeds(X, Y, lazy=True), batch_size)
        if not np.isfinite(result["loss"]):
            self._warn_not_finite(f"the loss is {result['loss']}")
        return result

    def _evaluate(self, feeds, batch_size=4096):
        target = feeds[self.targets[0].name] if len(self.targets) == 1 else None
        first = self.prediction_expr
        scored = not (first is None or target is None or first.shape[1] != target.shape[1])
        name = _prediction_outputs(1)[0]  # the loss kernel's first prediction
        total, preds = 0.0, []
        for chunk in _chunks(feeds, batch_size, self.dtype):
            out = self._run("loss", chunk)
            total += float(out["loss"][0, 0]) * _rows(chunk)
            if scored:
                preds.append(out[name])
        result = {"loss": total / _rows(feeds)}
        if not scored:
            return result
        pred = np.concatenate(preds)
        if target.shape[1] >= 2 and _distributions(target):
            right = (pred.argmax(1) == target.argmax(1)) & ~np.isnan(pred).any(axis=1)
            result["accuracy"] = float(np.mean(right))  # a NaN row is wrong, not argmax's class
        elif (cut := self._label_threshold) is not None and np.isin(target, (0, 1)).all():
            right = ((pred > cut) == (target > 0.5)) & ~np.isnan(pred)  # label by label
            result["accuracy"] = float(np.mean(right))
        if "accuracy" not in result:  # a regression: R², as scikit-learn's r2_score
            if self._label_threshold == 0:  # logits: their probabilities σ(P) against the targets
                pred = scipy.special.expit(pred)
            result["r2"] = _r2(target, pred)
        return result

    def _class_labels(self, feeds):
        """(each row's class, the number of classes), for ``class_weight``: the argmax of a
        k ≥ 2 column target, the 0/1 of one column; (None, None) for other targets. A model of
        several targets has no one class per row."""
        if len(self.targets) != 1:
            raise DataError(f"class_weight weighs the classes of one target, and this model has "
                            f"{len(self.targets)}: {[t.name for t in self.targets]}; weigh its "
                            f"rows with sample_weight instead")
        target = feeds[self.targets[0].name]
        if target.shape[1] >= 2:
            return target.argmax(1), target.shape[1]
        if np.isin(target, (0, 1)).all():
            return target[:, 0].astype(np.int64), 2
        return None, None

    def fit(self, X, Y=None, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
            validation_data=None, early_stopping: int | None = None, verbose: bool | int = True,
            seed: int | None = None, sample_weight=None, class_weight=None,
            validation_split: float | None = None) -> History:
        """Train with the model's optimizer; returns the per-epoch :class:`History`.

        The backend runs whole epochs per call: without ``validation_data`` several epochs at a
        time (``seconds`` is then their mean). ``verbose`` draws a progress bar when standard
        error is a terminal (or in Jupyter), else prints a line for each call of the backend,
        as a log wants; Keras' ``verbose=0``, ``1`` and ``2`` mean nothing, that, and the
        lines always. ``early_stopping=patience`` stops once the validation loss has not
        fallen for ``patience`` epochs and restores the parameters, optimizer state and step
        count of the best epoch; the shuffling generator is not restored, so the next fit
        shuffles on from the last epoch run. ``seed`` shuffles this call's epochs with a
        generator of its own, leaving the model's as it was for the next call without one.
        ``sample_weight`` (one weight ≥ 0 per row) and ``class_weight`` (``{class: weight}`` or
        ``"balanced"``) make each batch's loss the weighted mean Σωℓ/Σω, as torch's ``weight=``;
        ``formulas(weighted=True)`` shows that derivation. A class weight weighs its rows' whole
        loss, label smoothing's term included (torch weighs that term's classes by their own
        weights). The history's loss is then each epoch's weighted mean Σωℓ/Σω (scikit-learn's
        ``log_loss(..., sample_weight=...)``); validation stays unweighted.
        """
        epochs = validate.integer(epochs, "epochs", low=0, error=DataError)
        batch_size = validate.integer(batch_size, "batch_size", low=1, error=DataError)
        shuffle = validate.flag(shuffle, "shuffle", error=DataError)
        verbose = validate.verbosity(verbose, error=DataError)
        seed = validate.seed(seed, error=DataError)
        if validation_split is not None:
            if validation_data is not None:
                raise DataError("fit: pass validation_data or validation_split, not both")
            validation_split = validate.number(validation_split, "validation_split", above=0,
                                               below=1, error=DataError, example=0.1)
        if early_stopping is not None:
            if validation_data is None and validation_split is None:
                raise DataError("early_stopping watches the validation loss: pass "
                                "validation_data=(X_val, Y_val) or validation_split=0.1 as well")
            early_stopping = validate.integer(early_stopping, "early_stopping", low=1,
                                              error=DataError, where="fit (a patience in epochs)")
        self._check_params()
        self._check_optimizer()
        # the runner checks the rows it trains on as it copies each batch, and stops before a
        # batch with a non-finite entry (Status.DATA); class weights count the labels first
        feeds = self._feeds(X, Y, check_finite=class_weight is not None)
        val_feeds = self._validation_feeds(validation_data)
        if validation_split is not None:
            feeds, held, sample_weight = _held_out(feeds, validation_split, sample_weight)
            try:  # checked as validation_data is: the training rows are checked as they are read
                val_feeds = self._feeds({s.name: held[s.name] for s in self.inputs},
                                        {s.name: held[s.name] for s in self.targets} or None)
            except DataError as err:
                raise DataError(f"in the last {_rows(held)} rows, which validation_split holds "
                                f"out: {err}") from None
        data = {k: feeds[k] for k in [s.name for s in (*self.inputs, *self.targets)]}
        rows = _rows(feeds)
        weighted = sample_weight is not None or class_weight is not None
        if weighted:
            labels = self._class_labels(feeds) if class_weight is not None else (None, None)
            w = weighting.row_weights(rows, *labels, sample_weight=sample_weight,
                                      class_weight=class_weight)
            data[weighting.OMEGA.name] = _scaled_weights(w, self.dtype).reshape(rows, 1)
            # rows of weight 0 are left out (as the estimators do), so that no batch weighs 0
            # and divides its loss by 0; ``ids`` maps the rows trained on to those of the data
            ids = np.flatnonzero(data[weighting.OMEGA.name][:, 0] > 0)  # not empty: Σω > 0
            if len(ids) < rows:
                data, rows = {k: v[ids] for k, v in data.items()}, len(ids)
        else:
            ids = None
        if self._norms and (rows - 1) % batch_size == 0:
            if rows == 1:
                raise DataError(f"{ONE_ROW}; train on at least 2 rows")
            fix = next(b for b in range(batch_size + 1, rows + 1) if (rows - 1) % b)
            raise DataError(f"batch norm normalises each column over the batch, and with {rows} "
                            f"rows in batches of {batch_size} a batch has 1 row, whose variance "
                            f"is 0 (torch refuses it too); pass batch_size={fix}")
        rng = np.random.default_rng(seed) if seed is not None else self._shuffle_rng
        drawn = rng.bit_generator.state  # given back if the data turns out not to be finite
        sizes = np.diff(np.r_[np.arange(0, rows, batch_size), rows])
        omega = data[weighting.OMEGA.name][:, 0] if weighted else None
        runner = self._runner(weighted=weighted)
        # compiled before Ctrl-C is deferred, as it stops a compile; a second core compiles the
        # kernel predict will call meanwhile, if there is one (NumbaRunner.prepare)
        needed = ["train_epochs"] + (["loss"] if val_feeds is not None and not weighted else [])
        with _backend_errors(self.backend):
            runner.prepare(needed, spare=[] if weighted else ["forward"])
        hist, best = History(), None
        bar = _Lines() if verbose == 2 else _progress(epochs) if verbose else _NoBar()
        # with nothing for Python to do between epochs (no validation, no progress to show),
        # every epoch runs in one kernel call; else one epoch, or ~0.25 s, per call
        quiet = val_feeds is None and not verbose
        per_call = min(epochs, max(1, 2**24 // rows)) if quiet else 1
        with self._lock, contextlib.closing(bar), _kept_history(self, hist), _in_fit(self):
            while len(hist.loss) < epochs and not _patience_out(hist, early_stopping):
                k = min(per_call, epochs - len(hist.loss))
                orders = _orders(rng if shuffle else None, k, rows)
                # Ctrl-C: after this call's last step, and once the epochs it ended are in the
                # history (validated and shown), so that the history, the parameters and the step
                # count agree whenever it comes
                with interrupts.deferred(self._stop) as pending:
                    start = time.perf_counter()
                    losses, e, s, status = self._train(runner, data, orders, batch_size, pending)
                    elapsed = time.perf_counter() - start
                    shares = _batch_shares(orders, sizes, omega)
                    if status is Status.STOPPED:  # the epochs it ended, before the interrupt
                        _record(hist, losses[:e], shares[:e], elapsed / k)
                    elif status is Status.DATA:  # in the first call, which _train undid
                        rng.bit_generator.state = drawn
                        self._feeds(X, Y)  # names the first non-finite entry
                        raise DataError(f"batch {s + 1} of epoch {len(hist.loss) + e + 1} has a "
                                        f"non-finite value; clean or impute the data first")
                    elif status in (Status.LOSS, Status.UPDATE):
                        raise self._not_finite(status, len(hist.loss) + e + 1, s, data,
                                               orders[e], batch_size, losses[e, s], ids)
                    else:
                        _record(hist, losses, shares, elapsed / k)
                        if val_feeds is not None:
                            best = self._validate(val_feeds, hist, early_stopping, best)
                        elif not quiet:  # progress only: more epochs per call, up to ~0.25 s
                            per_call = int(min(max(1, SECONDS_PER_CALL * k / max(elapsed, 1e-9)),
                                               max(1, 2**24 // rows), 2 * per_call + 1))
                        bar.update(k)
                        bar.set_postfix(loss=f"{hist.loss[-1]:.4f}",
                                        samples_s=f"{rows * k / max(elapsed, 1e-9):,.0f}")
                        if verbose and (per_call == 1 or isinstance(bar, _Lines)):
                            bar.write(_epoch_line(len(hist.loss), epochs, hist, k))
                if status is Status.STOPPED:  # Ctrl-C, whose handler did not raise
                    break
            if best is not None:
                self._restore(best)
        self.history = hist
        return hist

    def _validate(self, val_feeds, hist, early_stopping, best):
        """Append the validation figures of the epoch just ended to ``hist``; the snapshot of
        the best epoch's parameters so far (``best``, or a new one) for ``early_stopping``."""
        res = self._evaluate(val_feeds)
        hist.history["val_loss"].append(res["loss"])
        if "accuracy" in res:
            hist.history["val_accuracy"].append(res["accuracy"])
        if "r2" in res:
            hist.history.setdefault("val_r2", []).append(res["r2"])
        if early_stopping is not None and res["loss"] <= min(hist.val_loss):
            hist.best_epoch = len(hist.loss)
            return self._snapshot()
        return best

    def _train(self, runner, data, orders, batch_size, pending=None):
        """One kernel call over the epochs of ``orders``, with the model's step counter kept
        equal to the updates applied: returns (losses, epoch, batch, :class:`Status`). A step
        whose update made a parameter non-finite is undone: the parameters and optimizer state
        from before the call are restored and the call is replayed up to the step before it
        (replays compute the same numbers: the kernels are deterministic). A call that found a
        batch with a non-finite entry is undone whole, and so is one that an exception left
        (on the NumPy backend, a signal handler's may come in the middle of a step; the numba
        kernels stop after their step and hand it to ``pending``)."""
        before = self._snapshot()
        try:
            with _backend_errors(self.backend):  # the training kernel compiles on first call
                losses, e, s, t, status = runner.train(
                    data, self.params, self._state, orders, batch_size, self._steps,
                    stop=self._stop, running=self._kept(), seed=self.dropout_seed,
                    rate=self.optimizer.rate, pending=pending)
        except BaseException:
            self._restore(before)
            raise
        if status is Status.DATA:  # a batch with a non-finite entry: as if nothing ran
            self._restore(before)
            return losses, e, s, status
        if status is Status.UPDATE:
            self._restore(before)
            _, e, s, t, replayed = runner.train(data, self.params, self._state, orders,
                                                batch_size, self._steps, limit=t - 1,
                                                running=self._kept(), seed=self.dropout_seed,
                                                rate=self.optimizer.rate)
            if replayed is not Status.STOPPED:  # cannot happen: the kernels are deterministic
                raise DataError(f"replaying the steps before a non-finite update ended with "
                                f"{replayed.name}, not at that update")
            status = Status.UPDATE
        self._steps = t
        return losses, e, s, status

    def _kept(self):
        """The arrays of the programs' state leaves: running statistics and constants."""
        return {**self.running, **self.constants}

    def _snapshot(self):
        return ({k: v.copy() for k, v in self.params.items()},
                {k: {s: v.copy() for s, v in st.items()} for k, st in self._state.items()},
                {k: v.copy() for k, v in self.running.items()}, self._steps)

    def _restore(self, snapshot):
        params, state, running, self._steps = snapshot
        for k, v in params.items():
            self.params[k][...] = v
            for s, sv in state[k].items():
                self._state[k][s][...] = sv
        for k, v in running.items():
            self.running[k][...] = v

    def _not_finite(self, status, epoch, batch, data, order, batch_size, loss, ids=None):
        """The error for a step whose loss or update was not finite (the update was undone). It
        names the first formula, in the order ``formulas()`` shows them, whose value on that
        batch is not finite in the model's dtype, as the kernels compute it; for an update
        whose formulas are all finite, the first line of the update rule that is not. ``ids``:
        the rows of the user's data that ``data``'s are (None: the same)."""
        idx = order[batch * batch_size:(batch + 1) * batch_size]
        shown = idx if ids is None else ids[idx]
        rows = f"rows {', '.join(map(str, shown[:5]))}{', …' if len(idx) > 5 else ''} of the data"
        where = f"in epoch {epoch}, batch {batch + 1} ({rows})"
        tail = f"Parameters and optimizer state are those from before this step. {self.remedy}"
        batch_data = {k: v[idx] for k, v in data.items()}
        culprit, hint = self._formula_culprit(batch_data)
        first = f"the first formula whose value is not finite in {self.dtype.name} is {culprit}{hint}"
        if status is Status.LOSS:
            found = first if culprit else f"every formula is finite in {self.dtype.name} on this batch"
            return DataError(f"the loss became {loss} {where}; {found}. {tail}")
        found = first if culprit else self._update_culprit(batch_data)
        return DataError(f"the update {where} made a parameter non-finite: {found}. {tail}")

    def _formula_culprit(self, batch_data) -> tuple[str | None, str]:
        """``label = formula`` of the first equation of the derivation that is not finite on
        this batch in the model's dtype, or None, and what its logs say of it (``_log_hint``)."""
        values = {**batch_data, **self.params, **self.constants}
        rows = np.arange(next(iter(batch_data.values())).shape[0], dtype=np.uint64)
        with np.errstate(all="ignore"):
            for eq in self.derivation.equations:
                for m in eq.rhs.atoms(DropoutMask):  # this step's, drawn as the kernels do
                    cols = np.arange(int(m.shape[1]), dtype=np.uint64)
                    values[m.name] = keep(self.dropout_seed, self._steps, m.stream,
                                          rows[:, None], cols[None, :], float(m.p))
                value = evaluate(eq.rhs, values, dtype=self.dtype)
                values[eq.lhs.name] = value
                if not np.all(np.isfinite(value)):
                    return (f"{eq.label} = {formulas.text(eq.rhs)}",
                            _log_hint(eq.rhs, values, self.dtype))
        return None, ""

    def _update_culprit(self, batch_data) -> str:
        """Which line of the update rule, for which parameter, is not finite on this batch,
        computed as the kernels do in the model's dtype (with NumPy)."""
        _, grads = self._loss_and_grad(batch_data)
        params = {k: v.copy() for k, v in self.params.items()}
        state = {k: {s: v.copy() for s, v in st.items()} for k, st in self._state.items()}
        found = NumpyUpdater(self._update).first_non_finite(params, grads, state, self._steps + 1,
                                                            self.optimizer.rate)
        eps = getattr(self.optimizer, "eps", None)
        flushed = eps is not None and eps < np.finfo(self.dtype).tiny  # 0, or 0 in the kernels
        why = ("eps=0" if eps == 0 else
               f"eps={eps}, below {self.dtype.name}'s smallest normal number "
               f"({np.finfo(self.dtype).tiny:.3g}), which the kernels flush to 0,")
        fix = (f"divides by zero where a gradient has been 0 at every step, as for an input "
               f"column that is always 0; pass eps > 0, such as "
               f"{type(self.optimizer).__name__}'s default")
        if found is None:
            if flushed:
                return f"with {why} the update rule {fix}"
            return "every line of the update rule is finite when recomputed with NumPy"
        name, k = found
        # the kernels' rule has one more line, lr ← rate; the rule as shown has the number
        added = (optim.LR, optim.RATE)
        if added in self._update.steps and k > self._update.steps.index(added):
            k -= 1
        shown = [formulas.TextPrinter().assignment(lhs, rhs) for lhs, rhs in self.optimizer.rule()]
        found = f"for {name}, {shown[k]} is not finite"
        return f"{found} (with {why} it {fix})" if flushed else found

    # ------------------------------------------------------------------ persistence
    def __reduce__(self):
        """Pickled as the bytes of its model file (:mod:`symnet.serialize`), never as code or
        compiled kernels: unpickling checks and compiles the declaration as ``sn.load`` does."""
        self._check_whole()
        self._check_optimizer()
        with self._lock:
            return serialize.from_bytes, (serialize.to_bytes(self), self.backend)

    def save(self, path) -> None:
        """Write the declaration, parameters, optimizer state, step count and shuffling state
        to one ``.npz`` file, atomically (the format and its guarantees: :mod:`symnet.serialize`).
        A fit running in another thread is waited for, so that the file holds one moment's.
        Parameters are checked as ``fit`` checks them: ``load`` refuses a file with a
        non-finite one, so ``save`` does not write it."""
        self._check_params()
        self._check_optimizer()
        with self._lock:
            serialize.save_model(self, path)


@contextlib.contextmanager
def _backend_errors(backend):
    try:
        yield
    except CodegenError as err:
        hint = " Compile with backend='numpy' to train without it." if backend == "numba" else ""
        refused = DeclarationError(f"{err}.{hint}")
        refused.backend = True  # the environment's, not the declaration's (serialize's load)
        raise refused from None
    except MemoryError as err:  # a workspace for the batch (numpy's _ArrayMemoryError)
        raise DataError(f"the arrays for this call's batch do not fit in this machine's memory "
                        f"({err}); pass a smaller batch_size to fit, fewer rows to "
                        f"loss_and_grad, or declare narrower layers") from None


class _NoBar:
    """What fit updates when it shows no progress: a disabled tqdm bar still makes a
    multiprocessing lock, which a spawned pool's resource tracker reports as leaked."""

    def update(self, n):
        pass

    def set_postfix(self, **values):
        pass

    def close(self):
        pass


class _Lines(_NoBar):
    """What fit shows when its output goes to a file or a pipe (a log, a batch job): a line
    for each call of the kernel, no bar. A console bar there is one line of carriage returns,
    a fresh copy of the bar every 0.1 s."""

    def write(self, line):
        print(line, flush=True)


def _progress(epochs: int):
    """tqdm's notebook widget inside a Jupyter kernel that has ipywidgets, the console bar in
    one without them (a notebook draws its carriage returns) or when standard error is a
    terminal, else :class:`_Lines`. Chosen when fit runs, not on import: ``tqdm.auto`` warns on
    import in a kernel without ipywidgets (TqdmWarning), in every notebook that imports
    symnet."""
    notebook = "ipykernel" in sys.modules
    if not notebook and not _terminal(sys.stderr):
        return _Lines()
    return _bar(notebook)(total=epochs, unit="epoch", leave=False)


def _bar(notebook: bool):
    """The tqdm class: the notebook widget if ``notebook`` and ipywidgets is there."""
    if notebook:
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm
            return tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm
    return tqdm


def _terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # None (pythonw), a closed or a stand-in stream
        return False


def _log_hint(rhs, values, dtype) -> str:
    """What the logs of a formula that is not finite say: an argument ≤ 0 (or NaN) asks whether
    it is a probability; one that overflowed to +inf (log(cosh(Z)) of a large Z) says so."""
    arguments = []
    for node in validate.unique_nodes(rhs):
        if isinstance(node, (Elementwise, Entrywise)):
            matrices = (node.arg,) if isinstance(node, Elementwise) else node.arguments
            for log in definition(node.fn.expr).atoms(sp.log):  # my_log(x)'s too
                # a hint only: the error it joins is raised whether or not it is found
                with contextlib.suppress(Exception):
                    inner = entrywise(node.fn.variables, log.args[0], matrices)
                    arguments.append(np.asarray(evaluate(inner, values, dtype=dtype)))
    if any(np.any(~(a > 0)) for a in arguments):  # 0, negative or NaN
        return (" (log is −inf at 0 and NaN below it: is its argument a probability, such as "
                "sn.softmax(out) or sn.sigmoid(out)?)")
    if any(np.any(a == np.inf) for a in arguments):
        return (f" (the argument of its log overflowed to +inf, above "
                f"{np.finfo(dtype).max:.3g} in {np.dtype(dtype).name})")
    return ""


def _held_out(feeds, split: float, sample_weight):
    """``fit(validation_split=split)``: the training feeds, the validation feeds (the last
    ``split`` of the rows, before shuffling, as Keras takes them) and the training rows'
    sample weights."""
    rows = _rows(feeds)
    trained = math.floor(rows * (1 - split))
    if trained < 1 or trained == rows:
        raise DataError(f"validation_split={split} of {rows} rows leaves "
                        f"{'no row to train on' if trained < 1 else 'no row to validate on'}; pass "
                        f"a fraction that leaves rows on both sides, or validation_data=(X_val, "
                        f"Y_val)")
    if sample_weight is not None:
        weights = validate.real_array(sample_weight, "sample_weight")
        if weights.shape not in ((rows,), (rows, 1)):
            raise DataError(f"sample_weight needs one weight per row of the data, shape "
                            f"({rows},); got shape {weights.shape}")
        sample_weight = weights[:trained]
    return ({k: v[:trained] for k, v in feeds.items()}, {k: v[trained:] for k, v in feeds.items()},
            sample_weight)


def _orders(rng, epochs: int, rows: int) -> np.ndarray:
    """Each epoch's order of the rows, one epoch a row: ``rng.permutation`` per epoch (the
    sequence a seed gives), or the rows in order when ``rng`` is None."""
    if rng is None:
        return np.tile(np.arange(rows), (epochs, 1))
    orders = np.empty((epochs, rows), np.int64)
    for e in range(epochs):
        orders[e] = rng.permutation(rows)
    return orders


def _batch_shares(orders, sizes, omega):
    """(epochs, batches): what each batch's loss weighs in its epoch's: its rows, or with
    weights ω the sum of its rows' (a batch's loss is Σωℓ/Σω, so the epoch's is Σωℓ/Σω too)."""
    if omega is None:
        return np.broadcast_to(sizes.astype(np.float64), (len(orders), len(sizes)))
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return np.add.reduceat(omega.astype(np.float64)[orders], starts, axis=1)


def _record(hist, losses, shares, seconds):
    """Each epoch's (a row of ``losses``) loss, the mean of its batches' losses weighed by their
    ``shares``, and ``seconds`` each, into ``hist``."""
    epoch = (losses.astype(np.float64) * shares).sum(axis=1) / shares.sum(axis=1)
    hist.history["loss"].extend(epoch.tolist())
    hist.history["seconds"].extend([seconds] * len(losses))


@contextlib.contextmanager
def _kept_history(model, hist):
    """A fit that ends in an exception (Ctrl-C, a step that was not finite) after it trained
    leaves the History of the epochs it ended as ``model.history``, empty if none ended (the
    previous fit's would not describe the model); one that did not train leaves it as it was."""
    steps = model._steps
    try:
        yield
    except BaseException:
        if hist.loss or model._steps != steps:
            model.history = hist
        raise


def _patience_out(hist, patience):
    if patience is None or not hist.val_loss:
        return False
    best = int(np.argmin(hist.val_loss))
    return len(hist.val_loss) - 1 - best >= patience


def load(path, backend: str | None = None) -> Model:
    """The model saved by ``model.save(path)``; ``backend`` overrides the saved one. Reads only
    the arrays the saved declaration names, and never runs code from the file."""
    return serialize.load_model(path, backend)


_MODELS = weakref.WeakSet()  # the live models, whose locks a forked child renews
_FORKED = "forked"  # Model._training in a child forked while another thread trained the model


def _after_fork():
    """In a forked child only the forking thread runs: a model lock that another thread held
    (a predict or fit serving beside it) would stay held, and the child's first call on that
    model would wait forever. Every live model gets a new lock; one that another thread was
    training is marked, for its parameters may be half a step's (:meth:`Model._check_params`)."""
    for model in list(_MODELS):
        model._lock = threading.RLock()
        if model._training:
            model._training = _FORKED


os.register_at_fork(after_in_child=_after_fork)


@contextlib.contextmanager
def _in_fit(model):
    """``model._training`` set while a fit call runs."""
    model._training = True
    try:
        yield
    finally:
        model._training = False


def _rows(feeds):
    return next(iter(feeds.values())).shape[0]


def _chunks(feeds, size, dtype):
    """Consecutive row slices of every array in ``feeds``, ``size`` rows at a time, each in
    ``dtype`` (an array that :meth:`Model._feeds` left unconverted is converted and checked a
    slice at a time)."""
    for i in range(0, _rows(feeds), size):
        yield {k: (v[i:i + size] if v.dtype == dtype and v.flags.c_contiguous
                   else _converted(v[i:i + size], k, dtype, first_row=i))
               for k, v in feeds.items()}


def _epoch_line(epoch, epochs, hist, count=1):
    """The line of the ``count`` epochs up to ``epoch`` (one kernel call)."""
    h = hist.history
    which = f"epoch {epoch}" if count == 1 else f"epochs {epoch - count + 1}-{epoch}"
    parts = [f"{which}/{epochs}", f"loss {h['loss'][-1]:.4f}"]
    if h["val_loss"]:
        parts.append(f"val_loss {h['val_loss'][-1]:.4f}")
    if h["val_accuracy"]:
        parts.append(f"val_accuracy {h['val_accuracy'][-1]:.4f}")
    if h.get("val_r2"):
        parts.append(f"val_r2 {h['val_r2'][-1]:.4f}")
    parts.append(f"{h['seconds'][-1]:.3g} s" + ("" if count == 1 else " an epoch"))
    return " - ".join(parts)


# ---------------------------------------------------------------------- helpers


def _symbols(items, what, taken=()):
    """The data matrices of ``inputs=`` or ``targets=``: MatrixSymbols with sn.batch rows, a fixed
    positive number of columns and an identifier for a name, each listed once."""
    if isinstance(items, sp.MatrixSymbol):
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise DeclarationError(f"{what} must be a list of MatrixSymbols made by sn.Input, e.g. "
                               f"{what}=[X], got {validate.describe(items)}")
    out = []
    for s in items:
        if not isinstance(s, sp.MatrixSymbol):
            raise DeclarationError(f"{what} must be MatrixSymbols made by sn.Input, got {s!r}")
        validate.identifier(s.name, what)
        if s.shape[0] != batch:
            raise DeclarationError(
                f"{what}: {s.name} has {s.shape[0]} rows; data matrices have sn.batch rows "
                f"(make it with sn.Input({s.name!r}, {s.shape[1]}))")
        if not (s.shape[1].is_Integer and s.shape[1] > 0):
            raise DeclarationError(
                f"{what}: {s.name} has {s.shape[1]} columns; a data matrix has a fixed, positive "
                f"number of columns (make it with sn.Input({s.name!r}, columns))")
        if s in out or s in taken:
            raise DeclarationError(f"{what}: {s.name} is listed twice (as an input or target); "
                                   f"list each data matrix once")
        out.append(s)
    return out


def _arrays(data, symbols, what):
    """The arrays for ``symbols``: a dict by name, the array itself for one symbol, else a list
    or tuple of one array per symbol, in order."""
    names = [s.name for s in symbols]
    if isinstance(data, dict):  # by name, or by the symbols themselves
        data = {k.name if isinstance(k, sp.MatrixSymbol) else k: v for k, v in data.items()}
        if set(data) != set(names):
            raise DataError(f"the {what} given by name must be exactly {names}, got "
                            f"{sorted(map(str, data))}")
        return [data[name] for name in names]
    if len(symbols) == 1:
        one = isinstance(data, (list, tuple)) and len(data) == 1 and np.ndim(data[0]) == 2
        return [data[0] if one else data]  # [Y] as for several targets: not a 3-D array
    if not isinstance(data, (list, tuple)) or len(data) != len(symbols):
        raise DataError(f"this model has the {len(symbols)} {what} {names}: pass a list or tuple "
                        f"with one array for each, in that order; got {validate.describe(data)}")
    return list(data)


# names the formulas use for their own notation: a matrix of the same name would read as these
NOTATION = {"n": "the batch's row count", "t": "the optimizer's step count",
            "g": "the gradient in the update rule", "p": "the parameter in the update rule",
            "lr": "the learning rate", "L": "the loss"}


_LAYER_NAME = re.compile(r"[Wba]\d+(_\d+)?")  # a dense layer's parameter named by its depth
_BY_DEPTH = ("sn.dense without name= names a layer by its depth, so layers at the same depth "
             "in two branches of one network both get {name}; pass name= to the dense layers "
             "of a branch (sn.dense(X, 8, name='wide'))")


def _check_loss(loss, data, optimizer):
    if isinstance(loss, sp.Expr) and not loss.is_Matrix and any(
            isinstance(e, MatrixElement) for e in validate.unique_nodes(loss)):
        raise DeclarationError("the loss is a scalar, an entry of a matrix (loss[0, 0]); pass "
                               "the 1×1 matrix itself, such as sn.mse(out, Y)")
    if isinstance(loss, sp.MatrixBase):
        raise DeclarationError("the loss is an explicit SymPy Matrix of entries; pass the 1×1 "
                               "matrix expression itself, such as sn.mse(out, Y)")
    if isinstance(loss, np.ndarray):  # np.float64(0.5) * loss makes an object array of it
        raise DeclarationError(f"the loss is a NumPy array ({validate.describe(loss)}), which a "
                               f"NumPy number times a loss makes; multiply by a Python float "
                               f"instead (0.5 * loss, or float(c) * loss)")
    if not isinstance(loss, sp.MatrixExpr) or tuple(loss.shape) != (1, 1):
        shape = getattr(loss, "shape", None)
        raise DeclarationError(
            f"the loss must be a 1×1 matrix expression such as sn.mse(out, Y), got "
            f"{'shape ' + str(shape) if shape else repr(loss)}; reduce it with sn.sum or a loss")
    validate.computable(loss, "the loss")
    loss = canonical(loss, {batch})
    names = {}
    symbols = matrix_symbols(loss)
    read = {d.name for d in data}
    # data first, then by name: the same clash is reported in every run, and an input's clash
    # before the layer names it shifts (two X widths give W1 two shapes too)
    for s in sorted(symbols, key=lambda s: (s.name not in read, s.name, str(s.shape))):
        if s.name in names and names[s.name] != s:
            a, b = names[s.name], s
            why = ("give each input, target and constant its own name" if s.name in read else
                   _BY_DEPTH.format(name=s.name) if _LAYER_NAME.fullmatch(s.name) else
                   "give each parameter its own name")
            raise DeclarationError(
                f"the name {s.name} is used for two matrices, {a.shape[0]}×{a.shape[1]} and "
                f"{b.shape[0]}×{b.shape[1]}; {why}")
        names[s.name] = s
    notation = {**{str(s): f"the {s} of {type(optimizer).__name__}'s update rule"
                   for lhs, rhs in optimizer.rule() for s in lhs.free_symbols | rhs.free_symbols},
                **NOTATION}
    notation.update((name, "an adjoint (δZ is ∂L/∂Z)") for name in names
                    if name.startswith(("δ", "∂")))
    taken = sorted(set(names) & set(notation))
    if taken:
        raise DeclarationError(f"the matrix {taken[0]} would read as {notation[taken[0]]} in the "
                               f"formulas (model.formulas(), latex(), explain()); give it another "
                               f"name")
    if not any(d in symbols for d in data):
        raise DeclarationError("the loss uses none of the inputs or targets")
    return loss


def _parameters(loss, data, bytes_per_entry):
    """Every MatrixSymbol of the loss that is not data, in order of use; each must have a fixed
    shape, and all of them must fit in memory at ``bytes_per_entry``."""
    order, _, _ = _dag([loss])
    params = [e for e in order if isinstance(e, sp.MatrixSymbol) and e not in data]
    for p in params:
        if isinstance(p, ConstantSymbol):
            raise DeclarationError(
                f"{p.name} is an sn.Constant, whose value the kernels read at run time, but "
                f"constants= does not give it; pass sn.compile(..., constants={{{p.name}: "
                f"value}})")
        if not (p.shape[0].is_Integer and p.shape[1].is_Integer):
            raise DeclarationError(
                f"{p.name} ({p.shape[0]}×{p.shape[1]}) is not an input or target, so it is a "
                f"parameter, but its shape is not fixed; list it in inputs= or targets=")
    if not params:
        raise DeclarationError(
            "the loss has no parameters to train: every matrix in it is an input, a target or a "
            "constant; declare layers with sn.dense(X, units) or parameters with "
            "sn.parameter(name, rows, cols)")
    validate.fits_in_memory({p.name: (int(p.shape[0]), int(p.shape[1])) for p in params},
                            bytes_per_entry)
    return params


def _constants(constants, data, dtype) -> tuple[list, dict[str, np.ndarray]]:
    """``compile``'s ``{symbol: value}``: the symbols, and their values as arrays of their shapes."""
    if constants is None:
        return [], {}
    if not isinstance(constants, dict):
        raise DeclarationError(f"constants must be a dict such as {{sn.Constant('alpha'): 1e-4}}, "
                               f"got {validate.describe(constants)}")
    arrays, taken = {}, {s.name for s in data}
    for symbol, value in constants.items():
        if getattr(symbol, "name", None) in taken | set(arrays):
            raise DeclarationError(f"constants: {symbol.name} is listed twice (as an input, "
                                   f"target or constant); give each matrix its own name")
        if isinstance(symbol, str):  # the name, not the symbol the loss was declared with
            raise DeclarationError(f"constants: the keys are the symbols the loss uses, not "
                                   f"names: write {{alpha: ...}} with alpha = "
                                   f"sn.Constant({symbol!r}), the object in the loss, not "
                                   f"{{{symbol!r}: ...}}")
        if not isinstance(symbol, sp.MatrixSymbol) or not all(d.is_Integer for d in symbol.shape):
            raise DeclarationError(f"constants: {symbol!r} is not a matrix of fixed shape; make "
                                   f"it with sn.Constant(name)")
        validate.identifier(symbol.name, "constants")
        shape = tuple(int(d) for d in symbol.shape)
        try:
            array = np.array(np.broadcast_to(np.asarray(value, dtype=np.float64), shape), dtype)
        except (TypeError, ValueError):
            raise DeclarationError(f"constants: the value of {symbol.name} must be a number or an "
                                   f"array of shape {shape[0]}×{shape[1]}, got {value!r}") from None
        if not np.isfinite(array).all():
            raise DeclarationError(f"constants: the value of {symbol.name} is not finite: {value!r}")
        arrays[symbol.name] = array
    return list(constants), arrays


def _check_activation_names(*exprs):
    """No two different activations of one name: the formulas show an activation by its name,
    so ``sn.activation("sq", x**2, x)`` beside ``sn.activation("sq", x**3, x)`` would read as
    one function."""
    by_name = {}
    for expr in exprs:
        for e in validate.unique_nodes(expr):
            if isinstance(e, ScalarActivation):
                by_name.setdefault(e.func.__name__, {})[(e.func.definition, e.func.numeric)] = e
    for name, kinds in sorted(by_name.items()):
        if len(kinds) > 1:
            shown = " and ".join(sorted(f"{name}(x) = {d.expr}" for d, _ in kinds))
            raise DeclarationError(
                f"the network uses two different activations named {name!r} ({shown}); the "
                f"formulas show them by name, so give one another name in sn.activation(...)")


def _check_used(given, loss, predictions):
    """Every input, target and constant given to ``compile`` appears in the loss or a
    prediction: one that does not is most likely another symbol than the one the loss uses,
    and fit would ask for data that nothing reads."""
    used = set().union(*map(matrix_symbols, (loss, *predictions)))
    for what, symbols in given.items():
        for symbol in symbols:
            if symbol not in used:
                raise DeclarationError(f"{what}: {symbol.name} appears in neither the loss nor "
                                       f"the prediction; remove it from {what}=, or pass the "
                                       f"symbol the loss uses")


def _bytes_per_entry(dtype, optimizer):
    """Memory per parameter entry: value, gradient and optimizer state in the model's dtype, and
    the float64 initial value."""
    return dtype.itemsize * (2 + len(optimizer.state)) + 8


def _prediction_outputs(count: int) -> list[str]:
    """The forward program's output names: ``prediction``, or ``prediction1``, … for several."""
    return ["prediction"] if count == 1 else [f"prediction{i + 1}" for i in range(count)]


def _check_predictions(prediction, inputs, params) -> tuple:
    """The predictions in canonical form: () when not given, one for an expression, one per
    item of a list or tuple."""
    if prediction is None:
        return ()
    if not isinstance(prediction, (list, tuple)):
        return (_check_prediction(prediction, inputs, params),)
    if not prediction:
        raise DeclarationError("prediction=[] names nothing to predict; pass the network's "
                               "output (prediction=out), a list of outputs, or leave it out")
    exprs = tuple(_check_prediction(p, inputs, params) for p in prediction)
    if len(set(exprs)) < len(exprs):
        raise DeclarationError("prediction lists the same expression twice; list each output "
                               "once")
    return exprs


def _check_prediction(prediction, inputs, params):
    """One prediction in canonical form: a matrix expression with one row per input row,
    computed from the inputs and parameters only."""
    if not isinstance(prediction, sp.MatrixExpr):
        raise DeclarationError(f"prediction must be a matrix expression such as the network's "
                               f"output (prediction=out), got {validate.describe(prediction)}")
    validate.computable(prediction, "the prediction")
    if prediction.shape[0] != batch:
        raise DeclarationError(
            f"the prediction {prediction} is {prediction.shape[0]}×{prediction.shape[1]}, but "
            f"predict returns one row per input row; the prediction must have sn.batch rows "
            f"(pass the network's output, e.g. prediction=out)")
    expr = canonical(prediction, {batch})
    stray = matrix_symbols(expr)
    stray -= set(inputs) | set(params)
    if stray:
        raise DeclarationError(
            f"the prediction uses {sorted(map(str, stray))}, which are not inputs or "
            f"parameters of the loss; predict() gets only the inputs")
    return expr


def _at_prediction(defs: dict, norms) -> dict:
    """``defs`` as predict and evaluate compute them: each batch norm on its running
    statistics, each dropout the identity."""
    defs = {**defs, **{norm.xhat: norm.at_prediction() for norm in norms}}
    return {k: _without_dropout(v) for k, v in defs.items()}


def _without_dropout(expr):
    """``expr`` as predict computes it: every dropout A ∘ M/(1 − p) is A."""
    drops = {e for e in validate.unique_nodes(expr) if isinstance(e, Dropout)}
    return validate.replace_nodes(expr, {d: d.arg for d in drops}) if drops else expr


def _dtype(dtype, what="dtype", error=DeclarationError):
    """``dtype`` as float32 or float64, the precisions the kernels compute in."""
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt not in (np.dtype("float32"), np.dtype("float64")):
        raise error(f"{what} must be 'float32' or 'float64', got {validate.describe(dtype)}; "
                    f"pass 'float32' (fast) or 'float64' (exact, for gradient checks)")
    return dt


def _param_array(value, name, shape, dtype, where="params"):
    """``model.params[name]`` (or ``model.constants[name]``) checked before a kernel reads it:
    an array (or nested lists) of the declared shape, real and finite, converted to ``dtype``
    (C-contiguous, writeable) when it is not."""
    entry = f"model.{where}[{name!r}]"
    fix = f"write into the array instead of replacing it: {entry}[...] = value"
    if value is None:
        raise DataError(f"model.{where} has no array for {name!r} (it is missing or None); put "
                        f"back an array of shape {shape}, e.g. {entry} = np.zeros({shape})")
    given = value
    if isinstance(value, (list, tuple)):  # nested lists of the declared shape: as an array
        with contextlib.suppress(ValueError, TypeError):
            value = np.asarray(value)
    if isinstance(value, np.ndarray) and shape[0] == 1 and value.shape == (shape[1],):
        # a bias as torch keeps it, (k,): a copy as the 1×k row, as a transposed weight is
        # copied (torch's .numpy() shares the tensor's memory, which fit would then change)
        value = np.array(value[None, :], dtype=dtype)
    if not isinstance(value, np.ndarray) or value.shape != shape:
        if isinstance(value, np.ndarray) and value.shape == shape[::-1] and shape[0] == 1:
            fix = f"it is a column: pass it as a row, {entry} = value.reshape(1, -1)"
        elif isinstance(value, np.ndarray) and value.shape == shape[::-1]:
            fix = (f"it is the transpose (torch's nn.Linear keeps its weight as outputs × "
                   f"inputs): {entry} = weight.T")
        raise DataError(f"{entry} is {validate.describe(given)}, but {name} is "
                        f"{shape[0]}×{shape[1]}; {fix}")
    if value.dtype.kind not in "biuf":
        raise DataError(f"{entry} has dtype {value.dtype}, but {where} are real numbers; {fix}")
    value = np.require(value, dtype=dtype, requirements=["C", "A", "W"])
    if not np.isfinite(value.sum(dtype=np.float64)):  # one pass; exact search only on failure
        bad = np.argwhere(~np.isfinite(value))
        if len(bad):
            row, col = bad[0]
            raise DataError(f"{entry} has a non-finite value ({value[row, col]}) in row {row}, "
                            f"column {col}; write finite values into it ({entry}[...] = value)")
    return value


def _scaled_weights(w, dtype) -> np.ndarray:
    """Row weights in the model's dtype, scaled to at most 1, which leaves every batch's Σωℓ/Σω
    as it is: weights of 1e38 (whose batch sums overflow float32) or 1e-40 (subnormal, flushed
    to 0 by the kernels) train as in float64. A positive weight below eps² of the largest is
    raised to eps²: beside a larger weight in its batch it still adds nothing, and a batch of
    only such rows stays a mean instead of 0/0."""
    floor = np.finfo(dtype).eps ** 2
    scaled = w / w.max()
    return np.where(scaled > 0, np.maximum(scaled, floor), 0).astype(dtype)


def _label_threshold(loss, prediction, targets) -> float | None:
    """Where one target's prediction says a label is on: 0.5 for a prediction σ(Z) (a
    probability per label), 0 for logits P whose σ(P) the loss reads (torch's habit with
    BCEWithLogitsLoss); None for other predictions."""
    if len(targets) != 1 or prediction is None:
        return None
    if _is_sigmoid(prediction):
        return 0.5
    if any(_is_sigmoid(n) and n.arg == prediction for n in validate.unique_nodes(loss)):
        return 0.0
    return None


def _is_sigmoid(e) -> bool:
    return isinstance(e, Elementwise) and isinstance(e.fn.expr, _sigmoid.function)


def _distribution_targets(loss, targets) -> frozenset:
    """The targets a softmax cross-entropy reads as class distributions: Y of Σ Y∘Z beside
    logsumexp(Z). That loss, Σ logsumexp(Z) − Σ Y∘Z, is −Σ Y∘log softmax(Z) only for rows of Y
    that sum to 1."""
    nodes = set(validate.unique_nodes(loss))
    logits = {n.args[0] for n in nodes if isinstance(n, RowLogSumExp)}
    return frozenset(t for n in nodes if isinstance(n, sp.HadamardProduct) and len(n.args) == 2
                     for t in targets if t in n.args and (set(n.args) - {t}) & logits)


def _probability_targets(loss, targets) -> frozenset:
    """The targets a binary cross-entropy reads as probabilities: Y of Y∘log P beside
    (𝟙 − Y)∘log(1 − P). Its loss is bounded below by 0 only for 0 ≤ Y ≤ 1; a target of 2 trains
    P towards 1 without end, the loss falling below any number."""
    def logged(n):  # the other factor of a product with a log, or None
        if isinstance(n, sp.HadamardProduct) and len(n.args) == 2:
            logs = [a for a in n.args if isinstance(a, Elementwise) and a.fn.expr.func is sp.log]
            if logs:
                return n.args[1] if n.args[0] is logs[0] else n.args[0]
        return None

    factors = {logged(n) for n in validate.unique_nodes(loss)}
    return frozenset(t for t in targets if t in factors and sp.OneMatrix(*t.shape) - t in factors)


def _check_probabilities(a, name):
    """Entries of ``a`` in [0, 1], else a DataError naming the first other."""
    with np.errstate(invalid="ignore"):  # non-finite entries are the finiteness check's to name
        outside = (a < 0) | (a > 1)  # the exact search only when there is something to name
        outside = np.argwhere(outside & np.isfinite(a)) if outside.any() else ()
    if len(outside):
        row, col = outside[0]
        raise DataError(f"{name} has the value {a[row, col]:.4g} in row {row}, column {col}; "
                        f"binary_cross_entropy's targets are probabilities in [0, 1] (0/1 labels): "
                        f"map the labels to 0 and 1 (e.g. labels == positive), or use "
                        f"softmax_cross_entropy for several classes")


ROW_SUM = 1e-3  # how far from 1 a row of probabilities may sum (float16 teachers' rounding)


def _check_distributions(a, name):
    """Rows of ``a`` that are class distributions (≥ 0, summing to 1 within ``ROW_SUM``), else
    a DataError naming the first other row."""
    fix = (f"softmax_cross_entropy's targets are one-hot rows or probabilities, each row ≥ 0 "
           f"and summing to 1: pass integer class labels or np.eye(k)[labels], or normalise the "
           f"rows; for several labels per row, use binary_cross_entropy(sn.sigmoid(Z), {name})")
    with np.errstate(invalid="ignore"):  # non-finite rows are the finiteness check's to name
        negative = np.argwhere((a < 0) & np.isfinite(a)) if (a < 0).any() else ()
        if len(negative):
            row, col = negative[0]
            raise DataError(f"{name} has the negative value {a[row, col]:.4g} in row {row}, "
                            f"column {col}; {fix}")
        # row sums by einsum (float32 up to 1024 columns, whose rounding stays far below
        # ROW_SUM): 0.2-0.3 ms on Fashion-MNIST's 60 000 labels where a.sum(axis=1) takes 1 ms;
        # not a product with ones, which wakes NumPy's OpenBLAS threads, and they spin ~85 ms
        # beside the kernels' team after every fit call (2 % of a wide epoch's cores)
        k = a.shape[1]
        sums = np.einsum("ij->i", a, dtype=a.dtype if a.dtype == np.float32 and k <= 1024
                         else np.float64)
        off = np.flatnonzero(np.isfinite(sums) & (np.abs(sums - 1) > ROW_SUM))
    if len(off):
        raise DataError(f"row {off[0]} of {name} sums to {sums[off[0]]:.4g}; {fix}")


def _distributions(target) -> bool:
    """Rows that are class distributions (one-hot or probabilities, ≥ 0 and summing to 1), whose
    argmax is a class; other targets of several columns are a regression's."""
    return bool((target >= 0).all() and np.allclose(target.sum(axis=1, dtype=np.float64), 1,
                                                     rtol=0, atol=ROW_SUM))


def _r2(target, pred) -> float:
    """R² of each column, 1 − Σ(y − p)²/Σ(y − ȳ)², averaged over the columns (a constant column:
    1 when predicted exactly, else 0), as ``sklearn.metrics.r2_score``; NaN for one row, where
    it is not defined."""
    y, p = np.asarray(target, np.float64), np.asarray(pred, np.float64)
    if len(y) < 2:
        return float("nan")
    residual = ((y - p) ** 2).sum(axis=0)
    total = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    constant = total == 0
    scores = np.where(constant, (residual == 0).astype(np.float64),
                      1 - residual / np.where(constant, 1, total))
    return float(scores.mean())


def _running_array(value, name, shape, dtype):
    """A running statistic checked as a parameter is (:func:`_param_array`); a variance must
    also be ≥ 0, or prediction would take the square root of a negative number."""
    value = _param_array(value, name, shape, dtype, where="running")
    if name.startswith("running_var") and (value < 0).any():
        col = int(np.flatnonzero(value[0] < 0)[0])
        raise DataError(f"model.running[{name!r}] has the negative variance {value[0, col]} in "
                        f"column {col}; a variance is ≥ 0: write one into it "
                        f"(model.running[{name!r}][...] = value)")
    return value


def _one_hot(arr, sym, dtype):
    """Integer class labels of shape (n,) as the one-hot rows of a target of k ≥ 2 columns, in
    ``dtype`` (anything else is returned as it is, for :func:`_as_data` to check). Written
    entry by entry into zeros of ``dtype``, one copy: ``np.eye(k)[labels]`` and its conversion
    took 2.3 GB and 6.4 s for 200 000 labels of 1000 classes, this 0.8 GB and 2.1 s."""
    k = int(sym.shape[1])
    if (isinstance(arr, (list, tuple)) and len(arr) == 1 and hasattr(arr[0], "__array__")
            and np.ndim(arr[0]) == 1 and len(arr[0]) not in (1, k)):
        raise DataError(f"{sym.name} came as a list that holds one 1-D array of {len(arr[0])} "
                        f"values, which is one row of {len(arr[0])} columns (a list is the form "
                        f"for several targets, an array each); pass the array itself")
    if k < 2 or not (isinstance(arr, (np.ndarray, list, tuple)) or hasattr(arr, "__array__")):
        return arr  # (pandas Series and the like have __array__)
    validate.unmasked(arr, sym.name)
    try:
        a = np.asarray(arr)
    except (ValueError, TypeError):
        return arr  # ragged: _as_data names it
    if a.ndim == 2 and a.shape[1] == 1 and a.dtype.kind in "iubf":
        a = a[:, 0]  # a column of labels (whole-number floats as pandas' df[["label"]] gives)
    if a.ndim != 1:
        return arr
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        row = int(np.flatnonzero(~np.isfinite(a))[0])
        raise DataError(f"{sym.name} has a missing or non-finite label ({a[row]}) in row {row}; "
                        f"fill or drop the rows without a label first")
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    elif a.dtype.kind == "f" and (a == np.round(a)).all():
        a = a.astype(np.int64)  # whole numbers, as pandas gives labels beside a missing value
    if a.dtype.kind not in "iu":
        hint = (" (np.unique(labels, return_inverse=True)[1] numbers any labels 0…k − 1)"
                if a.dtype.kind in "USO" else "")
        held = (f"{a.dtype} values that are not whole numbers" if a.dtype.kind == "f" else
                f"{a.dtype} values, not integers")
        raise DataError(f"{sym.name} has {k} columns, and a 1-D {sym.name} (or one column) is read "
                        f"as class labels 0…{k - 1}, but it holds {held}: pass integer class "
                        f"labels of shape (n,){hint}, or one row per example of shape (n, {k}) "
                        f"(one-hot, probabilities, or regression targets, one column per output)")
    outside = (a < 0) | (a >= k)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise DataError(f"{sym.name}: the class label {a[row]} in row {row} is outside 0…{k - 1}; "
                        f"the model has {k} classes, one per column of {sym.name}")
    rows = np.zeros((len(a), k), dtype)
    rows[np.arange(len(a)), a] = 1
    return rows


def _as_data(arr, sym, dtype, check_finite=True, convert=True):
    """``arr`` checked as the data of ``sym`` (2-D, its columns, some rows) and converted to
    ``dtype``; without ``convert``, checked but left in its own dtype, for :func:`_chunks` to
    convert a batch at a time (a raw uint8 image set is 4× smaller than its float32 copy)."""
    name, cols = sym.name, int(sym.shape[1])
    a = validate.real_array(arr, name)
    if a.ndim == 0:
        raise DataError(f"{name} is the single number {a.item()!r}; data is a 2-D array with one "
                        f"row per example and {cols} column(s), of shape (rows, {cols})")
    if a.ndim == 1 and cols == 1:
        a = a[:, None]
    if a.ndim != 2:
        fix = ("; for one example, pass it as one row: reshape(1, -1)"
               if a.ndim == 1 and a.shape[0] == cols else
               "; to flatten each example, reshape(len(data), -1)"
               if a.ndim > 2 and int(np.prod(a.shape[1:])) == cols else
               f"; pass one row per example, {cols} column(s) each")
        raise DataError(f"{name}: expected a 2-D array with {cols} columns, got shape "
                        f"{a.shape}{fix}")
    if a.shape[1] != cols:
        raise DataError(f"{name} has {cols} columns in the model but the data has {a.shape[1]}")
    if a.shape[0] == 0:
        raise DataError(f"{name}: the data has no rows (shape {a.shape}); pass at least one "
                        f"example")
    if convert or (a.dtype == dtype and a.flags.c_contiguous):  # (then no copy: checked now)
        return _converted(a, name, dtype, check_finite)
    return a


def _converted(a, name, dtype, check_finite=True, first_row=0):
    """The 2-D array ``a`` as a C-contiguous array of ``dtype``; with ``check_finite``, a
    DataError naming the first entry that is not finite in it (its row counted from
    ``first_row``: ``a`` may be a batch of the caller's data)."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(a, dtype=dtype)
        if not check_finite:
            return converted
        # one pass, the exact search only when it fails (also when finite values overflow the
        # sum): Fashion-MNIST's training images took 16 ms to check entry by entry, 7 ms to sum
        finite = np.isfinite(converted.sum())
    bad = [] if finite else np.argwhere(~np.isfinite(converted))
    if len(bad):
        row, col = bad[0]
        if np.isfinite(a[row, col]):
            raise DataError(f"{name} has the value {a[row, col]} in row {first_row + row}, column "
                            f"{col}, too large for {dtype.name} (at most "
                            f"{np.finfo(dtype).max:.4g}); scale the data, or compile with "
                            f"dtype='float64'")
        raise DataError(f"{name} has a non-finite value ({a[row, col]}) in row {first_row + row}, "
                        f"column {col}; clean or impute the data first")
    return converted
