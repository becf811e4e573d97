"""The committed results are what their predictions say: every results.json under benchmarks/results
is re-scored from the predictions.csv beside it, docs/results.md's seed-ensemble rows from the runs they
name, and README's headline numbers are docs/results.md's.

A hand-edited number, a scorer that changed meaning, or a README row left behind by a rerun fails here.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from train.metrics import score_rows
from train.predictions import read_predictions
from train.recipes import Recipe
from train.report import ensemble_rows
from train.runs import SCHEMA, read_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = sorted(p.parent for p in RESULTS.rglob("results.json") if (p.parent / "predictions.csv").exists())


def plain_uf1_uar(labels: list[int], preds: list[int]) -> tuple[float, float]:
    """MEGC2019's UF1 and UAR by counting, written apart from train/metrics.py on purpose."""
    f1s, recalls = [], []
    for c in sorted(set(labels)):
        tp = sum(1 for y, p in zip(labels, preds) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, preds) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, preds) if y == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn))
        recalls.append(tp / (tp + fn))
    return sum(f1s) / len(f1s), sum(recalls) / len(recalls)


def test_there_are_committed_runs_to_check():
    assert len(RUNS) >= 50, f"only {len(RUNS)} committed runs found under {RESULTS}"


def test_skip_reasons_point_to_a_table_that_exists():
    from conftest import RUN_WHERE

    heading = RUN_WHERE.split('"')[1]
    assert f"## {heading}\n" in (ROOT / "docs" / "results.md").read_text()


def test_committed_run_files_read_in_the_current_schema():
    """The committed run.json files were written before run files had a schema (some before `precision`
    was pinned, with fewer Recipe fields, or with the data folder relative to the repository)."""
    paths = sorted(RESULTS.rglob("run.json"))
    assert len(paths) >= 100
    for path in paths:
        run = read_run(path)
        assert run["schema"] == SCHEMA and Path(run["data"]).is_absolute(), path
        if "model" in run["profile"]:  # a run that trained
            assert run["precision"] in ("fp32", "bf16"), path
            assert set(run["profile"]["recipe"]) == set(Recipe.__dataclass_fields__), path


@pytest.mark.parametrize("run", RUNS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_results_json_is_its_predictions_rescored(run: Path):
    saved = json.loads((run / "results.json").read_text())
    with (run / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for name, scores in saved["pooled"].items():
        picked = [r for r in rows if name == "full" or r["dataset"] == name]
        uf1, uar = plain_uf1_uar([int(r["label"]) for r in picked], [int(r["pred"]) for r in picked])
        assert scores["uf1"] == pytest.approx(uf1, abs=1e-9), f"{run}: pooled {name} UF1"
        assert scores["uar"] == pytest.approx(uar, abs=1e-9), f"{run}: pooled {name} UAR"
    rescored = score_rows(read_predictions(run / "predictions.csv"))
    for name, scores in saved.get("per_fold_mean", {}).items():
        for metric in ("uf1", "uar"):
            expected = rescored["per_fold_mean"][name][metric]
            assert scores[metric] == pytest.approx(expected, abs=1e-9), f"{run}: per-fold {name}"
    assert saved.get("clips", len(rows)) == len(rows)


def _readme_row(starts_with: str) -> list[tuple[float, float]]:
    """The (UF1, UAR) pairs of the docs/results.md row that starts with the given text."""
    lines = [ln for ln in (ROOT / "docs" / "results.md").read_text().splitlines() if ln.startswith(starts_with)]
    assert len(lines) == 1, f"docs/results.md: expected one row starting {starts_with!r}, found {len(lines)}"
    return [(float(a), float(b)) for a, b in re.findall(r"(\d\.\d+) / (\d\.\d+)", lines[0])]


@pytest.mark.parametrize(
    "row_start, run_names",
    [
        ("| **DA-CrossViT, profile `ours` (200 epochs), probability average of seeds 0, 1, 2",
         ("loso-ours-1seed", "loso-ours-seed1", "loso-ours-seed2")),
        ("| DA-CrossViT, profile `ours`, probability average of seeds 0-4",
         ("loso-ours-1seed", "loso-ours-seed1", "loso-ours-seed2", "loso-ours-seed3", "loso-ours-seed4")),
        ("| DA-CrossViT, nested selection per fold among `ours` and its 7 ablation variants (`mex-train select`), "
         "probability average of seeds 0, 1, 2",
         ("select-ours-seed0", "select-ours-seed1", "select-ours-seed2")),
        ("| DA-CrossViT, the same nested selection with the doubled shift (`shift_px=3.0`) as a ninth candidate, "
         "probability average of seeds 0, 1, 2",
         ("select-ours-plus-shift-3px-seed0", "select-ours-plus-shift-3px-seed1", "select-ours-plus-shift-3px-seed2")),
        ("| DA-CrossViT (`ours`) mixed with the nested floor, the deep model's weight chosen per fold on inner models "
         "(`mex-bench stack`: nested, honest), probability average of seeds 0, 1, 2",
         ("stack-ours-seed0", "stack-ours-seed1", "stack-ours-seed2")),
        ("| STSTNet (published config, 1,683 parameters), this repo's recipe `ours` (`--model ststnet`), probability "
         "average of seeds 0, 1, 2",
         ("loso-ours-ststnet-seed0", "loso-ours-ststnet-seed1", "loso-ours-ststnet-seed2")),
        ("| **DA-CrossViT, profile `live` (`ours` + each channel's min-max scaling redone at random + the training "
         "subjects' live encodings), probability average of seeds 0, 1, 2",
         ("h200/live-gap-live-seed0", "h200/live-gap-live-seed1", "h200/live-gap-live-seed2")),
    ],
    ids=["recipe", "recipe-5-seeds", "nested-selection", "nested-selection-plus-shift", "stack", "ststnet", "live"],
)
def test_readme_seed_ensemble_rows_are_the_committed_runs(row_start, run_names):
    runs = [RESULTS / (name if "/" in name else f"cpu2-x86_64/{name}") for name in run_names]
    assert [read_run(r / "run.json")["seed"] for r in runs] == list(range(len(runs)))
    pooled = score_rows(ensemble_rows(runs))["pooled"]
    # README's column order
    expected = [(pooled[c]["uf1"], pooled[c]["uar"]) for c in ("full", "casme2", "smic", "samm")]
    assert _readme_row(row_start) == [(round(f, 3), round(a, 3)) for f, a in expected]


def test_readme_floor_row_is_the_committed_floor_run():
    """README's nested logistic-regression floor is mex-bench floor's committed run, re-scored."""
    run = RESULTS / "cpu2-x86_64" / "floor"
    pooled = score_rows(read_predictions(run / "predictions.csv"))["pooled"]
    expected = [(round(pooled[c]["uf1"], 3), round(pooled[c]["uar"], 3)) for c in ("full", "casme2", "smic", "samm")]
    assert _readme_row("| logistic regression on raw pixels, penalty and class weighting chosen per fold") == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_committed_stack_is_its_inputs_mixed_as_its_choices_say(seed):
    """Each clip of a committed mex-bench stack run is its fold's alpha (the argmax of that fold's inner
    scores) times the committed LOSO run's probabilities plus 1 - alpha times the committed floor's."""
    run = RESULTS / "cpu2-x86_64" / f"stack-ours-seed{seed}"
    saved = json.loads((run / "results.json").read_text())
    alphas = [f["alpha"] for f in saved["fixed"]]
    alpha = {f["subject"]: f["alpha"] for f in saved["choices"]}
    assert all(f["alpha"] == alphas[f["inner_uf1"].index(max(f["inner_uf1"]))] for f in saved["choices"])
    deep = {(r["subject"], r["clip"]): r for r in read_predictions(ROOT / saved["inputs"]["loso"] / "predictions.csv")}
    floor = {(r["subject"], r["clip"]): r
             for r in read_predictions(ROOT / saved["inputs"]["floor"] / "predictions.csv")}
    rows = read_predictions(run / "predictions.csv")
    assert len(rows) == len(deep) == len(floor) == 442
    columns = [c for c in rows[0] if c.startswith("p_")]
    for r in rows:
        a = alpha[r["subject"]]
        key = (r["subject"], r["clip"])
        want = [a * float(deep[key][c]) + (1 - a) * float(floor[key][c]) for c in columns]
        assert np.allclose([float(r[c]) for c in columns], want, atol=2e-6), r["clip"]


def test_a_benchmark_without_out_never_writes_into_the_committed_results(tmp_path, monkeypatch):
    from benchmarks.common import results_dir

    monkeypatch.chdir(tmp_path)
    path = results_dir(None).resolve()
    assert path.is_dir() and path.is_relative_to(tmp_path) and not path.is_relative_to(RESULTS)
    assert results_dir(str(tmp_path / "named")) == tmp_path / "named"


def test_readme_headline_numbers_are_those_of_docs_results():
    """README keeps a few headline numbers; each must be one that docs/results.md (checked above) states."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Headline numbers")[1].split("\n## ")[0]
    results = (ROOT / "docs" / "results.md").read_text()
    numbers = re.findall(r"\d+\.\d+(?: ± \d+\.\d+)?|\d+ fps|\d+ ms",
                         "\n".join(ln for ln in table.splitlines() if ln.startswith("| ")))
    assert len(numbers) >= 12
    missing = [n for n in numbers if n not in results]
    assert not missing, f"README headline numbers not in docs/results.md: {missing}"
