import json

import cv2
import numpy as np
import pytest

from realtime import synth
from realtime.synth import ClipSpec, PlantedEvent, demo_spec, render, truth, write_clip


def test_frames_are_bgr_at_the_spec_size_and_seeded():
    spec = ClipSpec(fps=30, seconds=0.5, size=(320, 240), events=0, head_motion=1.0, seed=3)
    a, b = list(render(spec)), list(render(spec))
    assert len(a) == 15
    assert a[0].shape == (240, 320, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_planted_event_moves_only_its_region_with_the_planted_profile():
    spec = ClipSpec(seconds=2.0, events=[PlantedEvent("lip_corner_pull", 1.0, 0.3, 3.0)], noise=0, seed=0)
    gt = truth(spec)
    (ev,) = gt["events"]
    assert (ev["onset"], ev["offset"], ev["region"], ev["amplitude_px"]) == (30, 39, "mouth", 3.0)
    assert ev["onset"] < ev["apex"] < ev["offset"]
    frames = list(render(spec))
    diff = [cv2.absdiff(f, frames[0]).max() for f in frames]
    assert diff[ev["onset"]] == 0 and diff[ev["offset"]] == 0  # neutral at both ends
    assert max(diff) == diff[ev["apex"]] > 20
    ys, xs = np.nonzero(cv2.absdiff(frames[ev["apex"]], frames[0]).max(2) > 8)
    assert ys.min() > 240 and 200 < xs.min() and xs.max() < 440  # lower half, around the mouth


def test_truth_respects_durations_and_keeps_distractors_apart():
    spec = ClipSpec(fps=100, seconds=20, events=6, blinks=4, head_motion=1.0, head_moves=2, seed=7)
    gt = truth(spec)
    assert gt["fps"] == 100 and gt["frames"] == 2000
    assert len(gt["events"]) == 6
    assert sorted(d["kind"] for d in gt["distractors"]) == ["blink"] * 4 + ["head_move"] * 2
    for ev in gt["events"]:
        assert ev["onset"] < ev["apex"] < ev["offset"]
        assert 100 * (1 / 25) - 1 <= ev["offset"] - ev["onset"] <= 100 / 3 + 1
        assert 1.0 <= ev["amplitude_px"] <= 3.0
        assert ev["region"] == synth.KINDS[ev["kind"]]
        for d in gt["distractors"]:
            assert ev["offset"] < d["start"] or ev["onset"] > d["end"]


def test_write_clip_writes_video_and_truth_beside_it(tmp_path):
    spec = ClipSpec(fps=30, seconds=1.0, size=(320, 240), events=0, blinks=0, seed=1)
    gt = write_clip(tmp_path / "clip.avi", spec)
    cap = cv2.VideoCapture(str(tmp_path / "clip.avi"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == gt["frames"] == 30
    saved = json.loads((tmp_path / "clip.avi.truth.json").read_text())
    assert saved["fps"] == 30 and saved["events"] == gt["events"] and saved["spec"]["seed"] == 1


def test_demo_spec_is_the_quickstart_clip():
    spec = demo_spec()
    gt = truth(spec)
    assert spec.fps == 30 and spec.seconds == 20 and spec.photo == "astronaut.jpg"
    assert len(gt["events"]) >= 4 and any(d["kind"] == "blink" for d in gt["distractors"])


def test_shipped_keypoint_table_matches_mediapipe():
    pytest.importorskip("mediapipe")
    for name in synth.PHOTOS:
        found = synth.keypoints(name)
        for k, v in synth._SHIPPED_KEYPOINTS[name].items():
            assert np.abs(found[k] - np.array(v)).max() < 1.0, (name, k)
