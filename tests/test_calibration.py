"""Temperature scaling on generated LOSO predictions: the fit, the nested fit, ECE, mex-train calibrate."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mex.labels import CLASSES
from train.calibration import ece, fit_temperature, nested_temperatures, nll, scale
from train.cli import main as train_main


def generated(n: int = 1200, sharpen: float = 1.0, seed: int = 0):
    """(probs, labels, subjects): labels drawn from calibrated probabilities, which are then sharpened
    (softmax(log p * sharpen)): sharpen > 1 makes an over-confident set whose right temperature is `sharpen`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, len(CLASSES)))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(len(CLASSES), p=p) for p in true])
    subjects = np.array([f"s{i % 12:02d}" for i in range(n)])
    return scale(true, 1 / sharpen), y, subjects


def test_an_over_confident_set_gets_a_temperature_above_1_and_a_lower_ece():
    probs, y, _ = generated(sharpen=2.0)
    t = fit_temperature(probs, y)
    assert 1.7 < t < 2.3
    after = scale(probs, t)
    assert ece(after, y) < ece(probs, y) / 2 and nll(after, y) < nll(probs, y)
    assert (after.argmax(1) == probs.argmax(1)).all()  # a temperature never changes a label
    calibrated, y, _ = generated(sharpen=1.0, seed=1)
    assert 0.85 < fit_temperature(calibrated, y) < 1.15


def test_ece_by_hand():
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    y = np.array([0, 1, 1, 1])
    # bin of 0.9: accuracy 1/2, confidence 0.9; bin of 0.5 (both rows): accuracy 1/2, confidence 0.5
    assert ece(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.0)


def test_the_nested_fit_never_sees_the_held_out_subjects_rows():
    probs, y, subjects = generated(sharpen=2.0)
    temperatures = nested_temperatures(probs, y, subjects)
    assert set(temperatures) == set(subjects)
    held_out = subjects == "s03"
    changed_probs, changed_y = probs.copy(), y.copy()
    changed_probs[held_out] = scale(probs[held_out], 0.1)  # wildly over-confident ...
    changed_y[held_out] = (y[held_out] + 1) % len(CLASSES)  # ... and mostly wrong
    changed = nested_temperatures(changed_probs, changed_y, subjects)
    assert changed["s03"] == temperatures["s03"]  # its own rows did not move its temperature
    assert changed["s04"] > temperatures["s04"] + 0.1  # they do move everybody else's
    assert temperatures["s03"] == fit_temperature(probs[~held_out], y[~held_out])


def write_predictions(path, probs, y, subjects):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "subject", "clip", "label", "pred", *(f"p_{c}" for c in CLASSES)])
        for i, (p, label, s) in enumerate(zip(probs, y, subjects)):
            w.writerow(["casme2", s, f"clip{i}", int(label), int(np.argmax(p)), *(f"{v:.6f}" for v in p)])


def test_calibrate_command_writes_the_report_and_the_plot(tmp_path):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        probs, y, subjects = generated(n=600, sharpen=2.0, seed=seed)
        write_predictions(run / "predictions.csv", probs, y, subjects)
        runs.append(run)
    live, live_y, live_subjects = generated(n=120, sharpen=2.0, seed=5)
    write_predictions(runs[0] / "predictions-live.csv", live, live_y, live_subjects)
    out = tmp_path / "calibration"
    assert train_main(["calibrate", "--run", str(runs[0]), "--run", str(runs[1]), "--out", str(out)]) == 0
    result = json.loads((out / "calibration.json").read_text())
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    first, second = result["runs"]
    assert result["temperature"] == first["temperature_all_rows"] and 1.6 < result["temperature"] < 2.4
    assert str(runs[0]) in result["fitted_on"] and "live" not in second
    for judged in (first["loso"], second["loso"], first["live"]):
        assert judged["ece_after"] < judged["ece_before"]
        u = judged["uncertain"]
        assert u["below"] == result["uncertain_below"] and 0 < u["share"] < 1
        assert u["accuracy_under"] < u["accuracy_over"]


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.unlink(), "no such predictions file"),
    (lambda path: path.write_text(path.read_text().replace("0.", "-0.", 1)), "line 2"),
    (lambda path: path.write_text(path.read_text().replace("p_surprise", "p_other")), "p_surprise"),
])
def test_calibrate_names_the_bad_file(tmp_path, capsys, damage, message):
    run = tmp_path / "run"
    run.mkdir()
    write_predictions(run / "predictions.csv", *generated(n=60))
    damage(run / "predictions.csv")
    assert train_main(["calibrate", "--run", str(run), "--out", str(tmp_path / "out")]) == 2
    err = "".join(capsys.readouterr().err.split())  # rich wraps long paths anywhere
    assert "predictions.csv" in err and message.replace(" ", "") in err


def test_the_committed_calibration_is_its_runs_recomputed_and_the_shipped_models_temperature(tmp_path):
    from pathlib import Path

    from realtime.runtimes import load_runtime
    from train.calibration import calibrate, rounded

    root = Path(__file__).resolve().parents[1]
    committed = json.loads((root / "benchmarks/results/h200/calibration-live/calibration.json").read_text())
    again = rounded(calibrate([root / r["run"] for r in committed["runs"]], tmp_path))
    for old, new in zip(committed["runs"], again["runs"]):
        assert {**old, "run": None} == {**new, "run": None}
    assert again["temperature"] == committed["temperature"] == load_runtime().info["calibration"]["temperature"]
    assert f"T = {committed['temperature']:.3f}" in (root / "mex/assets/MODEL_CARD.md").read_text()
