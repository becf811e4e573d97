"""Temperature scaling of class probabilities, fitted without the subjects it is judged on.

Probabilities p become softmax(log p / T): for a model whose probabilities are softmax(z) that is
softmax(z / T), which is what mex-live applies to the logits (realtime/runtimes.py). T > 1 softens an
over-confident model, T < 1 sharpens an under-confident one; the argmax never changes. T minimises the
negative log-likelihood (NLL) of the labels; the NLL is convex in 1/T, so a golden-section search over
1/T finds its minimum.

Judged on LOSO predictions (predictions.csv: each row predicted by the fold that held its subject out):
each subject's temperature is fitted on the other subjects' rows only (nested), and the expected
calibration error (ECE: 15 equal-width bins of the top probability, |accuracy - mean top probability|
weighted by the bin's share) and NLL of its rows are measured before and after. The temperature to ship
is fitted on all rows of the run whose recipe and seed made the model. A run's predictions-live.csv (the
same fold models on live encodings, mex-bench live-gap) is judged with the same per-subject temperatures.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mex.artifact import UNCERTAIN_BELOW
from mex.labels import CLASSES

from .predictions import read_predictions

BINS = 15
BETA_RANGE = (0.05, 20.0)  # 1/T searched: T from 0.05 to 20
LIVE_PREDICTIONS = "predictions-live.csv"


def scale(probs: np.ndarray, temperature) -> np.ndarray:
    """softmax(log p / T), row by row; `temperature` one T or one per row."""
    z = np.log(np.clip(probs, 1e-12, 1.0)) / np.asarray(temperature, dtype=np.float64).reshape(-1, 1)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per non-empty bin of the top probability: its range, count, mean top probability and accuracy."""
    top, right = probs.max(axis=1), probs.argmax(axis=1) == y
    which = np.minimum((top * bins).astype(int), bins - 1)
    return [{"lo": b / bins, "hi": (b + 1) / bins, "count": int((which == b).sum()),
             "confidence": float(top[which == b].mean()), "accuracy": float(right[which == b].mean())}
            for b in range(bins) if (which == b).any()]


def ece(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of the top label."""
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability(probs, y, bins)) / len(y))


def fit_temperature(probs: np.ndarray, y: np.ndarray, tol: float = 1e-6) -> float:
    """The T that minimises the NLL of softmax(log p / T) on these rows (golden section on 1/T)."""
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    picked = logp[np.arange(len(y)), y]

    def loss(beta: float) -> float:  # NLL at T = 1/beta, convex in beta
        z = beta * logp
        top = z.max(axis=1)
        return float((top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - beta * picked).mean())

    lo, hi = BETA_RANGE
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return 1.0 / ((lo + hi) / 2)


def nested_temperatures(probs: np.ndarray, y: np.ndarray, subjects: np.ndarray) -> dict[str, float]:
    """Subject -> the temperature fitted on every other subject's rows."""
    return {s: fit_temperature(probs[subjects != s], y[subjects != s]) for s in dict.fromkeys(subjects.tolist())}


def read_probabilities(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(probs (n, classes), labels, subjects, datasets) of a predictions file; ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such predictions file (mex-train loso or mex-bench live-gap writes it)")
    rows = read_predictions(path)
    columns = [f"p_{c}" for c in CLASSES]
    if not rows:
        raise ValueError(f"{path}: no prediction rows")
    missing = [c for c in (*columns, "subject", "dataset") if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    try:
        probs = np.array([[float(r[c]) for c in columns] for r in rows])
    except ValueError as e:
        raise ValueError(f"{path}: a probability is not a number ({e})") from None
    y = np.array([r["label"] for r in rows])
    bad = np.flatnonzero(~np.isfinite(probs).all(1) | (probs < 0).any(1) | (np.abs(probs.sum(1) - 1) > 1e-3)
                         | (y < 0) | (y >= len(CLASSES)))
    if bad.size:
        raise ValueError(f"{path}: line {bad[0] + 2}: expected class probabilities summing to 1 "
                         f"and a label in 0..{len(CLASSES) - 1}")
    return probs, y, np.array([r["subject"] for r in rows]), np.array([r["dataset"] for r in rows])


def judged(probs: np.ndarray, y: np.ndarray, calibrated: np.ndarray, datasets: np.ndarray) -> dict:
    """ECE / NLL before and after (all rows, and each dataset's), the reliability bins after, and what the
    uncertain rule (top calibrated probability < UNCERTAIN_BELOW) picks out: its share of the rows and the
    accuracy under and over it."""
    right = calibrated.argmax(axis=1) == y
    under = calibrated.max(axis=1) < UNCERTAIN_BELOW
    return {"rows": len(y), "accuracy": float(right.mean()),
            "ece_before": ece(probs, y), "ece_after": ece(calibrated, y),
            "nll_before": nll(probs, y), "nll_after": nll(calibrated, y),
            "uncertain": {"below": UNCERTAIN_BELOW, "share": float(under.mean()),
                          "accuracy_under": float(right[under].mean()) if under.any() else None,
                          "accuracy_over": float(right[~under].mean()) if (~under).any() else None},
            "reliability_after": reliability(calibrated, y),
            "by_dataset": {d: {"rows": int(m.sum()), "accuracy": float(right[m].mean()),
                               "mean_top_before": float(probs[m].max(axis=1).mean()),
                               "mean_top_after": float(calibrated[m].max(axis=1).mean()),
                               "ece_before": ece(probs[m], y[m]), "ece_after": ece(calibrated[m], y[m])}
                           for d in dict.fromkeys(datasets.tolist()) for m in [datasets == d]}}


def calibrate_run(run: Path) -> tuple[dict, dict]:
    """The report of one LOSO run, and the probability arrays (before / nested after) for the plot."""
    run = Path(run)
    probs, y, subjects, datasets = read_probabilities(run / "predictions.csv")
    per_subject = nested_temperatures(probs, y, subjects)
    after = scale(probs, [per_subject[s] for s in subjects])
    ts = np.array(list(per_subject.values()))
    report = {"run": str(run), "subjects": len(per_subject), "temperature_all_rows": fit_temperature(probs, y),
              "nested_temperature": {"median": float(np.median(ts)), "min": float(ts.min()), "max": float(ts.max())},
              "loso": judged(probs, y, after, datasets)}
    arrays = {"loso": (probs, after, y)}
    if (run / LIVE_PREDICTIONS).is_file():
        live, live_y, live_subjects, live_datasets = read_probabilities(run / LIVE_PREDICTIONS)
        unknown = sorted(set(live_subjects.tolist()) - set(per_subject))
        if unknown:
            raise ValueError(f"{run / LIVE_PREDICTIONS}: subject(s) {', '.join(unknown)} have no LOSO predictions")
        live_after = scale(live, [per_subject[s] for s in live_subjects])
        report["live"] = judged(live, live_y, live_after, live_datasets)
        arrays["live"] = (live, live_after, live_y)
    return report, arrays


def calibrate(runs: list[Path], out: Path) -> dict:
    """calibration.json and reliability.png in `out`; the first run's all-rows temperature is the one to ship."""
    reports, arrays = zip(*(calibrate_run(r) for r in runs))
    out.mkdir(parents=True, exist_ok=True)
    result = {"temperature": reports[0]["temperature_all_rows"],
              "fitted_on": f"{runs[0]}/predictions.csv, all {reports[0]['loso']['rows']} out-of-fold rows",
              "bins": BINS, "uncertain_below": UNCERTAIN_BELOW, "runs": list(reports)}
    (out / "calibration.json").write_text(json.dumps(rounded(result), indent=2) + "\n")
    plot_reliability(arrays, out / "reliability.png", [Path(r).name for r in runs])
    return result


def rounded(value):
    """Floats to 6 decimals, all the way down (what the report is read for)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def plot_reliability(arrays: tuple[dict, ...], path: Path, names: list[str]) -> None:
    """Accuracy against mean top probability per bin, all runs' rows pooled: before and after (nested)."""
    from .report import pyplot

    plt = pyplot()
    sets = [k for k in ("loso", "live") if all(k in a for a in arrays)]
    titles = {"loso": "LOSO predictions (predictions.csv)", "live": "the same fold models on live encodings"}
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 5.4), squeeze=False)
    for ax, key in zip(axes[0], sets):
        before, after, y = (np.concatenate([a[key][i] for a in arrays]) for i in range(3))
        ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="perfectly calibrated")
        for probs, name, color in ((before, "before", "tab:red"), (after, "after (T fitted on other subjects)",
                                                                    "tab:blue")):
            bins = reliability(probs, y)
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=color,
                    label=f"{name}: ECE {ece(probs, y):.3f}, NLL {nll(probs, y):.3f}")
            ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], s=[b["count"] for b in bins],
                       color=color, alpha=0.25)
        ax.axvline(UNCERTAIN_BELOW, color="black", lw=0.8, ls=":", label=f"uncertain below {UNCERTAIN_BELOW}")
        ax.set(xlim=(0.3, 1), ylim=(0, 1.02), xlabel="top probability (bin mean; marker area = rows)",
               ylabel="accuracy in the bin", title=f"{titles[key]}, {len(y)} rows")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability, {BINS} bins, runs pooled: {', '.join(names)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
