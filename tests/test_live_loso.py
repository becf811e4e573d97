"""mex-bench live-loso on a small generated CASME II tree: `mex-train prepare` makes its composite set,
`mex-train loso --keep-models` (logistic regression, a few epochs) its fold models, and every clip is
played through the live path with the model of the fold that held out its subject.

The tree is laid out as the database is distributed: Cropped/subNN/EPxx/reg_imgN.jpg (database-like
clips rendered by realtime.synth: a face filling the frame, one planted movement, head sway, JPEG), a
few frames before the onset and after the offset that the sheet leaves out, and the coding sheet as
CASME2-coding-20140508.xlsx.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
openpyxl = pytest.importorskip("openpyxl")

HEADER = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units", "Estimated Emotion"]
# (subject, clip, planted movement, emotion word the sheet gives it)
CLIPS = [("01", "EP02_01f", "lip_corner_pull", "happiness"), ("01", "EP03_02f", "brow_raise", "surprise"),
         ("02", "EP01_11f", "brow_lower", "disgust"), ("02", "EP19_05f", "lip_corner_pull", "happiness")]
PAD = 3  # frames in the folder before the onset and after the offset


def make_tree(root: Path) -> dict:
    """The tree and, per clip, its sheet row's (onset, apex, offset) frame numbers."""
    from realtime.synth import database_spec, render, truth

    rows, coded = [HEADER], {}
    for k, (sub, clip, kind, word) in enumerate(CLIPS):
        spec = database_spec(kind, 100.0, seed=k)
        frames, event = list(render(spec)), truth(spec)["events"][0]
        onset = 40 * k + 10
        folder = root / "Cropped" / f"sub{sub}" / clip
        folder.mkdir(parents=True)
        for i, image in enumerate([frames[0]] * PAD + frames + [frames[-1]] * PAD):
            assert cv2.imwrite(str(folder / f"reg_img{onset - PAD + i}.jpg"), image)
        coded[(f"casme2_sub{sub}", clip)] = (onset, onset + event["apex"], onset + len(frames) - 1)
        rows.append([sub, clip, *coded[(f"casme2_sub{sub}", clip)], "12", word])
    rows.append(["02", "EP20_01f", 10, 12, 14, "1", "others"])  # excluded by the MEGC2019 rule: no folder needed
    wb = openpyxl.Workbook()
    for r in rows:
        wb.active.append(r)
    wb.save(root / "CASME2-coding-20140508.xlsx")
    return coded


def small(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (48, 48), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(database root, its coded frames, the composite set, the LOSO run with its fold models)."""
    from train import datasets
    from train.cli import main as train_main

    base = tmp_path_factory.mktemp("live-loso")
    root, composite, run_dir = base / "CASME2", base / "composite", base / "run"
    coded = make_tree(root)
    # the composite images of 48 px crops: the same prepare, a few times quicker than at the recognition crop's size
    datasets.prepare("casme2", root, composite, crop=lambda onset, apex: (small(onset), small(apex)))
    assert train_main(["loso", "--data", str(composite), "--out", str(run_dir), "--profile", "logreg",
                       "--epochs", "3", "--device", "cpu", "--keep-models"]) == 0
    return root, coded, composite, run_dir


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_keep_models_writes_each_fold_as_a_checkpoint_naming_its_held_out_subject(run):
    from mex.checkpoint import load_checkpoint

    _, _, _, run_dir = run
    assert sorted(p.name for p in (run_dir / "folds").iterdir()) == ["casme2_sub01.pt", "casme2_sub02.pt"]
    for subject in ("casme2_sub01", "casme2_sub02"):
        model, info = load_checkpoint(run_dir / "folds" / f"{subject}.pt")
        assert info["model"] == "logreg" and info["meta"]["held_out"] == subject


def test_each_clip_is_played_onset_to_offset_with_its_own_fold_model_on_both_sides(run, tmp_path):
    from benchmarks.cli import main as bench_main
    from mex.checkpoint import load_checkpoint

    root, coded, _, run_dir = run
    out = tmp_path / "bench"
    assert bench_main(["live-loso", "--dataset", "casme2", "--root", str(root), "--run", str(run_dir),
                       "--fps", "100", "--out", str(out)]) == 0
    rows = read_csv(out / "live-loso-casme2.csv")
    assert [(r["subject"], r["clip"]) for r in rows] == [(f"casme2_sub{s}", c) for s, c, _, _ in CLIPS]
    predictions = {(r["subject"], r["clip"]): r for r in read_csv(run_dir / "predictions.csv")}
    for r in rows:
        onset, apex, offset = coded[(r["subject"], r["clip"])]
        assert int(r["frames"]) == offset - onset + 1  # the sheet's span, not the folder's padding
        assert int(r["apex_sheet"]) == apex - onset
        # the fold that held out the clip's subject: named, its checkpoint says so, and on the composite
        # image it gives exactly the run's own LOSO prediction of that clip
        assert r["model"] == f"folds/{r['subject']}.pt" and r["held_out"] == r["subject"]
        assert load_checkpoint(run_dir / r["model"])[1]["meta"]["held_out"] == r["subject"]
        loso = predictions[(r["subject"], r["clip"])]
        assert int(r["composite_pred"]) == int(loso["pred"])
        for c in ("negative", "positive", "surprise"):
            assert float(r[f"composite_p_{c}"]) == pytest.approx(float(loso[f"p_{c}"]), abs=1e-5)
        # the live path found the face and labelled the clip, its apex inside the clip
        assert r["error"] == "" and int(r["live_pred"]) in (0, 1, 2), r
        assert 0 < int(r["apex_live"]) < int(r["frames"])
        assert sum(float(r[f"live_p_{c}"]) for c in ("negative", "positive", "surprise")) == pytest.approx(1, abs=1e-4)
    md = (out / "live-loso.md").read_text()
    assert "| casme2 | 4 | composite images |" in md and "| casme2 | 4 | live path |" in md
    scores = json.loads((out / "live-loso.json").read_text())["scores"]["casme2"]
    live = np.array([int(r["live_pred"]) for r in rows])
    label = np.array([int(r["label"]) for r in rows])
    assert scores["clips"] == 4 and scores["live"]["accuracy"] == pytest.approx((live == label).mean())
    assert scores["agreement"] == pytest.approx(np.mean([r["live_pred"] == r["composite_pred"] for r in rows]))


def test_a_fold_model_of_another_subject_is_refused_naming_the_file(run, tmp_path, capsys):
    from benchmarks.cli import main as bench_main

    root, _, _, run_dir = run
    swapped = tmp_path / "run"
    shutil.copytree(run_dir, swapped)
    shutil.copy(swapped / "folds" / "casme2_sub02.pt", swapped / "folds" / "casme2_sub01.pt")
    assert bench_main(["live-loso", "--dataset", "casme2", "--root", str(root), "--run", str(swapped),
                       "--flow", "cpu", "--out", str(tmp_path / "bench")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "casme2_sub01.pt: holds the fold of subject 'casme2_sub02', not 'casme2_sub01'" in err


def test_a_run_without_fold_models_says_how_to_get_them(run, tmp_path, capsys):
    from benchmarks.cli import main as bench_main

    root, _, _, run_dir = run
    bare = tmp_path / "run"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("folds"))
    assert bench_main(["live-loso", "--dataset", "casme2", "--root", str(root), "--run", str(bare),
                       "--flow", "cpu", "--out", str(tmp_path / "bench")]) == 2
    assert "--keep-models" in " ".join(capsys.readouterr().err.split())


def test_a_folder_that_is_no_loso_run_is_refused_naming_it(run, tmp_path, capsys):
    from benchmarks.cli import main as bench_main

    root, _, _, _ = run
    fit = tmp_path / "fit"
    fit.mkdir()
    (fit / "run.json").write_text(json.dumps({"schema": 1, "fit": True}))
    for folder, message in ((tmp_path, "no run.json"), (fit, "not a LOSO run")):
        assert bench_main(["live-loso", "--dataset", "casme2", "--root", str(root), "--run", str(folder),
                           "--out", str(tmp_path / "bench")]) == 2
        assert f"--run {folder}: {message}" in " ".join(capsys.readouterr().err.split())


def test_several_seeds_per_fold_average_as_the_run_does(run, tmp_path):
    from benchmarks.live_loso import load_fold_model
    from mex.composite import load_flow_folder
    from train.cli import main as train_main

    _, _, composite, _ = run
    run_dir = tmp_path / "run"
    assert train_main(["loso", "--data", str(composite), "--out", str(run_dir), "--profile", "logreg",
                       "--epochs", "2", "--seeds", "2", "--device", "cpu", "--keep-models"]) == 0
    data = load_flow_folder(composite)
    predictions = read_csv(run_dir / "predictions.csv")
    for i, r in enumerate(predictions):
        runtime, files = load_fold_model(run_dir, r["subject"], 2)
        assert files == f"folds/{r['subject']}-seed0.pt folds/{r['subject']}-seed1.pt"
        probs = runtime.probs(data.x[[data.clip.index(r["clip"])]].astype(np.float32))[0]
        assert probs == pytest.approx([float(r[f"p_{c}"]) for c in ("negative", "positive", "surprise")], abs=1e-5)


def test_casme2_reads_the_raw_frames_in_the_cropped_layout(run, tmp_path):
    from train import datasets

    root, coded, _, _ = run
    copy = tmp_path / "CASME2"
    (copy / "CASME2_RAW_selected").mkdir(parents=True)
    shutil.copy(root / "CASME2-coding-20140508.xlsx", copy)
    for folder in (root / "Cropped").glob("sub*/*"):
        target = copy / "CASME2_RAW_selected" / folder.relative_to(root / "Cropped")
        target.mkdir(parents=True)
        for f in folder.iterdir():
            shutil.copy(f, target / f.name.replace("reg_img", "img"))
    reading = datasets.read_dataset("casme2", copy, "CASME2_RAW_selected")
    assert len(reading) == 4
    for clip in reading:
        onset, apex, offset = coded[(clip.subject, clip.clip)]
        assert [f.name for f in clip.frames] == [f"img{n}.jpg" for n in range(onset, offset + 1)]
        assert clip.apex.name == f"img{apex}.jpg" and clip.frames[0] == clip.onset
    with pytest.raises(ValueError, match="CASME II option"):
        datasets.read_dataset("samm", copy, "CASME2_RAW_selected")


def test_uf1_uar_count_a_clip_without_a_label_as_a_miss():
    from train.metrics import uf1_uar

    y = np.array([0, 0, 1, 1, 2, 2])
    scored = uf1_uar(y, np.array([0, -1, 1, 1, 2, -1]))
    # recalls 1/2, 1, 1/2; F1 2/3, 1, 2/3 (no false alarm from the unlabelled clips)
    assert scored["uar"] == pytest.approx(2 / 3) and scored["uf1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
