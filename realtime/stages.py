"""What the live pipeline needs of each stage (realtime/pipeline.py relies on these and on nothing else).

Source --Frame--> Tracker --FrameFaces--> a Spotter per face --Candidate--> Recognizer --Event--> EventSink
                                                \\--DisplayState--> FrameSink

The implementations: sources.VideoSource, FrameFolderSource, ArraySource, DemoSource, CameraSource;
tracking.FaceTracker; spotting.Spotter, ClipSpotter; recognizer.Recognizer; sinks.EventLog, ListSink,
PrintSink, VideoRecorder. Tests give their stand-ins the same methods.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from .channels import RingStats
from .packets import Candidate, DisplayState, Event, FaceFrame, Frame, Rejection


class Source(Protocol):
    name: str
    live: bool  # frames come whether or not they are taken (a camera): drop rather than block
    state: str  # "starting" | "ok" | "reconnecting" | "eof" | "closed"
    reconnects: int
    read_failures: int
    lost_frames: int  # a live source: frames its rate says came while it was reconnecting

    @property
    def paced(self) -> bool:
        """Frames come at the source's own rate (a camera, or a file played in real time)."""

    def frames(self) -> Iterator[Frame]:
        """Frames until the end of the stream or `stop()`."""

    def stop(self) -> None:
        """Thread-safe: `frames()` ends after the frame being read."""

    def close(self) -> None: ...


class Tracker(Protocol):
    def track_all(self, frame: Frame) -> list[FaceFrame]:
        """Every face in the frame, tracked or lost a moment ago, each with its `face_id` (stable while
        the face is followed); stamps `frame.stage_ms["track"]`."""

    def close(self) -> None: ...


class Spotter(Protocol):
    """One face's spotter: the pipeline makes one per face id and pushes that face's frames only."""

    def push(self, face: FaceFrame) -> list[Candidate]:
        """Candidates confirmed by this frame; stamps `face.frame.stage_ms["spot"]`."""

    def flush(self) -> list[Candidate]:
        """End of stream: what is still open."""

    def provisional(self) -> tuple[FaceFrame, FaceFrame] | None:
        """The (onset, apex) an open interval would be confirmed with now, if any."""

    def signal_history(self) -> np.ndarray:
        """The motion signal, oldest first (a copy: for display on another thread)."""

    def region_motion(self) -> dict[str, float]:
        """The latest frame's motion per face region (a copy)."""

    def take_rejections(self) -> list[Rejection]:
        """The intervals seen and not reported since the last call, with the reason (oldest first)."""


class Recognizer(Protocol):
    skipped: int  # candidates that could not be encoded
    prefetched: int  # (onset, apex) pairs encoded ahead of their candidate
    prefetch_used: int  # candidates that found their features encoded ahead

    def __call__(self, candidates: list[Candidate], stats: RingStats | None = None) -> list[Event]:
        """An event per candidate that can be encoded; adds "encode" and "infer" samples to `stats`."""

    def prefetch(self, onset: FaceFrame, apex: FaceFrame, stats: RingStats | None = None) -> None:
        """Start encoding a pair a candidate may soon carry (returns at once; "speculate" samples)."""

    def close(self) -> None:
        """Stop any work in the background (thread-safe; wakes a call waiting on it)."""


class EventSink(Protocol):
    """Gets every event, in order, on the recognizer thread; `close()` once at the end."""

    def on_event(self, event: Event) -> None: ...

    def close(self) -> None:
        pass


class RejectionSink(Protocol):
    """Gets every interval the spotter rejected, in order, on the spotting thread; `close()` once at the end."""

    def on_rejection(self, rejection: Rejection) -> None: ...

    def close(self) -> None:
        pass


class FrameSink(Protocol):
    """Gets every processed frame (a file) or the newest ones (a camera) on the frame-sink thread, with
    its faces and the pipeline's state (`state.frame` still has its picture)."""

    def on_frame(self, state: DisplayState) -> None: ...

    def close(self) -> None:
        pass
