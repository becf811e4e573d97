"""The live-encoder gap: the live-encoded set, mex-bench live-gap, robustness augmentation, live clips in training."""
import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.cli import main as bench
from benchmarks.live_gap import floor_probs, gap_scores, live_index
from mex.composite import load_flow_folder
from mex.labels import CLASSES
from train.batched import augment
from train.cli import main as train_main
from train.loso import loso_run_args, run_loso
from train.predictions import read_predictions
from train.runs import same_run
from train.metrics import uf1_uar
from train.recipes import PROFILES, Recipe, resolve

ROOT = Path(__file__).resolve().parents[1]
COMPOSITE = ROOT / "data" / "megc2019-composite-flow"
LIVE = ROOT / "data" / "casme2-live-encoded"
TINY = ["--set", "model.dims=[16,8]", "--set", "model.heads=[2,1]", "--set", "batch_size=16"]


def live_subset(data: Path, dest: Path) -> Path:
    """The live clips of the subjects in the composite-format folder `data`."""
    subjects = set(load_flow_folder(data).subject)
    with (LIVE / "labels.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["subject"] in subjects]
        fields = reader.fieldnames
    (dest / "flow").mkdir(parents=True)
    for r in rows:
        shutil.copy(LIVE / r["file"], dest / r["file"])
    with (dest / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return dest


def test_live_set_reads_and_pairs_with_the_composite_set():
    data, live = load_flow_folder(COMPOSITE), load_flow_folder(LIVE)
    assert live.x.shape == (138, 3, 28, 28) and len(live.subjects) == 24
    assert np.bincount(live.y).tolist() == [83, 32, 23]
    idx = live_index(data, live)  # raises if a clip or label does not match
    with (LIVE / "labels.csv").open(newline="") as f:
        composite_file = [r["composite_file"] for r in csv.DictReader(f)]
    with (COMPOSITE / "labels.csv").open(newline="") as f:
        files = [r["file"] for r in csv.DictReader(f)]
    assert [files[i] for i in idx] == composite_file
    assert not np.array_equal(live.x, data.x[idx])  # another encoder


def old_augment(x, recipe, gen):
    """train/batched.py `augment` without the zoom, blur and span steps, which the older profiles leave off."""
    from train.batched import mirror

    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    n = x.shape[0]
    if recipe.flip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], mirror(x), x)
    if recipe.shift_px > 0 or recipe.rotate_deg > 0:
        angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(recipe.rotate_deg)
        shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * recipe.shift_px / shape[-1])
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x.reshape(shape)


@pytest.mark.parametrize("name", [n for n in PROFILES if n != "live"])
def test_new_augmentations_are_off_in_the_older_profiles_and_leave_their_batches_unchanged(name):
    recipe = PROFILES[name].recipe
    assert (recipe.zoom, recipe.blur, recipe.span_min, recipe.span_max, recipe.live_clips) == (0, 0, 1, 1, False)
    x = torch.rand(4, 8, 3, 28, 28)
    new, old = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):  # the generators stay in step too
        assert torch.equal(augment(x, recipe, new), old_augment(x, recipe, old))


def test_a_committed_run_of_an_older_profile_is_still_the_same_run():
    run = ROOT / "benchmarks" / "results" / "cpu2-x86_64" / "loso-logreg"
    pinned = json.loads((run / "run.json").read_text())
    assert "zoom" not in pinned["profile"]["recipe"]  # schema 0, with fewer Recipe fields (train/runs.py)
    data, live, seeds = load_flow_folder(COMPOSITE), load_flow_folder(LIVE), pinned["profile"]["recipe"]["seeds"]
    for changes, same in (({}, True), ({"zoom": 0.08}, False), ({"live_clips": True}, False)):
        profile = resolve("logreg", seeds=seeds, **changes)
        args = {**loso_run_args(data, profile, pinned["seed"], pinned.get("precision", "fp32"), live),
                "data": pinned["data"]}
        assert same_run(run, args) == same


def test_span_redoes_each_channels_min_max_scaling():
    x = torch.rand(64, 3, 28, 28)
    gen = torch.Generator().manual_seed(0)
    # extremes 4x the image's: range compressed 4x, nothing clipped
    wide = augment(x, Recipe(span_min=4.0, span_max=4.0), gen)
    ratio = (wide.amax((-2, -1)) - wide.amin((-2, -1))) / (x.amax((-2, -1)) - x.amin((-2, -1)))
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.25))
    offsets = wide[..., 0, 0] - x[..., 0, 0] / 4
    # the extra range lies anywhere
    assert offsets.min() >= -1e-6 and offsets.max() <= 0.75 + 1e-6 and offsets.std() > 0.1
    narrow = augment(x, Recipe(span_min=0.5, span_max=0.5), gen)  # extremes inside: slope 2, the rest clipped
    inside = (narrow > 0) & (narrow < 1)
    assert inside.float().mean() > 0.3 and (narrow == 1).any() and (narrow == 0).any()
    one = inside[0, 0]
    np.testing.assert_allclose(np.polyfit(x[0, 0][one].numpy(), narrow[0, 0][one].numpy(), 1)[0], 2.0, rtol=1e-4)
    drawn = augment(x, Recipe(span_min=1.0, span_max=8.0), gen)  # span log-uniform in [1, 8]
    ratio = (drawn.amax((-2, -1)) - drawn.amin((-2, -1))) / (x.amax((-2, -1)) - x.amin((-2, -1)))
    assert ratio.min() >= 1 / 8 - 1e-5 and ratio.max() <= 1 + 1e-5
    assert ((ratio > 0.5).float().mean() - 1 / 3).abs() < 0.1  # P(span < 2) = log 2 / log 8


def test_zoom_scales_the_grid_within_its_range():
    ramp = torch.linspace(0, 1, 28).expand(200, 3, 28, 28).contiguous()  # horizontal ramp: slope 1/27 a pixel
    out = augment(ramp, Recipe(zoom=0.08), torch.Generator().manual_seed(0))
    slope = (out[..., 14, 16] - out[..., 14, 11]) / 5 * 27  # away from the border: 1 / the grid's scale
    assert slope.min() >= 1 / 1.08 - 1e-4 and slope.max() <= 1 / 0.92 + 1e-4
    assert slope.max() - slope.min() > 0.1  # drawn per image
    # about the centre
    torch.testing.assert_close(out[..., 14, 13:15].mean(-1), ramp[..., 14, 13:15].mean(-1), atol=2e-3, rtol=0)


def test_blur_mixes_each_image_with_its_3x3_box_blur():
    from train.batched import box3

    x = torch.rand(50, 3, 28, 28) * 0.5 + 0.25  # room to sharpen without clipping
    out = augment(x, Recipe(blur=0.5), torch.Generator().manual_seed(0))
    detail = x - box3(x)
    k = ((out - x) * detail).sum((1, 2, 3)) / (detail * detail).sum((1, 2, 3))  # least squares per image
    torch.testing.assert_close(out, x + k[:, None, None, None] * detail, atol=1e-5, rtol=0)
    assert k.abs().max() <= 0.5 + 1e-5 and k.min() < -0.2 and k.max() > 0.2


def tampered(live: Path, subject: str, dest: Path) -> Path:
    """`live` with the subject's images replaced by noise and its labels rotated (same clips, same count)."""
    shutil.copytree(live, dest)
    from mex.composite import write_png_rgb

    with (dest / "labels.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), reader.fieldnames
    rng = np.random.default_rng(0)
    for r in rows:
        if r["subject"] == subject:
            r["label"] = str((int(r["label"]) + 1) % 3)
            r["emotion"] = CLASSES[int(r["label"])]  # the class word with it: a contradicting row is refused
            write_png_rgb(dest / r["file"], rng.random((3, 28, 28)))
    with (dest / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return dest


def test_a_folds_own_live_clips_never_enter_its_training(subset, tmp_path):
    data, live = load_flow_folder(subset), load_flow_folder(live_subset(subset, tmp_path / "live"))
    held_out = "casme2_sub01"
    changed = load_flow_folder(tampered(tmp_path / "live", held_out, tmp_path / "changed"))
    profile = resolve("logreg", epochs=3, live_clips=True)
    runs = {}
    for name, clips in (("live", live), ("changed", changed)):
        run_loso(data, profile, tmp_path / name, torch.device("cpu"), live=clips, predict_also={"live": live})
        runs[name] = {f: read_predictions(tmp_path / name / f) for f in ("predictions.csv", "predictions-live.csv")}
    for f in ("predictions.csv", "predictions-live.csv"):
        mine = [[r for r in runs[n][f] if r["subject"] == held_out] for n in runs]
        others = [[r for r in runs[n][f] if r["subject"] != held_out] for n in runs]
        assert mine[0] and mine[0] == mine[1]  # its fold never saw its live clips
        assert others[0] != others[1]  # the other folds train on them
    p_data, p_live = {}, {}
    for name, clips in (("live", live), ("changed", changed)):  # the floor the same way
        p_data[name], p_live[name] = floor_probs(data, clips, Recipe(live_clips=True), 0.1, 0, seed=0)
    mine = np.array(data.subject) == held_out
    np.testing.assert_array_equal(p_data["live"][mine], p_data["changed"][mine])
    assert not np.allclose(p_data["live"][~mine], p_data["changed"][~mine])


def test_live_clips_need_their_folder_and_known_subjects(subset, tiny_subset, tmp_path):
    data = load_flow_folder(tiny_subset)
    with pytest.raises(ValueError, match="--live"):
        run_loso(data, resolve("logreg", epochs=1, live_clips=True), tmp_path / "a", torch.device("cpu"))
    live = load_flow_folder(live_subset(subset, tmp_path / "live"))  # holds casme2_sub02, not in tiny_subset
    with pytest.raises(ValueError, match="casme2_sub02"):
        run_loso(data, resolve("logreg", epochs=1, live_clips=True), tmp_path / "b", torch.device("cpu"), live=live)


def check_gap_files(out: Path, n_data: int, n_live: int) -> dict:
    saved = json.loads((out / "live-gap.json").read_text())
    rows, live_rows = read_predictions(out / "predictions.csv"), read_predictions(out / "predictions-live.csv")
    assert len(rows) == n_data and len(live_rows) == n_live
    assert saved["scores"] == gap_scores(rows, live_rows)
    by_clip = {r["clip"]: r["pred"] for r in rows}
    y = np.array([r["label"] for r in live_rows])
    live_pred = np.array([r["pred"] for r in live_rows])
    comp_pred = np.array([by_clip[r["clip"]] for r in live_rows])
    s = saved["scores"]
    assert s["live"]["uf1"] == pytest.approx(uf1_uar(y, live_pred)["uf1"])
    assert s["composite"]["accuracy"] == pytest.approx((comp_pred == y).mean())
    assert s["gap"]["uf1"] == pytest.approx(s["composite"]["uf1"] - s["live"]["uf1"])
    assert s["agreement"] == pytest.approx((comp_pred == live_pred).mean())
    assert f"{s['live']['uf1']:.3f}" in (out / "live-gap.md").read_text()
    return saved


def test_bench_live_gap_floor_and_trainer_write_files_that_rescore(subset, tmp_path):
    live = live_subset(subset, tmp_path / "live")
    n_data, n_live = len(load_flow_folder(subset)), len(load_flow_folder(live))
    common = ["live-gap", "--data", str(subset), "--live", str(live)]
    assert bench([*common, "--floor", "--profile", "logreg", "--set", "span_max=4", "--copies", "2", "--out",
                  str(tmp_path / "floor")]) == 0
    saved = check_gap_files(tmp_path / "floor", n_data, n_live)
    assert saved["floor"] == {"C": 0.1, "copies": 2}
    assert bench([*common, "--profile", "live", "--epochs", "2", "--device", "cpu", *TINY, "--out",
                  str(tmp_path / "live")]) == 0
    saved = check_gap_files(tmp_path / "live", n_data, n_live)
    assert saved["profile"]["recipe"]["live_clips"]
    assert json.loads((tmp_path / "live" / "run.json").read_text())["live"] == str(live)
    # --table re-scores the two runs from their files: each row, then a learner's mean over its runs
    assert bench(["live-gap", "--table", str(tmp_path / "floor"), str(tmp_path / "live"), "--out",
                  str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "live-gap-table.md").read_text()
    for run in ("floor", "live"):
        s = json.loads((tmp_path / run / "live-gap.json").read_text())["scores"]
        assert f"| {s['composite']['uf1']:.3f} | {s['live']['uf1']:.3f} | {s['gap']['uf1']:.3f} |" in md
    assert md.count("mean") == 2


def test_bench_live_gap_needs_an_out_folder():
    with pytest.raises(SystemExit, match="--out is required"):
        bench(["live-gap", "--floor"])


def test_fit_trains_on_every_live_clip(tiny_subset, tmp_path):
    from mex.checkpoint import load_checkpoint

    live = live_subset(tiny_subset, tmp_path / "live")
    out = tmp_path / "fit"
    assert train_main(["fit", "--data", str(tiny_subset), "--live", str(live), "--out", str(out), "--profile", "live",
                       "--epochs", "2",
                       "--device", "cpu", *TINY]) == 0
    _, info = load_checkpoint(out / "model.pt")
    assert info["meta"]["data"]["live_clips"] == len(load_flow_folder(live)) > 0


def test_bench_live_gap_model_scores_an_exported_model_on_both_encodings(tmp_path):
    from realtime.runtimes import DEFAULT_MODEL, load_runtime

    assert bench(["live-gap", "--model", str(DEFAULT_MODEL), "--out", str(tmp_path)]) == 0
    live = load_flow_folder(ROOT / "data" / "casme2-live-encoded")
    pred = load_runtime(str(DEFAULT_MODEL), kind="onnxruntime").probs(live.x.astype(np.float32)).argmax(1)
    row = (tmp_path / "live-gap-model.md").read_text().splitlines()[2].split("|")
    assert int(row[2]) == 138 and float(row[4]) == pytest.approx((pred == live.y).mean(), abs=5e-4)


def test_select_and_study_refuse_profiles_that_train_on_live_clips(tmp_path):
    from train.cli import main as train_main
    from train.studies import configurations

    with pytest.raises(ValueError, match="does not train on live clips"):
        configurations("ablation", "live", 1)
    rc = train_main(["select", "--profile", "ours", "--try", "live_clips=true", "--out", str(tmp_path / "s")])
    assert rc != 0 and not (tmp_path / "s").exists()
