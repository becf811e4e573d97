"""mex-bench stack: the deep model and the logistic-regression floor mixed, the mix chosen per fold.

The floor (`mex-bench floor`) and a DA-CrossViT LOSO run score alike on the composite set but are
different kinds of model (a linear map of the pixels; an attention network trained with heavy
augmentation), so their class probabilities may be worth averaging. How much of each to take is a
choice, and choosing it on the LOSO test subjects would be selection on the test set. Here each outer
fold f chooses its weight alpha (probabilities alpha * deep + (1 - alpha) * floor) from its training
subjects alone, with the inner models that `mex-train select` trained for the deep model:

- `mex-train select` deals the subjects into groups of about 8 (two deals) and trains one deep model
  per group without it (inner-<candidate>/predictions.csv: each clip predicted by the model that
  never saw its group). For f, the clips of f's group-mates are the inner validation set.
- The floor gets the same inner models: for every group, the nested floor procedure (C and class
  weighting chosen by k-fold CV over the subjects outside the group, the grid and k of the `--floor`
  run) fitted on the subjects outside the group and predicting the group.
- f's alpha is the grid value with the best pooled UF1 over its group-mates' clips in both deals (a tie
  keeps the earlier value; the grid starts with 1, the deep model alone). f's clips are then predicted
  by that mix of the deep LOSO run's and the nested floor's probabilities for f.

The same rule over every inner prediction (no subject held out) names `alpha_for_fit`, the weight a
shipped mix would use. Each fixed alpha is also scored on the test subjects, for reading only.
Writes a LOSO run's layout (run.json, predictions.csv, results.json) plus stack.md and stack.png, so
`mex-train table` pools seeds and tests/test_results.py re-scores the committed files.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mex.outputs import write_text

from .common import environment, results_dir, write_json
from .floor import DEFAULT_DATA, fit_logreg, inner_cv_scores, predict_proba, score_cells

ALPHAS = (1.0, 0.75, 0.5, 0.25, 0.0)


def add_arguments(p) -> None:
    p.add_argument("--loso", required=True, metavar="DIR", help="the deep model's LOSO run (predictions.csv, run.json)")
    p.add_argument("--inner", required=True, metavar="DIR",
                   help="that profile's inner models from `mex-train select` (SELECT_OUT/inner-<candidate>), same seed")
    p.add_argument("--floor", required=True, metavar="DIR",
                   help="a `mex-bench floor` run (its grid and inner folds are reused)")
    p.add_argument("--data", default=str(DEFAULT_DATA), metavar="DIR",
                   help="the composite-format folder the runs were made on")
    p.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS), metavar="LIST",
                   help="weights of the deep model to choose from, in tie-break order (default 1,0.75,0.5,0.25,0)")
    p.add_argument("--name", default=None, help="results subfolder (default stack-<the LOSO run's folder name>)")


def _fail(message: str):
    raise SystemExit(f"mex-bench stack: {message}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        _fail(f"{path}: not found")
    except json.JSONDecodeError as e:
        _fail(f"{path}: not JSON ({e})")


def _read_run(path: Path) -> dict:
    from train.runs import read_run

    if not path.exists():
        _fail(f"{path}: not found")
    try:
        return read_run(path)
    except ValueError as e:
        _fail(str(e))


def _read_rows(path: Path) -> list[dict]:
    from train.predictions import read_predictions

    try:
        return read_predictions(path)
    except FileNotFoundError:
        _fail(f"{path}: not found (an unfinished run?)")


def _row_probs(rows: list[dict]) -> np.ndarray:
    """(len(rows), n_classes) class probabilities of prediction rows."""
    from mex.labels import CLASSES

    return np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])


def _probs_by_clip(rows: list[dict], what: str, keys: list[tuple]) -> np.ndarray:
    """(len(keys), n_classes) probabilities of the prediction rows, in the order of `keys` (dataset, subject, clip)."""
    by_key = {(r["dataset"], r["subject"], r["clip"]): r for r in rows}
    missing = [k for k in keys if k not in by_key]
    if missing:
        _fail(f"{what}: no prediction for {len(missing)} clip(s) of the data, e.g. {'/'.join(missing[0])}")
    return _row_probs([by_key[k] for k in keys])


def read_inner(inner_dir: Path, keys: list[tuple]) -> tuple[list[list[str]], np.ndarray, np.ndarray, np.ndarray]:
    """A `mex-train select` inner folder: its groups (run.json), and per predicted row the group index
    (deal-major, as in run.json), the clip's index in `keys` and the class probabilities."""
    groups = _read_run(inner_dir / "run.json")["inner_groups"]
    rows = _read_rows(inner_dir / "predictions.csv")
    per_deal = len(groups) // len({r["deal"] for r in rows})
    group_of_row = np.array([int(r["deal"]) * per_deal + int(r["group"]) for r in rows])
    index = {k: i for i, k in enumerate(keys)}
    try:
        clip_of_row = np.array([index[(r["dataset"], r["subject"], r["clip"])] for r in rows])
    except KeyError as e:
        _fail(f"{inner_dir}/predictions.csv: clip {'/'.join(e.args[0])} is not in the data")
    for g, members in enumerate(groups):
        strangers = {keys[c][1] for c in clip_of_row[group_of_row == g]} - set(members)
        if strangers:
            _fail(f"{inner_dir}/predictions.csv: group {g} predicts {sorted(strangers)[0]}, not in its run.json "
                  "inner_groups entry")
    return groups, group_of_row, clip_of_row, _row_probs(rows)


def floor_for_groups(x: np.ndarray, y: np.ndarray, subject: np.ndarray, groups: list[list[str]],
                     candidates: list[tuple[float, bool]], inner_folds: int, n_classes: int,
                     progress=None) -> tuple[np.ndarray, list[int]]:
    """For each group, the nested floor fitted without the group's subjects: (len(groups), N, n_classes)
    probabilities on the group's clips (zeros elsewhere), and the index of the candidate each group chose."""
    out, chosen = np.zeros((len(groups), len(y), n_classes)), []
    task = progress.add_task("floor, inner groups", total=len(groups)) if progress else None
    for g, members in enumerate(groups):
        held = np.isin(subject, members)
        train_idx = np.flatnonzero(~held)
        scores = inner_cv_scores(x, y, subject, train_idx, candidates, inner_folds, n_classes)
        chosen.append(int(scores.argmax()))
        C, balanced = candidates[chosen[-1]]
        out[g, held] = predict_proba(x[held], fit_logreg(x[train_idx], y[train_idx], C, balanced, n_classes))
        if progress:
            progress.advance(task)
    return out, chosen


def choose_alphas(y: np.ndarray, deep: np.ndarray, floor: np.ndarray, clip_sets: list[np.ndarray],
                  alphas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """For each set of inner rows: each alpha's pooled UF1 over those rows, and the chosen alpha's index
    (the best; a tie keeps the earlier)."""
    from train.metrics import uf1_uar

    scores = np.array([[uf1_uar(y[m], (a * deep[m] + (1 - a) * floor[m]).argmax(1))["uf1"] for a in alphas]
                       for m in clip_sets])
    return scores, scores.argmax(1)  # argmax returns the first of equal maxima


def nested_alphas(x: np.ndarray, y: np.ndarray, subject: np.ndarray, groups: list[list[str]], group_of_row: np.ndarray,
                  clip_of_row: np.ndarray, deep_inner: np.ndarray, candidates: list[tuple[float, bool]],
                  inner_folds: int,
                  alphas: list[float], n_classes: int, progress=None) -> dict:
    """The choice of alpha per outer fold. Inner row r is clip `clip_of_row[r]` predicted by the deep
    inner model of group `group_of_row[r]` (probabilities `deep_inner[r]`), trained without that group's
    subjects; the floor is fitted the same way. Returns {"subjects", "mates" (inner rows per fold),
    "scores" (folds, alphas), "choice" (folds,), "fit_scores" (alphas,), "fit_choice", "floor_inner",
    "floor_choice"}."""
    floor_groups, floor_choice = floor_for_groups(x, y, subject, groups, candidates, inner_folds, n_classes, progress)
    floor_inner = floor_groups[group_of_row, clip_of_row]
    y_inner, row_subject = y[clip_of_row], subject[clip_of_row]
    subjects = list(dict.fromkeys(subject))
    # f's inner rows: its group-mates' clips in every deal (f's own clips excluded)
    mates = [np.flatnonzero(np.isin(group_of_row, [g for g, m in enumerate(groups) if f in m]) & (row_subject != f))
             for f in subjects]
    scores, choice = choose_alphas(y_inner, deep_inner, floor_inner, mates, alphas)
    fit_scores, fit_choice = choose_alphas(y_inner, deep_inner, floor_inner, [np.arange(len(y_inner))], alphas)
    return {"subjects": subjects, "mates": [len(m) for m in mates], "scores": scores, "choice": choice,
            "fit_scores": fit_scores[0], "fit_choice": int(fit_choice[0]), "floor_inner": floor_inner,
            "floor_choice": floor_choice}


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mex.composite import DataError, load_flow_folder
    from mex.labels import CLASSES
    from train.metrics import score_rows, uf1_uar
    from train.predictions import prediction_row, write_csv
    from train.runs import write_run

    try:
        alphas = [float(v) for v in args.alphas.split(",")]
    except ValueError:
        _fail(f"--alphas must be comma-separated numbers, got {args.alphas!r}")
    if not alphas or not all(0 <= a <= 1 for a in alphas) or len(set(alphas)) != len(alphas):
        _fail(f"--alphas must be distinct numbers in [0, 1], got {args.alphas!r}")
    loso_dir, inner_dir, floor_dir = Path(args.loso), Path(args.inner), Path(args.floor)
    try:
        data = load_flow_folder(args.data)
    except DataError as e:
        _fail(str(e))
    loso_run, inner_run = _read_run(loso_dir / "run.json"), _read_run(inner_dir / "run.json")
    floor_run = _read_json(floor_dir / "results.json")
    if "inner_groups" not in inner_run:
        _fail(f"{inner_dir}/run.json: no inner_groups; --inner takes an inner-<candidate> folder of a `mex-train "
              "select` run")
    if floor_run.get("benchmark") != "floor":
        _fail(f"{floor_dir}/results.json: not a `mex-bench floor` run")
    if inner_run["seed"] != loso_run["seed"] or inner_run["profile"] != loso_run["profile"]:
        _fail(f"{inner_dir} and {loso_dir} are not the same profile and seed: the inner models must be the LOSO run's")

    keys = list(zip(data.dataset, data.subject, data.clip))
    subject = np.array(data.subject)
    deep_rows, floor_rows = _read_rows(loso_dir / "predictions.csv"), _read_rows(floor_dir / "predictions.csv")
    deep_outer = _probs_by_clip(deep_rows, f"{loso_dir}/predictions.csv", keys)
    floor_outer = _probs_by_clip(floor_rows, f"{floor_dir}/predictions.csv", keys)
    groups, group_of_row, clip_of_row, deep_inner = read_inner(inner_dir, keys)
    candidates = [(c["C"], c["class_balanced"]) for c in floor_run["candidates"]]
    x = data.x.reshape(len(data), -1).astype(np.float64)
    console = Console()
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        nested = nested_alphas(x, data.y, subject, groups, group_of_row, clip_of_row, deep_inner, candidates,
                               floor_run["inner_folds"], alphas, len(CLASSES), bar)
    seconds = time.perf_counter() - start

    y_inner = data.y[clip_of_row]
    subjects, choice = nested["subjects"], nested["choice"]
    fold_of = {s: f for f, s in enumerate(subjects)}
    alpha_per_clip = np.array(alphas)[choice[[fold_of[s] for s in subject]]][:, None]
    mixed = alpha_per_clip * deep_outer + (1 - alpha_per_clip) * floor_outer
    rows = [prediction_row(data, i, mixed[i]) for i in range(len(data))]
    fixed = [{"alpha": a,
              **score_rows([prediction_row(data, i, p) for i, p in enumerate(a * deep_outer + (1 - a) * floor_outer)]),
              "folds_choosing": int((choice == k).sum()),
              "inner_uf1_all": float(nested["fit_scores"][k])} for k, a in enumerate(alphas)]

    name = args.name or f"stack-{loso_dir.name}"
    folder = results_dir(args.out) / name
    folder.mkdir(exist_ok=True)
    write_run(folder / "run.json", {
        "data": str(Path(args.data).resolve()), "seed": loso_run["seed"], "folds": subjects,
        "profile": {"stacked with the floor": {"deep": loso_run["profile"], "alphas": alphas,
                                                "floor": {"candidates": candidates,
                                                          "inner_folds": floor_run["inner_folds"]}}},
    })
    write_csv(folder / "predictions.csv", rows)
    payload = {
        "benchmark": "stack", **score_rows(rows), "seed": loso_run["seed"],
        "protocol": ("per LOSO fold, alpha * deep + (1 - alpha) * floor probabilities, alpha chosen by pooled UF1 on "
                     "the "
                     "fold's group-mates' clips predicted by inner models that never saw the fold's subject"),
        "inputs": {"loso": str(loso_dir), "inner": str(inner_dir), "floor": str(floor_dir), "data": str(args.data)},
        "deep_alone": score_rows(deep_rows)["pooled"]["full"],
        "floor_alone": score_rows(floor_rows)["pooled"]["full"],
        "inner_deep_alone": uf1_uar(y_inner, deep_inner.argmax(1)),
        "inner_floor_alone": uf1_uar(y_inner, nested["floor_inner"].argmax(1)),
        "alpha_for_fit": alphas[nested["fit_choice"]], "fixed": fixed,
        "floor_inner_choices": [{"group": g, "C": candidates[c][0], "class_balanced": candidates[c][1]}
                                for g, c in enumerate(nested["floor_choice"])],
        "choices": [{"subject": f, "alpha": alphas[int(choice[k])], "inner_clips": nested["mates"][k],
                     "inner_uf1": [float(v) for v in nested["scores"][k]]} for k, f in enumerate(subjects)],
        "seconds": round(seconds, 1), "environment": environment(),
    }
    write_json(folder / "results.json", payload)
    markdown = stack_markdown(payload, name)
    write_text(folder / "stack.md", markdown, flag="--out")
    plot_stack(payload, folder / "stack.png", name)
    console.print(markdown)
    console.print(f"wrote {folder}/stack.md, stack.png, results.json, predictions.csv, run.json ({seconds:.0f} s)")
    return 0


def stack_markdown(payload: dict, name: str) -> str:
    env = payload["environment"]
    deep, floor = payload["deep_alone"], payload["floor_alone"]
    lines = [
        f"### {name}: deep model and floor mixed, LOSO, pooled UF1 / UAR (seed {payload['seed']}; "
        f"{env['machine']}, {env['cpu']}; {payload['seconds']:.0f} s for the inner floors)",
        "",
        "| method | Full | CASME II | SMIC | SAMM | folds choosing it |",
        "|---|---|---|---|---|---|",
        "| **nested: alpha chosen per fold on its training subjects' inner models** | "
        f"{score_cells(payload['pooled'])} | |",
    ]
    for row in payload["fixed"]:
        what = {1.0: " (the deep model alone)", 0.0: " (the nested floor alone)"}.get(row["alpha"], "")
        lines.append(f"| alpha = {row['alpha']:g}{what}, every fold | {score_cells(row['pooled'])} | "
                     f"{row['folds_choosing']} |")
    lines += ["", "alpha is the deep model's weight. Inner validation over all subjects: deep alone "
              f"{payload['inner_deep_alone']['uf1']:.3f}, floor alone {payload['inner_floor_alone']['uf1']:.3f} UF1; "
              "the rule "
              f"applied to every inner prediction chooses alpha = {payload['alpha_for_fit']:g} (alpha_for_fit). Deep "
              "run "
              f"alone {deep['uf1']:.3f} / {deep['uar']:.3f}, floor alone {floor['uf1']:.3f} / {floor['uar']:.3f}. "
              "The fixed rows are scored on the test subjects, for reading only; each fold's inner scores are in "
              "results.json.", ""]
    return "\n".join(lines)


def plot_stack(payload: dict, path: Path, name: str) -> None:
    """Full UF1 against alpha (fixed for every fold, test-scored; and inner-validated over all subjects), and the
    nested mix."""
    from train.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    fixed = sorted(payload["fixed"], key=lambda r: r["alpha"])
    alpha = [r["alpha"] for r in fixed]
    ax.plot(alpha, [r["pooled"]["full"]["uf1"] for r in fixed], "-o",
            label="alpha fixed for every fold (LOSO test subjects)")
    ax.plot(alpha, [r["inner_uf1_all"] for r in fixed], "--s", color="C7",
            label="alpha fixed, inner validation (all inner clips)")
    nested = payload["pooled"]["full"]["uf1"]
    ax.axhline(nested, color="C3", lw=2, label=f"nested (alpha chosen per fold): {nested:.3f}")
    ax.set_xlabel("alpha, the deep model's weight (0: the floor alone, 1: the deep model alone)")
    ax.set_ylabel("Full UF1 (pooled)")
    ax.set_title(f"{name}: deep model and logistic-regression floor mixed", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
