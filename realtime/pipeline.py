r"""The live pipeline: threads connected by bounded queues.

```
capture thread     tracking thread     spotting thread    recognizer thread           frame-sink thread
Source.frames() --> Tracker.track --> Spotter.push --> features + runtime --> event sinks (JSONL, overlay state)
                q_frames          q_faces        q_candidates    \--> q_display --> recorder
```

Drop policy (explicit, per queue, counted in `Pipeline.counters`):
- `q_frames` (capture -> tracking): a live source (camera) never blocks: when the queue is full the
  oldest frame is dropped and counted (`dropped_frames`). A file blocks: nothing is dropped, so a
  file's events are deterministic.
- `q_faces` (tracking -> spotting): blocks (tracking and spotting run on two threads so that the two
  cores overlap them; for a camera a full `q_faces` turns into dropped frames at `q_frames`).
- `q_candidates` (spotting -> recognition): never dropped (a candidate is a would-be event); it
  blocks the spotting thread, which for a camera turns into dropped frames upstream.
- `q_display` (spotting -> recorder): same rule as `q_frames` (drop oldest for a camera, block
  for a file, so a recorded file has every frame).

Speculative features (paced sources: a camera, or a file played with --realtime): while the spotter
holds an interval open, waiting for the motion to settle before it confirms the apex (3-4 frames at
30 fps), a speculator thread computes the features of the interval's onset and its peak so far
(`Spotter.provisional()`), offered once the peak has held for a frame; only the newest offer is kept
waiting, one is computed at a time. When the
candidate arrives the recognizer takes those features if the peak held (or waits for them if they are
being computed) and otherwise computes them itself. Features are a pure function of the two patches, so
events are the same with and without it; only the time from confirmation to label changes. Off for
files read as fast as possible, where frames come far faster than a flow is solved.

Every frame carries its capture time and per-stage times (`Frame.stage_ms`); the pipeline keeps the
last 65,536 samples per stage in preallocated ring buffers (memory stays flat on long runs) for
p50/p95/p99.

Shutdown: `stop()` (Ctrl-C) stops the source; the end-of-stream marker then drains the queues (they
are short), flushes the spotter and the recognizer, and every event reaches the sinks. `abort()`
(a second Ctrl-C, or an error in a stage) stops everything at once.
"""
from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mex.labels import CLASSES

from .framing import pair_crops
from .packets import Candidate, Event, FaceFrame

_EOS = object()


class Aborted(Exception):
    """The pipeline was aborted while a stage waited on a queue."""


class Channel:
    """A bounded FIFO between two threads with an explicit policy when full.

    drop_oldest=True: `put` never blocks; the oldest item is discarded and counted.
    drop_oldest=False: `put` blocks until there is room (or the pipeline aborts).
    The end-of-stream marker is never dropped and never blocks.
    """

    def __init__(self, name: str, maxsize: int, drop_oldest: bool, abort: threading.Event):
        self.name = name
        self.maxsize = max(1, int(maxsize))
        self.drop_oldest = drop_oldest
        self._abort = abort
        self._items: deque = deque()
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item) -> None:
        with self._cond:
            if item is not _EOS:
                if self.drop_oldest:
                    while len(self._items) >= self.maxsize:
                        # never drop the end marker (it is always last, so the oldest is a real item)
                        self._items.popleft()
                        self.dropped += 1
                else:
                    while len(self._items) >= self.maxsize:
                        if self._abort.is_set():
                            raise Aborted(self.name)
                        self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._abort.is_set():
                    raise Aborted(self.name)
                wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(self.name)
                self._cond.wait(wait)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_nowait(self):
        with self._cond:
            if not self._items or self._items[0] is _EOS:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        self.put(_EOS)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


class RingStats:
    """Per-stage millisecond samples in fixed, preallocated ring buffers (flat memory)."""

    def __init__(self, capacity: int = 65536):
        self.capacity = capacity
        self._buf: dict[str, np.ndarray] = {}
        self._n: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            buf = self._buf.get(stage)
            if buf is None:
                buf = self._buf[stage] = np.full(self.capacity, np.nan)  # touched now, not while running
                self._n[stage] = 0
            buf[self._n[stage] % self.capacity] = ms
            self._n[stage] += 1

    def samples(self, stage: str) -> np.ndarray:
        with self._lock:
            buf = self._buf.get(stage)
            if buf is None:
                return np.empty(0)
            n = self._n[stage]
            return buf[: min(n, self.capacity)].copy()

    def recent(self, stage: str, n: int = 300) -> np.ndarray:
        """The last `n` samples of a stage (oldest first)."""
        with self._lock:
            buf = self._buf.get(stage)
            if buf is None:
                return np.empty(0)
            total = self._n[stage]
            n = min(n, total, self.capacity)
            end = total % self.capacity
            idx = (np.arange(end - n, end)) % self.capacity
            return buf[idx].copy()

    def stages(self) -> list[str]:
        with self._lock:
            return list(self._buf)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage in self.stages():
            s = self.samples(stage)
            if s.size:
                p50, p95, p99 = np.percentile(s, [50, 95, 99])
                out[stage] = {"n": int(self._n[stage]), "mean": float(s.mean()), "p50": float(p50),
                              "p95": float(p95), "p99": float(p99), "max": float(s.max())}
        return out


@dataclass
class DisplayState:
    """What overlays and the recorder draw: copied under the pipeline's lock."""

    face: FaceFrame | None = None
    signal: np.ndarray | None = None
    regions: dict | None = None
    events: tuple = ()
    fps: float = 0.0
    source_state: str = "starting"
    counters: dict | None = None
    stage_ms: dict | None = None


class EventSink:
    """Receives every event, in order, on the recognizer thread. `close()` is called once at the end."""

    def on_event(self, event: Event) -> None:  # pragma: no cover - interface
        pass

    def close(self) -> None:
        pass


class FrameSink:
    """Receives every processed FaceFrame (file) or the newest ones (camera) on the frame-sink thread."""

    def on_frame(self, face: FaceFrame, state: DisplayState) -> None:  # pragma: no cover - interface
        pass

    def close(self) -> None:
        pass


class Recognizer:
    """Candidate -> Event: the onset and apex recognition crops (realtime/framing.py: training framing,
    one transform, apex registered onto onset), features through the one feature path
    (mex.features.encode), then the runtime."""

    def __init__(self, runtime, flow: str = "auto", encode: Callable | None = None, fps: float = 30.0,
                 classes: Sequence[str] = CLASSES):
        """`encode(onset, apex, flow=)` per pair of crops; by default the whole batch goes through
        mex.features.encode_batch (the same path as mex.features.encode, one flow call per batch)."""
        self.runtime = runtime
        self.flow = flow
        self.encode = encode
        self.fps = fps
        self.classes = tuple(classes)
        if encode is None:
            from mex import features

            self._encode_batch = features.encode_batch
        else:
            self._encode_batch = None

    skipped = 0  # candidates that could not be encoded

    def _skip(self, why: str) -> None:
        self.skipped += 1

    def _usable(self, c: Candidate) -> bool:
        if c.onset.patch is None or c.apex.patch is None:
            self._skip(f"frame {c.apex.frame.index}: candidate without a face patch")
            return False
        return True

    def features(self, pairs: Sequence[tuple[FaceFrame, FaceFrame]]) -> np.ndarray:
        """(onset, apex) face frames -> float32 (n, 3, 28, 28), for candidates and for the Speculator alike."""
        crops = [pair_crops(onset.patch, apex.patch) for onset, apex in pairs]
        onsets, apexes = [a for a, _ in crops], [b for _, b in crops]
        if self._encode_batch is not None:
            return np.asarray(self._encode_batch(onsets, apexes, flow=self.flow), dtype=np.float32)
        return np.stack([np.asarray(self.encode(a, b, flow=self.flow), dtype=np.float32) for a, b in zip(onsets, apexes)])

    def _encode(self, cands: list[Candidate]) -> list[np.ndarray | None]:
        """Features per candidate (None for one that cannot be encoded: skipped and counted)."""
        if not cands:
            return []
        try:
            return list(self.features([(c.onset, c.apex) for c in cands]))
        except (ValueError, RuntimeError):
            # one bad pair must not stop a live run: encode pair by pair, skip (and count) the bad ones
            rows = []
            for c in cands:
                try:
                    rows.append(self.features([(c.onset, c.apex)])[0])
                except (ValueError, RuntimeError) as e:
                    self._skip(f"{type(e).__name__}: {e}")
                    rows.append(None)
            return rows

    def __call__(self, cands: list[Candidate], stats: RingStats | None = None,
                 precomputed: Callable[[Candidate], np.ndarray | None] | None = None) -> list[Event]:
        """`precomputed(candidate)`: its features if they were computed ahead (a Speculator), else None."""
        t0 = time.perf_counter()
        cands = [c for c in cands if self._usable(c)]
        ready = [precomputed(c) if precomputed is not None else None for c in cands]
        todo = [k for k, r in enumerate(ready) if r is None]
        for k, row in zip(todo, self._encode([cands[k] for k in todo])):
            ready[k] = row
        kept = [(c, r) for c, r in zip(cands, ready) if r is not None]
        if not kept:
            return []
        cands, x = [c for c, _ in kept], np.stack([r for _, r in kept])
        t1 = time.perf_counter()
        p = np.asarray(self.runtime.probs(x), dtype=np.float64)
        t2 = time.perf_counter()
        now = time.monotonic()
        if stats is not None:  # per candidate: a batch's time shared out, one sample per candidate
            for _ in cands:
                stats.add("encode", (t1 - t0) * 1000.0 / len(cands))
                stats.add("infer", (t2 - t1) * 1000.0 / len(cands))
        events = []
        for c, row in zip(cands, p):
            k = int(np.argmax(row))
            apex_f, onset_f = c.apex.frame, c.onset.frame
            off = c.offset_index
            off_s = None if off is None else apex_f.t_video + (off - apex_f.index) / self.fps
            ev = Event(
                onset_frame=int(onset_f.index), apex_frame=int(apex_f.index),
                offset_frame=None if off is None else int(off),
                onset_s=round(float(onset_f.t_video), 6), apex_s=round(float(apex_f.t_video), 6),
                offset_s=None if off_s is None else round(float(off_s), 6),
                label=self.classes[k], probs={name: round(float(v), 6) for name, v in zip(self.classes, row)},
                latency_ms=round((now - apex_f.t_capture) * 1000.0, 3),
                confirm_ms=round((now - c.t_apex_confirmed) * 1000.0, 3),
            )
            events.append(ev)
        return events


class Speculator:
    """Features of the open interval's (onset, peak so far), computed before the apex is confirmed.

    `offer(onset, apex)` from the spotting thread (newest wins: an offer not yet started is replaced);
    `run()` on its own thread computes one pair at a time with `encode(onset, apex)` (face frames);
    `take(candidate)` from the recognizer returns the candidate's features if they were computed (or
    waits for them while they are being computed), else None. Keeps the last `keep` results.
    """

    def __init__(self, encode: Callable[[FaceFrame, FaceFrame], np.ndarray], stats: RingStats | None = None,
                 keep: int = 8):
        self.encode = encode
        self.stats = stats
        self.keep = keep
        self._cond = threading.Condition()
        self._wanted: tuple[tuple[int, int], FaceFrame, FaceFrame] | None = None
        self._busy: tuple[int, int] | None = None
        self._done: dict[tuple[int, int], np.ndarray | None] = {}
        self._closed = False
        self.computed = 0  # pairs encoded ahead
        self.used = 0  # candidates that found their features ready (or being computed)

    @staticmethod
    def key(onset: FaceFrame, apex: FaceFrame) -> tuple[int, int]:
        return onset.frame.index, apex.frame.index

    def offer(self, onset: FaceFrame, apex: FaceFrame) -> None:
        key = self.key(onset, apex)
        if onset.patch is None or apex.patch is None:
            return
        with self._cond:
            if key in self._done or key == self._busy or (self._wanted is not None and self._wanted[0] == key):
                return
            self._wanted = (key, onset, apex)
            self._cond.notify_all()

    def take(self, cand: Candidate) -> np.ndarray | None:
        key = self.key(cand.onset, cand.apex)
        with self._cond:
            if self._wanted is not None and self._wanted[0] == key:
                self._wanted = None  # not started: the recognizer computes it now instead
            while self._busy == key and not self._closed:
                self._cond.wait()
            x = self._done.pop(key, None)
        if x is not None:
            self.used += 1
        return x

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def run(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                (key, onset, apex), self._wanted = self._wanted, None
                self._busy = key
            t0 = time.perf_counter()
            try:
                x = np.asarray(self.encode(onset, apex), dtype=np.float32)
            except (ValueError, RuntimeError):
                x = None  # the recognizer will try again, and skip and count it
            if self.stats is not None:
                self.stats.add("speculate", (time.perf_counter() - t0) * 1000.0)
            with self._cond:
                self._done[key] = x
                while len(self._done) > self.keep:
                    self._done.pop(next(iter(self._done)))
                self.computed += 1
                self._busy = None
                self._cond.notify_all()


class Pipeline:
    """Source -> Tracker -> Spotter -> Recognizer -> sinks, on five threads (plus one with a recorder, one speculating features for a paced source).

    `tracker.track(frame) -> FaceFrame`, `spotter.push(ff) -> list[Candidate]`, `spotter.flush()`,
    optional `spotter.signal_history()` / `spotter.region_motion()`; `recognizer(list[Candidate]) ->
    list[Event]` (a `Recognizer`). The tracker and the spotter stamp their own time on the frame
    (`stage_ms["track"]`, `["spot"]`: measured in one place, whether a pipeline runs them or not); the
    pipeline stamps what only it sees (`wait`, `frame`).
    """

    def __init__(self, source, tracker, spotter, recognizer, event_sinks: Sequence[EventSink] = (),
                 frame_sinks: Sequence[FrameSink] = (), queue_size: int = 8, want_display: bool = False,
                 batch_max: int = 16, stats_capacity: int = 65536, keep_events: int = 10000,
                 max_frames: int | None = None, speculate: bool | None = None):
        """speculate: compute features before the apex is confirmed (default: for paced sources, i.e.
        a camera or a file with realtime=True, and a spotter with `provisional()`)."""
        self.source = source
        self.tracker = tracker
        self.spotter = spotter
        self.recognizer = recognizer
        self.event_sinks = list(event_sinks)
        self.frame_sinks = list(frame_sinks)
        self.want_display = want_display or bool(self.frame_sinks)
        # a file is recognised one candidate at a time: a runtime may round differently at another
        # batch size, and how many candidates wait together depends on timing (determinism first)
        self.batch_max = batch_max if getattr(source, "live", False) else 1
        self.max_frames = max_frames
        self.live = bool(getattr(source, "live", False))
        self._abort = threading.Event()
        self._stopping = threading.Event()
        self.q_frames = Channel("frames", queue_size, drop_oldest=self.live, abort=self._abort)
        self.q_faces = Channel("faces", queue_size, drop_oldest=False, abort=self._abort)
        self.q_candidates = Channel("candidates", 64, drop_oldest=False, abort=self._abort)
        self.q_display = Channel("display", queue_size, drop_oldest=self.live, abort=self._abort)
        self.stats = RingStats(stats_capacity)
        paced = self.live or bool(getattr(source, "realtime", False))
        if speculate is None:
            speculate = paced
        can = hasattr(spotter, "provisional") and hasattr(recognizer, "features")
        self.speculator = (Speculator(lambda a, b: recognizer.features([(a, b)])[0], self.stats)
                           if speculate and can else None)
        self.events: deque[Event] = deque(maxlen=keep_events)
        self.n_events = 0
        self.n_candidates = 0
        self.frames_read = 0
        self.frames_processed = 0
        self.face_frames = 0
        self.error: tuple[str, BaseException, str] | None = None
        self._lock = threading.Lock()
        self._state = DisplayState()
        self._fps_times: deque[float] = deque(maxlen=61)
        self._threads: list[threading.Thread] = []
        self.t_start: float | None = None
        self.t_end: float | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> Pipeline:
        self.t_start = time.monotonic()
        specs = [("capture", self._capture), ("tracking", self._track), ("spotting", self._spot),
                 ("recognizer", self._recognize)]
        if self.frame_sinks:
            specs.append(("frame-sinks", self._frame_sinks))
        if self.speculator is not None:
            specs.append(("speculator", self.speculator.run))
        for name, fn in specs:
            t = threading.Thread(target=self._guard, args=(name, fn), name=f"mex-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self) -> None:
        """Graceful: stop reading; what is queued is processed and flushed."""
        self._stopping.set()
        self.source.stop()

    def abort(self) -> None:
        """Immediate: every thread leaves at its next queue operation."""
        self._stopping.set()
        self._abort.set()
        self.source.stop()
        for ch in (self.q_frames, self.q_faces, self.q_candidates, self.q_display):
            ch.wake()
        if self.speculator is not None:
            self.speculator.close()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def aborted(self) -> bool:
        return self._abort.is_set()

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not self.running
        if done and self.t_end is None:
            self.t_end = time.monotonic()
        return done

    def close_sinks(self) -> None:
        for s in [*self.event_sinks, *self.frame_sinks]:
            try:
                s.close()
            except Exception as e:  # one sink failing to close must not hide the others
                if self.error is None:
                    self.error = ("sinks", e, traceback.format_exc())

    def run(self, on_tick: Callable[[Pipeline], None] | None = None, tick_s: float = 0.1) -> dict:
        """Start, wait until the source ends (or Ctrl-C), close sinks, return the summary.

        First Ctrl-C: graceful stop (queued frames finished, events flushed). Second: abort.
        """
        self.start()
        interrupts = 0
        ok = False
        try:
            while True:
                try:
                    while self.running:
                        if on_tick is not None:
                            on_tick(self)
                        self.join(tick_s)
                    break
                except KeyboardInterrupt:
                    interrupts += 1
                    if interrupts == 1:
                        self.stop()
                    else:
                        self.abort()
            ok = True
        finally:
            if not ok:  # the caller's tick failed: stop the threads and still close (flush) the sinks
                self.abort()
            self.join()
            self.close_sinks()
        if on_tick is not None:
            on_tick(self)
        return self.summary(interrupted=interrupts > 0)

    # ------------------------------------------------------------------ threads
    def _guard(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Aborted:
            pass
        except BaseException as e:  # noqa: BLE001 - a dead stage must stop the others and be reported
            if self.error is None:
                self.error = (name, e, traceback.format_exc())
            self.abort()

    def _capture(self) -> None:
        try:
            for frame in self.source.frames():
                if self._abort.is_set():
                    break
                self.frames_read += 1
                self.q_frames.put(frame)
                if self._stopping.is_set() or (self.max_frames is not None and self.frames_read >= self.max_frames):
                    break
        finally:
            self.q_frames.close()

    def _track(self) -> None:
        try:
            while True:
                frame = self.q_frames.get()
                if frame is _EOS:
                    break
                t0 = time.monotonic()
                frame.stage_ms["wait"] = (t0 - frame.t_capture) * 1000.0
                ff = self.tracker.track(frame)  # stamps its own stage time
                self.q_faces.put(ff)
        finally:
            self.q_faces.close()

    def _spot(self) -> None:
        stats = self.stats
        try:
            while True:
                ff = self.q_faces.get()
                if ff is _EOS:
                    break
                frame = ff.frame
                cands = self.spotter.push(ff)  # stamps its own stage time
                t2 = time.monotonic()
                if self.speculator is not None and not cands:
                    pair = self.spotter.provisional()
                    # offered once the peak has held for a frame: while the motion still rises every
                    # frame is a new peak, and encoding each would mostly be wasted
                    if pair is not None and pair[1].frame.index < frame.index:
                        self.speculator.offer(*pair)
                for c in cands:
                    self.n_candidates += 1
                    self.q_candidates.put(c)
                if ff.crop is not None:
                    self.face_frames += 1
                self.frames_processed += 1
                frame.stage_ms["frame"] = (time.monotonic() - frame.t_capture) * 1000.0
                for k, v in frame.stage_ms.items():
                    stats.add(k, v)
                self._fps_times.append(t2)
                if self.want_display:
                    self._publish(ff)
                    if self.frame_sinks:
                        self.q_display.put(ff)
                else:
                    frame.image = None  # nothing downstream draws: free the image now (crops stay)
            for c in self.spotter.flush():
                self.n_candidates += 1
                self.q_candidates.put(c)
        finally:
            self.q_candidates.close()
            self.q_display.close()

    def _publish(self, ff: FaceFrame) -> None:
        sig = regions = None
        f = getattr(self.spotter, "signal_history", None)
        if f is not None:
            sig = np.asarray(f())
        f = getattr(self.spotter, "region_motion", None)
        if f is not None:
            regions = dict(f())
        with self._lock:
            self._state.face = ff
            self._state.signal = sig
            self._state.regions = regions

    def _recognize(self) -> None:
        try:
            self._recognize_candidates()
        finally:
            if self.speculator is not None:
                self.speculator.close()

    def _recognize_candidates(self) -> None:
        take = self.speculator.take if self.speculator is not None else None
        while True:
            c = self.q_candidates.get()
            if c is _EOS:
                break
            batch = [c]
            while len(batch) < self.batch_max:
                more = self.q_candidates.get_nowait()
                if more is None:
                    break
                batch.append(more)
            events = self.recognizer(batch, self.stats, take)
            for ev in events:
                self.stats.add("latency", ev.latency_ms)
                self.stats.add("confirm", ev.confirm_ms)
                for sink in self.event_sinks:
                    sink.on_event(ev)
                with self._lock:
                    self.events.append(ev)
                    self.n_events += 1

    def _frame_sinks(self) -> None:
        while True:
            ff = self.q_display.get()
            if ff is _EOS:
                break
            state = self.snapshot(face=ff)
            for sink in self.frame_sinks:
                sink.on_frame(ff, state)

    # ------------------------------------------------------------------ reporting
    def fps(self) -> float:
        ts = list(self._fps_times)
        if len(ts) < 2 or ts[-1] <= ts[0]:
            return 0.0
        return (len(ts) - 1) / (ts[-1] - ts[0])

    def counters(self) -> dict:
        return {
            "frames_read": self.frames_read,
            "frames_processed": self.frames_processed,
            "face_frames": self.face_frames,
            "dropped_frames": self.q_frames.dropped,
            "dropped_display": self.q_display.dropped,
            "candidates": self.n_candidates,
            "skipped_candidates": int(getattr(self.recognizer, "skipped", 0)),
            "speculated": self.speculator.computed if self.speculator is not None else 0,
            "speculation_used": self.speculator.used if self.speculator is not None else 0,
            "events": self.n_events,
            "reconnects": int(getattr(self.source, "reconnects", 0)),
            "read_failures": int(getattr(self.source, "read_failures", 0)),
        }

    def snapshot(self, face: FaceFrame | None = None) -> DisplayState:
        with self._lock:
            st = self._state
            return DisplayState(
                face=face if face is not None else st.face, signal=st.signal, regions=st.regions,
                events=tuple(list(self.events)[-8:]), fps=self.fps(),
                source_state=str(getattr(self.source, "state", "?")), counters=self.counters(),
                stage_ms=dict(st.face.frame.stage_ms) if st.face is not None else None,
            )

    def summary(self, interrupted: bool = False) -> dict:
        t_end = self.t_end or time.monotonic()
        wall = max(1e-9, t_end - (self.t_start or t_end))
        err = None
        if self.error is not None:
            stage, e, _tb = self.error
            err = f"{stage}: {type(e).__name__}: {e}"
        return {
            "source": getattr(self.source, "name", "?"),
            "live": self.live,
            "wall_s": wall,
            "fps": self.frames_processed / wall,
            **self.counters(),
            "stages_ms": self.stats.summary(),
            "interrupted": interrupted,
            "aborted": self.aborted,
            "error": err,
        }
