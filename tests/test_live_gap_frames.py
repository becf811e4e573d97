"""mex-bench live-gap --frames on a small generated tree in the casme2-frames layout."""
import csv
import json

import numpy as np

from benchmarks.cli import main as bench

FIELDS = "name,subject,clip,emotion,label,onset,apex,offset,apex_t,offset_t,crop_h,crop_w,encoding".split(",")


def write_tree(root, subjects=4, clips=2, seed=0):
    """Clips of 200 fps, every second frame: a brow-like bump of local motion rising to `apex_t`, held 10
    frames, falling back; a whole-face shift and a drift growing to the end on top (what the rule removes)."""
    rng = np.random.default_rng(seed)
    (root / "clips").mkdir(parents=True)
    rows = []
    ys, xs = np.mgrid[0:48, 0:48]
    bump = np.exp(-((xs - 15) ** 2 + (ys - 10) ** 2) / 18.0)
    for s in range(subjects):
        for c in range(clips):
            apex_t, offset_t = 20 + 4 * c + 2 * s, 70
            t = np.arange(0, offset_t + 1, 2)
            rise = np.clip(t / apex_t, 0, 1)
            fall = np.clip(1 - (t - apex_t - 10) / 25, 0, 1)
            amp = np.where(t <= apex_t, rise, np.where(t <= apex_t + 10, 1.0, fall)) * 0.02
            flow = np.zeros((len(t), 2, 48, 48), np.float32)
            flow[:, 1] -= amp[:, None, None] * bump  # the brow goes up
            flow[:, 0] += 0.01 * np.sin(t / 9.0)[:, None, None]  # head sway: a whole-face shift
            flow[:, 1] += (0.004 * t / offset_t)[:, None, None] * np.exp(-((xs - 35) ** 2) / 40.0)  # drift
            name = f"casme2_sub{s + 1:02d}_EP0{c}_01"
            np.savez(root / "clips" / f"{name}.npz", x=rng.integers(0, 256, (len(t), 3, 28, 28), np.uint8), t=t,
                     motion=np.zeros((len(t), 2), np.float32), flow48=flow.astype(np.float16))
            rows.append({"name": name, "subject": f"casme2_sub{s + 1:02d}", "clip": f"EP0{c}_01", "emotion": "others",
                         "label": "" if c else str(s % 3), "onset": 10, "apex": 10 + apex_t, "offset": 10 + offset_t,
                         "apex_t": apex_t, "offset_t": offset_t, "crop_h": 280, "crop_w": 232,
                         "encoding": "tvl1-uvs-minmax-28-v1"})
    with (root / "index.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return rows


def test_frames_benchmark_finds_the_planted_apexes_and_reports_both_splits(tmp_path, capsys):
    rows = write_tree(tmp_path / "frames")
    out = tmp_path / "out"
    assert bench(["live-gap", "--frames", str(tmp_path / "frames"), "--out", str(out)]) == 0
    payload = json.loads((out / "live-gap-frames.json").read_text())
    assert payload["subjects"]["tune"] == ["casme2_sub01", "casme2_sub02"]
    assert payload["subjects"]["check"] == ["casme2_sub03", "casme2_sub04"]
    clips = payload["clips"]
    assert [c["name"] for c in clips] == [r["name"] for r in rows]
    # the apex is in the planted hold (apex_t .. apex_t + 10): its middle, 5 frames after the sheet's
    assert all(0 <= c["error"] <= 10 for c in clips), [c["error"] for c in clips]
    s = payload["summary"]
    assert s["all"]["clips"] == 8 and s["all"]["labelled"] == 4 and s["all"]["apex_error"]["within_10"] == 1.0
    assert s["tune"]["clips"] == s["check"]["clips"] == 4
    assert s["all"]["agreement"]["annotated"] == 1.0 and 0 <= s["all"]["accuracy"]["pooled"] <= 1
    assert all(abs(sum(c["pooled"]) - 1) < 1e-4 for c in clips)
    with (out / "live-gap-frames.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 8
    md = (out / "live-gap-frames.md").read_text()
    assert "| tune | 4 (2 labelled)" in md and "| check | 4 (2 labelled)" in md


def test_frames_benchmark_names_the_bad_row(tmp_path, capsys):
    write_tree(tmp_path / "frames", subjects=1)
    (tmp_path / "frames" / "clips" / "casme2_sub01_EP01_01.npz").unlink()
    assert bench(["live-gap", "--frames", str(tmp_path / "frames"), "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "index.csv row 3 (casme2_sub01_EP01_01)" in err, err
    assert not (tmp_path / "out" / "live-gap-frames.json").exists()
