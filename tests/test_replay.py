"""Replays of real micro-expression motion (realtime/replay.py) and `mex-bench replay`, on small
casme2-frames folders generated here: a brow raise (the upper third of the crop moving up) rising
and falling back part of the way."""
import csv
import json

import cv2
import numpy as np
import pytest

from benchmarks.cli import main as bench_main
from mex.features import CROP_SIZE
from realtime import replay

APEX_T, OFFSET_T = 20, 40
PEAK = 0.012  # crop heights at the apex: 2.7 px on a 224 px crop
BROWS = (slice(int(0.12 * CROP_SIZE), int(0.26 * CROP_SIZE)), slice(int(0.2 * CROP_SIZE), int(0.8 * CROP_SIZE)))
CHIN = (slice(int(0.84 * CROP_SIZE), int(0.94 * CROP_SIZE)), slice(int(0.35 * CROP_SIZE), int(0.65 * CROP_SIZE)))


def brow_raise(t: np.ndarray) -> np.ndarray:
    """(n, 2, 48, 48) float16: v < 0 (up) on a band around the brows, rising to PEAK at APEX_T and
    falling to 40 % of it at OFFSET_T (a real face does not return to its onset state by the offset)."""
    y, x = (np.mgrid[0:48, 0:48] + 0.5) / 48
    band = np.exp(-0.5 * ((y - 0.19) / 0.07) ** 2) * np.exp(-0.5 * ((x - 0.5) / 0.25) ** 2)
    level = np.where(t <= APEX_T, 0.5 - 0.5 * np.cos(np.pi * t / APEX_T),
                     1 - 0.6 * (0.5 - 0.5 * np.cos(np.pi * (t - APEX_T) / (OFFSET_T - APEX_T))))
    flow = np.zeros((len(t), 2, 48, 48), np.float32)
    flow[:, 1] = -PEAK * level[:, None, None] * band
    return flow.astype(np.float16)


def write_set(root, names=(("s01_EP01", "casme2_sub01", 2), ("s02_EP01", "casme2_sub02", ""))):
    """A casme2-frames folder: index.csv and clips/NAME.npz of brow raises (x: random encodings)."""
    (root / "clips").mkdir(parents=True)
    t = np.unique(np.r_[np.arange(0, OFFSET_T + 1, 2), APEX_T])
    rng = np.random.default_rng(0)
    cols = ["name", "subject", "clip", "emotion", "label", "onset", "apex", "offset", "apex_t", "offset_t", "crop_h",
            "crop_w", "encoding"]
    with (root / "index.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for name, subject, label in names:
            w.writerow([name, subject, name.split("_", 1)[1], "surprise", label, 10, 10 + APEX_T, 10 + OFFSET_T, APEX_T,
                        OFFSET_T, 282, 231, "test"])
            np.savez(root / "clips" / f"{name}.npz", t=t, flow48=brow_raise(t),
                     x=rng.integers(0, 256, (len(t), 3, 28, 28), dtype=np.uint8),
                     motion=np.zeros((len(t), 2), np.float32))
    return root


@pytest.fixture
def frames_set(tmp_path):
    return write_set(tmp_path / "casme2-frames")


def spec_for(root, tail: str, **kw) -> replay.ReplaySpec:
    row = replay.read_index(root)[0]
    return replay.ReplaySpec(replay.clip_path(root, row), row, tail=tail, **kw)


def crop(frame: np.ndarray, spec: replay.ReplaySpec) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return cv2.warpAffine(gray, replay.crop_framing(spec), (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR)


def farneback_v(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)[..., 1]


@pytest.mark.parametrize("photo", replay.PHOTOS)
def test_motion_lands_on_the_brows_and_not_the_chin(frames_set, photo):
    spec = spec_for(frames_set, "hold", photo=photo)
    truth = replay.truth(spec)
    frames = list(replay.render(spec))
    onset, apex = crop(frames[truth["onset"]], spec), crop(frames[truth["apex"]], spec)
    v = farneback_v(onset, apex)
    brows, chin = v[BROWS], v[CHIN]
    # the field's peak is PEAK crop heights up; the band's mean over the box is about half of it
    assert -PEAK * CROP_SIZE < np.median(brows) < -0.25 * PEAK * CROP_SIZE
    assert np.abs(chin).mean() < 0.1 * np.abs(brows).mean()
    still = farneback_v(crop(frames[0], spec), onset)  # the lead: the same face, new noise
    assert np.abs(still[BROWS]).mean() < 0.1 * np.abs(brows).mean()


def test_truth_and_tails(frames_set):
    lead, tail, fade = 200, 200, 40
    hold, back = spec_for(frames_set, "hold"), spec_for(frames_set, "return")
    for spec, frames in ((hold, lead + OFFSET_T + 1 + tail), (back, lead + OFFSET_T + 1 + fade + tail)):
        t = replay.truth(spec)
        assert (t["onset"], t["apex"], t["offset"], t["frames"]) == (lead, lead + APEX_T, lead + OFFSET_T, frames)
        assert (t["name"], t["subject"], t["label"], t["tail"]) == ("s01_EP01", "casme2_sub01", 2, spec.tail)
    # the held face stays raised to the end; the returned one is the onset face again
    last_hold, last_back = (list(replay.render(s))[-1] for s in (hold, back))
    first = crop(list(replay.render(hold))[0], hold)
    assert np.median(farneback_v(first, crop(last_hold, hold))[BROWS]) < -0.1 * PEAK * CROP_SIZE
    assert np.abs(farneback_v(first, crop(last_back, back))[BROWS]).mean() < 0.03 * PEAK * CROP_SIZE


def test_split_by_subject():
    rows = [{"name": f"c{k}", "subject": f"casme2_sub{k % 12:02d}"} for k in range(24)]
    tune, check = replay.split_rows(rows, "tune"), replay.split_rows(rows, "check")
    assert {r["subject"] for r in tune} == {f"casme2_sub{k:02d}" for k in range(10)}
    assert {r["subject"] for r in check} == {"casme2_sub10", "casme2_sub11"}
    assert len(replay.split_rows(rows, "all")) == 24


def test_bad_index_names_the_row(tmp_path):
    root = write_set(tmp_path / "set")
    text = (root / "index.csv").read_text().replace(f",{APEX_T},{OFFSET_T},", f",{APEX_T},x,", 1)
    (root / "index.csv").write_text(text)
    with pytest.raises(replay.ReplayError, match="line 2 .s01_EP01."):
        replay.read_index(root)


def test_bench_replay_end_to_end(frames_set, tmp_path, capsys):
    pytest.importorskip("mediapipe")
    out = tmp_path / "out"
    assert bench_main(["replay", "--frames", str(frames_set), "--split", "all", "--tails", "return",
                       "--segmented", "--out", str(out)]) == 0
    payload = json.loads((out / "replay.json").read_text())
    assert payload["clips"] == 2 and payload["subjects"] == ["casme2_sub01", "casme2_sub02"]
    assert [r["name"] for r in payload["replays"]] == ["s01_EP01", "s02_EP01"]
    s = payload["per_tail"]["return"]
    assert s["replays"] == 2 and s["found"] + sum(s["missed_as"].values()) == 2
    for r in payload["replays"]:
        assert r["found"] == (r["missed_as"] is None)
    assert payload["replays"][0]["label_model"] in ("negative", "positive", "surprise")  # composite: labelled
    assert payload["replays"][1]["label_model"] is None
    segmented = payload["segmented_clips"]
    assert [r["apex"] for r in segmented] == [APEX_T, APEX_T] and payload["segmented"]["clips"] == 2
    assert "| return | 2 |" in (out / "replay.md").read_text()


def test_bench_replay_bad_input(tmp_path, capsys):
    assert bench_main(["replay", "--frames", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "index.csv" in capsys.readouterr().err
    write_set(tmp_path / "set")
    assert bench_main(["replay", "--frames", str(tmp_path / "set"), "--tails", "hold,stay",
                       "--out", str(tmp_path / "o")]) == 2
    assert "--tails hold,stay" in capsys.readouterr().err


def test_shipped_photo_table_is_what_mediapipe_finds():
    mp = pytest.importorskip("mediapipe")
    from realtime import synth

    for name, table in replay._SHIPPED_RIGID.items():
        img = cv2.imread(str(synth.photo_path(name)))
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
            lm = mesh.process(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).multi_face_landmarks[0].landmark
        h, w = img.shape[:2]
        for i, xy in table.items():
            assert np.hypot(lm[i].x * w - xy[0], lm[i].y * h - xy[1]) < 1.0, (name, i)


def test_bench_registration_keeps_a_still_head_unregistered(tmp_path):
    """`mex-bench registration`: a brow raise on a still head fits far less head motion than MIN_HEAD_PX, so the
    live path's crops are the unregistered ones (same label); every way is scored against the apex encoding."""
    pytest.importorskip("mediapipe")
    from realtime.framing import MIN_HEAD_PX

    root = write_set(tmp_path / "set", names=(("s01_EP01", "casme2_sub01", 2), ("s02_EP01", "casme2_sub02", 0)))
    out = tmp_path / "out"
    assert bench_main(["registration", "--frames", str(root), "--heads", "still", "--out", str(out)]) == 0
    payload = json.loads((out / "registration.json").read_text())
    still = payload["summary"]["still"]
    assert still["clips"] == 2 and still["head_motion_px"]["p90"] < MIN_HEAD_PX and still["registered_by_auto"] == 0
    for clip in payload["clips"]:
        assert clip["labels"]["auto"] == clip["labels"]["off"] and set(clip["labels"]) == {"auto", "always", "off"}
    assert "| still | 2 |" in (out / "registration.md").read_text()
    assert bench_main(["registration", "--frames", str(root), "--heads", "tilted", "--out", str(out)]) == 2
