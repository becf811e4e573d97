"""predictions.csv, one row per clip: who it is, its label, the predicted class and each class probability.

Every writer of predictions uses `prediction_row`, so every run's file is scored the same way
(train.metrics.score_rows).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mex.composite import FlowSet
from mex.labels import CLASSES


def prediction_row(data: FlowSet, i: int, probs) -> dict:
    """Clip i's row: who it is, its label, the argmax of `probs` (its class probabilities) and each probability."""
    row = {"dataset": data.dataset[i], "subject": data.subject[i], "clip": data.clip[i],
           "label": int(data.y[i]), "pred": int(np.argmax(probs))}
    row.update({f"p_{c}": round(float(probs[k]), 6) for k, c in enumerate(CLASSES)})
    return row


def prediction_rows(data: FlowSet, probs, test_idx) -> list[dict]:
    """The rows of (rows, T, classes) probabilities of the clips `test_idx` indexes (-1: padding)."""
    p = probs.cpu().numpy()
    return [prediction_row(data, i, p[f, t])
            for f in range(len(test_idx)) for t, i in enumerate(test_idx[f].tolist()) if i >= 0]


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """Rows of dicts as CSV; the columns are the first row's keys unless given (an empty curve has none)."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_predictions(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["label"], r["pred"] = int(r["label"]), int(r["pred"])
    return rows
