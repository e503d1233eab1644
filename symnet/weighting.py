"""Weighted losses, for ``fit(sample_weight=..., class_weight=...)``.

A loss that averages over the batch sums its rows with 𝟙ᵀ (``sn.sum``, ``sn.mean``, the
cross-entropies) and divides by n. The weighted loss replaces each such 𝟙ᵀ by ω̃ᵀ, where
ω̃ = n·ω/Σω are the batch's weights ω scaled to sum to n: then Σ ω̃ℓ/n = Σ ωℓ/Σω, the weighted
mean of ``torch.nn.functional.cross_entropy(weight=...)``. The weights are one more input of the
kernels, gathered with each batch's rows, and the formulas show them. Batch norm's statistics
(also column sums over the batch) stay unweighted, as torch's are.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from . import validate
from .declare import batch
from .errors import DataError
from .functions import Dropout, Elementwise, Standardized, x

#: The per-row weights ω of a weighted fit: an input of the weighted kernels.
OMEGA = sp.MatrixSymbol("ω", batch, 1)


def scaled_weights(omega=OMEGA):
    """ω̃ = n·ω/Σω: the batch's weights scaled to sum to n."""
    total = sp.MatMul(sp.OneMatrix(1, batch), omega)  # Σω, 1×1
    share = Elementwise(sp.Lambda(x, batch / x), total)  # n/Σω
    return sp.HadamardProduct(omega, sp.MatMul(sp.OneMatrix(batch, 1), share))


def weighted(loss, omega=OMEGA):
    """``loss`` with every sum over the batch's rows, 𝟙ᵀ·M, weighted: 𝟙ᵀ·(ω̃·𝟙ᵀ ∘ M)."""
    scale = scaled_weights(omega)

    def walk(e):
        if isinstance(e, (Standardized, Dropout)) or not isinstance(e, MatrixExpr) or not e.args:
            return e  # a norm's statistics are not weighted; nothing to weight below a leaf
        args = [walk(a) for a in e.args]
        if isinstance(e, sp.MatMul):
            c, mats = sp.MatMul(*args).as_coeff_matrices()
            if len(mats) > 1 and mats[0] == sp.OneMatrix(1, batch):
                first = mats[1]  # weighting its rows weights the rows of the whole product
                cols = first.shape[1]
                each = scale if cols == 1 else sp.MatMul(scale, sp.OneMatrix(1, cols))
                return sp.MatMul(c, mats[0], sp.HadamardProduct(each, first), *mats[2:])
        return e.func(*args) if tuple(args) != e.args else e

    return walk(loss)


def row_weights(rows: int, labels, classes: int | None, sample_weight=None,
                class_weight=None) -> np.ndarray:
    """The weight of each training row: ``sample_weight`` times the weight of its class.
    ``class_weight`` is ``{class: weight}`` (absent classes weigh 1) or ``"balanced"``
    (n / (classes · count), as scikit-learn); ``labels`` are the rows' classes (or None), of
    the numbers 0 to ``classes`` − 1."""
    w = np.ones(rows)
    if sample_weight is not None:
        w = validate.real_array(sample_weight, "sample_weight").astype(np.float64)
        if w.shape not in ((rows,), (rows, 1)):
            raise DataError(f"sample_weight needs one weight per row, shape ({rows},); got "
                            f"shape {w.shape}")
        w = w.reshape(rows)
    if class_weight is not None:
        if labels is None:
            raise DataError("class_weight weighs classes: it needs a classification target (k ≥ 2 "
                            "columns, or one 0/1 column); use sample_weight for this model")
        w = w * _class_weights(class_weight, labels, classes)
    if not np.isfinite(w).all() or (w < 0).any():
        bad = int(np.flatnonzero(~np.isfinite(w) | (w < 0))[0])
        raise DataError(f"the weight of row {bad} is {w[bad]}; weights must be finite and ≥ 0")
    if not w.sum() > 0:
        raise DataError("every row has weight 0, so the weighted loss is 0/0; give some rows a "
                        "positive weight")
    return w


def _class_weights(class_weight, labels, count=None) -> np.ndarray:
    classes, counts = np.unique(labels, return_counts=True)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise DataError(f"class_weight must be a dict {{class: weight}} or 'balanced', got "
                            f"{class_weight!r}")
        table = dict(zip(classes.tolist(), (len(labels) / (len(classes) * counts)).tolist()))
    elif isinstance(class_weight, dict):
        table = {}
        for c, v in class_weight.items():
            table[c] = validate.number(v, f"class_weight[{c!r}]", low=0, error=DataError,
                                       example=2.0)
        unknown = sorted((c for c in set(table) - set(classes.tolist())  # absent, or no class
                          if not (isinstance(c, (int, np.integer)) and not isinstance(c, bool)
                                  and (count is None or 0 <= c < count))), key=str)
        if unknown:
            numbers = f"0…{count - 1}" if count else "0…k−1"
            raise DataError(f"class_weight names the classes {unknown}, which are not class "
                            f"numbers {numbers} of the targets")
    else:
        raise DataError(f"class_weight must be a dict {{class: weight}} or 'balanced', got "
                        f"{validate.describe(class_weight)}")
    return np.array([table.get(c, 1.0) for c in labels.tolist()])
