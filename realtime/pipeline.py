r"""The live pipeline: one thread per stage, connected by bounded channels, data flowing one way.

```
capture thread     tracking thread        spotting thread          recognizer thread
Source.frames() --> Tracker.track_all --> Spotter.push per face --> Recognizer (features + runtime) --> event sinks
                frames                faces        |            candidates
                                                   \--frame-sinks--> frame-sink thread --> frame sinks (recorder)
```

Faces: the tracker gives every face it holds in a frame with its id; each id has its own Spotter (made
by `make_spotter` when the face first appears, dropped `forget_s` seconds after it was last seen), so
each face has its own window and state and one face's crops never enter another's window. Candidates
and events carry the face's id.

Drop policy (explicit, per channel, counted in `Pipeline.counters()`):
- frames (capture -> tracking): a live source (camera) never blocks: when the channel is full the
  oldest frame is dropped and counted (`dropped_frames`). A file blocks: nothing is dropped, so a
  file's events are deterministic.
- faces (tracking -> spotting): blocks (tracking and spotting run on two threads so that the two
  cores overlap them; for a camera a full channel here turns into dropped frames upstream).
- candidates (spotting -> recognition): never dropped (a candidate is a would-be event); it blocks
  the spotting thread, which for a camera turns into dropped frames upstream.
- frame-sinks (spotting -> frame sinks): as frames (drop oldest for a camera, block for a file, so a
  recorded file has every frame).
With several faces the work per frame grows with them (tracking: each face's crop and patch every
frame, its mesh every few; spotting: each face's spotter). When a camera's frames come faster than
that, what gives way, in order: the display (frame-sinks drop the oldest; overlays show the newest),
then encoding ahead (one pair at a time for all faces, the newest offer wins), then whole frames (the
frames channel drops the oldest: every face misses the same frame, a gap in each face's own window).
No face is dropped in favour of another, and candidates are never dropped.

For a paced source (a camera, or a file played in real time) the spotting thread hands the recognizer
the pair an open interval would be confirmed with (`Recognizer.prefetch`) once its peak has held for a
frame, so the features are often ready when the candidate comes (realtime/recognizer.py). Off for
files read as fast as possible, where frames come far faster than a flow is solved.

Every frame carries its capture time and per-stage times (`Frame.stage_ms`); the pipeline keeps the
last `stats_capacity` samples per stage in preallocated ring buffers (memory stays flat on long runs).

Lifecycle: the pipeline owns its stages once it is made: `run()` (or `close()` after `start()` /
`join()`) closes the source, the tracker, the recognizer and the sinks. `stop()` (Ctrl-C) stops the
source; the end-of-stream marker then drains the channels (they are short), flushes the spotter and
the recognizer, and every event reaches the sinks. A stage that fails stops the run the same way (the
stages after it finish what they hold, so a file that breaks mid-way still gets the candidates found
before labelled; the failure is reported). `abort()` (a second Ctrl-C, or a tick of the caller's that
fails) stops everything at once.
"""
from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import stages
from .channels import EOS, Aborted, Channel, RingStats
from .packets import DisplayState, Event, FaceView, FrameFaces


@dataclass
class PipelineConfig:
    queue_size: int = 8  # frames buffered between two stages
    display: bool = False  # keep the newest face frame and the spotter's signal for an overlay
    batch_max: int = 16  # candidates recognised together when several wait (a live source only)
    candidate_queue: int = 64  # candidates waiting for recognition (never dropped)
    stats_capacity: int = 65536  # samples kept per stage
    keep_events: int = 10000  # the last events kept in memory (`Pipeline.events`)
    max_frames: int | None = None  # stop reading after this many frames
    prefetch: bool | None = None  # encode open intervals ahead; None: for a paced source
    forget_s: float = 5.0  # a face's spotter is dropped this long after the face was last seen


@dataclass
class StageFailure:
    """A stage that raised: which one, the exception and its traceback."""

    stage: str
    error: BaseException
    traceback: str

    def __str__(self) -> str:
        return f"{self.stage}: {type(self.error).__name__}: {self.error}"


class Pipeline:
    """Source -> Tracker -> a Spotter per face -> Recognizer -> sinks, on four threads (plus one with frame
    sinks). `make_spotter()` makes a face's spotter (a class or any callable).

    The tracker and the spotters stamp their own time on the frame (`stage_ms["track"]`, `["spot"]`:
    measured in one place, whether a pipeline runs them or not; "spot" is summed over the frame's faces);
    the pipeline stamps what only it sees (`wait`, `frame`).
    """

    def __init__(self, source: stages.Source, tracker: stages.Tracker, make_spotter: Callable[[], stages.Spotter],
                 recognizer: stages.Recognizer, event_sinks: Sequence[stages.EventSink] = (),
                 frame_sinks: Sequence[stages.FrameSink] = (), config: PipelineConfig | None = None,
                 rejection_sinks: Sequence[stages.RejectionSink] = ()):
        cfg = self.config = config or PipelineConfig()
        self.source = source
        self.tracker = tracker
        self.make_spotter = make_spotter
        self.spotters: dict[int, stages.Spotter] = {}  # face id -> its spotter (the spotting thread's)
        self._last_seen: dict[int, float] = {}  # face id -> t_video it was last in a frame
        self._labels: dict[int, str] = {}  # face id -> its last event's label
        self.per_face: dict[int, dict[str, int]] = {}  # face id -> frames with its crop, events
        self.recognizer = recognizer
        self.event_sinks = list(event_sinks)
        self.frame_sinks = list(frame_sinks)
        self.rejection_sinks = list(rejection_sinks)
        self.rejected: dict[str, int] = {}  # intervals the spotter did not report, per reason
        self.live = source.live
        self.display = cfg.display or bool(self.frame_sinks)
        # a file is recognised one candidate at a time: a runtime may round differently at another
        # batch size, and how many candidates wait together depends on timing (determinism first)
        self.batch_max = cfg.batch_max if self.live else 1
        self.prefetch = source.paced if cfg.prefetch is None else cfg.prefetch
        self._abort = threading.Event()
        self._stopping = threading.Event()
        self._frames = Channel("frames", cfg.queue_size, drop_oldest=self.live, abort=self._abort)
        self._faces = Channel("faces", cfg.queue_size, drop_oldest=False, abort=self._abort)
        self._candidates = Channel("candidates", cfg.candidate_queue, drop_oldest=False, abort=self._abort)
        self._sink_frames = Channel("frame-sinks", cfg.queue_size, drop_oldest=self.live, abort=self._abort)
        self.stats = RingStats(cfg.stats_capacity)
        self.events: deque[Event] = deque(maxlen=cfg.keep_events)
        self.n_events = 0
        self.n_uncertain = 0  # events whose top probability is under mex.artifact.UNCERTAIN_BELOW
        self.n_candidates = 0
        self.frames_read = 0
        self.frames_processed = 0
        self.face_frames = 0
        self.failure: StageFailure | None = None  # the first stage that failed
        self.later_failures: list[StageFailure] = []  # any after it (a recorder that could not finish...)
        self.interrupts = 0  # Ctrl-C (or SIGTERM) received by run(): the first stops, the second aborts
        self._lock = threading.Lock()
        self._newest: FrameFaces | None = None
        self._signals: dict[int, tuple] = {}  # face id -> (signal, regions), copied when a reader wants them
        self._signal_wanted = threading.Event()  # a reader took the spotter's signal: copy it anew
        self._signal_wanted.set()
        self._fps_times: deque[float] = deque(maxlen=61)
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.t_start: float | None = None
        self.t_end: float | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> Pipeline:
        self.t_start = time.monotonic()
        # each stage with the channel it reads from
        specs = [("capture", self._capture, None), ("tracking", self._track, self._frames),
                 ("spotting", self._spot, self._faces), ("recognizer", self._recognize, self._candidates)]
        if self.frame_sinks:
            specs.append(("frame-sinks", self._feed_frame_sinks, self._sink_frames))
        for name, fn, inbox in specs:
            t = threading.Thread(target=self._guard, args=(name, fn, inbox), name=f"mex-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self) -> None:
        """Graceful: stop reading; what is queued is processed and flushed."""
        self._stopping.set()
        self.source.stop()

    def abort(self) -> None:
        """Immediate: every thread leaves at its next channel operation."""
        self._stopping.set()
        self._abort.set()
        self.source.stop()
        for ch in (self._frames, self._faces, self._candidates, self._sink_frames):
            ch.wake()
        self.recognizer.close()  # a candidate waiting for features encoded ahead stops waiting

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def aborted(self) -> bool:
        return self._abort.is_set()

    def backlog(self) -> tuple[int, int]:
        """(frames, candidates) waiting between stages."""
        return len(self._frames) + len(self._faces), len(self._candidates)

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not self.running
        if done and self.t_end is None:
            self.t_end = time.monotonic()
        return done

    def close(self) -> None:
        """Close the sinks (flushing them) and the stages, once; after `join()`."""
        if self._closed:
            return
        self._closed = True
        for name, closer in [*(("sinks", s.close) for s in [*self.event_sinks, *self.frame_sinks,
                                                             *self.rejection_sinks]),
                             ("recognizer", self.recognizer.close), ("tracking", self.tracker.close),
                             ("capture", self.source.close)]:
            try:
                closer()
            except Exception as e:  # one failing to close must not keep the others open
                self._failed(StageFailure(name, e, traceback.format_exc()))

    def run(self, on_tick: Callable[[Pipeline], None] | None = None, tick_s: float = 0.1) -> dict:
        """Start, wait until the source ends (or Ctrl-C), close everything, return the summary.

        `on_tick(pipeline)` every `tick_s` while it runs, and once more when it has ended (`running` is
        False), before the stages are closed. First Ctrl-C: graceful stop (queued frames finished,
        events flushed). Second: abort.
        """
        self.start()
        try:
            while True:
                try:
                    while self.running:
                        if on_tick is not None:
                            on_tick(self)
                        self.join(tick_s)
                    break
                except KeyboardInterrupt:
                    self.interrupts += 1
                    if self.interrupts == 1:
                        self.stop()
                    else:
                        self.abort()
            if on_tick is not None:
                on_tick(self)
        except BaseException:  # the caller's tick failed: stop the threads; the sinks are still closed (flushed)
            self.abort()
            raise
        finally:
            self.join()
            self.close()
        return self.summary(interrupted=self.interrupts > 0)

    # ------------------------------------------------------------------ threads
    def _guard(self, name: str, fn: Callable[[], None], inbox: Channel | None) -> None:
        try:
            fn()
        except Aborted:
            pass
        except BaseException as e:  # noqa: BLE001 - a dead stage must stop the others and be reported
            self._failed(StageFailure(name, e, traceback.format_exc()))
            # What came before the failure is still finished, as after Ctrl-C: the source stops, the stages
            # after this one get its end-of-stream (each stage closes its output channel on leaving) and
            # flush (the spotter's open candidates are labelled), and this stage's input is drained so the
            # stages before it are never left blocked on a full channel.
            self.stop()
            if inbox is not None:
                try:
                    while inbox.get() is not EOS:
                        pass
                except Aborted:
                    pass

    def _failed(self, failure: StageFailure) -> None:
        if self.failure is None:
            self.failure = failure
        else:
            self.later_failures.append(failure)

    def _capture(self) -> None:
        try:
            for frame in self.source.frames():
                if self._abort.is_set():
                    break
                self.frames_read += 1
                self._frames.put(frame)
                if self._stopping.is_set() or (self.config.max_frames is not None
                                               and self.frames_read >= self.config.max_frames):
                    break
        finally:
            self._frames.close()

    def _track(self) -> None:
        try:
            while (frame := self._frames.get()) is not EOS:
                frame.stage_ms["wait"] = (time.monotonic() - frame.t_capture) * 1000.0
                self._faces.put(FrameFaces(frame, self.tracker.track_all(frame)))  # it stamps its own time
        finally:
            self._faces.close()

    def _spot(self) -> None:
        try:
            while (packet := self._faces.get()) is not EOS:
                frame, cands, spot_ms = packet.frame, [], 0.0
                for ff in packet.faces:
                    spotter = self.spotters.get(ff.face_id)
                    if spotter is None:
                        spotter = self.spotters[ff.face_id] = self.make_spotter()
                        with self._lock:
                            self.per_face.setdefault(ff.face_id, {"frames": 0, "events": 0})
                    self._last_seen[ff.face_id] = frame.t_video
                    # the spotter keeps face frames for a while, and candidates carry them: without the picture
                    cands += spotter.push(ff.without_image())  # the spotter stamps its own stage time
                    spot_ms += frame.stage_ms.get("spot", 0.0)
                    if ff.crop is not None:
                        self.per_face[ff.face_id]["frames"] += 1
                frame.stage_ms["spot"] = spot_ms  # all faces
                t_spotted = time.monotonic()
                self._take_rejections()
                self._forget(frame.t_video)
                if self.prefetch and not cands:
                    for ff in packet.faces:
                        pair = self.spotters[ff.face_id].provisional()
                        # offered once the peak has held for a frame: while the motion still rises every
                        # frame is a new peak, and encoding each would mostly be wasted
                        if pair is not None and pair[1].frame.index < frame.index:
                            self.recognizer.prefetch(*pair, stats=self.stats)
                for c in cands:
                    self.n_candidates += 1
                    self._candidates.put(c)
                if any(ff.crop is not None for ff in packet.faces):
                    self.face_frames += 1
                self.frames_processed += 1
                frame.stage_ms["frame"] = (time.monotonic() - frame.t_capture) * 1000.0
                for k, v in frame.stage_ms.items():
                    self.stats.add(k, v)
                self._fps_times.append(t_spotted)
                if self.display:
                    self._publish(packet)
                    if self.frame_sinks:
                        self._sink_frames.put(packet)
            for spotter in self.spotters.values():
                for c in spotter.flush():
                    self.n_candidates += 1
                    self._candidates.put(c)
            self._take_rejections()
        finally:
            self._candidates.close()
            self._sink_frames.close()

    def _forget(self, t: float) -> None:
        """Drop the spotters of faces not seen for forget_s (the tracker has given their ids up by then)."""
        for face_id, seen in list(self._last_seen.items()):
            if t - seen > self.config.forget_s:
                del self.spotters[face_id], self._last_seen[face_id]

    def _take_rejections(self) -> None:
        for face_id, spotter in self.spotters.items():
            for r in spotter.take_rejections():
                r.face_id = face_id
                self.rejected[r.reason] = self.rejected.get(r.reason, 0) + 1
                for sink in self.rejection_sinks:
                    sink.on_rejection(r)

    def _publish(self, packet: FrameFaces) -> None:
        """The newest frame for overlays; the spotters' signals only when a reader took the last copy
        (an overlay draws a few times a second, the spotters run at the frame rate)."""
        signals = None
        if self._signal_wanted.is_set():
            self._signal_wanted.clear()
            signals = {i: (s.signal_history(), s.region_motion()) for i, s in self.spotters.items()}
        with self._lock:
            self._newest = packet
            if signals is not None:
                self._signals = signals

    def _recognize(self) -> None:
        try:
            while (c := self._candidates.get()) is not EOS:
                batch = [c]
                while len(batch) < self.batch_max and (more := self._candidates.get_nowait()) is not None:
                    batch.append(more)
                for ev in self.recognizer(batch, self.stats):
                    self.stats.add("latency", ev.latency_ms)
                    self.stats.add("confirm", ev.confirm_ms)
                    for sink in self.event_sinks:
                        sink.on_event(ev)
                    with self._lock:
                        self.events.append(ev)
                        self.n_events += 1
                        self.n_uncertain += ev.uncertain
                        self._labels[ev.face_id] = ev.label
                        self.per_face.setdefault(ev.face_id, {"frames": 0, "events": 0})["events"] += 1
        finally:
            self.recognizer.close()  # no more candidates: nothing left to encode ahead

    def _feed_frame_sinks(self) -> None:
        while (packet := self._sink_frames.get()) is not EOS:
            state = self.snapshot(packet)
            for sink in self.frame_sinks:
                sink.on_frame(state)

    # ------------------------------------------------------------------ reporting
    def fps(self) -> float:
        ts = list(self._fps_times)
        if len(ts) < 2 or ts[-1] <= ts[0]:
            return 0.0
        return (len(ts) - 1) / (ts[-1] - ts[0])

    def counters(self) -> dict:
        with self._lock:
            faces = [{"face_id": i, **n} for i, n in sorted(self.per_face.items())]
        return {
            "frames_read": self.frames_read,
            "frames_processed": self.frames_processed,
            "face_frames": self.face_frames,
            "dropped_frames": self._frames.dropped,
            "dropped_display": self._sink_frames.dropped,
            "candidates": self.n_candidates,
            "skipped_candidates": self.recognizer.skipped,
            "speculated": self.recognizer.prefetched,
            "speculation_used": self.recognizer.prefetch_used,
            "events": self.n_events,
            "uncertain_events": self.n_uncertain,
            "faces": faces,  # per face id: frames with its crop, events
            "rejected": dict(sorted(self.rejected.items())),
            "reconnects": self.source.reconnects,
            "read_failures": self.source.read_failures,
            "lost_frames": self.source.lost_frames,
        }

    def snapshot(self, packet: FrameFaces | None = None) -> DisplayState:
        """What an overlay or a frame sink draws: `packet` (default: the newest frame) with its faces'
        signals and last labels and the pipeline's state."""
        with self._lock:
            events = tuple(list(self.events)[-8:])
            newest, signals, labels = self._newest, self._signals, dict(self._labels)
        self._signal_wanted.set()
        packet = packet if packet is not None else newest
        faces = () if packet is None else tuple(
            FaceView(ff, *signals.get(ff.face_id, (None, None)), labels.get(ff.face_id)) for ff in packet.faces)
        return DisplayState(frame=None if packet is None else packet.frame, faces=faces, events=events,
                            fps=self.fps(), source_state=self.source.state, counters=self.counters(),
                            stage_ms=dict(newest.frame.stage_ms) if newest is not None else None)

    def summary(self, interrupted: bool = False) -> dict:
        t_end = self.t_end or time.monotonic()
        wall = max(1e-9, t_end - (self.t_start or t_end))
        return {
            "source": self.source.name,
            "live": self.live,
            "wall_s": wall,
            "fps": self.frames_processed / wall,
            **self.counters(),
            "stages_ms": self.stats.summary(),
            "interrupted": interrupted,
            "aborted": self.aborted,
            "error": None if self.failure is None else str(self.failure),
        }
