"""Face tracking and alignment: Frame -> FaceFrame with an aligned gray crop for spotting and a patch
for recognition (realtime/framing.py: the face framed as in the training crops, from the mesh's rigid
landmarks at each landmark run; cut per frame, so the spotter's window holds it for any frame).

The spotting crop is a similarity transform of the frame that puts the two eye centres (the mean of each
eye's two corners: corners do not move when the eye blinks) at fixed canonical positions, so the
same pixel of the crop is the same place on the face from frame to frame. (A face turned sideways
has its eyes close together; its scale is capped so that the mouth stays inside the crop.)

Cost is what matters at 200 fps, so the mediapipe path works in two modes:
- detect: face mesh (up to `max_faces` + 1) on the frame scaled to `detect_width`; faces are taken
  largest first.
- follow: per tracked face, its own face mesh (one face, video mode) on a square region around it,
  scaled to `roi_px`, only every `mesh_every` frames. In between, the last transform is reused and the
  crop is compared with the last checked one; a large change (face gone, fast move) runs the mesh at once.
With several faces (`max_faces`) each has a stable id: see FaceTracker.
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
# the least `similarity` of a face's look to itself across frames (set from synth clips: see tests)
SAME_LOOK = 0.7


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


def _small(gray: np.ndarray, size: int = 32) -> np.ndarray:
    s = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
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


class _Region:
    """A square region around one face, moved only when the face has drifted, so that the region's
    detector sees a steady input."""

    def __init__(self, roi_px: int):
        self.roi_px = roi_px
        self.roi: tuple[float, float, float] | None = None  # centre x, centre y, side (frame px)

    def start(self, pts: np.ndarray) -> None:
        self.roi = None
        self.follow(pts)

    def follow(self, pts: np.ndarray) -> None:
        lo, hi = pts.min(0), pts.max(0)
        cx, cy = (lo + hi) / 2
        side = 1.8 * float(max(hi - lo))
        if self.roi is None:
            self.roi = (cx, cy, side)
            return
        ox, oy, oside = self.roi
        if max(abs(cx - ox), abs(cy - oy)) > 0.1 * oside or abs(side / oside - 1) > 0.15:
            self.roi = (cx, cy, side)

    def cut(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The region scaled to roi_px, and the 2x3 frame -> region transform."""
        cx, cy, side = self.roi
        s = self.roi_px / side
        m = np.array([[s, 0, self.roi_px / 2 - s * cx], [0, s, self.roi_px / 2 - s * cy]], np.float32)
        return cv2.warpAffine(bgr, m, (self.roi_px, self.roi_px), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT), m

    def forget(self) -> None:
        self.roi = None


class _MeshFollower(_Region):
    """One face followed by its own face mesh (one face, video mode) on the region around it."""

    def __init__(self, roi_px: int):
        import mediapipe as mp

        super().__init__(roi_px)
        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False)

    def find(self, bgr: np.ndarray) -> np.ndarray | None:
        """(468, 2) frame-pixel landmarks of the face in the region, or None."""
        roi, m = self.cut(bgr)
        found = self.mesh.process(cv2.cvtColor(roi, cv2.COLOR_BGR2RGB)).multi_face_landmarks
        if not found:
            self.roi = None
            return None
        pts = (_mesh_points(found[0], self.roi_px, self.roi_px) - m[:, 2]) / m[0, 0]
        self.follow(pts)
        return pts

    def close(self) -> None:
        self.mesh.close()


def _mesh_points(face, w: int, h: int) -> np.ndarray:
    return np.array([(p.x * w, p.y * h) for p in face.landmark], np.float32)


def _area(pts: np.ndarray) -> float:
    return float(np.prod(pts.max(0) - pts.min(0)))


class _MeshBackend:
    """mediapipe face mesh: detection on the whole (scaled) frame, a follower per face."""

    def __init__(self, max_faces: int, detect_width: int, roi_px: int):
        import mediapipe as mp

        # one face more than followed, so that the largest ones are the ones taken
        self.detector = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces + 1,
                                                        refine_landmarks=False)
        self.detect_width, self.roi_px = detect_width, roi_px

    def detect(self, bgr: np.ndarray) -> list[np.ndarray]:
        """(468, 2) frame-pixel landmarks of every face found, largest first."""
        h, w = bgr.shape[:2]
        scale = min(1.0, self.detect_width / w)
        small = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else bgr
        found = self.detector.process(cv2.cvtColor(small, cv2.COLOR_BGR2RGB)).multi_face_landmarks or []
        return sorted((_mesh_points(f, w, h) for f in found), key=_area, reverse=True)

    def follower(self) -> _MeshFollower:
        return _MeshFollower(self.roi_px)

    def anchors(self, pts: np.ndarray) -> np.ndarray:
        """Left eye, right eye, mouth centres: (3, 2)."""
        (a, b), (c, d) = MESH_EYE_CORNERS
        return np.stack([(pts[a] + pts[b]) / 2, (pts[c] + pts[d]) / 2, (pts[MESH_MOUTH[0]] + pts[MESH_MOUTH[1]]) / 2])

    def framing(self, pts: np.ndarray) -> np.ndarray:
        """frame px -> recognition crop px, from the mesh's rigid landmarks."""
        return framing.fit_framing(pts)

    def close(self) -> None:
        self.detector.close()


class _HaarBackend:
    """OpenCV's frontal-face Haar cascade; eyes placed at fixed fractions of the face box."""

    def __init__(self, detect_width: int, roi_px: int):
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the cascades out of the main package
            raise RuntimeError(f"the installed OpenCV {cv2.__version__} has no Haar cascade (cv2.CascadeClassifier); "
                               "install mediapipe (pip install 'mex-live[face]') or opencv-contrib-python 4.x")
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        self.detect_width, self.roi_px = detect_width, roi_px

    def detect(self, bgr: np.ndarray) -> list[np.ndarray]:
        """Per face found, largest first: the box's corners, then the two eye centres (typical positions
        inside a Haar face box)."""
        h, w = bgr.shape[:2]
        scale = min(1.0, self.detect_width / w)
        gray = cv2.cvtColor(cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.15, minNeighbors=5, minSize=(24, 24))
        faces = []
        for x, y, bw, bh in sorted(boxes, key=lambda b: -b[2] * b[3]):
            x, y, bw, bh = np.array([x, y, bw, bh]) / scale
            faces.append(np.array([[x, y], [x + bw, y + bh], [x + 0.3 * bw, y + 0.38 * bh],
                                   [x + 0.7 * bw, y + 0.38 * bh]], np.float32))
        return faces

    def follower(self) -> _HaarFollower:
        return _HaarFollower(self)

    def anchors(self, pts: np.ndarray) -> np.ndarray:
        """Left eye, right eye (no mouth from a box): (2, 2)."""
        return pts[2:4]

    def framing(self, pts: np.ndarray) -> np.ndarray:
        """frame px -> recognition crop px, from the two eyes (all a box gives)."""
        return framing.eyes_framing(pts[2], pts[3])

    def close(self) -> None:
        pass


class _HaarFollower(_Region):
    """One face followed by the cascade on the region around it."""

    def __init__(self, backend: _HaarBackend):
        super().__init__(backend.roi_px)
        self.backend = backend

    def find(self, bgr: np.ndarray) -> np.ndarray | None:
        roi, m = self.cut(bgr)
        found = self.backend.detect(roi)
        if not found:
            self.roi = None
            return None
        pts = (found[0] - m[:, 2]) / m[0, 0]
        self.follow(pts)
        return pts

    def close(self) -> None:
        pass


def _box(pts: np.ndarray) -> tuple[int, int, int, int]:
    lo, hi = pts.min(0), pts.max(0)
    return int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1])


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area (a face half hidden behind another still counts)."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / max(1, min(a[2] * a[3], b[2] * b[3]))


def _grown(box: tuple[int, int, int, int], by: float = 0.3) -> tuple[int, int, int, int]:
    """The box grown by `by` of its size on each side (a landmark box leaves out hair and ears)."""
    x, y, w, h = box
    return int(x - by * w), int(y - by * h), int(w * (1 + 2 * by)), int(h * (1 + 2 * by))


def appearance(patch: framing.FacePatch, bgr: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A small descriptor of who a face is: the recognition crop (framed from this frame's landmarks,
    unsmoothed, so that it does not lag a moving face) at 16 x 16 (zero mean, unit norm) and a
    hue-saturation histogram of the face's box (unit norm). Two descriptors compare by `similarity`."""
    x, y, w, h = box
    hsv = cv2.cvtColor(bgr[max(0, y):y + h, max(0, x):x + w], cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [12, 4], [0, 180, 0, 256]).ravel()
    hist = np.sqrt(hist)  # Hellinger: a few dominant bins do not decide alone
    a, n = patch.margin * patch.oversample, patch.size * patch.oversample
    return np.concatenate([_small(patch.image[a:a + n, a:a + n], 16).ravel(), hist / (np.linalg.norm(hist) + 1e-6)])


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The lower of the two parts' cosine similarities (1: the same face, same light)."""
    n = 16 * 16
    return float(min(a[:n] @ b[:n], a[n:] @ b[n:]))


class Face:
    """One tracked face: its id, its region follower, its smoothed anchors and transforms, its look."""

    def __init__(self, face_id: int, follower, min_cutoff_hz: float, beta: float):
        self.id = face_id
        self.follower = follower
        self.anchor_filter = OneEuro(min_cutoff_hz, beta)
        self.m: np.ndarray | None = None  # current frame -> crop transform
        self.to_crop: np.ndarray | None = None  # current frame -> recognition crop transform (unsmoothed:
        # a candidate's two crops are cut with one transform, so landmark jitter does not reach the flow)
        self.landmarks: np.ndarray | None = None
        self.reference: np.ndarray | None = None  # small normalised crop at the last landmark check
        self.look: np.ndarray | None = None  # appearance descriptor, a running mean over landmark checks
        self.since_check = 0
        self.state = "no_face"
        self.missing_since: float | None = None
        self.seen = False

    @property
    def box(self) -> tuple[int, int, int, int]:
        return _box(self.landmarks)

    def lose(self) -> None:
        self.m, self.to_crop, self.reference = None, None, None
        self.follower.forget()
        self.anchor_filter.reset()


class FaceTracker:
    """Frame -> FaceFrames: up to `max_faces` faces, each with a stable id, its landmarks, an eye-aligned
    gray crop for spotting and a patch for recognition (realtime/framing.py: the face framed as in the
    training crops). `track(frame)` gives one FaceFrame (the first face, or a "no_face" one) for
    single-face callers; `track_all(frame)` every face being tracked or just lost.

    States: "face" (tracked), "lost" (missing for less than `lost_s` seconds after being tracked),
    "no_face" (nothing), "reacquired" (the first frame of a face found again under its old id).

    Ids. Each face has its own region follower; between landmark runs its crop is checked against the
    last one as before. A face that is followed must still look like itself (`appearance`, compared with
    its running look): a follower that slid onto another face while two cross loses its face rather than
    carrying the id over. Whole-frame detection runs when a face was lost this frame, when none is
    tracked, and every `acquire_s` seconds while fewer than `max_faces` are; what it finds that is not
    already followed takes the id of a face missing for less than `reentry_s` seconds when the match is
    clear (look similarity at least `same_look` and `clear_margin` above the next missing face), else a
    new id. Faces are taken largest first, so with `max_faces=1` the tracker follows the largest face.
    """

    def __init__(self, crop_size: int = 128, backend: str = "auto", *, max_faces: int = 1, mesh_every: int = 4,
                 detect_width: int = 320, roi_px: int = 256, min_cutoff_hz: float = 0.5, beta: float = 0.1,
                 lost_s: float = 0.5, reentry_s: float = 5.0, acquire_s: float = 0.25,
                 same_look: float = SAME_LOOK, clear_margin: float = 0.1):
        if backend not in ("auto", "mediapipe", "haar"):
            raise ValueError(f"backend must be auto, mediapipe or haar, not {backend!r}")
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, not {max_faces}")
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
            self.backend = _HaarBackend(detect_width, roi_px)
        self.name = backend
        self.crop_size, self.max_faces = crop_size, max_faces
        self.mesh_every, self.lost_s, self.reentry_s, self.acquire_s = mesh_every, lost_s, reentry_s, acquire_s
        self.same_look, self.clear_margin = same_look, clear_margin
        self.filter_args = (min_cutoff_hz, beta)
        self.faces: list[Face] = []  # tracked, lost, or missing for less than reentry_s
        self.spare: list = []  # followers of forgotten faces, reused
        self.next_id = 0
        self.last_acquire = -np.inf

    def track(self, frame: Frame) -> FaceFrame:
        """The first face (the lowest id tracked or lost), or a "no_face" FaceFrame."""
        faces = self.track_all(frame)
        return faces[0] if faces else FaceFrame(frame=frame, state="no_face")

    def track_all(self, frame: Frame) -> list[FaceFrame]:
        """Every face tracked or lost in this frame, by id."""
        t0 = time.perf_counter()
        out = self._track(frame)
        frame.stage_ms["track"] = (time.perf_counter() - t0) * 1e3
        return out

    def _crop(self, m: np.ndarray, bgr: np.ndarray) -> np.ndarray:
        """Warp at twice the size, then halve with a Gaussian: a face larger than the crop would
        otherwise alias, and aliasing patterns change with sub-pixel position (false motion at edges)."""
        n = 2 * self.crop_size
        crop = cv2.warpAffine(bgr, m * 2, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return cv2.pyrDown(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY))

    def _eye_transform(self, pts: np.ndarray, anchors: np.ndarray | None = None) -> np.ndarray:
        anchors = self.backend.anchors(pts) if anchors is None else anchors
        return eye_transform(anchors[0], anchors[1], self.crop_size, anchors[2] if len(anchors) > 2 else None)

    def _track(self, frame: Frame) -> list[FaceFrame]:
        bgr, t = frame.image, frame.t_video
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)  # the faces' patches are cut from it
        # face -> its crop, and at landmark runs its patch and look
        found: dict[Face, tuple[np.ndarray, framing.FacePatch | None, np.ndarray | None]] = {}
        failed = False
        for face in [f for f in self.faces if f.m is not None]:
            if face.since_check + 1 < self.mesh_every:
                crop = self._crop(face.m, bgr)
                # a cheap check between landmark runs: the crop still looks like the face it was
                if crop.std() > 4 and float(np.sum(_small(crop) * face.reference)) > 0.8:
                    face.since_check += 1
                    found[face] = crop, None, None
                    continue
            pts = face.follower.find(bgr)
            if pts is not None:
                crop = self._place(face, pts, frame)
                patch = framing.cut_patch(gray, face.to_crop)
                look = appearance(patch, bgr, face.box)
                if similarity(look, face.look) >= self.same_look:  # still the same person
                    found[face] = crop, patch, look
                    continue
            face.lose()
            failed = True
        self._drop_doubles(found)
        if failed or not found or (len(found) < self.max_faces and t - self.last_acquire >= self.acquire_s):
            self.last_acquire = t
            self._acquire(frame, gray, found)
        out = []
        for face in list(self.faces):
            if face in found:
                out.append(self._face(face, frame, gray, *found[face]))
            elif (ff := self._missing(face, frame)) is not None:
                out.append(ff)
        return sorted(out, key=lambda ff: ff.face_id)

    def _place(self, face: Face, pts: np.ndarray, frame: Frame) -> np.ndarray:
        """Landmarks found: new transforms, the crop, and the reference for the cheap checks."""
        anchors = face.anchor_filter(self.backend.anchors(pts).ravel(), frame.t_video).reshape(-1, 2)
        face.m = self._eye_transform(pts, anchors)
        face.to_crop = self.backend.framing(pts)
        face.landmarks = pts
        face.since_check = 0
        crop = self._crop(face.m, frame.image)
        face.reference = _small(crop)
        return crop

    def _drop_doubles(self, found: dict[Face, tuple]) -> None:
        """Two followers on one face (one slid onto the other as they crossed): the face whose look the
        crop matches less loses it."""
        for a, b in [(a, b) for i, a in enumerate(found) for b in list(found)[i + 1:]]:
            if a in found and b in found and _overlap(a.box, b.box) > 0.5:
                look = found[a][2] if found[a][2] is not None else found[b][2]
                worse = b if look is None or similarity(look, a.look) >= similarity(look, b.look) else a
                worse.lose()
                del found[worse]

    def _acquire(self, frame: Frame, gray: np.ndarray, found: dict[Face, tuple]) -> None:
        """Whole-frame detection: faces not followed yet take a missing face's id or a new one."""
        bgr = frame.image
        h, w = bgr.shape[:2]
        for pts in self.backend.detect(bgr):
            if len(found) >= self.max_faces:
                break
            box = _box(pts)
            if any(_overlap(box, f.box) > 0.3 for f in found):
                continue
            # cut by the frame's edge or by a face in front (one followed, or one lost a moment ago where
            # faces cross): its look may not be its own
            near = [f for f in self.faces if f in found or f.state != "no_face"]
            partial = (box[0] < 2 or box[1] < 2 or box[0] + box[2] > w - 2 or box[1] + box[3] > h - 2
                       or any(_overlap(_grown(box), _grown(f.box)) > 0 for f in near))
            patch = framing.cut_patch(gray, self.backend.framing(pts))
            look = appearance(patch, bgr, box)
            face = self._identify(look, found, partial)
            if face is None:
                continue
            face.follower.start(pts)
            found[face] = self._place(face, pts, frame), patch, look

    def _identify(self, look: np.ndarray, found: dict[Face, tuple], partial: bool) -> Face | None:
        """The missing face this look clearly is, else a new face; None (wait until it is seen whole, or
        the faces near it have been gone for lost_s) for a partly seen face that matches no one clearly
        while some face is missing."""
        scores = sorted(((similarity(look, f.look), f) for f in self.faces if f not in found),
                        key=lambda s: -s[0])
        if scores:
            best, face = scores[0]
            runner_up = scores[1][0] if len(scores) > 1 else -1.0
            if best >= self.same_look and best - runner_up >= self.clear_margin:
                face.lose()  # its filter and follower start afresh where it is now
                return face
            if partial:
                return None
        follower = self.spare.pop() if self.spare else self.backend.follower()
        face = Face(self.next_id, follower, *self.filter_args)
        self.next_id += 1
        self.faces.append(face)
        return face

    def _face(self, face: Face, frame: Frame, gray: np.ndarray, crop: np.ndarray, patch: framing.FacePatch | None,
              look: np.ndarray | None) -> FaceFrame:
        state = "reacquired" if face.seen and face.state in ("lost", "no_face") else "face"
        face.state, face.seen, face.missing_since = state, True, None
        if look is not None:  # a landmark run: the look follows slow changes (light, pose)
            face.look = look if face.look is None else 0.9 * face.look + 0.1 * look
        return FaceFrame(frame=frame, state=state, face_id=face.id, box=face.box, landmarks=face.landmarks,
                         crop=crop, patch=patch or framing.cut_patch(gray, face.to_crop))

    def _missing(self, face: Face, frame: Frame) -> FaceFrame | None:
        """A "lost" FaceFrame while the face has been missing for less than lost_s; None after that, and
        the face is forgotten (its follower kept for reuse) once it has been missing for reentry_s."""
        if face.missing_since is None:
            face.missing_since = frame.t_video
            face.lose()
        gone = frame.t_video - face.missing_since
        if face.state != "no_face" and gone < self.lost_s:
            face.state = "lost"
            return FaceFrame(frame=frame, state="lost", face_id=face.id, box=face.box)
        face.state = "no_face"
        if gone >= self.reentry_s:
            self.faces.remove(face)
            self.spare.append(face.follower)
        return None

    def close(self) -> None:
        for follower in [f.follower for f in self.faces] + self.spare:
            follower.close()
        self.backend.close()

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
