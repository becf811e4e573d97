"""Face tracking and alignment: Frame -> FaceFrame with an aligned gray crop for spotting and a patch
for recognition (realtime/framing.py: the face framed as in the training crops, from the mesh's rigid
landmarks at each landmark run; cut per frame, so the spotter's window holds it for any frame).

The spotting crop is a similarity transform of the frame that puts the two eye centres (the mean of each
eye's two corners: corners do not move when the eye blinks) at fixed canonical positions, so the
same pixel of the crop is the same place on the face from frame to frame. (A face turned sideways
has its eyes close together; its scale is capped so that the mouth stays inside the crop.)

Cost is what matters at 200 fps, so the mediapipe path works in two modes:
- acquire: face mesh (up to `max_faces`) on the frame scaled to `detect_width`; keeps the largest face.
- track: face mesh (one face, video mode) on a square region around the tracked face, scaled to
  `roi_px`, only every `mesh_every` frames. In between, the last transform is reused and the crop is
  compared with the last checked one; a large change (face gone, fast move) runs the mesh at once.
The eye and mouth positions go through a One Euro filter (Casiez et al. 2012): nearly still when
the head is still, following closely when it moves. Landmark jitter (about 0.1-0.2 px, with
outliers of 1-2 px) would otherwise shake every crop, which the spotter would see as motion.
"""
from __future__ import annotations

import time
import warnings

import cv2
import numpy as np

from realtime import framing
from realtime.packets import Frame, FaceFrame

# canonical eye centres as fractions of the crop size: the crop holds brows to chin
CANONICAL_EYES = np.array([[0.3, 0.36], [0.7, 0.36]], np.float32)
# the mouth may sit at most this low in the crop (a frontal face puts it near 0.77)
MOUTH_LIMIT = 0.86
# face-mesh landmarks: corners of the image-left and image-right eye; inner upper and lower lip
MESH_EYE_CORNERS = ((33, 133), (362, 263))
MESH_MOUTH = (13, 14)


def eye_transform(left: np.ndarray, right: np.ndarray, crop_size: int, mouth: np.ndarray | None = None) -> np.ndarray:
    """2x3 similarity matrix taking the frame's eye centres to the canonical ones in the crop.

    A face turned sideways has its eyes close together: scaled by the eyes alone its mouth would fall
    out of the crop, so the scale is also capped to keep the mouth above MOUTH_LIMIT."""
    dst = CANONICAL_EYES * crop_size
    v, c = right - left, dst[1] - dst[0]
    scale = float(np.hypot(*c) / max(np.hypot(*v), 1e-6))
    if mouth is not None:
        drop = float(np.hypot(*(mouth - (left + right) / 2)))
        scale = min(scale, (MOUTH_LIMIT - CANONICAL_EYES[0, 1]) * crop_size / max(drop, 1e-6))
    angle = float(np.arctan2(c[1], c[0]) - np.arctan2(v[1], v[0]))
    a, b = scale * np.cos(angle), scale * np.sin(angle)
    m = np.array([[a, -b, 0.0], [b, a, 0.0]], np.float64)
    m[:, 2] = dst.mean(0) - m[:, :2] @ ((left + right) / 2)
    return m


def _small(gray: np.ndarray) -> np.ndarray:
    s = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    s -= s.mean()
    return s / (np.linalg.norm(s) + 1e-6)


class OneEuro:
    """One Euro filter: a low-pass whose cutoff rises with speed (jitter removed, lag kept small)."""

    def __init__(self, min_cutoff: float = 0.5, beta: float = 0.1, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t = 0.0

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        dt = t - self.t
        if self.x is None or dt <= 0:
            self.x, self.dx, self.t = x.astype(np.float64), np.zeros(x.shape), t
            return self.x
        dx = (x - self.x) / dt
        self.dx = self.dx + self._alpha(self.d_cutoff, dt) * (dx - self.dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        self.x = self.x + self._alpha(cutoff, dt) * (x - self.x)
        self.t = t
        return self.x

    def reset(self) -> None:
        self.x = None


class _MeshBackend:
    """mediapipe face mesh: acquire on the whole (scaled) frame, track in a region around the face."""

    def __init__(self, max_faces: int, detect_width: int, roi_px: int):
        import mediapipe as mp

        fm = mp.solutions.face_mesh
        self.acquirer = fm.FaceMesh(static_image_mode=True, max_num_faces=max_faces, refine_landmarks=False)
        self.tracker = fm.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False)
        self.detect_width, self.roi_px = detect_width, roi_px
        self.roi: tuple[float, float, float] | None = None  # centre x, centre y, side (frame px)

    def find(self, bgr: np.ndarray) -> np.ndarray | None:
        """(468, 2) frame-pixel landmarks of the tracked (or else the largest) face, or None."""
        if self.roi is not None:
            cx, cy, side = self.roi
            s = self.roi_px / side
            m = np.array([[s, 0, self.roi_px / 2 - s * cx], [0, s, self.roi_px / 2 - s * cy]], np.float32)
            roi = cv2.warpAffine(bgr, m, (self.roi_px, self.roi_px), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT)
            found = self.tracker.process(cv2.cvtColor(roi, cv2.COLOR_BGR2RGB)).multi_face_landmarks
            if found:
                pts = self._points(found[0], self.roi_px, self.roi_px)
                pts = (pts - m[:, 2]) / s
                self._follow(pts)
                return pts
            self.roi = None
        h, w = bgr.shape[:2]
        scale = min(1.0, self.detect_width / w)
        small = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else bgr
        found = self.acquirer.process(cv2.cvtColor(small, cv2.COLOR_BGR2RGB)).multi_face_landmarks
        if not found:
            return None
        faces = [self._points(f, w, h) for f in found]
        pts = max(faces, key=lambda p: np.prod(p.max(0) - p.min(0)))
        self._follow(pts, force=True)
        return pts

    def _follow(self, pts: np.ndarray, force: bool = False) -> None:
        """Move the tracking region only when the face has drifted, so the mesh sees a steady input."""
        lo, hi = pts.min(0), pts.max(0)
        cx, cy = (lo + hi) / 2
        side = 1.8 * float(max(hi - lo))
        if force or self.roi is None:
            self.roi = (cx, cy, side)
            return
        ox, oy, oside = self.roi
        if max(abs(cx - ox), abs(cy - oy)) > 0.1 * oside or abs(side / oside - 1) > 0.15:
            self.roi = (cx, cy, side)

    @staticmethod
    def _points(face, w: int, h: int) -> np.ndarray:
        return np.array([(p.x * w, p.y * h) for p in face.landmark], np.float32)

    def anchors(self, pts: np.ndarray) -> np.ndarray:
        """Left eye, right eye, mouth centres: (3, 2)."""
        (a, b), (c, d) = MESH_EYE_CORNERS
        return np.stack([(pts[a] + pts[b]) / 2, (pts[c] + pts[d]) / 2, (pts[MESH_MOUTH[0]] + pts[MESH_MOUTH[1]]) / 2])

    def framing(self, pts: np.ndarray) -> np.ndarray:
        """frame px -> recognition crop px, from the mesh's rigid landmarks."""
        return framing.fit_framing(pts)

    def forget(self) -> None:
        self.roi = None

    def close(self) -> None:
        self.acquirer.close()
        self.tracker.close()


class _HaarBackend:
    """OpenCV's frontal-face Haar cascade; eyes placed at fixed fractions of the face box."""

    def __init__(self, detect_width: int):
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the cascades out of the main package
            raise RuntimeError(f"the installed OpenCV {cv2.__version__} has no Haar cascade (cv2.CascadeClassifier); "
                               "install mediapipe (pip install 'mex-live[face]') or opencv-contrib-python 4.x")
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        self.detect_width = detect_width

    def find(self, bgr: np.ndarray) -> np.ndarray | None:
        h, w = bgr.shape[:2]
        scale = min(1.0, self.detect_width / w)
        gray = cv2.cvtColor(cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.15, minNeighbors=5, minSize=(24, 24))
        if len(boxes) == 0:
            return None
        x, y, bw, bh = max(boxes, key=lambda b: b[2] * b[3]) / scale
        # box corners, then the two eye centres (typical positions inside a Haar face box)
        return np.array([[x, y], [x + bw, y + bh], [x + 0.3 * bw, y + 0.38 * bh], [x + 0.7 * bw, y + 0.38 * bh]],
                        np.float32)

    def anchors(self, pts: np.ndarray) -> np.ndarray:
        """Left eye, right eye (no mouth from a box): (2, 2)."""
        return pts[2:4]

    def framing(self, pts: np.ndarray) -> np.ndarray:
        """frame px -> recognition crop px, from the two eyes (all a box gives)."""
        return framing.eyes_framing(pts[2], pts[3])

    def forget(self) -> None:
        pass

    def close(self) -> None:
        pass


class FaceTracker:
    """Frame -> FaceFrame: the largest face, its landmarks, an eye-aligned gray crop for spotting and a
    patch for recognition (realtime/framing.py: the face framed as in the training crops).

    States: "face" (tracked), "lost" (missing for less than `lost_s` seconds after being tracked),
    "no_face" (nothing, or missing for longer), "reacquired" (the first frame with a face again).
    """

    def __init__(self, crop_size: int = 128, backend: str = "auto", *, mesh_every: int = 4,
                 detect_width: int = 320, roi_px: int = 256, max_faces: int = 2,
                 min_cutoff_hz: float = 0.5, beta: float = 0.1, lost_s: float = 0.5):
        if backend not in ("auto", "mediapipe", "haar"):
            raise ValueError(f"backend must be auto, mediapipe or haar, not {backend!r}")
        if backend in ("auto", "mediapipe"):
            try:
                self.backend = _MeshBackend(max_faces, detect_width, roi_px)
                backend = "mediapipe"
            except ImportError:
                if backend == "mediapipe":
                    raise
                warnings.warn("mediapipe is not installed: falling back to OpenCV's Haar cascade "
                              "(coarser alignment; pip install 'mex-live[face]')", RuntimeWarning, stacklevel=2)
                backend = "haar"
        if backend == "haar":
            self.backend = _HaarBackend(detect_width)
        self.name = backend
        self.crop_size = crop_size
        self.mesh_every, self.lost_s = mesh_every, lost_s
        self.anchor_filter = OneEuro(min_cutoff_hz, beta)
        self.m: np.ndarray | None = None  # current frame -> crop transform
        self.to_crop: np.ndarray | None = None  # current frame -> recognition crop transform (unsmoothed:
        # a candidate's two crops are cut with one transform, so landmark jitter does not reach the flow)
        self.landmarks: np.ndarray | None = None
        self.reference: np.ndarray | None = None  # small normalised crop at the last landmark check
        self.since_check = 0
        self.state = "no_face"
        self.missing_since: float | None = None
        self.seen = False

    def track(self, frame: Frame) -> FaceFrame:
        t0 = time.perf_counter()
        ff = self._track(frame)
        frame.stage_ms["track"] = (time.perf_counter() - t0) * 1e3
        return ff

    def _crop(self, bgr: np.ndarray) -> np.ndarray:
        """Warp at twice the size, then halve with a Gaussian: a face larger than the crop would
        otherwise alias, and aliasing patterns change with sub-pixel position (false motion at edges)."""
        m = self.m * 2
        n = 2 * self.crop_size
        crop = cv2.warpAffine(bgr, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return cv2.pyrDown(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY))

    def _track(self, frame: Frame) -> FaceFrame:
        bgr = frame.image
        if self.m is not None and self.since_check + 1 < self.mesh_every:
            crop = self._crop(bgr)
            # a cheap check between landmark runs: the crop still looks like the face it was
            if crop.std() > 4 and float(np.sum(_small(crop) * self.reference)) > 0.8:
                self.since_check += 1
                return self._face(frame, crop)
        pts = self.backend.find(bgr)
        self.since_check = 0
        if pts is None:
            return self._missing(frame)
        anchors = self.anchor_filter(self.backend.anchors(pts).ravel(), frame.t_video).reshape(-1, 2)
        self.m = eye_transform(anchors[0], anchors[1], self.crop_size, anchors[2] if len(anchors) > 2 else None)
        self.to_crop = self.backend.framing(pts)
        self.landmarks = pts
        crop = self._crop(bgr)
        self.reference = _small(crop)
        return self._face(frame, crop)

    def _face(self, frame: Frame, crop: np.ndarray) -> FaceFrame:
        state = "reacquired" if self.seen and self.state in ("lost", "no_face") else "face"
        self.state, self.seen, self.missing_since = state, True, None
        lo, hi = self.landmarks.min(0), self.landmarks.max(0)
        box = (int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        return FaceFrame(frame=frame, state=state, box=box, landmarks=self.landmarks, crop=crop,
                         patch=framing.cut_patch(frame.image, self.to_crop))

    def _missing(self, frame: Frame) -> FaceFrame:
        if self.missing_since is None:
            self.missing_since = frame.t_video
        box = None
        if self.seen and self.state != "no_face" and frame.t_video - self.missing_since < self.lost_s:
            self.state = "lost"
            lo, hi = self.landmarks.min(0), self.landmarks.max(0)
            box = (int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        else:
            self.state = "no_face"
        self.m, self.to_crop, self.reference = None, None, None
        self.backend.forget()
        self.anchor_filter.reset()
        return FaceFrame(frame=frame, state=self.state, box=box)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
