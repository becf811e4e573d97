"""What flows between the live pipeline's stages. Each stage stamps its time on the packet.

Source --Frame--> Tracker --FrameFaces--> a Spotter per face --Candidate--> Recognizer --Event--> event sinks
                                                      DisplayState --> frame sinks, overlays
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from mex.artifact import UNCERTAIN_BELOW
from realtime.framing import FacePatch


@dataclass
class Frame:
    index: int  # 0-based position in the source
    t_capture: float  # time.monotonic() when the frame was read
    t_video: float  # seconds into the stream (index / fps for files, capture clock for cameras)
    image: np.ndarray  # BGR uint8 (H, W, 3)
    stage_ms: dict[str, float] = field(default_factory=dict)  # stage name -> milliseconds spent


@dataclass
class FaceFrame:
    frame: Frame
    state: str  # "face" | "no_face" | "lost" | "reacquired"
    box: tuple[int, int, int, int] | None = None  # x, y, w, h in the frame
    landmarks: np.ndarray | None = None  # (K, 2) pixel coordinates in the frame
    crop: np.ndarray | None = None  # eye-aligned gray uint8 crop for spotting (canonical size), None without a face
    patch: FacePatch | None = None  # what recognition cuts its crops from (training framing), None without a face
    face_id: int = 0  # the tracker's id of this face, stable while it is followed and when it comes back

    def without_image(self) -> FaceFrame:
        """The same face frame without the frame's picture (the stage times stay shared): what a stage that
        keeps face frames for a while holds, so memory does not grow with the frame size."""
        return replace(self, frame=replace(self.frame, image=None))


@dataclass
class FrameFaces:
    """One frame and every face the tracker holds in it (tracked, or lost a moment ago), by id."""
    frame: Frame
    faces: list[FaceFrame]


@dataclass
class Candidate:
    onset: FaceFrame
    apex: FaceFrame
    offset_index: int | None  # frame index where motion returned to baseline, None if not seen yet
    offset_s: float | None  # that frame's t_video, None with offset_index
    signal: np.ndarray  # motion signal over the window around onset..apex (for display)
    t_apex_confirmed: float  # monotonic time when the spotter decided this apex
    region: str | None = None  # face region that moved most at the apex: "brows" | "eyes" | "mouth"
    # frames near the apex whose probabilities are averaged with the apex's (realtime/apex.py); empty: the apex alone
    pool: tuple[FaceFrame, ...] = ()

    @property
    def face_id(self) -> int:
        return self.onset.face_id

    @property
    def onset_s(self) -> float:
        return self.onset.frame.t_video

    @property
    def apex_s(self) -> float:
        return self.apex.frame.t_video


@dataclass
class Rejection:
    """An interval the spotter saw and did not report, and why (the `--rejections` debug stream)."""
    onset_index: int
    apex_index: int
    offset_index: int
    onset_s: float  # seconds into the stream, as the frames' t_video
    apex_s: float
    offset_s: float
    reason: str  # a key of realtime.spotting.REJECTIONS
    region: str | None = None  # the face region that moved most
    detail: dict[str, float] = field(default_factory=dict)  # the measurements the reason rests on
    face_id: int = 0  # whose face (set by the pipeline, which holds a spotter per face)

    def to_json(self) -> dict:
        return {"rejected": self.reason, "face_id": self.face_id, "onset_frame": self.onset_index,
                "apex_frame": self.apex_index, "offset_frame": self.offset_index, "onset_s": self.onset_s,
                "apex_s": self.apex_s, "offset_s": self.offset_s, "region": self.region, "detail": self.detail}


@dataclass
class Event:
    onset_frame: int
    apex_frame: int
    offset_frame: int | None
    onset_s: float
    apex_s: float
    offset_s: float | None
    label: str
    probs: dict[str, float]  # calibrated (the artifact's temperature applied by the runtime)
    latency_ms: float  # apex frame captured -> label emitted
    confirm_ms: float  # apex confirmed by the spotter -> label emitted
    face_id: int = 0  # the tracker's id of the face it happened on
    uncertain: bool = field(init=False)  # the top probability is under UNCERTAIN_BELOW: the model cannot tell

    def __post_init__(self):
        self.uncertain = max(self.probs.values(), default=0.0) < UNCERTAIN_BELOW

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class FaceView:
    """One face as overlays draw it."""

    face: FaceFrame
    signal: np.ndarray | None = None  # its spotter's motion signal, oldest first
    regions: dict[str, float] | None = None  # its spotter's motion per face region
    label: str | None = None  # the label of its last event


@dataclass
class DisplayState:
    """What overlays and frame sinks draw: the pipeline's state as of one frame."""

    frame: Frame | None = None
    faces: tuple[FaceView, ...] = ()  # by id
    events: tuple[Event, ...] = ()  # the last few, all faces
    fps: float = 0.0
    source_state: str = "starting"
    counters: dict | None = None
    stage_ms: dict | None = None
