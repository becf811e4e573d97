"""Real micro-expressions replayed on a still face photo: the measured motion of a CASME II clip laid
onto one of the shipped public-domain photos, as a 640 x 480 clip for the live path.

The set in `casme2-frames` (see its README) holds, per real clip, the dense Farneback flow from the
onset to every second frame up to the offset (`flow48`: 48 x 48, u in units of the database crop's
width, v of its height; drift and noise included). A replay is:

- 1 s of the still onset face (`LEAD_S`);
- the clip from onset to offset, every frame (the fields interpolated linearly between the stored
  ones, time scaled from the database's 200 fps to the replay's fps);
- a tail (`TAILS`): `hold` keeps the offset's field for 1 s (the face stays where the clip ends, as
  real faces do at the sheet's offset), `return` fades the field to zero over 40 frames at 200 fps
  and then shows the still face for 1 s.

The field is laid onto the photo through the recognition crop's framing (realtime/framing.py): the
crop frames a face as CASME II's training crops, which were resized from the database crops to a
square, so crop coordinates 0..1 are the database crop's normalised coordinates. Each photo pixel in
the crop gets the field at its crop position, turned into photo pixels by the inverse of the framing,
faded to zero at the crop's edge; the photo is warped backwards (frame_t(p) = photo(p - f(p))), then
placed in the frame, swayed and given sensor noise as realtime/synth.py does.

    row = read_index(root)[0]
    spec = ReplaySpec(clip_path(root, row), row, tail="return")
    truth(spec)                         # onset / apex / offset frame of the rendered clip, name, label ...
    for bgr in render(spec): ...        # the frames, BGR uint8 (480, 640, 3)

What a replay cannot show: the photo's texture does not change (no wrinkles, no shading of a real
muscle, no lighting change), only its geometry moves.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from mex.features import CROP_SIZE

from . import synth
from .framing import TARGET_IDS, fit_framing

DB_FPS = 200.0  # CASME II's frame rate: the unit of the set's `t`, apex_t and offset_t
LEAD_S = 1.0  # still onset face before the clip
TAIL_S = 1.0  # still face after it (held offset, or the onset after the fade)
FADE_S = 40 / DB_FPS  # the `return` tail's fade of the field to zero
TAILS = {
    "hold": "the offset's field held for 1 s: the face stays where the clip ends",
    "return": "the field faded to zero over 40 frames (at 200 fps), then 1 s of the still face",
}
PHOTOS = ("astronaut.jpg", "grace_hopper.jpg")  # frontal faces (camera.png is turned and small)
EDGE = 0.08  # the field fades to zero over this share of the crop at its edges
INDEX_COLUMNS = ("name", "subject", "onset", "apex", "offset", "apex_t", "offset_t", "label")

# The rigid face-mesh landmarks fit_framing uses, found by mediapipe 0.10.21 (static image) on the shipped
# photos, photo px: replays of them need no mediapipe.
_SHIPPED_RIGID = {
    "astronaut.jpg": {33: (194.6, 100.8), 133: (213.8, 103.6), 362: (237.3, 104.8), 263: (256.5, 104.3),
                      168: (225.8, 100.9), 6: (225.5, 106.3), 197: (225.2, 111.3), 195: (225.0, 115.9),
                      5: (224.7, 120.9), 4: (224.3, 126.9), 1: (224.0, 131.1), 98: (211.1, 129.7),
                      327: (237.1, 131.2)},
    "camera.png": {33: (227.2, 145.8), 133: (239.8, 148.6), 362: (251.7, 149.4), 263: (255.9, 148.6),
                   168: (251.8, 149.0), 6: (252.5, 153.6), 197: (253.6, 157.6), 195: (254.7, 161.2),
                   5: (256.0, 165.0), 4: (256.7, 169.1), 1: (255.3, 171.7), 98: (238.3, 170.7),
                   327: (251.0, 171.5)},
    "grace_hopper.jpg": {33: (201.6, 194.2), 133: (240.0, 193.2), 362: (288.4, 190.5), 263: (326.4, 187.3),
                         168: (264.3, 185.2), 6: (265.0, 195.5), 197: (265.6, 205.2), 195: (266.2, 214.5),
                         5: (266.8, 224.8), 4: (267.6, 237.0), 1: (268.1, 245.6), 98: (242.2, 249.7),
                         327: (293.2, 246.9)},
}


class ReplayError(ValueError):
    """A casme2-frames folder, row or clip file that cannot be replayed (the message names it)."""


@dataclass
class ReplaySpec:
    clip: Path  # clips/NAME.npz of a casme2-frames folder
    row: dict  # its index.csv row
    photo: str = "astronaut.jpg"  # a path, or the name of a photo in mex/assets/faces
    tail: str = "hold"  # a key of TAILS
    fps: float = DB_FPS
    sway: float = 0.0  # head motion as realtime.synth's head_motion (1: about +-8 px, +-2 deg); 0 still
    noise: float = 1.0  # sensor noise, grey-level sd, new on every frame
    face_px: float = 120.0  # brow-to-lower-lip height of the face in the frame
    size: tuple[int, int] = (640, 480)  # width, height
    seed: int = 0


# ------------------------------------------------------------------------------------------- the set
def read_index(root: str | Path) -> list[dict]:
    """The rows of ROOT/index.csv, checked: the columns a replay needs, integer frames, offset after apex."""
    path = Path(root) / "index.csv"
    if not path.is_file():
        raise ReplayError(f"{path}: no index.csv (is {root} a casme2-frames folder?)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in INDEX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ReplayError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    for k, r in enumerate(rows, start=2):
        try:
            for c in ("onset", "apex", "offset", "apex_t", "offset_t"):
                r[c] = int(r[c])
        except ValueError:
            raise ReplayError(f"{path} line {k} ({r['name']}): onset, apex, offset, apex_t and offset_t must be "
                              "whole frame numbers") from None
        if not 0 <= r["apex_t"] <= r["offset_t"] or r["offset_t"] < 1:  # the sheet puts a few apexes at the onset
            raise ReplayError(f"{path} line {k} ({r['name']}): needs 0 <= apex_t ({r['apex_t']}) <= offset_t "
                              f"({r['offset_t']}) and offset_t >= 1")
        r["label"] = int(r["label"]) if r["label"].strip() else None
    return rows


def clip_path(root: str | Path, row: dict) -> Path:
    return Path(root) / "clips" / f"{row['name']}.npz"


def split_rows(rows: list[dict], split: str) -> list[dict]:
    """`tune`: the clips of the first 10 subjects in sorted order; `check`: the other subjects'; `all`."""
    subjects = sorted({r["subject"] for r in rows})
    if split == "all":
        keep = set(subjects)
    elif split == "tune":
        keep = set(subjects[:10])
    elif split == "check":
        keep = set(subjects[10:])
    else:
        raise ReplayError(f"split {split!r}: one of tune, check, all")
    return [r for r in rows if r["subject"] in keep]


@dataclass
class ClipFields:
    t: np.ndarray  # (n,) frames after the onset at DB_FPS
    flow: np.ndarray  # (n, 2, 48, 48) float32: u in crop widths, v in crop heights
    x: np.ndarray  # (n, 3, 28, 28) uint8 encodings


def load_fields(path: str | Path) -> ClipFields:
    path = Path(path)
    try:
        with np.load(path) as z:
            t, flow, x = np.asarray(z["t"]), z["flow48"].astype(np.float32), np.asarray(z["x"])
    except (OSError, KeyError, ValueError) as e:
        raise ReplayError(f"{path}: not a casme2-frames clip (needs t, x, flow48): {e}") from None
    if flow.ndim != 4 or flow.shape[1] != 2 or len(t) != len(flow) or len(t) < 2 or t[0] != 0 \
            or np.any(np.diff(t) <= 0):
        raise ReplayError(f"{path}: flow48 must be (n, 2, H, W) with t (n,) rising from 0; "
                          f"got flow48 {flow.shape}, t {t.shape}")
    if not np.isfinite(flow).all():
        raise ReplayError(f"{path}: flow48 holds NaN or infinity")
    return ClipFields(t=t.astype(np.int64), flow=flow, x=x)


# ------------------------------------------------------------------------------------------ timing
def _frames(seconds: float, fps: float) -> int:
    return int(round(seconds * fps))


def timeline(spec: ReplaySpec) -> np.ndarray:
    """Per rendered frame, (time into the clip in database frames, weight of the field): the still lead
    at (0, 0), the clip, then the tail."""
    fps, row = spec.fps, spec.row
    if spec.tail not in TAILS:
        raise ReplayError(f"tail {spec.tail!r}: one of {', '.join(TAILS)}")
    lead, clip = _frames(LEAD_S, fps), _frames(row["offset_t"] / DB_FPS, fps)
    t = [np.zeros(lead), np.arange(clip + 1) * DB_FPS / fps]
    w = [np.zeros(lead), np.ones(clip + 1)]
    end = float(row["offset_t"])
    if spec.tail == "hold":
        t.append(np.full(_frames(TAIL_S, fps), end))
        w.append(np.ones(_frames(TAIL_S, fps)))
    else:
        fade = max(1, _frames(FADE_S, fps))
        t += [np.full(fade, end), np.full(_frames(TAIL_S, fps), end)]
        w += [1.0 - np.arange(1, fade + 1) / fade, np.zeros(_frames(TAIL_S, fps))]
    return np.stack([np.concatenate(t), np.concatenate(w)], 1)


def truth(spec: ReplaySpec) -> dict:
    """The replay's truth: onset, apex and offset as frames of the rendered clip, and who and what it is."""
    row, fps = spec.row, spec.fps
    lead = _frames(LEAD_S, fps)
    return {"name": row["name"], "subject": row["subject"], "emotion": row.get("emotion"), "label": row["label"],
            "tail": spec.tail, "photo": str(spec.photo), "fps": fps, "frames": len(timeline(spec)),
            "onset": lead, "apex": lead + _frames(row["apex_t"] / DB_FPS, fps),
            "offset": lead + _frames(row["offset_t"] / DB_FPS, fps)}


def field_at(fields: ClipFields, t: float) -> np.ndarray:
    """(2, H, W) field at time t (database frames), linear between the stored ones, the last one held."""
    k = int(np.searchsorted(fields.t, t, side="right")) - 1
    if k >= len(fields.t) - 1:
        return fields.flow[-1]
    a = (t - fields.t[k]) / (fields.t[k + 1] - fields.t[k])
    return (1 - a) * fields.flow[k] + a * fields.flow[k + 1]


# ---------------------------------------------------------------------------------------- the photo
@functools.lru_cache(maxsize=8)
def photo_framing(photo: str) -> np.ndarray:
    """2x3 photo px -> recognition crop px (CROP_SIZE), as realtime/framing.py frames a face."""
    path = synth.photo_path(photo)
    if path.parent == synth.FACES and path.name in _SHIPPED_RIGID:
        pts = np.zeros((int(TARGET_IDS.max()) + 1, 2))
        for i, xy in _SHIPPED_RIGID[path.name].items():
            pts[i] = xy
        return fit_framing(pts)
    import mediapipe as mp  # another photo: find its face

    img = synth._photo(photo)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        found = mesh.process(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).multi_face_landmarks
    if not found:
        raise ReplayError(f"no face found in {path}")
    h, w = img.shape[:2]
    return fit_framing(np.array([[p.x * w, p.y * h] for p in found[0].landmark]))


class _Layer:
    """Where a 48 x 48 field lands on the photo: the photo box under the crop, each pixel's position in
    the field's grid, the soft edge, and crop units -> photo px."""

    def __init__(self, photo: str, grid: int, shape: tuple[int, int]):
        m = photo_framing(photo)
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0], [CROP_SIZE, 0], [0, CROP_SIZE], [CROP_SIZE, CROP_SIZE]], np.float64)
        box = corners @ inv[:, :2].T + inv[:, 2]
        h, w = shape
        self.x0, self.y0 = np.clip(np.floor(box.min(0)).astype(int), 0, (w, h))
        self.x1, self.y1 = np.clip(np.ceil(box.max(0)).astype(int) + 1, 0, (w, h))
        ys, xs = np.mgrid[self.y0:self.y1, self.x0:self.x1].astype(np.float64)
        cx = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / CROP_SIZE  # normalised crop coordinates
        cy = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / CROP_SIZE
        self.map_x = (cx * grid - 0.5).astype(np.float32)  # the field's cell centres sit at (j + 0.5) / grid
        self.map_y = (cy * grid - 0.5).astype(np.float32)
        near = np.clip(np.minimum.reduce([cx, 1 - cx, cy, 1 - cy]) / EDGE, 0, 1)
        self.weight = (near * near * (3 - 2 * near)).astype(np.float32)  # smoothstep to zero at the edge
        self.to_photo = CROP_SIZE * inv[:, :2]  # (u, v) in crop units -> photo px
        self.xs, self.ys = xs.astype(np.float32), ys.astype(np.float32)

    def warp(self, photo: np.ndarray, f: np.ndarray) -> np.ndarray:
        """The photo's box under the crop moved by the field f (2, grid, grid): pixel p shows what was at p - f(p)."""
        u, v = (cv2.remap(c, self.map_x, self.map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE) for c in f)
        (a, b), (c, d) = self.to_photo
        dx, dy = self.weight * (a * u + b * v), self.weight * (c * u + d * v)
        return cv2.remap(photo, self.xs - dx, self.ys - dy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)

    def place(self, frame: np.ndarray, box: np.ndarray, m: np.ndarray) -> np.ndarray:
        """`frame` (the still photo placed by the 2x3 photo -> frame `m`) with the moved box `box` placed
        over it: only the frame's rectangle under the box is warped again."""
        h, w = frame.shape[:2]
        corners = np.array([[self.x0, self.y0], [self.x1, self.y0], [self.x0, self.y1], [self.x1, self.y1]], np.float64)
        pts = corners @ m[:, :2].T + m[:, 2]
        fx0, fy0 = np.clip(np.floor(pts.min(0)).astype(int), 0, (w, h))
        fx1, fy1 = np.clip(np.ceil(pts.max(0)).astype(int) + 1, 0, (w, h))
        if fx1 <= fx0 or fy1 <= fy0:
            return frame
        # the box's own pixels, framed by m shifted to the rectangle; outside the box the still frame stays
        shifted = m.copy()
        shifted[:, 2] += shifted[:, :2] @ [self.x0, self.y0] - [fx0, fy0]
        part = cv2.warpAffine(box, shifted, (fx1 - fx0, fy1 - fy0), dst=frame[fy0:fy1, fx0:fx1].copy(),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
        out = frame.copy()
        out[fy0:fy1, fx0:fx1] = part
        return out


def _plan(spec: ReplaySpec, frames: int) -> synth._Plan:
    """synth's plan of the photo in the frame: placement, sway, nothing planted."""
    return synth._Plan(synth.ClipSpec(photo=spec.photo, fps=spec.fps, seconds=frames / spec.fps, size=spec.size,
                                      events=[], head_motion=spec.sway, noise=spec.noise, face_px=spec.face_px,
                                      seed=spec.seed))


def crop_framing(spec: ReplaySpec, i: int = 0) -> np.ndarray:
    """2x3 frame px -> recognition crop px (CROP_SIZE) of rendered frame i: where the field was laid."""
    w, h = spec.size
    m = synth._pose(_plan(spec, len(timeline(spec))), i, w / 2, h / 2)
    a = photo_framing(str(spec.photo))
    return a[:, :2] @ cv2.invertAffineTransform(m) + np.hstack([np.zeros((2, 2)), a[:, 2:]])


def render(spec: ReplaySpec, fields: ClipFields | None = None) -> Iterator[np.ndarray]:
    """The replay's frames, BGR uint8 (height, width, 3), in order (`fields`: the clip already loaded)."""
    fields = load_fields(spec.clip) if fields is None else fields
    times = timeline(spec)
    w, h = spec.size
    plan = _plan(spec, len(times))
    layer = _Layer(str(spec.photo), fields.flow.shape[-1], plan.photo.shape[:2])
    rng, pool = synth._noise_pool(spec.seed, spec.noise, w, h)
    pose, base, still = None, None, None
    for i, (t, weight) in enumerate(times):
        m = synth._pose(plan, i, w / 2, h / 2)
        if pose is None or not np.array_equal(m, pose):  # a still head is placed once
            pose, base = m, cv2.warpAffine(plan.photo, m, (w, h), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REFLECT101)
            # the unmoved box goes through the same placing as a moved one: interpolation that differed
            # between still and moving frames would flicker at every start and end of motion
            still = layer.place(base, plan.photo[layer.y0:layer.y1, layer.x0:layer.x1], m)
        frame = still if weight == 0 else layer.place(base, layer.warp(plan.photo, weight * field_at(fields, t)), m)
        yield synth._sensor(frame, spec.noise, None, rng, pool)


def apex_encoding(fields: ClipFields, apex_t: int) -> np.ndarray:
    """The clip's encoding at its annotated apex, float32 (3, 28, 28) in [0, 1] as the model takes it."""
    hit = np.flatnonzero(fields.t == apex_t)
    if not len(hit):
        raise ReplayError(f"no encoding at the annotated apex t = {apex_t} (t holds {fields.t.tolist()})")
    return fields.x[hit[0]].astype(np.float32) / 255.0


def seconds(spec: ReplaySpec) -> float:
    return len(timeline(spec)) / spec.fps

