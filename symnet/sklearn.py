"""scikit-learn estimators: :class:`SymnetClassifier` and :class:`SymnetRegressor`.

Each ``fit`` declares an MLP (``hidden`` layers of ``activation``, optional batch norm and
dropout), compiles it with symnet and trains it; the compiled model is ``model_``, so
``est.model_.formulas()`` shows the estimator's maths. They follow scikit-learn's estimator
contract (``check_estimator`` passes every check), pickle through symnet's data-only model file,
and run in ``GridSearchCV`` on any joblib backend, Dask's included.

``sample_weight`` are frequency weights, as scikit-learn defines them: a row of weight k trains
as k copies of the row (whole-number weights, within 1e-6, are applied as repetitions, up to
100 times the rows, and rows of weight 0 are left out), and fractional weights weigh each row's
loss in its batch's weighted mean, which no common factor changes. Training
sees the rows in an order fixed by their values and ``random_state``, not by their order in X,
so that repeated rows and weights give the same model.
"""

from __future__ import annotations

import collections
import math
import threading

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.model_selection import ParameterGrid, train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from . import functions as fn
from . import optim, validate
from .blocks import batch_norm, dropout
from .declare import Constant, Input, dense, weights
from .errors import DataError, DeclarationError
from .model import compile

ACTIVATIONS = {"relu": fn.relu, "tanh": fn.tanh, "logistic": fn.sigmoid, "sigmoid": fn.sigmoid,
               "identity": fn.identity, "elu": fn.elu(), "gelu": fn.gelu, "swish": fn.swish,
               "softplus": fn.softplus, "leaky_relu": fn.leaky_relu()}
OPTIMIZERS = {"adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSProp,
              "adagrad": optim.AdaGrad, "sgd": lambda lr: optim.SGD(lr, momentum=0.9,
                                                                      nesterov=True)}
ALPHA = Constant("alpha")  # the L2 penalty's coefficient, read by the kernels at run time
INTEGRAL = 1e-6  # weights this close to whole numbers are whole: rounding must not switch rule
MAX_REPEATS = 100  # whole-number weights may make at most this many times the rows
PATIENCE = 10  # epochs without a better validation loss before early stopping (scikit-learn's)
RECENT_MODELS = 16  # compiled configurations kept per process
_RECENT: collections.OrderedDict = collections.OrderedDict()  # configuration → compiled model
_RECENT_LOCK = threading.Lock()


class _SymnetMLP(BaseEstimator):
    """What both estimators share: the parameters, the network, fit and partial_fit."""

    def __init__(self, hidden=(100,), activation="relu", optimizer="adam", learning_rate=1e-3,
                 batch_size=32, epochs=200, alpha=0.0, dropout=0.0, batch_norm=False,
                 early_stopping=False, validation_fraction=0.1, random_state=None,
                 dtype="float32", verbose=False):
        self.hidden = hidden
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.alpha = alpha
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.dtype = dtype
        self.verbose = verbose

    # -- the network
    def _check_params(self):
        where = type(self).__name__
        for name, table in (("activation", ACTIVATIONS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in table:
                raise DeclarationError(f"{where}: {name}={getattr(self, name)!r} is not one of "
                                       f"{sorted(table)}")
        hidden = (self.hidden,) if isinstance(self.hidden, (int, np.integer)) else self.hidden
        if (isinstance(hidden, (str, bytes)) or not isinstance(hidden, (tuple, list))
                or not all(isinstance(u, (int, np.integer)) and not isinstance(u, bool) and u >= 1
                           for u in hidden)):
            raise DeclarationError(f"{where}: hidden must be a tuple of layer widths ≥ 1 such as "
                                   f"(100,), got {validate.describe(self.hidden)}")
        validate.number(self.learning_rate, "learning_rate", above=0, example=1e-3, where=where)
        validate.number(self.alpha, "alpha", low=0, example=1e-4, where=where)
        validate.number(self.dropout, "dropout", low=0, below=1, example=0.2, where=where)
        for flag in ("batch_norm", "early_stopping"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise DeclarationError(f"{where}: {flag} must be True or False, got "
                                       f"{validate.describe(getattr(self, flag))}")
        batch = self.batch_size
        if not (isinstance(batch, str) and batch == "auto") and (
                isinstance(batch, (bool, np.bool_)) or not isinstance(batch, (int, np.integer))
                or batch < 1):
            raise DeclarationError(f"{where}: batch_size must be a positive integer or 'auto' "
                                   f"(200 rows at most), got {validate.describe(batch)}; pass "
                                   f"e.g. batch_size=32")
        if self.batch_norm and batch == 1:
            raise DeclarationError(f"{where}: batch_norm needs batches of at least 2 rows (a "
                                   f"1-row batch's variance is 0, as torch's BatchNorm1d "
                                   f"refuses it), got batch_size=1; pass batch_size=2 or more, "
                                   f"or batch_norm=False")
        validate.number(self.validation_fraction, "validation_fraction", above=0, below=1,
                        example=0.1, where=where)
        validate.integer(self.epochs, "epochs", low=0, where=where)  # 0: warm_up compiles
        return tuple(int(u) for u in hidden)

    def _network(self) -> dict:
        """The parameters the compiled network is made of: a change to any needs a new one."""
        hidden = self.hidden
        return {"hidden": (hidden,) if isinstance(hidden, (int, np.integer)) else tuple(hidden),
                **{name: getattr(self, name) for name in
                   ("activation", "optimizer", "dropout", "batch_norm", "dtype")}}

    def _model(self, n_in, n_out, seed):
        """A model of this configuration, from the process's recent ones when it has one of
        it (``Model.fresh``: new parameters, the same kernels); the folds of a search and its
        refit then skip the symbolic work and the kernel loading."""
        hidden = self._check_params()
        optimizer = OPTIMIZERS[self.optimizer](self.learning_rate)
        key = (type(self).__name__, hidden, self.activation, self.optimizer,
               float(self.dropout), bool(self.batch_norm), str(self.dtype), n_in, n_out)
        with _RECENT_LOCK:
            template = _RECENT.pop(key, None)
        if template is None:
            template = self._compile(hidden, n_in, n_out, optimizer)
        with _RECENT_LOCK:
            _RECENT[key] = template
            while len(_RECENT) > RECENT_MODELS:
                _RECENT.popitem(last=False)
        model = template.fresh(seed, optimizer)  # the learning rate is a kernel input
        model.constants[ALPHA.name][...] = self.alpha  # and so is the penalty
        model.remedy = ("A smaller learning_rate, scaled inputs (StandardScaler) or "
                        "dtype='float64' usually help.")
        return model

    def _compile(self, hidden, n_in, n_out, optimizer):
        X, Y = Input("X", n_in), Input("Y", n_out)
        h = X
        for k, units in enumerate(hidden, start=1):
            z = dense(h, units, name=str(k))
            if self.batch_norm:
                z = batch_norm(z, str(k))
            h = dropout(ACTIVATIONS[self.activation](z), self.dropout)
        out = dense(h, n_out, name=str(len(hidden) + 1))
        loss, prediction = self._loss(out, Y)
        loss = loss + fn.l2(ALPHA, *weights(out))  # alpha = 0 too: one kernel for every alpha
        return compile(loss, inputs=[X], targets=[Y], prediction=prediction,
                       optimizer=optimizer, dtype=self.dtype, constants={ALPHA: self.alpha})

    # -- training
    def fit(self, X, y, sample_weight=None):
        """Train a new network on X, y (``sample_weight``: frequency weights, see the module)."""
        self._check_params()
        X, Y, w = self._data(X, y, sample_weight, reset=True)
        self._start(X.shape[1], Y.shape[1])
        self._train(X, Y, w, self.epochs, self.early_stopping)
        return self

    def _partial_fit(self, X, y, sample_weight, **targets):
        """One more epoch on X, y (the first call starts a new network). learning_rate and
        alpha set since are used, as the kernels read them at run time; a change to the
        network itself is refused."""
        self._check_params()
        first = not hasattr(self, "model_")
        if not first:
            self._check_network_unchanged()
        X, Y, w = self._data(X, y, sample_weight, reset=first, **targets)
        if first:
            self._start(X.shape[1], Y.shape[1])
        else:
            self.model_.optimizer = OPTIMIZERS[self.optimizer](self.learning_rate)
            self.model_.constants[ALPHA.name][...] = self.alpha
        self._train(X, Y, w, 1, False)
        return self

    def _check_network_unchanged(self):
        built = getattr(self, "_built", self._network())
        for name, now in self._network().items():
            if now != built[name]:
                raise DeclarationError(
                    f"{type(self).__name__}.partial_fit: {name} is {now!r} but the network was "
                    f"built with {name}={built[name]!r}, and partial_fit trains the network it "
                    f"has. Call fit to build a new network, or set {name} back.")

    def _start(self, n_in, n_out):
        rng = check_random_state(self.random_state)
        self._seed = int(rng.randint(2**31 - 1))
        self.model_ = self._model(n_in, n_out, self._seed)
        self._built = self._network()
        self.loss_curve_ = []
        self.validation_scores_ = [] if self.early_stopping else None
        self.validation_loss_ = [] if self.early_stopping else None
        self.n_iter_ = 0

    def _strata(self, Y, held):
        """The classes the early-stopping hold-out keeps in proportion (None: a random split)."""
        return None

    def _train(self, X, Y, w, epochs, early_stopping):
        X, Y, w = _canonical_rows(X, Y, w)
        validation = None
        if early_stopping and len(X) >= 4:
            held = math.ceil(self.validation_fraction * len(X))  # as train_test_split counts
            if held >= len(X):
                raise DataError(f"{type(self).__name__}: validation_fraction="
                                f"{self.validation_fraction} of {len(X)} rows holds out all "
                                f"of them, leaving none to train on; use a smaller fraction")
            arrays = (X, Y) if w is None else (X, Y, w)
            split = train_test_split(*arrays, test_size=self.validation_fraction,
                                     random_state=self._seed, stratify=self._strata(Y, held))
            X, Xv, Y, Yv = split[:4]
            w = split[4] if w is not None else None
            validation = (Xv, Yv)
        batch = _batch_size(len(X), self.batch_size, self.batch_norm)
        hist = self.model_.fit(X, Y, epochs=epochs, batch_size=batch, verbose=self.verbose,
                               validation_data=validation,
                               early_stopping=PATIENCE if validation else None,
                               seed=self._seed + self.n_iter_, sample_weight=w)
        self.loss_curve_ += hist.loss
        if validation is not None:
            self.validation_scores_ += self._scores(hist)
            self.validation_loss_ += hist.val_loss
        self.n_iter_ += len(hist.loss)

    def _data(self, X, y, sample_weight, reset, **kwargs):
        """Checked float arrays X, the target matrix Y, and weights (integer weights applied
        as repetitions, leaving None; fractional ones returned per row)."""
        for name, a in (("X", X), ("y", y), ("sample_weight", sample_weight)):
            validate.unmasked(a, name)  # scikit-learn reads the values under the mask
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float64,
                             **self._validation_options())
        Y = self._targets(y, reset, **kwargs)
        for name, a in (("X", X), ("y", Y)):  # named by their rows in the caller's data:
            _check_range(a, name, np.dtype(self.dtype))  # training reorders and repeats rows
        if sample_weight is None:
            return X, Y, None
        w = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if w.sum() <= 0:
            raise DataError("every sample_weight is 0; at least one row must weigh more")
        counts = np.round(w)
        if np.allclose(w, counts, rtol=0, atol=INTEGRAL):  # frequency weights: k copies of each
            total = counts.sum()
            if total > MAX_REPEATS * len(w):
                raise DataError(f"sample_weight: whole-number weights are applied as that many "
                                f"copies of each row, and these ({len(w)} rows, weights up to "
                                f"{w.max():.4g}) would make {total:.4g} rows; divide them by a "
                                f"common factor, e.g. sample_weight / sample_weight.max()")
            counts = counts.astype(np.int64)
            return X.repeat(counts, axis=0), Y.repeat(counts, axis=0), None
        keep = w > 0
        return X[keep], Y[keep], w[keep]


PARAMETERS = """
    Parameters
    ----------
    hidden : tuple of int, default (100,)
        The widths of the hidden layers (an int for one layer).
    activation : {'relu', 'tanh', 'logistic', 'sigmoid', 'identity', 'elu', 'gelu', 'swish',
        'softplus', 'leaky_relu'}, default 'relu'
    optimizer : {'adam', 'adamw', 'rmsprop', 'adagrad', 'sgd'}, default 'adam'
        'sgd' is SGD with Nesterov momentum 0.9; the others have torch's defaults.
    learning_rate : float > 0, default 1e-3
    batch_size : int ≥ 1 or 'auto', default 32
        Rows per step, at most all of them; 'auto' is scikit-learn's min(200, rows). With
        batch_norm at least 2, and a size that would leave a last batch of one row is raised to
        the next size that does not (a 1-row batch's variance is 0).
    epochs : int ≥ 0, default 200
    alpha : float ≥ 0, default 0.0
        L2 penalty alpha/2·Σ‖W‖² on the weight matrices (not on the biases).
    dropout : float in [0, 1), default 0.0
        Dropout after every hidden activation, during training only.
    batch_norm : bool, default False
        Batch norm between every hidden layer and its activation.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the rows; stop when their loss has not fallen for
        10 epochs, and keep the best epoch's parameters.
    validation_fraction : float in (0, 1), default 0.1
        The rows early stopping holds out; the classifier's keep each class's share (unless a
        class has one row), for any number of classes (MLPClassifier stratifies binary ones).
    random_state : int, RandomState or None, default None
        Seeds the initial weights, the shuffling and the dropout masks.
    dtype : {'float32', 'float64'}, default 'float32'
    verbose : bool or {0, 1, 2}, default False
        Progress bars, one per ``fit``; 2: lines, as ``fit`` writes to a log.

    Attributes
    ----------
    model_ : symnet.Model
        The compiled network: ``model_.formulas()`` shows its derivation.
    loss_curve_ : list of float
        The training loss of every epoch: cross-entropy, or the regressor's mean squared error
        (MLPRegressor's loss_curve_ is half of it), plus the L2 penalty.
    validation_scores_ : list of float or None
        With early stopping, the held-out rows' score of every epoch, as scikit-learn's MLP:
        accuracy (classifier) or R² (regressor); higher is better.
    validation_loss_ : list of float or None
        With early stopping, the held-out rows' loss of every epoch (the L2 penalty included).
    n_iter_ : int
        Epochs trained.
"""


class SymnetClassifier(ClassifierMixin, _SymnetMLP):
    """An MLP classifier compiled by symnet: softmax cross-entropy over the classes; ``classes_``
    are the labels in the order of ``predict_proba``'s columns."""

    def _validation_options(self):
        return {}

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One more epoch on X, y (the first call starts a new network; ``classes``, every
        class the network will see, may be given then)."""
        return self._partial_fit(X, y, sample_weight, classes=classes)

    def _strata(self, Y, held):
        """Each row's class, so that the hold-out keeps each class's share (MLPClassifier does
        for binary problems); a random split where a stratified one cannot be made (a class of
        one row, fewer held-out rows than classes)."""
        labels = Y.argmax(axis=1)
        counts = np.bincount(labels)
        classes = np.count_nonzero(counts)
        if counts[counts > 0].min() < 2 or min(held, len(labels) - held) < classes:
            return None
        return labels

    def _targets(self, y, reset, classes=None):
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if reset:
            self.classes_ = np.unique(y if classes is None else classes)
            if len(self.classes_) < 2:
                raise DataError(f"Classifier can't train when only one class is present: "
                                f"{self.classes_.tolist()}; give it rows of at least two "
                                f"classes (or, for partial_fit, every class in classes=)")
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise DataError(f"classes={np.unique(classes).tolist()} is not classes_ "
                            f"{self.classes_.tolist()} of the first call; the network has one "
                            f"output per class, so every call must name the same classes")
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise DataError(f"y has classes {unknown.tolist()} that are not among classes_ "
                            f"{self.classes_.tolist()}; the network has one output per class, "
                            f"so name every class in the first partial_fit's classes=, or fit "
                            f"again")
        return np.eye(len(self.classes_))[np.searchsorted(self.classes_, y)]

    def _loss(self, out, Y):
        return fn.softmax_cross_entropy(out, Y), fn.softmax(out)

    def predict_proba(self, X):
        """The probability of each class (columns in the order of ``classes_``)."""
        check_is_fitted(self)
        validate.unmasked(X, "X")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        probs = self.model_.predict(X).astype(np.float64)
        return probs / probs.sum(axis=1, keepdims=True)  # float32's sums are 1 only to ~1e-7

    def _scores(self, hist):
        return list(hist.val_accuracy)

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        return tags


class SymnetRegressor(RegressorMixin, _SymnetMLP):
    """An MLP regressor compiled by symnet: mean squared error, one output per target column."""

    def _validation_options(self):
        return {"multi_output": True, "y_numeric": True}

    def partial_fit(self, X, y, sample_weight=None):
        """One more epoch on X, y (the first call starts a new network)."""
        return self._partial_fit(X, y, sample_weight)

    def _scores(self, hist):
        return list(hist.history.get("val_r2", []))

    def _targets(self, y, reset):
        y = np.asarray(y, dtype=np.float64)
        if reset:
            self._one_output = y.ndim == 1
        Y = y.reshape(len(y), -1)
        if not reset and Y.shape[1] != self.model_.targets[0].shape[1]:
            raise DataError(f"y has {Y.shape[1]} columns; the network was fitted with "
                            f"{self.model_.targets[0].shape[1]}: pass targets of that many "
                            f"columns, or fit again")
        return Y

    def _loss(self, out, Y):
        return fn.mse(out, Y), out

    def predict(self, X):
        check_is_fitted(self)
        validate.unmasked(X, "X")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        out = self.model_.predict(X).astype(np.float64)
        return out[:, 0] if self._one_output else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


SymnetClassifier.__doc__ += PARAMETERS
SymnetRegressor.__doc__ += PARAMETERS


def _check_range(a, name, dtype):
    """Every value of ``a`` within ``dtype``'s range, else a DataError naming the first other."""
    big = np.finfo(dtype).max
    over = np.abs(a) > big
    if over.any():
        row, col = np.argwhere(over)[0]
        raise DataError(f"{name} has the value {a[row, col]:.4g} in row {row}"
                        f"{f', column {col}' if a.shape[1] > 1 else ''}, too large for "
                        f"{dtype.name} (at most {big:.4g}); scale the data, or pass "
                        f"dtype='float64'")


def _canonical_rows(X, Y, w):
    """The rows in the order of their values (X, then Y, then the weights): the model trains
    the same on any permutation of them."""
    keys = [X[:, j] for j in range(X.shape[1])] + [Y[:, j] for j in range(Y.shape[1])]
    if w is not None:
        keys.append(w)
    order = np.lexsort(keys[::-1])
    return X[order], Y[order], None if w is None else w[order]


def _batch_size(rows: int, batch: int | str, norm: bool) -> int:
    """``batch`` rows (at most all of them; ``"auto"``: 200, as scikit-learn's MLP); with batch
    norm, the next size that leaves no 1-row batch, whose variance would be 0."""
    batch = max(1, min(200 if batch == "auto" else int(batch), rows))
    if norm and rows > 1:
        while (rows - 1) % batch == 0:
            batch += 1
    return batch


def warm_up(estimator, X, y, param_grid=None) -> int:
    """Compile into the kernel cache the kernels of every configuration of ``param_grid``
    (scikit-learn's grid format, or a RandomizedSearchCV space whose distributions are over
    learning_rate, alpha or random_state only) of ``estimator`` (a symnet estimator, or a
    Pipeline ending in one) on data shaped as X, y; returns how many sets of kernels that was.
    learning_rate, alpha and random_state are read at run time, so configurations that differ
    only in them share their kernels and are compiled once. Run it once before a search fans
    out, with ``SYMNET_CACHE_DIR`` on a file system the workers share: each worker then loads
    the machine code instead of compiling it."""
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    if not isinstance(final, _SymnetMLP):
        raise DeclarationError(f"warm_up compiles the kernels of a symnet estimator, or of a "
                               f"Pipeline ending in one; got {type(final).__name__}")
    own = f"{estimator.steps[-1][0]}__" if hasattr(estimator, "steps") else ""
    grid = list(ParameterGrid([_compiled_part(g, own) for g in _grids(param_grid)]))
    for params in grid:
        est = clone(estimator).set_params(**params)
        last = est.steps[-1] if hasattr(est, "steps") else None
        est.set_params(**{f"{last[0]}__epochs" if last else "epochs": 0})
        est.fit(X, y)
        (last[1] if last else est).model_.compile_kernels()
    return len(grid)


RUN_TIME = ("learning_rate", "alpha", "random_state")  # read by the kernels at run time


def _grids(param_grid) -> list:
    if param_grid is None:
        return [{}]
    return list(param_grid) if isinstance(param_grid, (list, tuple)) else [param_grid]


def _compiled_part(grid, own: str) -> dict:
    """The entries of one grid that may change the kernels, each a list of values: all but the
    symnet estimator's run-time settings (its parameters are ``own`` + name in a Pipeline; another
    step's ``alpha`` may change the data's width)."""
    if not isinstance(grid, dict):
        raise DeclarationError(f"warm_up takes a grid as GridSearchCV does (a dict of lists, or "
                               f"a list of such dicts), got {validate.describe(grid)}")
    kept = {}
    for key, values in grid.items():
        if key.removeprefix(own) in RUN_TIME:
            continue
        if isinstance(values, str) or not hasattr(values, "__len__"):
            raise DeclarationError(
                f"warm_up: {key} is {validate.describe(values)}, not a list of values; only "
                f"{', '.join(RUN_TIME)} may be distributions (the kernels read them at run time), "
                f"and the others must be listed, as GridSearchCV takes them")
        kept[key] = values
    return kept

