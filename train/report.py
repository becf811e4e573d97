"""Tables and figures of LOSO runs, made from the files a run wrote (never from memory).

`report.md` puts our pooled numbers in the paper's Table 2 layout beside the reference rows of
docs/results.md; `confusion.png` is Fig. 5 (Full and per dataset); `curve.png` is Fig. 6 (UF1/UAR
against epochs, from curve.csv).
"""
from __future__ import annotations

import csv
import itertools
import json
import re
import textwrap
from pathlib import Path

import numpy as np

from mex.labels import CLASSES
from mex.outputs import write_text

from .metrics import confusion, score_rows
from .predictions import read_predictions
from .runs import RUN, read_run

COLUMNS = ("full", "casme2", "smic", "samm")
COLUMN_TITLES = {"full": "Full", "casme2": "CASME II", "smic": "SMIC", "samm": "SAMM"}

# UF1, UAR per column (Full, CASME II, SMIC, SAMM): the published rows from their papers (the DA-CrossViT paper's
# Table 2 holds LBP-TOP's), the two measured ones from the project brief; docs/results.md lists them all.
REFERENCE_ROWS = [
    ("LBP-TOP (MEGC2019 baseline), paper Table 2", [(0.588, 0.579), (0.703, 0.743), (0.200, 0.528), (0.395, 0.410)]),
    ("STSTNet, original paper", [(0.735, 0.761), (0.838, 0.869), (0.680, 0.701), (0.659, 0.681)]),
    ("DA-CrossViT, the paper", [(0.7275, 0.7272), (0.8639, 0.8664), (0.6992, 0.6982), (0.5839, 0.5869)]),
    ("logistic regression on raw pixels (project brief, measured)",
     [(0.719, 0.729), (0.822, 0.828), (0.702, 0.710), (0.573, 0.585)]),
    ("5 M DA-CrossViT, paper schedule, honest (project brief, measured)",
     [(0.650, 0.646), (0.719, 0.714), (0.633, 0.630), (0.541, 0.539)]),
]


def _cells(pooled: dict) -> list[str]:
    return [f"{pooled[c]['uf1']:.4f} / {pooled[c]['uar']:.4f}" if c in pooled else "–" for c in COLUMNS]


def table2(results: dict, name: str) -> str:
    head = "| method | " + " | ".join(f"{COLUMN_TITLES[c]} UF1 / UAR" for c in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for title, vals in REFERENCE_ROWS:
        lines.append(f"| {title} | " + " | ".join(f"{a:.4f} / {b:.4f}" for a, b in vals) + " |")
    lines.append(f"| **{name} (this run, pooled)** | " + " | ".join(_cells(results["pooled"])) + " |")
    lines.append(f"| {name} (this run, per-fold mean) | " + " | ".join(_cells(results["per_fold_mean"])) + " |")
    return "\n".join(lines)


def write_reports(run: Path) -> None:
    run = Path(run)
    rows = read_predictions(run / "predictions.csv")
    results = score_rows(rows)
    meta = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
    prof = meta.get("profile")
    name = f"{prof['model']} ({run.name})" if prof else run.name
    text = [f"# LOSO report: {run.name}", "", f"Protocol: {meta.get('protocol', 'LOSO')}."]
    if prof:  # a nested selection's results.json names its candidates instead (see its choices.csv)
        text += [
            f"Model: {prof.get('model')} {prof.get('model_config')}, {meta.get('params_per_model', '?')} parameters "
            "per model.",
            f"Recipe: {prof.get('recipe')}.",
            f"Device: {meta.get('device')}, wall {meta.get('wall_s')} s, versions {meta.get('versions')}.",
        ]
    elif "candidates" in meta:
        text.append(f"Candidates: {', '.join(meta['candidates'])}; each fold's inner scores and choice in choices.csv.")
    text += ["", "Scored from predictions.csv (pooled over all folds is the headline):", "", table2(results, name), ""]
    figures = ["confusion"] + [f for f in ("curve", "choices") if (run / f"{f}.csv").exists()]
    text += [line for f in figures for line in (f"![{f}]({f}.png)", "")]
    write_text(run / "report.md", "\n".join(text), flag="--out")
    plot_confusions(rows, run / "confusion.png", name)
    if (run / "curve.csv").exists():
        plot_curve(run / "curve.csv", run / "curve.png", name)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusions(rows: list[dict], path: Path, title: str) -> None:
    plt = pyplot()

    y = np.array([r["label"] for r in rows])
    pred = np.array([r["pred"] for r in rows])
    ds = np.array([r["dataset"] for r in rows])
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    for ax, col in zip(axes, COLUMNS):
        sel = np.ones(len(y), bool) if col == "full" else ds == col
        cm = confusion(y[sel], pred[sel])
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(CLASSES)):
            for j in range(len(CLASSES)):
                ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.2f}", ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(CLASSES)), CLASSES)
        ax.set_yticks(range(len(CLASSES)), CLASSES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{COLUMN_TITLES[col]} (n={int(sel.sum())})")
    fig.suptitle(f"Confusion matrices, pooled LOSO: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curve(curve_csv: Path, path: Path, title: str) -> None:
    plt = pyplot()

    with curve_csv.open(newline="") as f:
        pts = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    if not pts:
        return
    ep = [p["epoch"] for p in pts]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ep, [p["uf1"] for p in pts], "o-", label="UF1 (pooled)")
    ax.plot(ep, [p["uar"] for p in pts], "s-", label="UAR (pooled)")
    ax2 = ax.twinx()
    ax2.plot(ep, [p["loss"] for p in pts], color="gray", alpha=0.5, label="train loss")
    ax2.set_ylabel("train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("score")
    ax.set_title(f"UF1/UAR against epochs (shown, never used to pick): {title}", fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ensemble_rows(runs: list[Path]) -> list[dict]:
    """The runs' predictions with each clip's class probabilities averaged over the runs (a seed
    ensemble assembled from separate runs, e.g. one seed per session on a small machine)."""
    keyed = []
    for run in runs:
        rows = {(r["dataset"], r["subject"], r["clip"]): r for r in read_predictions(run / "predictions.csv")}
        if keyed and rows.keys() != keyed[0][1].keys():
            raise ValueError(f"{run}: predicts other clips than {keyed[0][0]}; an ensemble needs runs on the same data")
        keyed.append((run, rows))
    columns = [f"p_{c}" for c in CLASSES]
    out = []
    for key, first in keyed[0][1].items():
        probs = np.mean([[float(rows[key][c]) for c in columns] for _, rows in keyed], axis=0)
        row = {k: first[k] for k in ("dataset", "subject", "clip", "label")}
        row["pred"] = int(np.argmax(probs))
        row.update({c: round(float(p), 6) for c, p in zip(columns, probs)})
        out.append(row)
    return out


def _grouped(runs: list[Path]) -> list[dict]:
    """Runs grouped by configuration (runs that differ only in --seed), in first-seen order; each group
    with its label, its runs' seeds and pooled scores, and its per-seed Full UF1 minus the first
    group's for the same seed (same initialisation and data order), in seed order."""
    groups: dict[str, dict] = {}
    for run in runs:
        pinned = read_run(run / RUN)
        key = json.dumps(pinned["profile"], sort_keys=True)
        group = groups.setdefault(key,
                                  {"label": re.sub(r"[-_]seed\d+$", "", run.name), "runs": [], "seeds": [],
                                   "scores": []})
        group["runs"].append(run)
        group["seeds"].append(int(pinned["seed"]))
        group["scores"].append(score_rows(read_predictions(run / "predictions.csv"))["pooled"])
    configs = list(groups.values())
    if configs:
        ref = {seed: s["full"]["uf1"] for seed, s in zip(configs[0]["seeds"], configs[0]["scores"]) if "full" in s}
        for c in configs:
            by_seed = sorted(zip(c["seeds"], c["scores"]), key=lambda t: t[0])
            c["paired"] = [(seed, s["full"]["uf1"] - ref[seed]) for seed, s in by_seed if "full" in s and seed in ref]
    return configs


def _paired_cell(paired: list[tuple[int, float]]) -> str:
    diffs = [d for _, d in paired]
    if not diffs:
        return "–"
    each = " / ".join(f"{d:+.3f}" for d in diffs)
    if len(diffs) == 1:
        return f"{each} (1 seed)"
    return f"{np.mean(diffs):+.3f} ± {np.std(diffs, ddof=1):.3f} ({each})"


def ablation_table(runs: list[Path], title: str, figure: Path | None = None) -> str:
    """One row per configuration; runs that differ only in --seed are pooled into mean ± std, and
    their probability average (the seed ensemble) gets a row of its own.

    The first configuration is the reference: the last column gives each other configuration's Full
    UF1 minus the reference's for the same seed, per seed and as mean ± std, since a paired difference
    is steadier than two means with their seed spreads. With `figure`, those differences are also
    drawn there (one dot per seed) and the table links the picture."""
    configs = _grouped(runs)
    head = f"### {title}\n\n| configuration | seeds | " + " | ".join(f"{COLUMN_TITLES[c]} UF1 / UAR" for c in COLUMNS)
    head += f" | Full UF1 − {configs[0]['label']}'s, same seed |" if configs else " |"
    lines = [head, "|---" * (len(COLUMNS) + (3 if configs else 2)) + "|"]
    for i, config in enumerate(configs):
        scores = config["scores"]
        cells = []
        for c in COLUMNS:
            if not all(c in s for s in scores):
                cells.append("–")
                continue
            f1 = np.array([s[c]["uf1"] for s in scores])
            ar = np.array([s[c]["uar"] for s in scores])
            spread = f" ± {f1.std(ddof=1):.3f} / {ar.std(ddof=1):.3f}" if len(scores) > 1 else ""
            cells.append(f"{f1.mean():.3f} / {ar.mean():.3f}{spread}")
        cells.append("reference" if i == 0 else _paired_cell(config["paired"]))
        lines.append(f"| {config['label']} | {len(scores)} | " + " | ".join(cells) + " |")
        if len(config["runs"]) > 1:
            pooled = score_rows(ensemble_rows(config["runs"]))["pooled"]
            cells = [f"{pooled[c]['uf1']:.3f} / {pooled[c]['uar']:.3f}" if c in pooled else "–" for c in COLUMNS]
            lines.append(f"| {config['label']}, probability average of the {len(config['runs'])} seeds | "
                         f"{len(config['runs'])} | " + " | ".join(cells) + " | |")
    if figure is not None and len(configs) > 1:
        plot_paired(configs, figure, title)
        lines += ["", f"![Full UF1 minus {configs[0]['label']}'s, same seed]({Path(figure).name})"]
    curves = {}
    for config in (c for c in configs if len(c["runs"]) >= 3):
        n, curve = len(config["runs"]), ensemble_sizes(config["runs"])
        curves[config["label"]] = curve
        each = "; ".join(f"{k}: {p['uf1'].mean():.3f} [{p['uf1'].min():.3f}–{p['uf1'].max():.3f}]"
                         for k, p in curve.items())
        lines += ["",
                  f"{config['label']}, Full UF1 of the probability average of k seeds, mean [min–max] over every "
                  "choice of k of "
                      f"its {n} seeds: {each}. Clips right by 0, 1, … {n} of the seeds: "
                      + ", ".join(str(c) for c in right_by_seeds(config["runs"]))]
    if figure is not None and curves:
        ensemble_figure = Path(figure).with_name(Path(figure).stem + "-ensemble.png")
        plot_ensemble_sizes(curves, ensemble_figure, title)
        lines += ["", f"![Full UF1 against the number of seeds averaged]({ensemble_figure.name})"]
    return "\n".join(lines) + "\n"


def ensemble_sizes(runs: list[Path]) -> dict[int, dict]:
    """For k = 1 … len(runs): the pooled Full UF1 of the probability average of every k-subset of
    the runs (which seeds are averaged matters as much as how many, so each size is shown as the
    spread over all its subsets, not one arbitrary prefix)."""
    return {k: {"uf1": np.array([score_rows(ensemble_rows(list(s)))["pooled"]["full"]["uf1"]
                                 for s in itertools.combinations(runs, k)])}
            for k in range(1, len(runs) + 1)}


def right_by_seeds(runs: list[Path]) -> np.ndarray:
    """How many clips exactly n of the runs predict correctly, for n = 0 … len(runs): an ensemble
    can only mend the clips its members disagree on (neither end of this histogram)."""
    right = []
    for run in runs:
        rows = {(r["dataset"], r["subject"], r["clip"]): r["label"] == r["pred"]
                for r in read_predictions(run / "predictions.csv")}
        right.append([rows[key] for key in sorted(rows)])
    return np.bincount(np.sum(right, axis=0), minlength=len(runs) + 1)


def plot_ensemble_sizes(curves: dict[str, dict], path: Path, title: str) -> None:
    """Full UF1 against the number of seeds averaged: one dot per subset of seeds, the mean joined."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (label, curve) in enumerate(curves.items()):
        ks = list(curve)
        for k in ks:
            ax.plot([k + 0.06 * i] * len(curve[k]["uf1"]), curve[k]["uf1"], "o", color=f"C{i}", alpha=0.35, ms=4)
        ax.plot([k + 0.06 * i for k in ks], [curve[k]["uf1"].mean() for k in ks], "-D", color=f"C{i}", label=label)
    references = dict(REFERENCE_ROWS)
    for name, style in (("DA-CrossViT, the paper", "--"),
                        ("logistic regression on raw pixels (project brief, measured)", ":")):
        full_uf1 = references[name][0][0]
        ax.axhline(full_uf1, color="gray", ls=style, lw=1, label=f"{name}: {full_uf1}")
    ax.set_xticks(range(1, max(max(c) for c in curves.values()) + 1))
    ax.set_xlabel("seeds averaged (probability average; dots: every choice of that many seeds)")
    ax.set_ylabel("Full UF1 (pooled LOSO)")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot: never over the dots
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_paired(configs: list[dict], path: Path, title: str) -> None:
    """Each configuration's per-seed Full UF1 minus the reference's (dots, labelled by seed) and
    their mean ± std (bar), against zero: which ideas help, and by how much beyond the seed spread."""
    plt = pyplot()

    rows = configs[1:]
    heading = textwrap.wrap(title, 110)
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.14 * len(heading) + 0.55 * len(rows)))
    for y, config in enumerate(rows):
        diffs = np.array([d for _, d in config["paired"]])
        if len(diffs) > 1:
            ax.errorbar(diffs.mean(), y, xerr=diffs.std(ddof=1), fmt="D", color="black", capsize=4, zorder=3)
        for seed, d in config["paired"]:
            ax.plot(d, y, "o", color=f"C{seed % 10}", alpha=0.8)
            ax.annotate(str(seed), (d, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.axvline(0, color="gray", lw=1)
    ax.set_yticks(range(len(rows)),
                  [f"{c['label']} ({len(c['paired'])} seed{'s' if len(c['paired']) != 1 else ''})" for c in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"Full UF1 minus {configs[0]['label']}'s, same seed\n(dots: one per seed, labelled; diamond and bar: "
                  "mean ± std)")
    ax.set_title("\n".join(heading), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
