"""MEGC2019 metrics: unweighted F1 (UF1) and unweighted average recall (UAR) over the 3 classes."""
from __future__ import annotations

import numpy as np

from mex.labels import NUM_CLASSES


def confusion(y: np.ndarray, pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """(n, n) counts, rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(y) * n + np.asarray(pred), minlength=n * n).reshape(n, n)


def uf1_uar(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """UF1 and UAR averaged over the classes present in `y`.

    Pooled over all folds every class is present, so this is the plain 3-class mean (the headline).
    A single subject often lacks a class; averaging only over present classes is the usual
    convention for per-fold numbers (a class with no samples has no recall to average).
    """
    cm = confusion(y, pred)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    present = support > 0
    f1 = 2 * tp / np.maximum(support + predicted, 1)
    recall = tp / np.maximum(support, 1)
    return {"uf1": float(f1[present].mean()), "uar": float(recall[present].mean())}
