"""MEGC2019 metrics: unweighted F1 (UF1) and unweighted average recall (UAR) over the 3 classes, and the
scores of prediction rows (pooled over all folds, and the per-fold mean) for Full and each dataset."""
from __future__ import annotations

import numpy as np

from mex.labels import DATASETS, NUM_CLASSES


def confusion(y: np.ndarray, pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """(n, n) counts, rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(y) * n + np.asarray(pred), minlength=n * n).reshape(n, n)


def uf1_uar(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """UF1 and UAR averaged over the classes present in `y`.

    Pooled over all folds every class is present, so this is the plain 3-class mean (the headline).
    A single subject often lacks a class; averaging only over present classes is the usual
    convention for per-fold numbers (a class with no samples has no recall to average).
    A prediction of -1 is "no label" (a clip the live path gave no event): a miss of its class, a false
    alarm of none.
    """
    y, pred = np.asarray(y), np.asarray(pred)
    cm = confusion(y[pred >= 0], pred[pred >= 0])
    tp = np.diag(cm).astype(float)
    support = np.bincount(y, minlength=NUM_CLASSES)
    predicted = cm.sum(0)
    present = support > 0
    f1 = 2 * tp / np.maximum(support + predicted, 1)
    recall = tp / np.maximum(support, 1)
    return {"uf1": float(f1[present].mean()), "uar": float(recall[present].mean())}


def score_rows(rows: list[dict]) -> dict:
    """Pooled and per-fold-mean UF1/UAR for Full and each dataset, from prediction rows alone."""
    y = np.array([r["label"] for r in rows])
    pred = np.array([r["pred"] for r in rows])
    ds = np.array([r["dataset"] for r in rows])
    subj = np.array([r["subject"] for r in rows])
    pooled, per_fold = {}, {}
    for name in ("full", *DATASETS):
        sel = np.ones(len(rows), bool) if name == "full" else ds == name
        if not sel.any():
            continue
        pooled[name] = uf1_uar(y[sel], pred[sel])
        folds = [uf1_uar(y[sel & (subj == s)], pred[sel & (subj == s)]) for s in dict.fromkeys(subj[sel])]
        per_fold[name] = {k: float(np.mean([f[k] for f in folds])) for k in ("uf1", "uar")}
    return {"pooled": pooled, "per_fold_mean": per_fold, "clips": len(rows)}
