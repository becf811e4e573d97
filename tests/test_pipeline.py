"""The live pipeline's threads, queues, drop policy, shutdown and sinks, with stand-in stages
(fast and deterministic); the real tracker/spotter/engine run end to end in test_cli.py."""
from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest

from realtime.channels import Aborted, Channel, RingStats
from realtime.framing import FacePatch
from realtime.packets import Candidate, DisplayState, FaceFrame, FaceView, Frame
from realtime.pipeline import Pipeline, PipelineConfig
from realtime.recognizer import Recognizer
from realtime.sinks import EventLog, ListSink, VideoRecorder, annotate
from realtime.sources import ArraySource, CameraSource, SourceError, VideoSource

CROP = 32


def flat_patch(value: int) -> FacePatch:
    """A uniform recognition patch whose crops are CROP px of `value` (the frame is the crop: identity framing)."""
    margin = CROP // 8
    return FacePatch(np.full((CROP + 2 * margin,) * 2, value, np.uint8), np.eye(2, 3), CROP, margin)


class FakeTracker:
    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.closed = False

    def track(self, frame):
        t0 = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        frame.stage_ms["track"] = (time.perf_counter() - t0) * 1e3  # a tracker stamps its own time
        crop = np.full((CROP, CROP), frame.index % 256, np.uint8)
        lm = np.array([[10.0, 10.0], [20.0, 20.0]])
        return FaceFrame(frame, "face", (4, 4, 24, 24), lm, crop, flat_patch(frame.index % 256))

    def track_all(self, frame):
        return [self.track(frame)]

    def close(self):
        self.closed = True


class FakeSpotter:
    """A candidate every `every` frames (onset 4 frames before the apex), held `lag` frames like a real
    spotter that needs frames after the apex; `flush()` releases what is still held."""

    def __init__(self, every: int = 10, lag: int = 3):
        self.every, self.lag = every, lag
        self.hist: list[FaceFrame] = []
        self.pending: list[tuple[int, Candidate]] = []

    def push(self, ff):
        ff.frame.stage_ms["spot"] = 0.0  # a spotter stamps its own time
        self.hist = (self.hist + [ff])[-16:]
        i = ff.frame.index
        if i % self.every == self.every - 1 and len(self.hist) >= 5:
            onset = self.hist[-5]
            self.pending.append((i + self.lag, (onset, ff)))
        out = []
        for due, (on, ap) in list(self.pending):
            if i >= due:
                self.pending.remove((due, (on, ap)))
                # a live source drops frames
                off = next(f.frame for f in self.hist if f.frame.index >= ap.frame.index + 2)
                out.append(Candidate(on, ap, off.index, off.t_video, np.zeros(8), time.monotonic()))
        return out

    def flush(self):
        out = [Candidate(on, ap, None, None, np.zeros(8), time.monotonic()) for _, (on, ap) in self.pending]
        self.pending = []
        return out

    def provisional(self):
        return None

    def signal_history(self):
        return np.sin(np.arange(len(self.hist)))

    def region_motion(self):
        return {"brows": 0.1, "eyes": 0.2, "mouth": 0.3}

    def take_rejections(self):
        return []


class FakeRuntime:
    name = "fake"

    def probs(self, x):
        assert x.dtype == np.float32 and x.shape[1:] == (3, 28, 28)
        m = x.reshape(len(x), -1).mean(1)
        logits = np.stack([np.cos(m), np.sin(m), m / 255.0], 1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)


def fake_encode(onset, apex, flow="auto"):
    v = float(apex.mean()) - float(onset.mean())
    return np.full((3, 28, 28), v, np.float32)


def images(n, h=48, w=64):
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 1] = i % 256
        yield img


def make(source, tracker=None, spotter=None, event_sinks=(), frame_sinks=(), **config):
    rec = Recognizer(FakeRuntime(), encode=fake_encode)
    make_spotter = FakeSpotter if spotter is None else (lambda: spotter)  # one face: one spotter
    return Pipeline(source, tracker or FakeTracker(), make_spotter, rec, event_sinks, frame_sinks,
                    PipelineConfig(**config))


def strip(ev):
    d = ev.to_json()
    d.pop("latency_ms"), d.pop("confirm_ms")
    return d


# ---------------------------------------------------------------------------------------- queues
def test_channel_drop_oldest_counts_and_keeps_newest():
    ch = Channel("t", 3, drop_oldest=True, abort=threading.Event())
    for i in range(10):
        ch.put(i)
    assert ch.dropped == 7 and [ch.get(0.1) for _ in range(3)] == [7, 8, 9]
    ch.close()
    assert ch.get(0.1) is not None  # the end marker is never dropped


def test_channel_blocking_waits_for_room_and_aborts():
    abort = threading.Event()
    ch = Channel("t", 1, drop_oldest=False, abort=abort)
    ch.put(1)
    done = threading.Event()

    def producer():
        try:
            ch.put(2)
            done.set()
        except Aborted:
            pass

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.15)
    assert not done.is_set()  # blocked: a file source is never dropped
    assert ch.get(0.1) == 1
    t.join(2)
    assert done.is_set() and ch.get(0.1) == 2 and ch.dropped == 0
    ch.put(3)
    t = threading.Thread(target=producer)
    t.start()
    abort.set()
    t.join(2)
    assert not t.is_alive()


def test_ring_stats_wraps_with_flat_memory():
    st = RingStats(capacity=8)
    for i in range(20):
        st.add("x", float(i))
    assert st.samples("x").size == 8 and sorted(st.samples("x")) == list(map(float, range(12, 20)))
    assert list(st.recent("x", 3)) == [17.0, 18.0, 19.0]
    s = st.summary()["x"]
    assert s["n"] == 20 and 12 <= s["p50"] <= 19 and s["p99"] <= 19


# ---------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("temperature, uncertain", [(1000.0, True), (0.01, False)])
def test_an_event_the_model_cannot_tell_is_marked_uncertain(tmp_path, temperature, uncertain):
    """The shipped model with its mex.calibration temperature replaced: T = 1000 flattens its probabilities
    to about 1/3 each (uncertain), T = 0.01 sharpens them to about 1 (certain); the JSONL and the line say so."""
    import onnx

    from realtime.runtimes import DEFAULT_MODEL, load_runtime
    from realtime.sinks import PrintSink

    proto = onnx.load(DEFAULT_MODEL)
    meta = {q.key: q.value for q in proto.metadata_props}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**meta, "mex.calibration": json.dumps({"temperature": temperature})})
    onnx.save(proto, tmp_path / "model.onnx")
    runtime = load_runtime(tmp_path / "model.onnx")
    log, lines = tmp_path / "ev.jsonl", io.StringIO()
    summary = Pipeline(ArraySource(images(40), fps=30), FakeTracker(), FakeSpotter,
                       Recognizer(runtime, encode=fake_encode), [EventLog(log), PrintSink(lines)], (),
                       PipelineConfig()).run()
    events = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(events) == 4
    for d in events:
        top = max(d["probs"].values())
        assert d["uncertain"] is uncertain and (top < 0.4 if uncertain else top > 0.99)
    assert lines.getvalue().count("(uncertain)") == summary["uncertain_events"] == (4 if uncertain else 0)


def test_file_source_processes_every_frame_deterministically(tmp_path):
    runs = []
    for k in range(2):
        log = tmp_path / f"ev{k}.jsonl"
        p = make(ArraySource(images(120), fps=30), event_sinks=[EventLog(log)], queue_size=2)
        summary = p.run()
        assert summary["frames_read"] == summary["frames_processed"] == 120
        assert summary["dropped_frames"] == 0 and summary["error"] is None
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert len(lines) == summary["events"] == 12  # 11 released on the way + 1 at flush
        for d in lines:
            assert set(d) >= {"onset_frame", "apex_frame", "offset_frame", "onset_s", "apex_s", "offset_s",
                              "label", "probs", "latency_ms", "confirm_ms"}
            assert abs(sum(d["probs"].values()) - 1) < 1e-4 and d["label"] == max(d["probs"], key=d["probs"].get)
            assert d["apex_s"] == pytest.approx(d["apex_frame"] / 30, abs=1e-6) and d["latency_ms"] >= 0
        assert lines[-1]["offset_frame"] is None and lines[-1]["offset_s"] is None
        for stage in ("capture", "track", "spot", "frame", "encode", "infer", "latency", "confirm"):
            assert stage in summary["stages_ms"], stage
        runs.append([{k2: v for k2, v in d.items() if k2 not in ("latency_ms", "confirm_ms")} for d in lines])
    assert runs[0] == runs[1]


def test_live_source_drops_oldest_on_a_slow_consumer_and_counts():
    # camera-like: 240 frames paced at 400 fps into a tracker that manages about 100 fps
    src = ArraySource(images(240), fps=400, live=True, realtime=True)
    p = make(src, tracker=FakeTracker(delay_s=0.01), queue_size=4)
    t0 = time.monotonic()
    s = p.run()
    assert time.monotonic() - t0 < 2.5  # capture never waited on tracking
    assert s["dropped_frames"] > 50
    assert s["frames_read"] == 240 and s["frames_processed"] + s["dropped_frames"] == 240
    assert s["error"] is None


def test_stop_is_graceful_and_flushes_events(tmp_path):
    log = tmp_path / "ev.jsonl"
    src = ArraySource(images(10_000), fps=200, realtime=True)
    p = make(src, event_sinks=[EventLog(log)])
    p.start()
    time.sleep(0.4)
    p.stop()
    assert p.join(5)
    p.close()
    s = p.summary()
    assert 0 < s["frames_processed"] < 10_000 and s["frames_processed"] == s["frames_read"]
    lines = log.read_text().splitlines()
    assert len(lines) == s["events"] > 0  # everything queued reached the log, including the flush


def test_keyboard_interrupt_in_run_stops_cleanly(tmp_path):
    log = tmp_path / "ev.jsonl"
    p = make(ArraySource(images(100_000), fps=300, realtime=True), event_sinks=[EventLog(log)])
    calls = {"n": 0}

    def tick(pipe):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    s = p.run(on_tick=tick, tick_s=0.05)
    assert s["interrupted"] and not s["aborted"] and s["error"] is None
    assert len(log.read_text().splitlines()) == s["events"]


def test_a_failing_stage_stops_the_run_labels_what_was_found_and_is_reported():
    class Broken(FakeTracker):
        def track(self, frame):
            if frame.index == 30:
                raise RuntimeError("boom")
            return super().track(frame)

    log = ListSink()
    p = make(ArraySource(images(1000), fps=30), tracker=Broken(), event_sinks=[log], queue_size=2)
    s = p.run()
    assert not s["aborted"] and "tracking" in s["error"] and "boom" in s["error"]
    assert p.failure.stage == "tracking" and isinstance(p.failure.error, RuntimeError) and "boom" in p.failure.traceback
    assert s["frames_processed"] == 30 and s["frames_read"] < 100  # the source stopped soon after
    # candidates at frames 9, 19, 29 (the last still held by the spotter, flushed): all labelled
    assert s["candidates"] == s["events"] == len(log.events) == 3


def test_a_source_that_fails_mid_way_still_labels_the_candidates_found_before():
    class BreaksAt(ArraySource):
        def frames(self):
            for frame in super().frames():
                if frame.index == 25:
                    raise SourceError("--video x: frame 25 is 10x10, the first frame 64x48")
                yield frame

    log = ListSink()
    p = make(BreaksAt(images(100), fps=30), spotter=FakeSpotter(every=20, lag=50), event_sinks=[log])
    s = p.run()
    assert s["frames_processed"] == 25 and "frame 25" in s["error"] and p.failure.stage == "capture"
    assert s["candidates"] == s["events"] == len(log.events) == 1  # held by the spotter until its flush
    assert log.events[0].apex_frame == 19


def test_a_failing_frame_sink_does_not_lose_the_events():
    class BrokenSink:
        def on_frame(self, state):
            if state.frame.index == 12:
                raise OSError(28, "No space left on device")

        def close(self):
            pass

    log = ListSink()
    p = make(ArraySource(images(400), fps=30), event_sinks=[log], frame_sinks=[BrokenSink()], queue_size=2)
    s = p.run()
    assert "frame-sinks" in s["error"] and s["frames_read"] < 400 and not s["aborted"]
    assert s["candidates"] == s["events"] == len(log.events) > 0


def test_recognizer_builds_events_from_the_candidate():
    ffs = []
    for i in (10, 14):
        f = next(ArraySource(images(1), fps=25).frames())
        f.index, f.t_video = i, 3.0 + i / 25  # a camera's clock: times are not index / fps
        ffs.append(FakeTracker().track(f))
    cand = Candidate(ffs[0], ffs[1], 19, 3.77, np.zeros(4), time.monotonic())
    stats = RingStats(16)
    (ev,) = Recognizer(FakeRuntime(), encode=fake_encode)([cand], stats)
    assert (ev.onset_frame, ev.apex_frame, ev.offset_frame) == (10, 14, 19)
    assert (ev.onset_s, ev.apex_s, ev.offset_s) == (3.4, 3.56, 3.77)  # the candidate's times, as they are
    assert set(ev.probs) == {"negative", "positive", "surprise"} and ev.label in ev.probs
    assert ev.confirm_ms >= 0 and "encode" in stats.stages() and "infer" in stats.stages()


# ---------------------------------------------------------------------------------------- sources
class FakeCapture:
    """A camera that delivers `good` frames, then fails every read (unplugged) until reopened."""

    opens = 0

    def __init__(self, index, good=40, refuse_reopen=2):
        self.index, self.good = index, good
        FakeCapture.opens += 1
        self.ok = index == 0 and not (1 < FakeCapture.opens <= 1 + refuse_reopen)
        self.n = 0

    def isOpened(self):
        return self.ok

    def set(self, *a):
        return True

    def get(self, prop):
        return 60.0

    def read(self):
        time.sleep(0.002)
        self.n += 1
        if self.n > self.good:
            return False, None
        return True, np.zeros((24, 32, 3), np.uint8)

    def release(self):
        self.ok = False


def test_camera_reconnects_with_backoff_and_resumes():
    FakeCapture.opens = 0
    cam = CameraSource(0, capture_factory=lambda i: FakeCapture(i), backoff_s=0.01, backoff_max_s=0.04,
                       fail_after=3, open_timeout_s=0.2)
    assert cam.live and cam.fps == 60.0
    states, got = set(), []
    for f in cam.frames():
        got.append(f.index)
        states.add(cam.state)
        if len(got) == 100:
            cam.stop()
    assert got == list(range(100))  # indices keep counting across the reconnects
    assert cam.reconnects >= 2 and cam.read_failures >= 6
    assert FakeCapture.opens >= 4  # two refused reopen attempts (backoff), then success


def test_bad_camera_index_and_bad_file_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="--camera 7"):
        CameraSource(7, capture_factory=lambda i: FakeCapture(i), open_timeout_s=0.1)
    with pytest.raises(SourceError, match="does not exist"):
        VideoSource(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match="junk.mp4"):
        VideoSource(junk)


def test_video_source_realtime_paces_the_file(tmp_path):
    import cv2

    path = tmp_path / "c.avi"
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (64, 48))
    for img in images(20):
        wr.write(img)
    wr.release()
    fast = VideoSource(path)
    t0 = time.monotonic()
    n = sum(1 for _ in fast.frames())
    t_fast = time.monotonic() - t0
    paced = VideoSource(path, realtime=True)
    t0 = time.monotonic()
    frames = list(paced.frames())
    t_paced = time.monotonic() - t0
    assert n == len(frames) == 20 and fast.fps == 50.0 and not fast.live
    assert t_paced >= 19 / 50 * 0.95 and t_fast < t_paced
    assert [f.t_video for f in frames[:3]] == [0.0, 0.02, 0.04]


# ---------------------------------------------------------------------------------------- sinks
def test_event_log_is_flushed_per_event(tmp_path):
    p = make(ArraySource(images(40), fps=30))
    p.run()
    log = EventLog(tmp_path / "sub" / "e.jsonl")
    log.on_event(p.events[0])
    assert json.loads((tmp_path / "sub" / "e.jsonl").read_text())["apex_frame"] == p.events[0].apex_frame
    log.close()


def test_event_log_stays_valid_json_whatever_the_numbers(tmp_path):
    from dataclasses import replace

    p = make(ArraySource(images(40), fps=30))
    p.run()
    broken = replace(p.events[0], probs={"negative": float("nan"), "positive": float("inf"), "surprise": 0.5})
    log = EventLog(tmp_path / "e.jsonl")
    log.on_event(broken)
    log.close()
    line = (tmp_path / "e.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line)["probs"] == {"negative": None, "positive": None, "surprise": 0.5}


def test_annotate_and_record(tmp_path):
    import cv2

    rec = VideoRecorder(tmp_path / "out.avi", fps=30)
    lst = ListSink()
    p = make(ArraySource(images(40, 240, 320), fps=30), event_sinks=[lst], frame_sinks=[rec])
    s = p.run()
    assert rec.frames == 40 and s["dropped_display"] == 0
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    cap.release()
    ff = FakeTracker().track(next(ArraySource(images(1, 240, 320), fps=30).frames()))
    st = DisplayState(frame=ff.frame, faces=(FaceView(ff, np.sin(np.arange(50)), {"brows": 1.0, "mouth": 0.5}),),
                      events=tuple(lst.events), fps=30.0)
    out = annotate(ff.frame.image, st)
    assert out.shape == ff.frame.image.shape and not np.array_equal(out, ff.frame.image)


def test_annotate_draws_an_uncertain_label_grey_and_says_so():
    from realtime.packets import Event
    from realtime.sinks import _UNCERTAIN_COLOR

    frame = Frame(10, 0.0, 0.3, np.full((480, 640, 3), 90, np.uint8))
    grey = []
    for probs in ({"negative": 0.38, "positive": 0.52, "surprise": 0.10},
                  {"negative": 0.08, "positive": 0.82, "surprise": 0.10}):
        event = Event(1, 5, 9, 0.03, 0.17, 0.3, "positive", probs, 10.0, 5.0)
        img = annotate(frame.image, DisplayState(frame=frame, events=(event,), fps=30.0))
        grey.append(int((img == _UNCERTAIN_COLOR).all(axis=2).sum()))
    assert grey[0] > 500 and grey[1] < 50  # a few anti-aliased edge pixels may land on that grey


# ---------------------------------------------------------------------------------------- overlays
def test_terminal_overlay_renders_state():
    from rich.console import Console

    from realtime.overlay import TerminalOverlay, sparkline

    assert len(sparkline(np.arange(100.0), 40)) == 40
    p = make(ArraySource(images(60), fps=30), display=True)
    p.run()
    buf = io.StringIO()
    con = Console(file=buf, width=140, force_terminal=False)
    ov = TerminalOverlay(console=con)
    con.print(ov.render(p))
    text = buf.getvalue()
    for word in ("face", "fps", "track", "p95", "motion", "last events", "latency"):
        assert word in text, word
    # FakeRuntime's events have a top probability of about 0.5: every one is marked
    assert text.count("(uncertain)") == min(6, p.summary()["events"]) > 0


def test_no_display_is_reported_not_fatal(monkeypatch):
    from realtime.overlay import display_usable

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ok, why = display_usable()
    assert not ok and "no display" in why
    monkeypatch.setenv("DISPLAY", ":987")
    ok, why = display_usable()
    assert not ok and ":987" in why


def test_camera_source_through_the_pipeline_drops_and_counts():
    FakeCapture.opens = 0
    cam = CameraSource(0, capture_factory=lambda i: FakeCapture(i, good=10_000), open_timeout_s=0.2)
    p = make(cam, tracker=FakeTracker(delay_s=0.02), queue_size=2, max_frames=150)
    s = p.run()
    assert s["live"] and s["frames_read"] == 150
    assert s["dropped_frames"] > 30 and s["frames_processed"] + s["dropped_frames"] == 150


def test_a_candidate_that_cannot_be_encoded_is_skipped_not_fatal():
    def picky(onset, apex, flow="auto"):
        if apex.mean() == 29:  # one frame's crop is "bad"
            raise ValueError("bad pair")
        return fake_encode(onset, apex, flow)

    src = ArraySource(images(60), fps=30)
    p = Pipeline(src, FakeTracker(), FakeSpotter, Recognizer(FakeRuntime(), encode=picky))
    s = p.run()
    assert s["error"] is None and s["skipped_candidates"] == 1 and s["events"] == s["candidates"] - 1


def test_a_failing_overlay_tick_still_stops_threads_and_closes_sinks(tmp_path):
    log = tmp_path / "ev.jsonl"
    sink = EventLog(log)
    p = make(ArraySource(images(100_000), fps=300, realtime=True), event_sinks=[sink])

    def tick(pipe):
        raise OSError("display went away")

    with pytest.raises(OSError):
        p.run(on_tick=tick)
    assert not p.running and sink.closed


# -- speculative features ---------------------------------------------------------------------------
class ProvisionalSpotter(FakeSpotter):
    """A FakeSpotter that also says which (onset, apex) it will confirm: the newest pair it holds."""

    def provisional(self):
        return self.pending[-1][1] if self.pending else None


def face(index: int, value: int = 0) -> FaceFrame:
    return FaceFrame(Frame(index, time.monotonic(), index / 30, None), "face",
                     crop=np.full((CROP, CROP), value, np.uint8), patch=flat_patch(value))


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_prefetch_encodes_the_newest_offer_and_hands_it_over():
    calls, started, gate = [], threading.Event(), threading.Event()

    def encode(onset, apex, flow="auto"):
        started.set()
        gate.wait(10)
        calls.append((int(onset[0, 0]), int(apex[0, 0])))
        return fake_encode(onset, apex)

    rec = Recognizer(FakeRuntime(), encode=encode)
    rec.prefetch(face(0, 1), face(2, 3))
    assert started.wait(10)
    rec.prefetch(face(0, 1), face(3, 5))
    rec.prefetch(face(0, 1), face(4, 9))  # the peak moved on before (0, 3) started: only the newest waits
    gate.set()
    wait_for(lambda: rec.prefetched == 2)
    assert calls == [(1, 3), (1, 9)]
    late = Candidate(face(0, 1), face(3, 5), 6, 0.2, np.zeros(1), time.monotonic())
    held = Candidate(face(0, 1), face(4, 9), 6, 0.2, np.zeros(1), time.monotonic())
    events = rec([late, held])
    assert calls[2:] == [(1, 5)] and rec.prefetch_used == 1  # the late pair encoded now, the held one taken
    assert [strip(e) for e in events] == [strip(e) for e in Recognizer(FakeRuntime(), encode=fake_encode)([late, held])]
    rec([held])
    assert calls[3:] == [(1, 9)] and rec.prefetch_used == 1  # handed over once
    rec.close()
    assert not any(t.name == "mex-prefetch" and t.is_alive() for t in threading.enumerate())


def test_a_candidate_waits_for_its_pair_being_prefetched():
    started, release = threading.Event(), threading.Event()

    def slow(onset, apex, flow="auto"):
        started.set()
        release.wait(10)
        return fake_encode(onset, apex)

    rec = Recognizer(FakeRuntime(), encode=slow)
    rec.prefetch(face(10, 2), face(14, 7))
    assert started.wait(10)
    threading.Timer(0.05, release.set).start()
    (event,) = rec([Candidate(face(10, 2), face(14, 7), 16, None, np.zeros(1), time.monotonic())])
    assert rec.prefetched == rec.prefetch_used == 1 and event.apex_frame == 14
    rec.close()


def test_paced_source_prefetches_and_gives_the_same_events():
    """Features encoded ahead are the ones the recognizer would encode: the events do not change."""
    runs = []
    for prefetch in (False, True):
        src = ArraySource(images(90), fps=60, realtime=True)
        p = make(src, spotter=ProvisionalSpotter(every=15, lag=6), prefetch=prefetch)
        s = p.run()
        assert s["error"] is None and s["events"] == 6
        runs.append([strip(e) for e in p.events])
        if prefetch:
            assert s["speculated"] >= 1 and s["speculation_used"] >= 1
        else:
            assert s["speculated"] == s["speculation_used"] == 0
    assert runs[0] == runs[1]


def test_files_read_flat_out_do_not_prefetch():
    assert not make(ArraySource(images(30), fps=30), spotter=ProvisionalSpotter()).prefetch
    assert make(ArraySource(images(30), fps=30, realtime=True), spotter=ProvisionalSpotter()).prefetch


# -- ownership ------------------------------------------------------------------------------------
class RecordingTracker(FakeTracker):
    def __init__(self):
        super().__init__()
        self.frames = []

    def track(self, frame):
        self.frames.append(frame)
        return super().track(frame)


class CountingSpotter(FakeSpotter):
    """A FakeSpotter that notes what it is given and how often its signal is copied."""

    def __init__(self):
        super().__init__()
        self.images, self.signal_copies = [], 0

    def push(self, ff):
        self.images.append(ff.frame.image)
        return super().push(ff)

    def signal_history(self):
        self.signal_copies += 1
        return super().signal_history()


def test_the_pipeline_closes_its_stages_and_leaves_captured_frames_alone():
    src, tracker, spotter = ArraySource(images(40), fps=30), RecordingTracker(), CountingSpotter()
    p = make(src, tracker=tracker, spotter=spotter)
    s = p.run()
    assert s["error"] is None and tracker.closed and src.state == "closed" and p.backlog() == (0, 0)
    assert len(tracker.frames) == 40 and all(f.image is not None for f in tracker.frames)  # captured packets unchanged
    assert all(img is None for img in spotter.images)  # the spotter keeps face frames without their pictures
    assert spotter.signal_copies == 0  # nothing displayed: nothing copied for display


def test_the_signal_is_copied_for_display_only_when_it_is_read():
    spotter = CountingSpotter()
    p = make(ArraySource(images(60), fps=30), spotter=spotter, display=True)
    p.run()
    assert spotter.signal_copies == 1  # the first frame; no reader took it since
    st = p.snapshot()
    assert st.frame.index == 59 and st.frame.image is not None and st.faces[0].signal is not None


# -- pooled apex frames -------------------------------------------------------------------------------
def test_a_pooled_candidate_gets_the_mean_probability_of_its_pairs_encoded_in_one_batch():
    onset, pool = face(0, 1), (face(4, 9), face(3, 5), face(5, 20))  # the apex first
    rec = Recognizer(FakeRuntime(), encode=fake_encode)
    batches = []
    features = rec.features
    rec.features = lambda pairs: batches.append([a.frame.index for _, a in pairs]) or features(pairs)
    (event,) = rec([Candidate(onset, pool[0], 6, 0.2, np.zeros(1), time.monotonic(), pool=pool)])
    assert batches == [[4, 3, 5]] and event.apex_frame == 4
    alone = [Recognizer(FakeRuntime(), encode=fake_encode)([Candidate(onset, a, 6, 0.2, np.zeros(1), 0.0)])[0]
             for a in pool]
    mean = {k: np.mean([e.probs[k] for e in alone]) for k in event.probs}
    assert event.probs == pytest.approx(mean, abs=1e-5) and event.probs != alone[0].probs
    assert event.label == max(mean, key=mean.get)


def test_online_spotter_pools_its_neighbours_only_when_asked():
    from realtime.spotting import Spotter, SpotterConfig

    faces = {i: face(i) for i in range(10, 21)}
    assert Spotter(30)._pool(faces, 10, 15, 20) == ()  # the default: the apex alone
    pooled = Spotter(30, SpotterConfig(pool_frames=3))._pool(faces, 10, 15, 20)
    assert [f.frame.index for f in pooled] == [15, 13, 17]  # +-70 ms at 30 fps, the apex first
