"""mex-bench floor: the logistic-regression floor on the raw feature pixels, fitted to its optimum.

The deep model has to beat a linear classifier on the same 2,352 values (3 x 28 x 28). The project brief
gives that floor as 0.719 / 0.729 Full UF1 / UAR ("no tuning", solver not given); the trainer's own
`--profile logreg` (AdamW, 100 epochs) reaches 0.686 / 0.676. How high the floor is depends on the
penalty and on class weighting, so this benchmark fits the regression the standard way: multinomial
cross-entropy (optionally class-weighted, weights n / (3 n_c) from the training clips) plus an L2
penalty |W|^2 / (2C) on the weights, the intercept unpenalised, minimised to convergence with
L-BFGS: the objective of scikit-learn's LogisticRegression(C=C, class_weight=None|"balanced").
Under LOSO it reports
- each candidate (C, weighting) of the grid scored on the LOSO test subjects: how much the floor
  moves, for reading only (taking the best of these rows is choosing on the test subjects);
- the nested floor: each outer fold picks its candidate by k-fold cross-validation over its own
  training subjects (subjects dealt to k groups; pooled inner UF1; a tie keeps the earlier
  candidate) and predicts its held-out subject with that candidate fitted on all its training
  subjects. That is the honest floor a deep model's LOSO score is to be compared with.
Writes floor/ to the results folder in a LOSO run's layout: predictions.csv (the nested floor's, one
row per clip), results.json (its scores, each candidate's, each fold's inner scores and choice),
floor.md and floor.png (Full UF1 against C, the nested floor and the references).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mex.outputs import write_text

from .common import environment, results_dir, write_json

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "megc2019-composite-flow"
# REFERENCE_ROWS names (train/report.py) drawn and listed beside the floor, with their line styles
REFERENCES = (("logistic regression on raw pixels (project brief, measured)", ":"), ("DA-CrossViT, the paper", "--"))


def add_arguments(p) -> None:
    p.add_argument("--data", default=str(DEFAULT_DATA), metavar="DIR",
                   help="a composite-format folder (default: the shipped set)")
    p.add_argument("--C", default="1,0.3,0.1,0.03", metavar="LIST",
                   help="inverse penalty strengths to try, comma-separated (default 1,0.3,0.1,0.03)")
    p.add_argument("--inner-folds", type=int, default=5, metavar="K",
                   help="groups of training subjects for the nested choice (default 5)")


def class_weights(y: np.ndarray, balanced: bool, n_classes: int) -> np.ndarray:
    """Per-sample loss weights: 1, or n / (n_classes * n_c) of the sample's class c (scikit-learn's "balanced")."""
    if not balanced:
        return np.ones(len(y))
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return (len(y) / (n_classes * np.maximum(counts, 1)))[y]


def fit_logreg(x: np.ndarray, y: np.ndarray, C: float, balanced: bool, n_classes: int,
               start: np.ndarray | None = None) -> np.ndarray:
    """Weights (d + 1, n_classes), the last row the intercept, minimising the weighted cross-entropy
    summed over the clips plus |W|^2 / (2C). The problem is convex; L-BFGS stops when the objective no
    longer improves (relative change ~2e-9) or no gradient entry exceeds 1e-6. `start`: a solution to begin
    from (another C's: a warm start)."""
    from scipy.optimize import minimize

    d = x.shape[1]
    # Centring changes nothing but the intercept (unpenalised) and makes L-BFGS converge several times faster.
    mean = x.mean(0)
    x = x - mean
    onehot = np.eye(n_classes)[y]
    sw = class_weights(y, balanced, n_classes)[:, None]

    def loss_and_grad(flat):
        w = flat.reshape(d + 1, n_classes)
        logits = x @ w[:d] + w[d]
        logits -= logits.max(1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(1, keepdims=True))
        p = np.exp(logits - log_z)
        loss = float(-(sw * onehot * (logits - log_z)).sum() + (w[:d] ** 2).sum() / (2 * C))
        r = sw * (p - onehot)
        grad = np.vstack([x.T @ r + w[:d] / C, r.sum(0, keepdims=True)])
        return loss, grad.ravel()

    if start is None:
        x0 = np.zeros((d + 1) * n_classes)
    else:  # an uncentred solution (another C's), its intercept moved into the centred problem
        x0 = np.vstack([start[:d], start[d] + mean @ start[:d]]).ravel()
    result = minimize(loss_and_grad, x0, jac=True, method="L-BFGS-B", options=dict(maxiter=10000, gtol=1e-6))
    w = result.x.reshape(d + 1, n_classes).copy()
    w[d] -= mean @ w[:d]  # back to the uncentred pixels
    return w


def predict_proba(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    logits = x @ w[:-1] + w[-1]
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def fit_candidates(x_fit: np.ndarray, y_fit: np.ndarray, x_pred: np.ndarray, candidates: list[tuple[float, bool]],
                   n_classes: int) -> np.ndarray:
    """(n_candidates, len(x_pred), n_classes) probabilities, one fit per (C, balanced) candidate; each fit
    starts from the previous candidate's answer when the weighting is the same (C descending: warm starts)."""
    probs, w = [], None
    for c, (C, balanced) in enumerate(candidates):
        w = fit_logreg(x_fit, y_fit, C, balanced, n_classes,
                       start=w if c and candidates[c - 1][1] == balanced else None)
        probs.append(predict_proba(x_pred, w))
    return np.stack(probs)


def inner_groups(subjects: list[str], k: int) -> dict[str, int]:
    """Training subjects dealt round-robin to k groups in their first-seen order (the composite set lists
    them dataset by dataset, so every group gets subjects of each database)."""
    return {s: i % k for i, s in enumerate(subjects)}


def inner_cv_scores(x: np.ndarray, y: np.ndarray, subject: np.ndarray, train_idx: np.ndarray,
                    candidates: list[tuple[float, bool]], inner_folds: int, n_classes: int) -> np.ndarray:
    """(n_candidates,) pooled UF1 of each candidate under k-fold cross-validation over the subjects of
    the clips `train_idx` (dealt by `inner_groups`): the scores a nested choice is made from."""
    from train.metrics import uf1_uar

    group = inner_groups(list(dict.fromkeys(subject[train_idx])), inner_folds)
    train_group = np.array([group[s] for s in subject[train_idx]])
    inner_pred = np.zeros((len(candidates), len(train_idx)), dtype=np.int64)
    for g in range(inner_folds):
        fit_on, score_on = train_idx[train_group != g], train_idx[train_group == g]
        inner_pred[:, train_group == g] = fit_candidates(x[fit_on], y[fit_on], x[score_on], candidates,
                                                         n_classes).argmax(-1)
    return np.array([uf1_uar(y[train_idx], inner_pred[c])["uf1"] for c in range(len(candidates))])


def run_floor(x: np.ndarray, y: np.ndarray, subject: np.ndarray, candidates: list[tuple[float, bool]], inner_folds: int,
              n_classes: int, progress=None) -> dict:
    """LOSO over the subjects of `subject`: every candidate's test-subject probabilities, each fold's inner
    scores and nested choice. Returns {"probs": (n_candidates, N, n_classes), "inner": (folds, n_candidates),
    "choice": (folds,), "subjects": [...]}."""
    subjects = list(dict.fromkeys(subject))
    probs = np.zeros((len(candidates), len(y), n_classes))
    inner = np.zeros((len(subjects), len(candidates)))
    task = progress.add_task("LOSO folds", total=len(subjects)) if progress else None
    for f, held_out in enumerate(subjects):
        test = subject == held_out
        train_idx = np.flatnonzero(~test)
        inner[f] = inner_cv_scores(x, y, subject, train_idx, candidates, inner_folds, n_classes)
        probs[:, test] = fit_candidates(x[train_idx], y[train_idx], x[test], candidates, n_classes)
        if progress:
            progress.advance(task)
    return {"probs": probs, "inner": inner, "choice": inner.argmax(1), "subjects": subjects}


def _label(C: float, balanced: bool) -> str:
    return f"C={C:g}, {'class-balanced' if balanced else 'unweighted'}"


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mex.composite import DataError, load_flow_folder
    from mex.labels import CLASSES
    from train.metrics import score_rows
    from train.predictions import prediction_row, write_csv

    try:
        Cs = [float(v) for v in args.C.split(",")]
    except ValueError:
        raise SystemExit(f"mex-bench floor: --C must be comma-separated numbers, got {args.C!r}")
    if not Cs or min(Cs) <= 0:
        raise SystemExit(f"mex-bench floor: --C values must be > 0, got {args.C!r}")
    if args.inner_folds < 2:
        raise SystemExit(f"mex-bench floor: --inner-folds must be >= 2, got {args.inner_folds}")
    try:
        data = load_flow_folder(args.data)
    except DataError as e:
        raise SystemExit(f"mex-bench floor: {e}")
    Cs = sorted(Cs, reverse=True)
    candidates = [(C, balanced) for balanced in (False, True) for C in Cs]
    x = data.x.reshape(len(data), -1).astype(np.float64)
    subject = np.array(data.subject)
    console = Console()
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        out = run_floor(x, data.y, subject, candidates, args.inner_folds, len(CLASSES), progress=bar)
    seconds = time.perf_counter() - start

    def rows_of(probs: np.ndarray) -> list[dict]:
        return [prediction_row(data, i, probs[i]) for i in range(len(data))]

    fold_of = {s: f for f, s in enumerate(out["subjects"])}
    chosen_per_clip = out["choice"][[fold_of[s] for s in subject]]
    nested_probs = out["probs"][chosen_per_clip, np.arange(len(data))]
    nested_rows = rows_of(nested_probs)
    per_candidate = [{"C": C, "class_balanced": balanced, "label": _label(C, balanced),
                      **score_rows(rows_of(out["probs"][c])),
                      "inner_uf1_mean": float(out["inner"][:, c].mean()),
                      "folds_choosing": int((out["choice"] == c).sum())}
                     for c, (C, balanced) in enumerate(candidates)]
    nested = score_rows(nested_rows)
    # A LOSO run's layout (results.json + predictions.csv), so the committed files are re-scored like every run's
    folder = results_dir(args.out) / "floor"
    folder.mkdir(exist_ok=True)
    write_csv(folder / "predictions.csv", nested_rows)
    payload = {"benchmark": "floor", "method": "nested", "environment": environment(), "data": str(args.data),
               "inner_folds": args.inner_folds, "seconds": round(seconds, 1), **nested,
               "candidates": per_candidate,
               "choices": [{"subject": s, "choice": _label(*candidates[out["choice"][f]]),
                            "inner_uf1": [float(v) for v in out["inner"][f]]} for f, s in enumerate(out["subjects"])]}
    write_json(folder / "results.json", payload)
    markdown = floor_markdown(payload)
    write_text(folder / "floor.md", markdown, flag="--out")
    plot_floor(payload, folder / "floor.png")
    console.print(markdown)
    console.print(f"wrote {folder}/floor.md, floor.png, results.json, predictions.csv ({seconds:.0f} s)")
    return 0


def score_cells(pooled: dict) -> str:
    """Full, CASME II, SMIC and SAMM UF1 / UAR as markdown table cells (README's column order)."""
    return " | ".join(f"{pooled[k]['uf1']:.3f} / {pooled[k]['uar']:.3f}" if k in pooled else "-"
                      for k in ("full", "casme2", "smic", "samm"))


def floor_markdown(payload: dict) -> str:
    from train.report import REFERENCE_ROWS

    env = payload["environment"]
    lines = [
        f"### Logistic regression on the raw feature pixels, LOSO, pooled UF1 / UAR ({payload['clips']} clips; "
        f"{env['machine']}, {env['cpu']}, Python {env['python']}; {payload['seconds']:.0f} s)",
        "",
        "| method | Full | CASME II | SMIC | SAMM | folds choosing it |",
        "|---|---|---|---|---|---|",
        f"| **nested: (C, weighting) chosen per fold by {payload['inner_folds']}-fold CV over its training subjects** "
        f"| {score_cells(payload['pooled'])} | |",
    ]
    for cand in payload["candidates"]:
        lines.append(f"| {cand['label']}, every fold | {score_cells(cand['pooled'])} | {cand['folds_choosing']} |")
    for name, _ in REFERENCES:
        uf1, uar = dict(REFERENCE_ROWS)[name][0]
        lines.append(f"| {name} | {uf1:.4g} / {uar:.4g} | | | | |")
    lines += ["", "The nested row is the honest floor: no fold's choice saw its test subject. Taking the best of the "
              "fixed rows instead would be choosing on the test subjects. Each row is fitted to the optimum of "
              "weighted cross-entropy + |W|^2 / (2C) with L-BFGS (scikit-learn's LogisticRegression objective); "
              "each fold's choice and inner scores are in results.json.", ""]
    return "\n".join(lines)


def plot_floor(payload: dict, path: Path) -> None:
    """Full UF1 of each fixed candidate against C (a line per weighting), the nested floor and the references."""
    from train.report import REFERENCE_ROWS, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for balanced, marker in ((False, "o"), (True, "s")):
        cands = sorted((c for c in payload["candidates"] if c["class_balanced"] == balanced), key=lambda c: c["C"])
        ax.plot([c["C"] for c in cands], [c["pooled"]["full"]["uf1"] for c in cands], f"-{marker}",
                label=f"C fixed for every fold, {'class-balanced' if balanced else 'unweighted'}")
    nested = payload["pooled"]["full"]["uf1"]
    ax.axhline(nested, color="C3", lw=2,
               label=f"nested (C, weighting chosen per fold on training subjects): {nested:.3f}")
    for name, style in REFERENCES:
        uf1 = dict(REFERENCE_ROWS)[name][0][0]
        ax.axhline(uf1, color="gray", ls=style, lw=1, label=f"{name}: {uf1}")
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse L2 penalty)")
    ax.set_ylabel("Full UF1 (pooled LOSO)")
    ax.set_title("Logistic regression on the raw feature pixels", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
