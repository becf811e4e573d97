"""Clips with known micro-expressions, made from a still face photo.

A clip is one photo seen through a moving "camera": every frame the photo is first warped locally
(smooth displacement bumps placed at face landmarks: brows, eyelids, lip corners) and then moved
globally (a similarity transform: head drift, quick nods). Sensor noise and JPEG compression come
last. Everything is timed in seconds and sampled at the clip's fps, so the same spec renders the same
motion at 30 or 200 fps. The ground truth (planted events in frames, plus the distractors that must NOT
be spotted: full and partial blinks, blink bursts, gaze shifts, speech, head moves, turns and nods,
lighting flicker) is written beside the clip as `<clip>.truth.json`.

    spec = ClipSpec(fps=100, seconds=8, events=4, blinks=2, head_motion=1.0, seed=3)
    truth = write_clip("clip.mp4", spec)        # clip.mp4 + clip.mp4.truth.json
    for bgr in render(spec): ...                # or frames in memory

A multi-face clip (MultiClipSpec) places several such faces, each cut out as a head-shaped ellipse, on
a plain wall; each follows its own path (crossing, passing in front of another, leaving and coming
back) and has its own events and distractors. Its truth marks every event and distractor with `face`.

    spec = MultiClipSpec([PlacedFace(ClipSpec(photo="astronaut.jpg", events=2, seed=1), ((0, 0.3, 0.5),)),
                          PlacedFace(ClipSpec(photo="grace_hopper.jpg", events=2, seed=2), ((0, 0.7, 0.5),))])
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

FACES = Path(__file__).resolve().parent.parent / "mex" / "assets" / "faces"
PHOTOS = ("astronaut.jpg", "camera.png", "grace_hopper.jpg")

# Face-mesh landmark indices of the points the warps are placed at (_l / _r: image left / right).
KEYPOINTS = {
    "eye_l_out": 33, "eye_l_in": 133, "eye_r_in": 362, "eye_r_out": 263,
    "lid_l_up": 159, "lid_l_lo": 145, "lid_r_up": 386, "lid_r_lo": 374,
    "brow_l": 105, "brow_l_in": 107, "brow_r": 334, "brow_r_in": 336,
    "mouth_l": 61, "mouth_r": 291, "lip_up": 13, "lip_lo": 14, "nose": 1,
}
# The same points found by mediapipe 0.10.21 on the shipped photos, for machines without mediapipe.
_SHIPPED_KEYPOINTS = {
    "astronaut.jpg": {"eye_l_out": (194.6, 100.8), "eye_l_in": (213.8, 103.6), "eye_r_in": (237.3, 104.8), "eye_r_out": (256.5, 104.3), "lid_l_up": (202.8, 97.7), "lid_l_lo": (204.4, 104.1), "lid_r_up": (248.7, 100.3), "lid_r_lo": (246.6, 106.3), "brow_l": (198.1, 86.5), "brow_l_in": (216.2, 89.1), "brow_r": (254.9, 89.8), "brow_r_in": (236.8, 90.3), "mouth_l": (201.7, 139.4), "mouth_r": (246.1, 142.2), "lip_up": (223.5, 142.8), "lip_lo": (223.1, 149.8), "nose": (224.0, 131.1)},  # noqa: E501
    "camera.png": {"eye_l_out": (227.2, 145.8), "eye_l_in": (239.8, 148.6), "eye_r_in": (251.7, 149.4), "eye_r_out": (255.9, 148.6), "lid_l_up": (233.9, 146.5), "lid_l_lo": (234.8, 149.2), "lid_r_up": (255.2, 148.6), "lid_r_lo": (253.9, 150.3), "brow_l": (235.6, 135.4), "brow_l_in": (248.7, 139.9), "brow_r": (262.1, 140.3), "brow_r_in": (258.4, 141.8), "mouth_l": (227.1, 181.3), "mouth_r": (244.4, 182.3), "lip_up": (242.5, 181.6), "lip_lo": (241.9, 185.2), "nose": (255.3, 171.7)},  # noqa: E501
    "grace_hopper.jpg": {"eye_l_out": (201.6, 194.2), "eye_l_in": (240.0, 193.2), "eye_r_in": (288.4, 190.5), "eye_r_out": (326.4, 187.3), "lid_l_up": (217.4, 187.5), "lid_l_lo": (221.2, 197.3), "lid_r_up": (310.2, 182.4), "lid_r_lo": (307.5, 192.5), "brow_l": (204.2, 164.4), "brow_l_in": (242.0, 164.0), "brow_r": (321.1, 158.9), "brow_r_in": (284.2, 161.9), "mouth_l": (232.3, 277.3), "mouth_r": (304.7, 273.9), "lip_up": (268.7, 276.9), "lip_lo": (268.6, 277.2), "nose": (268.1, 245.6)},  # noqa: E501
}

# kind -> face region it moves (the spotter reports regions with the same names)
KINDS = {
    "brow_raise": "brows",  # AU1+2
    "brow_lower": "brows",  # AU4
    "eyelid_tighten": "eyes",  # AU7
    "lip_corner_pull": "mouth",  # AU12
    "lip_corner_depress": "mouth",  # AU15
}
# The class MEGC's grouping of the databases' emotions most often gives each single movement (CASME II
# codes AU1+2 mostly as surprise, AU4 / AU7 / AU15 as disgust or repression, AU12 as happiness). A
# planted movement is one action unit, not an acted emotion: the demo compares labels with this.
USUAL_CLASS = {
    "brow_raise": "surprise",
    "brow_lower": "negative",
    "eyelid_tighten": "negative",
    "lip_corner_pull": "positive",
    "lip_corner_depress": "negative",
}


@dataclass
class PlantedEvent:
    kind: str  # a key of KINDS
    onset_s: float
    duration_s: float  # onset -> offset
    amplitude_px: float  # peak displacement in output-frame pixels
    apex_frac: float = 0.5  # where the apex (the hold's start) sits between onset and offset, hold excluded
    side: str = "both"  # "both" | "left" | "right"
    hold_s: float = 0.0  # the movement stays at its peak this long (part of duration_s)


@dataclass
class PlantedBlink:
    start_s: float
    duration_s: float  # lids closing and opening again
    closure: float = 1.0  # 1 closes the eyes fully; 0.3 is a partial blink
    side: str = "both"  # "both" | "left" | "right" (one eye)


# Distractors a spec can draw (ClipSpec field -> what one of them is); each is written to the truth's
# "distractors" with its kind, first and last frame, never as an event.
DISTRACTORS = {
    "blinks": "full blink, 0.1-0.3 s",
    "partial_blinks": "partial blink: the upper lids travel 20-80 % of the eye's height, one eye in four",
    "blink_bursts": "two or three blinks (partial or full) 0.15-0.3 s apart",
    "gaze_shifts": "a glance: the irises jump sideways (or down / up, the lids following) and back after 0.15-1.2 s",
    "speech": "an utterance of 0.4-2.5 s: the lower lip and jaw drop and rise 3-6 times a second",
    "head_moves": "a quick shift and tilt of the head, out and back in 0.3-0.8 s",
    "head_turns": "a turn or a nod in depth (the face 4-12 % narrower or shorter), out and back in 0.4-1.2 s",
    "flicker": "lighting flicker: brightness modulated 2-6 % at 5-15 Hz for 0.5-2 s",
}


@dataclass
class ClipSpec:
    photo: str = "astronaut.jpg"  # a path, or the name of a photo in mex/assets/faces
    fps: float = 30.0
    seconds: float = 10.0
    size: tuple[int, int] = (640, 480)  # width, height
    events: list[PlantedEvent] | int = 4  # explicit events, or how many to draw with `seed`
    kinds: tuple[str, ...] = tuple(KINDS)
    duration_s: tuple[float, float] = (1 / 25, 1 / 3)  # range drawn from, onset -> offset
    amplitude_px: tuple[float, float] = (1.0, 3.0)
    blinks: list[PlantedBlink] | int = 0  # explicit blinks, or how many full closures of 0.1-0.3 s to draw
    partial_blinks: int = 0  # distractors drawn with `seed` (see DISTRACTORS)
    blink_bursts: int = 0
    gaze_shifts: int = 0
    speech: int = 0
    head_moves: int = 0
    head_turns: int = 0
    flicker: int = 0
    head_motion: float = 0.0  # 0 still; 1 gentle drift of about +-8 px, +-2 deg, +-2 % scale
    turn: float = 0.0  # by the last frame the face is this fraction narrower (a slow turn in depth, not a similarity)
    light: float = 0.0  # by the last frame light from one side brightens the face's edges by this many gray levels
    contrast: float = 1.0  # the photo's contrast about its mean (0.5: a dim, flat face as in database crops)
    noise: float = 1.5  # sensor noise, gray-level sigma
    jpeg_quality: int | None = None  # per-frame JPEG round trip (None: off)
    face_px: float = 120.0  # brow-to-lower-lip height of the face in the frame
    second_face: str | None = None  # photo of a smaller, still face pasted in a corner (largest-face tests)
    mirror: bool = False  # the photo flipped left-right (another face from the same photo)
    seed: int = 0


def photo_path(photo: str | Path) -> Path:
    path = Path(photo)
    return path if path.exists() else FACES / str(photo)


@functools.lru_cache(maxsize=8)
def keypoints(photo: str) -> dict[str, np.ndarray]:
    """The named landmarks of a still photo (mediapipe once per photo, cached; a table for the shipped ones)."""
    path = photo_path(photo)
    try:
        import mediapipe as mp
    except ImportError:
        if path.name not in _SHIPPED_KEYPOINTS:
            raise RuntimeError(f"mediapipe is needed to find the face in {path}") from None
        return {k: np.array(v, np.float32) for k, v in _SHIPPED_KEYPOINTS[path.name].items()}
    img = cv2.imread(str(path))
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        found = mesh.process(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).multi_face_landmarks
    if not found:
        raise RuntimeError(f"no face found in {path}")
    lm = found[0].landmark
    h, w = img.shape[:2]
    return {k: np.array([lm[i].x * w, lm[i].y * h], np.float32) for k, i in KEYPOINTS.items()}


@functools.lru_cache(maxsize=8)
def _photo(photo: str) -> np.ndarray:
    img = cv2.imread(str(photo_path(photo)), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(photo_path(photo))
    return img


class _Bump:
    """A smooth local displacement: amplitude * direction * anisotropic Gaussian, in photo pixels."""

    def __init__(self, center, direction, sigma_along, sigma_across, axis, shape):
        h, w = shape
        r = 3 * max(sigma_along, sigma_across)
        x0, y0 = max(0, int(center[0] - r)), max(0, int(center[1] - r))
        x1, y1 = min(w, int(center[0] + r) + 1), min(h, int(center[1] + r) + 1)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xs - center[0], ys - center[1]
        a = dx * axis[0] + dy * axis[1]  # along the eye line
        b = -dx * axis[1] + dy * axis[0]  # across it
        g = np.exp(-0.5 * ((a / sigma_along) ** 2 + (b / sigma_across) ** 2)).astype(np.float32)
        self.box = (x0, y0, x1, y1)
        self.fx, self.fy = g * direction[0], g * direction[1]


class _Warp:
    """One planted movement: bumps scaled over time by a raised-cosine rise from onset to apex, a hold
    at the peak up to `hold_end` (the apex itself when there is no hold) and a raised-cosine fall to offset."""

    def __init__(self, bumps, onset, apex, offset, peak, hold_end=None):
        self.bumps, self.onset, self.apex, self.offset, self.peak = bumps, onset, apex, offset, peak
        self.hold_end = apex if hold_end is None else hold_end

    def amplitude(self, i: int) -> float:
        if i <= self.onset or i >= self.offset:
            return 0.0
        if i <= self.apex:
            return self.peak * 0.5 * (1 - math.cos(math.pi * (i - self.onset) / (self.apex - self.onset)))
        if i <= self.hold_end:
            return self.peak
        return self.peak * 0.5 * (1 + math.cos(math.pi * (i - self.hold_end) / (self.offset - self.hold_end)))


class _Utterance(_Warp):
    """Speech: syllables of |sin| shape (the mouth opens and closes `rate` times a second) under a
    raised-cosine envelope over the utterance."""

    def __init__(self, bumps, onset, offset, peak, rate_per_frame):
        super().__init__(bumps, onset, onset + 1, offset, peak)
        self.rate = rate_per_frame

    def amplitude(self, i: int) -> float:
        if i <= self.onset or i >= self.offset:
            return 0.0
        u = (i - self.onset) / (self.offset - self.onset)
        return self.peak * math.sin(math.pi * u) ** 0.5 * abs(math.sin(math.pi * self.rate * (i - self.onset)))


class _Face:
    """Geometry of the photo's face: eye axis, up vector, inter-ocular distance, centre."""

    def __init__(self, kp: dict[str, np.ndarray]):
        self.kp = kp
        left = (kp["eye_l_out"] + kp["eye_l_in"]) / 2
        right = (kp["eye_r_out"] + kp["eye_r_in"]) / 2
        self.iod = float(np.linalg.norm(right - left))
        self.axis = (right - left) / self.iod  # image-left eye -> image-right eye
        self.up = np.array([self.axis[1], -self.axis[0]], np.float32)
        self.center = (left + right + kp["lip_lo"]) / 3
        brow = (kp["brow_l"] + kp["brow_r"]) / 2
        self.height = float(np.dot(kp["lip_lo"] - brow, -self.up))  # brow -> lower lip


def _event_bumps(face: _Face, kind: str, side: str, shape) -> list[_Bump]:
    kp, up, ax, iod = face.kp, face.up, face.axis, face.iod
    outward = {"l": -ax, "r": ax}
    bumps = []
    for s in _SIDES[side]:
        if kind == "brow_raise":
            for name in (f"brow_{s}", f"brow_{s}_in"):
                bumps.append(_Bump(kp[name], up, 0.22 * iod, 0.14 * iod, ax, shape))
        elif kind == "brow_lower":
            d = -up * 0.8 - outward[s] * 0.6
            bumps.append(_Bump(kp[f"brow_{s}_in"], d / np.linalg.norm(d), 0.2 * iod, 0.14 * iod, ax, shape))
        elif kind == "eyelid_tighten":
            bumps.append(_Bump(kp[f"lid_{s}_lo"], up, 0.14 * iod, 0.06 * iod, ax, shape))
        elif kind in ("lip_corner_pull", "lip_corner_depress"):
            d = outward[s] * 0.7 + up * (0.7 if kind == "lip_corner_pull" else -0.7)
            bumps.append(_Bump(kp[f"mouth_{s}"], d / np.linalg.norm(d), 0.15 * iod, 0.12 * iod, ax, shape))
        else:
            raise ValueError(f"unknown micro-expression kind {kind!r}; known: {sorted(KINDS)}")
    return bumps


_SIDES = {"both": ("l", "r"), "left": ("l",), "right": ("r",)}


def _eye(face: _Face, s: str) -> tuple[np.ndarray, float, float]:
    """Centre, opening (lid to lid) and width (corner to corner) of one eye, photo px."""
    kp = face.kp
    center = (kp[f"lid_{s}_up"] + kp[f"lid_{s}_lo"]) / 2
    return (center, float(np.linalg.norm(kp[f"lid_{s}_lo"] - kp[f"lid_{s}_up"])),
            float(np.linalg.norm(kp[f"eye_{s}_out"] - kp[f"eye_{s}_in"])))


def _blink_bumps(face: _Face, shape, side: str = "both") -> list[_Bump]:
    """Upper lids slide down over the eye: amplitude 1 = fully closed (the lid travels the eye's height)."""
    bumps = []
    for s in _SIDES[side]:
        center, opening, width = _eye(face, s)
        bumps.append(_Bump(center, -face.up * opening * 1.3, 0.55 * width, 0.9 * opening, face.axis, shape))
    return bumps


def _gaze_bumps(face: _Face, shape, direction: str) -> list[_Bump]:
    """Both irises move together: sideways by a quarter of the eye's width (the skin around the eye
    barely moves), or down / up by a third of its opening with the lids following (a wider bump)."""
    bumps = []
    for s in ("l", "r"):
        center, opening, width = _eye(face, s)
        if direction in ("left", "right"):
            d = face.axis * (0.25 * width) * (1 if direction == "right" else -1)
            bumps.append(_Bump(center, d, 0.2 * width, 0.45 * opening, face.axis, shape))
        else:
            d = -face.up * (0.35 * opening) * (1 if direction == "down" else -1)
            bumps.append(_Bump(center, d, 0.5 * width, 1.0 * opening, face.axis, shape))
    return bumps


def _speech_bumps(face: _Face, shape) -> list[_Bump]:
    """The lower lip and the jaw drop (a broad bump: the chin moves with it), the upper lip rises a little."""
    kp, up, iod = face.kp, face.up, face.iod
    return [_Bump(kp["lip_lo"] - up * 0.15 * iod, -up, 0.35 * iod, 0.3 * iod, face.axis, shape),
            _Bump(kp["lip_up"], up * 0.25, 0.25 * iod, 0.08 * iod, face.axis, shape)]


def _frames(seconds: float, fps: float) -> int:
    return int(round(seconds * fps))


def _photo_and_face(spec: ClipSpec) -> tuple[np.ndarray, _Face]:
    """The spec's photo (contrast and mirror applied) and its face's geometry."""
    photo = _photo(str(spec.photo))
    if spec.contrast != 1.0:
        mean = photo.mean()
        photo = np.clip(mean + spec.contrast * (photo - mean), 0, 255).astype(np.uint8)
    kp = keypoints(str(spec.photo))
    if spec.mirror:  # image-left becomes image-right: flip x and swap the _l / _r names
        photo = np.ascontiguousarray(photo[:, ::-1])
        width = photo.shape[1]
        swap = {"_l": "_r", "_r": "_l"}
        kp = {re.sub(r"_[lr](?=_|$)", lambda m: swap[m.group()], k): np.array([width - v[0], v[1]], np.float32)
              for k, v in kp.items()}
    return photo, _Face(kp)


class _Plan:
    """Everything a spec decides before the first frame: warps, head path, ground truth. Events are
    drawn first, then each kind of distractor in turn, then the drift, all from one generator seeded
    by the spec (the same spec always plans the same clip)."""

    def __init__(self, spec: ClipSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.n = _frames(spec.seconds, spec.fps)
        self.photo, self.face = _photo_and_face(spec)
        self.shape = self.photo.shape[:2]
        self.scale = spec.face_px / self.face.height  # photo px -> frame px
        self.busy: list[tuple[float, float]] = []  # seconds already taken by something planted (events first)
        self.warps: list[_Warp] = []
        self.events: list[dict] = []
        self.distractors: list[dict] = []
        self.head_moves = []  # (start frame, end frame, dx px, dy px, rotation deg)
        self.turns = []  # (start frame, end frame, horizontal factor, vertical factor) at the peak
        self.flickers = []  # (start frame, end frame, relative amplitude, cycles per frame)
        self._plant_events()
        self._plant_head_moves()
        self._plant_blinks()
        self._plant_gaze_shifts()
        self._plant_speech()
        self._plant_head_turns()
        self._plant_flicker()
        # slow drift: two sinusoids per degree of freedom with random phases
        self.drift = self.rng.uniform(0, 2 * math.pi, size=(4, 2)), self.rng.uniform(0.08, 0.5, size=(4, 2))

    def _free_slot(self, length: float, margin: float) -> float | None:
        """A start time (s) for something `length` long, `margin` away from everything planted so far."""
        seconds = self.spec.seconds
        if seconds - length - 1.6 <= 0:
            return None
        for _ in range(200):  # the first second stays neutral: spotters learn the noise level there
            t0 = self.rng.uniform(1.0, seconds - length - 0.6)
            if all(t0 + length + margin < a or t0 > b + margin for a, b in self.busy):
                self.busy.append((t0, t0 + length))
                return t0
        return None

    def _slot(self, kind: str, length: float, margin: float = 0.5, **extra) -> tuple[int, int] | None:
        """A free slot for a distractor, in frames, written to the truth."""
        t0 = self._free_slot(length, margin)
        if t0 is None:
            return None
        a, b = _frames(t0, self.spec.fps), _frames(t0 + length, self.spec.fps)
        b = max(a + 2, b)
        self.distractors.append({"kind": kind, "start": a, "end": b, **extra})
        return a, b

    def _blink(self, kind: str, b: PlantedBlink) -> None:
        a = _frames(b.start_s, self.spec.fps)
        e = max(a + 2, _frames(b.start_s + b.duration_s, self.spec.fps))
        apex = a + max(1, round((e - a) * 0.4))  # closing is faster than opening
        self.warps.append(_Warp(_blink_bumps(self.face, self.shape, b.side), a, min(apex, e - 1), e, b.closure))
        self.distractors.append({"kind": kind, "start": a, "end": e, "closure": round(b.closure, 3),
                                 "side": b.side})

    def _plant_events(self) -> None:
        spec, rng, fps = self.spec, self.rng, self.spec.fps
        planted = spec.events
        if isinstance(planted, int):
            drawn = []
            for _ in range(planted):
                dur = float(rng.uniform(*spec.duration_s))
                t0 = self._free_slot(dur, 0.7)
                if t0 is None:
                    break
                drawn.append(PlantedEvent(
                    kind=str(rng.choice(spec.kinds)), onset_s=t0, duration_s=dur,
                    amplitude_px=float(rng.uniform(*spec.amplitude_px)), apex_frac=float(rng.uniform(0.35, 0.65)),
                    side=str(rng.choice(["both", "both", "left", "right"]))))
            planted = drawn
        for ev in sorted(planted, key=lambda e: e.onset_s):
            onset = _frames(ev.onset_s, fps)
            offset = max(onset + 2, _frames(ev.onset_s + ev.duration_s, fps))  # at least one moving frame
            hold = _frames(ev.hold_s, fps)
            start = min(offset - 1, max(onset + 1, onset + round((offset - onset - hold) * ev.apex_frac)))
            end = min(offset - 1, start + hold)  # the hold: the peak from frame `start` to `end`
            peak = ev.amplitude_px / self.scale
            bumps = _event_bumps(self.face, ev.kind, ev.side, self.shape)
            self.warps.append(_Warp(bumps, onset, start, offset, peak, hold_end=end))
            # the apex of a held movement is the hold's middle frame
            self.events.append({"onset": onset, "apex": (start + end) // 2, "apex_span": [start, end],
                                "offset": offset, "region": KINDS[ev.kind], "kind": ev.kind, "side": ev.side,
                                "amplitude_px": round(ev.amplitude_px, 3)})

    def _plant_head_moves(self) -> None:
        spec, rng = self.spec, self.rng
        for _ in range(spec.head_moves):
            got = self._slot("head_move", rng.uniform(0.3, 0.8))
            if got is None:
                break
            ang, mag = rng.uniform(0, 2 * math.pi), rng.uniform(6, 15)
            self.head_moves.append((*got, mag * math.cos(ang), mag * math.sin(ang), rng.uniform(-3, 3)))

    def _plant_blinks(self) -> None:
        spec, rng = self.spec, self.rng
        blinks = spec.blinks
        if isinstance(blinks, int):
            drawn = []
            for _ in range(blinks):
                length = rng.uniform(0.1, 0.3)
                t0 = self._free_slot(length, 0.5)
                if t0 is None:
                    break
                drawn.append(PlantedBlink(t0, length))
            blinks = drawn
        for b in blinks:
            self._blink("blink" if b.closure >= 1 else "partial_blink", b)
        for _ in range(spec.partial_blinks):
            length = rng.uniform(0.1, 0.25)
            t0 = self._free_slot(length, 0.5)
            if t0 is None:
                break
            side = str(rng.choice(["left", "right"])) if rng.random() < 0.25 else "both"
            self._blink("partial_blink", PlantedBlink(t0, length, float(rng.uniform(0.2, 0.8)), side))
        for _ in range(spec.blink_bursts):
            count = int(rng.integers(2, 4))
            lengths = rng.uniform(0.1, 0.2, count)
            gaps = rng.uniform(0.15, 0.3, count - 1)
            t0 = self._free_slot(float(lengths.sum() + gaps.sum()), 0.5)
            if t0 is None:
                break
            for k in range(count):
                start = t0 + float(lengths[:k].sum() + gaps[:k].sum())
                closure = float(min(1.0, rng.uniform(0.3, 1.3)))
                self._blink("blink_burst", PlantedBlink(start, float(lengths[k]), closure))

    def _plant_gaze_shifts(self) -> None:
        spec, rng, fps = self.spec, self.rng, self.spec.fps
        for _ in range(spec.gaze_shifts):
            saccade, hold = rng.uniform(0.03, 0.06), rng.uniform(0.15, 1.2)
            direction = str(rng.choice(["left", "right", "left", "right", "down", "up"]))
            got = self._slot("gaze", 2 * saccade + hold, direction=direction)
            if got is None:
                break
            a, b = got
            jump = max(1, _frames(saccade, fps))
            self.warps.append(_Warp(_gaze_bumps(self.face, self.shape, direction), a, a + jump, b, 1.0,
                                    hold_end=max(a + jump, b - jump)))

    def _plant_speech(self) -> None:
        spec, rng, fps = self.spec, self.rng, self.spec.fps
        for _ in range(spec.speech):
            got = self._slot("speech", rng.uniform(0.4, 2.5))
            if got is None:
                break
            rate = rng.uniform(3, 6) / fps
            self.warps.append(_Utterance(_speech_bumps(self.face, self.shape), *got,
                                         rng.uniform(1.5, 4.0) / self.scale, rate))

    def _plant_head_turns(self) -> None:
        spec, rng = self.spec, self.rng
        for _ in range(spec.head_turns):
            nod = rng.random() < 0.4
            got = self._slot("nod" if nod else "head_turn", rng.uniform(0.4, 1.2))
            if got is None:
                break
            f = 1 - rng.uniform(0.04, 0.12)
            self.turns.append((*got, 1.0, f) if nod else (*got, f, 1.0))

    def _plant_flicker(self) -> None:
        spec, rng, fps = self.spec, self.rng, self.spec.fps
        for _ in range(spec.flicker):
            got = self._slot("flicker", rng.uniform(0.5, 2.0))
            if got is None:
                break
            self.flickers.append((*got, rng.uniform(0.02, 0.06), rng.uniform(5, 15) / fps))

    def head_pose(self, i: int) -> tuple[float, float, float, float]:
        """dx, dy (frame px), rotation (deg), log-scale of the head at frame i."""
        t, hm = i / self.spec.fps, self.spec.head_motion
        phase, freq = self.drift
        wave = [0.6 * math.sin(2 * math.pi * freq[k, 0] * t + phase[k, 0])
                + 0.4 * math.sin(2 * math.pi * freq[k, 1] * t + phase[k, 1]) for k in range(4)]
        dx, dy, rot, logs = 8 * hm * wave[0], 6 * hm * wave[1], 2 * hm * wave[2], 0.02 * hm * wave[3]
        for a, b, mx, my, mr in self.head_moves:
            if a < i < b:  # out and back (a nod or a glance), raised-cosine
                w = 0.5 * (1 - math.cos(2 * math.pi * (i - a) / (b - a)))
                dx, dy, rot = dx + w * mx, dy + w * my, rot + w * mr
        return dx, dy, rot, logs

    def foreshortening(self, i: int) -> tuple[float, float]:
        """Horizontal and vertical scale of the face about its centre at frame i (a turn, a nod)."""
        sx, sy = 1 - self.spec.turn * i / max(1, self.n - 1), 1.0
        for a, b, fx, fy in self.turns:
            if a < i < b:  # out and back, raised-cosine
                w = 0.5 * (1 - math.cos(2 * math.pi * (i - a) / (b - a)))
                sx, sy = sx * (1 - w * (1 - fx)), sy * (1 - w * (1 - fy))
        return sx, sy

    def gain(self, i: int) -> float:
        """Brightness factor at frame i (lighting flicker)."""
        g = 1.0
        for a, b, amp, cycles in self.flickers:
            if a <= i < b:
                g *= 1 + amp * math.sin(2 * math.pi * cycles * (i - a))
        return g

    def truth(self) -> dict:
        spec = asdict(self.spec)
        spec["photo"] = str(self.spec.photo)
        return {"fps": self.spec.fps, "frames": self.n, "size": list(self.spec.size),
                "events": self.events, "distractors": self.distractors, "spec": spec}


def _paste_second_face(frame: np.ndarray, photo: str) -> None:
    """A still, smaller face in the top-left corner, so "largest face" has something to choose from."""
    face = _Face(keypoints(photo))
    img = _photo(photo)
    s = 0.45 * frame.shape[0] / 480 * 120 / face.height
    h = int(2.2 * face.height * s)
    m = np.float32([[s, 0, h / 2 - s * face.center[0]], [0, s, h / 2 - s * face.center[1]]])
    frame[:h, :h] = cv2.warpAffine(img, m, (h, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def _warped(plan: _Plan, i: int, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The photo with the local warps active at frame i (the bumps summed into one displacement field)."""
    active = [(warp, warp.amplitude(i)) for warp in plan.warps]
    active = [(warp, a) for warp, a in active if a != 0.0]
    photo = plan.photo
    if not active:
        return photo
    boxes = np.array([b.box for warp, _ in active for b in warp.bumps])
    x0, y0 = boxes[:, :2].min(0)
    x1, y1 = boxes[:, 2:].max(0)
    dx = np.zeros((y1 - y0, x1 - x0), np.float32)
    dy = np.zeros_like(dx)
    for warp, a in active:
        for b in warp.bumps:
            bx0, by0, bx1, by1 = b.box
            dx[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] += a * b.fx
            dy[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] += a * b.fy
    img = photo.copy()
    # backward mapping: the pixel at p shows what was at p - d
    grid_x, grid_y = grid
    img[y0:y1, x0:x1] = cv2.remap(photo, grid_x[y0:y1, x0:x1] - dx, grid_y[y0:y1, x0:x1] - dy,
                                  cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
    return img


def _grid(plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    ph, pw = plan.photo.shape[:2]
    return np.meshgrid(np.arange(pw, dtype=np.float32), np.arange(ph, dtype=np.float32))


def _pose(plan: _Plan, i: int, cx: float, cy: float) -> np.ndarray:
    """2x3 photo -> frame transform at frame i: the photo's face centre to (cx, cy), then the head's own motion."""
    mx, my, rot, logs = plan.head_pose(i)
    m = cv2.getRotationMatrix2D((float(plan.face.center[0]), float(plan.face.center[1])), rot,
                                plan.scale * math.exp(logs))
    m[:, 2] += np.array([cx + mx, cy + my]) - plan.face.center
    sx, sy = plan.foreshortening(i)  # a turn in depth: narrower (or shorter) about the face's centre
    m[0] = sx * m[0] + np.array([0, 0, (1 - sx) * (cx + mx)])
    m[1] = sy * m[1] + np.array([0, 0, (1 - sy) * (cy + my)])
    return m


def _noise_pool(seed: int, noise: float, w: int, h: int):
    """Sensor noise is drawn once as a field a little larger than the frame; each frame adds a random
    window of it (drawing 640x480x3 normals per frame is slow)."""
    rng = np.random.default_rng(seed + 1)
    return rng, np.round(rng.normal(0, noise, (h + 64, w + 64, 3))).astype(np.int16)


def _sensor(frame: np.ndarray, noise: float, jpeg_quality: int | None, rng, pool) -> np.ndarray:
    """Sensor noise, then the JPEG round trip."""
    h, w = frame.shape[:2]
    if noise > 0:
        oy, ox = rng.integers(0, 64, size=2)
        frame = cv2.add(frame, pool[oy:oy + h, ox:ox + w], dtype=cv2.CV_8U)
    if jpeg_quality:
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        frame = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return frame


def render(spec: ClipSpec | MultiClipSpec) -> Iterator[np.ndarray]:
    """The clip's frames, BGR uint8 (H, W, 3), in order."""
    if isinstance(spec, MultiClipSpec):
        yield from _render_multi(spec)
        return
    plan = _Plan(spec)
    w, h = spec.size
    grid = _grid(plan)
    rng, pool = _noise_pool(spec.seed, spec.noise, w, h)
    for i in range(plan.n):
        frame = cv2.warpAffine(_warped(plan, i, grid), _pose(plan, i, w / 2, h / 2), (w, h),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        if spec.second_face:
            _paste_second_face(frame, spec.second_face)
        if spec.light:
            late = i / max(1, plan.n - 1)  # the slow changes grow linearly through the clip
            ramp = np.linspace(-spec.light * late, spec.light * late, w, dtype=np.float32)[None, :, None]
            frame = np.clip(frame + ramp, 0, 255).astype(np.uint8)
        gain = plan.gain(i)
        if gain != 1.0:
            frame = cv2.convertScaleAbs(frame, alpha=gain)
        yield _sensor(frame, spec.noise, spec.jpeg_quality, rng, pool)


@dataclass
class PlacedFace:
    """One person in a multi-face clip: what happens on the face (a ClipSpec: photo, mirror, contrast,
    events, distractors, head motion, face size, seed; its fps, seconds, size, noise and JPEG are the
    clip's; light and second_face are single-face only) and where the face is."""
    face: ClipSpec
    # (seconds, x, y): the face centre as fractions of the frame's width and height, linear in between and
    # held before the first and after the last; beyond 0..1 the face is out of the frame
    path: tuple[tuple[float, float, float], ...] = ((0.0, 0.5, 0.5),)
    depth: int = 0  # a face with a larger depth is nearer: drawn over the others where they overlap


@dataclass
class MultiClipSpec:
    """Several faces in one frame over a plain background, each with its own planted events and
    distractors (truth per face: every event and distractor carries `face`, the index in `faces`)."""
    faces: list[PlacedFace]
    fps: float = 30.0
    seconds: float = 10.0
    size: tuple[int, int] = (960, 540)  # width, height
    noise: float = 1.5
    jpeg_quality: int | None = None
    seed: int = 0  # the background and the sensor noise; each face draws from its own ClipSpec's seed


# a face's head in photo coordinates: an ellipse about the face centre, in face heights (brow -> lower
# lip): half-width, half-height, and how far above the centre it sits (forehead and hair)
HEAD_ELLIPSE = (1.05, 1.35, 0.25)


class _Placed:
    """A face of a multi-face clip: its plan, its path in frame pixels and its head mask (photo pixels)."""

    def __init__(self, placed: PlacedFace, spec: MultiClipSpec):
        self.plan = _Plan(replace(placed.face, fps=spec.fps, seconds=spec.seconds, size=spec.size))
        self.depth = placed.depth
        t, x, y = np.array(placed.path, np.float64).T
        times = np.arange(self.plan.n) / spec.fps
        w, h = spec.size
        self.centre = np.stack([np.interp(times, t, x) * w, np.interp(times, t, y) * h], 1)
        face = self.plan.face
        a, b, lift = HEAD_ELLIPSE
        self.ellipse = (face.center + face.up * lift * face.height, a * face.height, b * face.height)
        (cx, cy), ax, ay = self.ellipse
        mask = np.zeros(self.plan.photo.shape[:2], np.float32)
        angle = math.degrees(math.atan2(face.axis[1], face.axis[0]))
        cv2.ellipse(mask, (round(cx), round(cy)), (round(ax), round(ay)), angle, 0, 360, 1.0, -1, cv2.LINE_AA)
        self.mask = cv2.GaussianBlur(mask, (0, 0), 0.06 * face.height)
        ys, xs = np.nonzero(self.mask > 1e-3)
        self.box = np.array([[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.min(), ys.max()], [xs.max(), ys.max()]],
                            np.float64)  # the mask's corners, photo px

    def pose(self, i: int) -> np.ndarray:
        return _pose(self.plan, i, *self.centre[i])

    def covers(self, m: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Which of the frame points (N, 2) this face's head covers at pose m."""
        inv = cv2.invertAffineTransform(m)
        p = points @ inv[:, :2].T + inv[:, 2] - self.ellipse[0]
        face = self.plan.face
        return ((p @ face.axis) / self.ellipse[1]) ** 2 + ((p @ face.up) / self.ellipse[2]) ** 2 < 1


def _background(spec: MultiClipSpec) -> np.ndarray:
    """A plain wall: a soft vertical gradient with a few broad blotches."""
    w, h = spec.size
    rng = np.random.default_rng(spec.seed)
    low = cv2.resize(rng.uniform(-12, 12, (6, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(150, 110, h, dtype=np.float32)[:, None, None]
    return np.clip(ramp + low + np.array([8, 0, -6], np.float32), 0, 255).astype(np.uint8)


def visibility(spec: MultiClipSpec) -> np.ndarray:
    """(faces, frames): the share of each face's 17 keypoints (eyes, lids, brows, mouth, nose) that is in
    the frame and not behind a nearer face; faces in `spec.faces` order."""
    w, h = spec.size
    faces = [_Placed(p, spec) for p in spec.faces]
    out = np.zeros((len(faces), faces[0].plan.n))
    for i in range(out.shape[1]):
        poses = [f.pose(i) for f in faces]
        for k, f in enumerate(faces):
            kp = np.array(list(f.plan.face.kp.values()), np.float64)
            pts = kp @ poses[k][:, :2].T + poses[k][:, 2]
            seen = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
            for j, g in enumerate(faces):
                if g.depth > f.depth:
                    seen &= ~g.covers(poses[j], pts)
            out[k, i] = seen.mean()
    return out


def _spans(flags: np.ndarray) -> list[list[int]]:
    """[first, last] frame of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return [[int(a), int(b) - 1] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def _render_multi(spec: MultiClipSpec) -> Iterator[np.ndarray]:
    w, h = spec.size
    faces = sorted((_Placed(p, spec) for p in spec.faces), key=lambda f: f.depth)  # farthest drawn first
    grids = [_grid(f.plan) for f in faces]
    wall = _background(spec)
    rng, pool = _noise_pool(spec.seed, spec.noise, w, h)
    for i in range(faces[0].plan.n):
        frame = wall.copy()
        for f, grid in zip(faces, grids):
            m = f.pose(i)
            # only the head's box in the frame is warped and blended
            corners = f.box @ m[:, :2].T + m[:, 2]
            x0, y0 = np.clip(np.floor(corners.min(0)).astype(int), 0, (w, h))
            x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int) + 1, 0, (w, h))
            if x1 <= x0 or y1 <= y0:
                continue
            m[:, 2] -= (x0, y0)
            img = cv2.warpAffine(_warped(f.plan, i, grid), m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT101).astype(np.float32)
            alpha = cv2.warpAffine(f.mask, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)[:, :, None]
            part = frame[y0:y1, x0:x1].astype(np.float32)
            frame[y0:y1, x0:x1] = np.clip(part + alpha * (img * f.plan.gain(i) - part), 0, 255)
        yield _sensor(frame, spec.noise, spec.jpeg_quality, rng, pool)


def truth(spec: ClipSpec | MultiClipSpec) -> dict:
    """The ground truth of a spec without rendering it. A multi-face clip's events and distractors carry
    `face` (the index in `spec.faces`), its events `visible` (the least share of the face seen from onset
    to offset), and `faces` lists each face's photo and the frame spans where at least half of it is seen."""
    if not isinstance(spec, MultiClipSpec):
        return _Plan(spec).truth()
    seen = visibility(spec)
    events, distractors, faces = [], [], []
    for k, placed in enumerate(spec.faces):
        plan = _Placed(placed, spec).plan
        for ev in plan.events:
            events.append({**ev, "face": k, "visible": round(float(seen[k, ev["onset"]:ev["offset"] + 1].min()), 3)})
        distractors += [{**d, "face": k} for d in plan.distractors]
        faces.append({"face": k, "photo": str(placed.face.photo), "mirror": placed.face.mirror,
                      "in_view": _spans(seen[k] >= 0.5)})
    events.sort(key=lambda e: (e["onset"], e["face"]))
    distractors.sort(key=lambda d: (d["start"], d["face"]))
    return {"fps": spec.fps, "frames": seen.shape[1], "size": list(spec.size), "faces": faces,
            "events": events, "distractors": distractors, "spec": asdict(spec)}


def write_clip(path: str | Path, spec: ClipSpec | MultiClipSpec) -> dict:
    """Render `spec` to `path` (.mp4: mp4v, .avi: MJPG) and its ground truth to `<path>.truth.json`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, float(spec.fps), tuple(spec.size))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    try:
        for frame in render(spec):
            writer.write(frame)
    finally:
        writer.release()
    gt = truth(spec)
    truth_path(path).write_text(json.dumps(gt, indent=2) + "\n")
    return gt


def truth_path(clip: str | Path) -> Path:
    return Path(str(clip) + ".truth.json")


def demo_spec(seed: int = 0) -> ClipSpec:
    """The Quickstart demo: 20 s at 30 fps of the astronaut, six micro-expressions, blinks, gentle head motion."""
    return ClipSpec(photo="astronaut.jpg", fps=30.0, seconds=20.0, events=6, duration_s=(0.2, 1 / 3),
                    amplitude_px=(2.0, 3.0), blinks=3, head_motion=0.5, head_moves=1, noise=1.5, seed=seed)


def database_spec(kind: str, fps: float, seed: int = 0, blinks: int = 1) -> ClipSpec:
    """One clip as CASME II, SAMM and SMIC distribute them: the face filling the frame (CASME II's
    `Cropped` frames are about 231x282), from a few frames before the onset to the offset. The movement
    rises over 0.06-0.2 s, holds its peak for 0.04-0.15 s and falls back over 0.1-0.25 s (truth: the
    hold as `apex_span`, its middle frame as `apex`); the clip holds `blinks` blinks of 0.1-0.25 s, one
    per equal share of the clip (full or partial: closing the lids 30-100 %), wherever they fall against
    the movement; the head sways slowly throughout, and turns in depth (the face up to 3 % narrower or wider) and is lit
    from one side (up to 6 gray levels at the face's edges) more and more by the end: changes that no
    registration removes and that grow through the clip, as in real clips."""
    rng = np.random.default_rng(seed)
    lead, rise, hold, fall = (rng.uniform(0, 0.02), rng.uniform(0.06, 0.2),
                              rng.uniform(0.04, 0.15), rng.uniform(0.1, 0.25))
    seconds = lead + rise + hold + fall
    event = PlantedEvent(kind, onset_s=lead, duration_s=rise + hold + fall, amplitude_px=float(rng.uniform(1.5, 3.0)),
                         apex_frac=rise / (rise + fall), side=str(rng.choice(["both", "both", "left", "right"])),
                         hold_s=hold)
    share = seconds / max(1, blinks)
    planted = []
    for k in range(blinks):
        length = min(share, rng.uniform(0.1, 0.25))
        closure = float(min(1.0, rng.uniform(0.3, 1.4)))  # about a third of them full
        planted.append(PlantedBlink(k * share + float(rng.uniform(0, share - length)), float(length), closure))
    return ClipSpec(fps=fps, seconds=seconds + 1 / fps, size=(232, 280), events=[event], blinks=planted,
                    head_motion=1.0, turn=float(rng.uniform(-0.03, 0.03)), light=float(rng.uniform(-6, 6)),
                    noise=1.5, jpeg_quality=90, face_px=150.0, seed=seed)
