import time

import numpy as np
import pytest

from realtime.metrics import SpotScore, iou, match, score
from realtime.packets import FaceFrame, Frame
from realtime.spotting import Spotter, SpotterConfig
from realtime.synth import ClipSpec, PlantedBlink, PlantedEvent, render, truth


# -- the metric on hand-made intervals --------------------------------------------------------------
def test_iou_counts_inclusive_frames():
    assert iou((10, 19), (10, 19)) == 1.0
    assert iou((10, 19), (15, 24)) == pytest.approx(5 / 15)
    assert iou((10, 12), (13, 20)) == 0.0
    assert iou((10, 12), (10, 13)) == pytest.approx(3 / 4)


def test_match_is_one_to_one_at_iou_half():
    truth_ = [(10, 20), (50, 60)]
    spotted = [(11, 21), (12, 20), (52, 70), (100, 110)]
    assert match(spotted, truth_) == [(0, 0)]  # (12, 20) also overlaps (10, 20) but it is taken; (52, 70) has IoU 0.42


def test_score_counts_f1_apex_error_and_false_alarms_per_minute():
    truth_ = [{"onset": 10, "apex": 14, "offset": 20}, {"onset": 50, "apex": 55, "offset": 60},
              {"onset": 90, "apex": 93, "offset": 96}]
    spotted = [{"onset": 11, "apex": 15, "offset": 20}, {"onset": 50, "apex": 57, "offset": 61},
               {"onset": 200, "apex": 202, "offset": 205}]
    s = score(spotted, truth_, seconds=30.0)
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3) and s.f1 == pytest.approx(2 / 3)
    assert s.apex_errors == [1, 2] and s.apex_error_max == 2
    assert s.false_alarms_per_min == pytest.approx(2.0)
    total = s + score([], [], seconds=30.0)
    assert total.seconds == 60.0 and total.false_alarms_per_min == pytest.approx(1.0)
    assert SpotScore().f1 == 1.0  # nothing to find, nothing found


# -- the spotter on generated clips (real tracker) ----------------------------------------------------
def run_clip(spec):
    pytest.importorskip("mediapipe")
    from realtime.tracking import FaceTracker

    spotter = Spotter(spec.fps)
    out, pushed_at, rejected = [], {}, []
    provisional = {}  # (onset, apex) frame indices offered while an interval was open -> first frame offered
    with FaceTracker() as tracker:
        for i, image in enumerate(render(spec)):
            frame = Frame(index=i, t_capture=time.monotonic(), t_video=i / spec.fps, image=image)
            for c in spotter.push(tracker.track(frame)):
                pushed_at[id(c)] = i
                out.append(c)
            pair = spotter.provisional()
            if pair is not None:
                provisional.setdefault((pair[0].frame.index, pair[1].frame.index), i)
            assert "spot" in frame.stage_ms
            rejected += spotter.take_rejections()
    out += spotter.flush()
    pushed_at["provisional"] = provisional
    pushed_at["rejected"] = rejected + spotter.take_rejections()
    return spotter, out, pushed_at


def intervals(cands):
    return [{"onset": c.onset.frame.index, "apex": c.apex.frame.index, "offset": c.offset_index} for c in cands]


@pytest.fixture(scope="module")
def planted():
    events = [PlantedEvent("brow_raise", 1.5, 0.25, 2.5), PlantedEvent("lip_corner_pull", 3.0, 0.3, 2.5, side="left"),
              PlantedEvent("eyelid_tighten", 4.5, 0.2, 2.5)]
    spec = ClipSpec(fps=30, seconds=6.0, events=events, head_motion=0.5, seed=5)
    return spec, truth(spec), *run_clip(spec)


def test_spotter_finds_planted_events(planted):
    spec, gt, spotter, cands, _ = planted
    s = score(intervals(cands), gt["events"], spec.seconds)
    assert (s.tp, s.fp, s.fn) == (3, 0, 0)
    assert s.apex_error_max <= 2
    assert [c.region for c in cands] == ["brows", "mouth", "eyes"]


def test_candidates_carry_crops_signal_and_a_bounded_delay(planted):
    spec, gt, spotter, cands, pushed_at = planted
    cfg = SpotterConfig()
    for c in cands:
        assert c.onset.crop is not None and c.apex.crop is not None
        assert c.onset.frame.index < c.apex.frame.index < c.offset_index
        assert c.signal.ndim == 1 and c.signal.max() >= cfg.z_on
        assert c.t_apex_confirmed <= time.monotonic()
        delay_s = (pushed_at[id(c)] - c.onset.frame.index) / spec.fps
        assert delay_s <= cfg.max_event_s + cfg.quiet_s + 1 / spec.fps
    hist = spotter.signal_history()
    assert hist.shape == (int(cfg.history_s * spec.fps),)
    assert set(spotter.region_motion()) == {"brows", "eyes", "mouth"}


def test_provisional_pair_is_the_candidate_before_it_is_confirmed(planted):
    """What the live pipeline computes ahead (Spotter.provisional while an interval is open) is the
    confirmed candidate's (onset, apex), offered at least one frame before the confirmation."""
    spec, gt, spotter, cands, pushed_at = planted
    for c in cands:
        key = (c.onset.frame.index, c.apex.frame.index)
        assert key in pushed_at["provisional"], f"{key} never offered"
        assert pushed_at["provisional"][key] < pushed_at[id(c)]
    assert spotter.provisional() is None  # nothing open at the end of the clip


def test_blinks_and_head_motion_do_not_fire():
    spec = ClipSpec(fps=30, seconds=10.0, events=0, blinks=4, head_motion=1.0, head_moves=2, seed=11)
    assert len(truth(spec)["distractors"]) == 6
    _, cands, _ = run_clip(spec)
    assert intervals(cands) == []


# -- distractors: seen, explained and not reported ---------------------------------------------------
def _within(r, distractors):
    return any(d["start"] - 3 <= r.offset_index and r.onset_index <= d["end"] + 3 for d in distractors)


@pytest.mark.parametrize("kind, reasons, contrast", [
    ("partial_blinks", {"blink"}, 0.5),  # a dim, flat face: the lids change the gray levels little
    # a glance down moves the lids as a blink; a held one settles, and its way back is its return
    ("gaze_shifts", {"gaze", "blink", "long", "return"}, 1.0),
    ("speech", {"speech", "long"}, 1.0),
    ("head_turns", {"head", "long", "return"}, 1.0),
])
def test_distractors_are_rejected_with_their_reason(kind, reasons, contrast):
    spec = ClipSpec(fps=30, seconds=9.0, events=0, head_motion=0.5, contrast=contrast, seed=2, **{kind: 3})
    gt = truth(spec)
    _, cands, extra = run_clip(spec)
    assert intervals(cands) == []
    rejected = extra["rejected"]
    assert rejected, "the distractors moved the face: the spotter must have seen them"
    assert {r.reason for r in rejected} <= reasons
    assert all(_within(r, gt["distractors"]) for r in rejected)
    explained = [r for r in rejected if r.reason in ("blink", "gaze", "speech", "head") and "nose_x" in r.detail]
    assert explained, "at least one was told apart by where the face moved, not by its length"
    for r in rejected:
        assert r.onset_index <= r.apex_index <= r.offset_index
        assert r.onset_s == pytest.approx(r.onset_index / spec.fps, abs=1e-3)


def test_flicker_changes_nothing_the_spotter_sees():
    spec = ClipSpec(fps=30, seconds=8.0, events=0, head_motion=0.5, flicker=3, seed=4)
    _, cands, extra = run_clip(spec)
    assert intervals(cands) == [] and extra["rejected"] == []


def test_events_among_distractors_are_all_found():
    spec = ClipSpec(fps=30, seconds=14.0, events=4, amplitude_px=(2.0, 3.0), head_motion=0.5, partial_blinks=2,
                    gaze_shifts=1, speech=1, head_turns=1, flicker=1, seed=8)
    gt = truth(spec)
    assert len(gt["events"]) == 4 and len(gt["distractors"]) >= 5
    _, cands, _ = run_clip(spec)
    s = score(intervals(cands), gt["events"], spec.seconds)
    assert (s.tp, s.fp, s.fn) == (4, 0, 0)


def test_a_movement_too_long_for_a_micro_expression_is_followed_to_its_end():
    spec = ClipSpec(fps=30, seconds=6.0, events=[PlantedEvent("brow_raise", 2.0, 1.5, 3.0)], seed=1)
    (ev,) = truth(spec)["events"]
    _, cands, extra = run_clip(spec)
    assert cands == []
    (r,) = extra["rejected"]
    assert r.reason == "long" and r.region == "brows"
    assert score([{"onset": r.onset_index, "apex": r.apex_index, "offset": r.offset_index}], [ev], spec.seconds).tp == 1


def test_windows_scale_with_fps():
    spec = ClipSpec(fps=100, seconds=4.0, events=[PlantedEvent("brow_raise", 1.6, 0.2, 2.5),
                                                  PlantedEvent("lip_corner_depress", 2.8, 0.3, 2.5)], seed=3)
    _, cands, _ = run_clip(spec)
    s = score(intervals(cands), truth(spec)["events"], spec.seconds)
    assert (s.tp, s.fp) == (2, 0)


def test_no_face_frames_are_skipped_and_reset():
    spotter = Spotter(30)
    for i in range(40):
        ff = FaceFrame(frame=Frame(i, 0.0, i / 30, np.zeros((4, 4, 3), np.uint8)), state="no_face")
        assert spotter.push(ff) == []
    assert spotter.flush() == []
    assert np.all(spotter.signal_history() == 0)


# -- pre-segmented clips (ClipSpotter) -----------------------------------------------------------------
def clip_apex(spec) -> int:
    pytest.importorskip("mediapipe")
    from realtime.spotting import ClipSpotter
    from realtime.tracking import FaceTracker

    spotter = ClipSpotter(spec.fps)
    with FaceTracker() as tracker:
        for i, image in enumerate(render(spec)):
            assert spotter.push(tracker.track(Frame(i, time.monotonic(), i / spec.fps, image))) == []
    (cand,) = spotter.flush()
    assert cand.onset.frame.index == 0 and cand.offset_index == truth(spec)["frames"] - 1
    apex, pool = cand.apex.frame.index, [f.frame.index for f in cand.pool]
    # the frames pooled with the apex: it first, the others near it (+-70 ms), the onset never
    assert pool[0] == apex and len(pool) == 3 and all(0 < j and abs(j - apex) <= 0.07 * spec.fps + 1 for j in pool)
    return apex


def database_clip(seconds: float = 0.4):
    """200 fps, a brow raise held 60 ms (frames 15-27), back to neutral at the clip's end; a full blink
    after the hold; the head sways, turns and is lit from one side more and more (drift)."""
    event = PlantedEvent("brow_raise", onset_s=0.01, duration_s=0.38, amplitude_px=3.0, apex_frac=0.2, hold_s=0.06)
    return ClipSpec(fps=200.0, seconds=seconds, size=(192, 224), face_px=120.0, events=[event],
                    blinks=[PlantedBlink(start_s=0.22, duration_s=0.12)], head_motion=1.0, turn=0.03, light=6.0,
                    jpeg_quality=90, seed=4)


def test_clip_apex_is_in_the_hold_despite_a_later_blink_and_drift():
    """The frame most unlike the onset is in the blink; the frame furthest off the onset -> end path,
    eyes and brows not counted while the lids move, is in the hold."""
    spec = database_clip()
    lo, hi = truth(spec)["events"][0]["apex_span"]
    apex = clip_apex(spec)
    assert lo - 3 <= apex <= hi + 3, (apex, (lo, hi))


def test_clip_cut_at_its_apex_gets_an_apex_near_its_end():
    """onset..apex only: the clip does not come back, so the apex is the frame most unlike the onset."""
    lo, _ = truth(database_clip())["events"][0]["apex_span"]
    spec = database_clip(seconds=(lo + 1) / 200)
    apex = clip_apex(spec)
    assert apex >= lo - 3, (apex, lo)


def test_clip_spotter_keeps_a_bounded_evenly_spaced_clip():
    from realtime.spotting import ClipSpotter

    rng = np.random.default_rng(0)
    face = rng.integers(0, 255, (128, 128), np.uint8)
    spotter = ClipSpotter(200, max_frames=8)
    for i in range(41):
        image = np.zeros((4, 4, 3), np.uint8)
        assert spotter.push(FaceFrame(frame=Frame(i, 0.0, i / 200, image), state="face", crop=face)) == []
    kept = [f.frame.index for f, _ in spotter.kept]
    assert len(kept) <= 8 and kept == list(range(0, 41, 8)) and spotter.last[0].frame.index == 40
    assert all(f.frame.image is None for f, _ in spotter.kept)  # crops kept, not frame images
    (cand,) = spotter.flush()
    assert cand.onset.frame.index == 0 and cand.offset_index == 40 and 0 < cand.apex.frame.index <= 40
