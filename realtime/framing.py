"""The recognition crop: the face framed as in the training crops, onset and apex registered to each other.

The model learnt from flow images computed on the databases' own face crops. Where the face sits in
those crops is measured in data/megc2019-composite-flow/framing.json (mediapipe landmarks on the 442
training crops); a live crop that framed the face differently would put brows, eyes and mouth on
other cells of the 28 x 28 grid than training did. So:

1. Framing. Each frame with landmarks gets an affine transform (6 degrees of freedom: the training
   crops were resized from non-square database crops to a square, which squashes the face) that takes
   its rigid landmarks (eye corners and the nose line, which micro-expressions do not move) to where
   they sit in CASME II's crops (`TARGET`). CASME II and SMIC frame alike; SAMM's crops show more
   of the head.
2. Patches. The tracker cuts, per frame, a grey `FacePatch`: the recognition crop plus a margin, with
   the transform it was cut with; at twice the crop's resolution where the face is larger than the
   crop (the crops are then halved with a Gaussian: a shrunk face aliases, and aliasing changes with
   sub-pixel position, which would read as motion), else at the crop's own. Small and independent of
   the frame's size, so the spotter's window can hold it for every frame.
3. One transform for the pair. `pair_crops` cuts the apex with the ONSET's transform (the composition
   of the two patches' transforms is exact, so landmark jitter between the two frames does not enter).
4. Registration only where the head moved. A robust similarity (Gauss-Newton with Huber weights,
   coarse to fine, on the nose: `STABLE`) is fitted between the two crops; it is applied only when it
   moves the face by `MIN_HEAD_PX` or more. Below that the crops stay as cut: the databases' own crops,
   which the model learnt from, hold some residual head motion, and on real faces the nose box moves
   with the brows and the upper lip, so a fit there takes part of the expression for head motion
   (applied always, it changed the label of 21 of 138 real CASME II clips on still heads, measured
   outside the repository). A webcam head sways by more between onset and apex, and then a 1 px shift
   makes more flow than most micro-expressions do.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mex.features import CROP_SIZE  # side of the recognition crop: what mex.features.encode gets live

MARGIN = 0.125  # patch margin around the recognition crop, as a fraction of its side

# Rigid face-mesh landmarks -> mean position in CASME II's training crops (x right, y down, 0..1 of
# the crop), from data/megc2019-composite-flow/framing.json ("casme2"); tests check the two agree.
TARGET = {
    33: (0.1153, 0.2764), 133: (0.3344, 0.2875), 362: (0.6557, 0.2893), 263: (0.8688, 0.2765),  # eye corners
    168: (0.4970, 0.2546), 6: (0.4980, 0.3116), 197: (0.4987, 0.3586), 195: (0.4992, 0.4014),  # nose line
    5: (0.4995, 0.4476), 4: (0.5000, 0.5026), 1: (0.4996, 0.5434),
    98: (0.3446, 0.5719), 327: (0.6474, 0.5682),  # nose wings
}
TARGET_IDS = np.array(list(TARGET), np.int64)
TARGET_XY = np.array(list(TARGET.values()), np.float64)
# eye centres (mean of each eye's corners) in the target framing, for trackers without a mesh
TARGET_EYES = np.array([(TARGET_XY[0] + TARGET_XY[1]) / 2, (TARGET_XY[2] + TARGET_XY[3]) / 2])

# Where registration looks (x0, y0, x1, y1 as fractions of the crop): the nose, from between the eyes
# to its tip, which no micro-expression moves much. Including the cheeks, eyes or brows, even at a
# quarter of the weight, lets a brow raise or a smile pull the fit and take part of its own flow
# (tests/test_framing.py: a brow raise keeps its flow and the nose stays still).
STABLE = (0.38, 0.32, 0.62, 0.60)
# The registration is applied when it moves some point of the face (inner 60 % of the crop) by this many
# crop px of a CROP_SIZE crop or more (scaled with the crop's size): real facial motion on a still head makes
# the fit move it by 0.8 px (median; 90th percentile 1.8), a webcam's sway between onset and apex by 2.2 px
# (`mex-bench registration`, which chose 1.5 over 1.0 and 2.0 on the same clips)
MIN_HEAD_PX = 1.5


@dataclass
class FacePatch:
    """The recognition crop's surroundings in one frame: grey uint8 at `oversample` times the crop's
    resolution with a margin of `margin` crop px on each side; `to_crop` maps frame px to crop px."""

    image: np.ndarray
    to_crop: np.ndarray  # 2x3 float64
    size: int  # side of the recognition crop
    margin: int  # crop px around it
    oversample: int = 1  # 2 where the frame's face is larger than the crop


def fit_framing(landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """2x3 affine taking a face mesh's rigid landmarks (frame px, (468+, 2)) to TARGET in a size x size crop."""
    src = np.asarray(landmarks, np.float64)[TARGET_IDS]
    dst = TARGET_XY * size
    a = np.hstack([src, np.ones((len(src), 1))])
    m, *_ = np.linalg.lstsq(a, dst, rcond=None)
    return m.T


def eyes_framing(left: np.ndarray, right: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """2x3 similarity taking the eye centres (image-left, image-right; frame px) to TARGET_EYES."""
    src, dst = np.array([left, right], np.float64), TARGET_EYES * size
    v, c = src[1] - src[0], dst[1] - dst[0]
    z = complex(*c) / complex(*v)  # rotation and scale as one complex number
    m = np.array([[z.real, -z.imag, 0.0], [z.imag, z.real, 0.0]])
    m[:, 2] = dst.mean(0) - m[:, :2] @ src.mean(0)
    return m


def _patch_transform(to_crop: np.ndarray, margin: int, oversample: int) -> np.ndarray:
    """frame px -> patch px: crop px shifted by the margin, times the oversampling."""
    return oversample * (to_crop + np.array([[0.0, 0.0, margin], [0.0, 0.0, margin]]))


def cut_patch(bgr: np.ndarray, to_crop: np.ndarray, size: int = CROP_SIZE) -> FacePatch:
    """The patch of one frame (BGR or grey uint8) for the recognition-crop transform `to_crop`."""
    to_crop = np.asarray(to_crop, np.float64)
    margin = int(round(MARGIN * size))
    oversample = 2 if abs(np.linalg.det(to_crop[:, :2])) < 1.0 else 1  # the face is larger than the crop
    n = oversample * (size + 2 * margin)
    gray = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)  # cheaper than warping 3 channels
    image = cv2.warpAffine(gray, _patch_transform(to_crop, margin, oversample), (n, n), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    return FacePatch(image=image, to_crop=to_crop, size=size, margin=margin, oversample=oversample)


def _affine3(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def _crop_from(patch: FacePatch, crop_to_frame: np.ndarray) -> np.ndarray:
    """The crop whose pixel x shows frame point crop_to_frame(x), sampled from the patch at its
    resolution (an oversampled one is then halved with a Gaussian)."""
    k = patch.oversample
    n = k * patch.size
    down = np.diag([1.0 / k, 1.0 / k, 1.0])  # sampled px -> crop px
    m = _affine3(_patch_transform(patch.to_crop, patch.margin, k)) @ _affine3(crop_to_frame) @ down
    sampled = cv2.warpAffine(patch.image, m[:2], (n, n), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
    return cv2.pyrDown(sampled) if k == 2 else sampled


def stable_mask(size: int) -> np.ndarray:
    """1 on the STABLE box of a size x size crop, 0 elsewhere (float32)."""
    x0, y0, x1, y1 = (int(round(f * size)) for f in STABLE)
    mask = np.zeros((size, size), np.float32)
    mask[y0:y1, x0:x1] = 1.0
    return mask


ROTATION = np.array([[0.0, -1.0], [1.0, 0.0]])


def _similarity(p: np.ndarray, c: float, turn: np.ndarray) -> np.ndarray:
    """2x3 of x -> c + ((1 + s) I + r turn) (x - c) + t for p = (tx, ty, s, r)."""
    tx, ty, s, r = p
    lin = (1.0 + s) * np.eye(2) + r * turn
    return np.hstack([lin, (np.array([c, c]) - lin @ [c, c] + [tx, ty])[:, None]])


def register(onset: np.ndarray, apex: np.ndarray, to_crop: np.ndarray | None = None, steps: int = 8,
             huber_gray: float = 2.0) -> np.ndarray:
    """2x3 W (crop px) such that apex(W x) matches onset(x): a similarity of the head in the frame,
    seen through the crop's framing `to_crop` (anisotropic: a head's rotation is no rotation of the
    crop); robust Gauss-Newton, coarse to fine.

    The Jacobian comes from the onset's gradients (fixed, so it is built once per level); residuals are
    Huber-weighted, so the few pixels where the face itself moved do not pull the fit."""
    size = onset.shape[0]
    lin = np.eye(2) if to_crop is None else np.asarray(to_crop, np.float64)[:, :2]
    turn = lin @ ROTATION @ np.linalg.inv(lin)  # a small head rotation, in crop coordinates
    ref0 = cv2.GaussianBlur(onset.astype(np.float32), (0, 0), 1.0)
    cur0 = cv2.GaussianBlur(apex.astype(np.float32), (0, 0), 1.0)
    prior0 = stable_mask(size)
    p = np.zeros(4)
    for level in (2, 1, 0):
        f = 2 ** level
        n = size // f
        ref = cv2.resize(ref0, (n, n), interpolation=cv2.INTER_AREA)
        cur = cv2.resize(cur0, (n, n), interpolation=cv2.INTER_AREA)
        rim = max(2, n // 16)  # warping replicates edge pixels there
        inner = np.s_[rim:n - rim, rim:n - rim]
        gx = cv2.Sobel(ref, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)[inner].ravel()
        gy = cv2.Sobel(ref, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)[inner].ravel()
        ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) - np.float32(n / 2)
        xc, yc = xs[inner].ravel(), ys[inner].ravel()
        rx, ry = turn @ np.stack([xc, yc])
        jac = np.stack([gx, gy, gx * xc + gy * yc, gx * rx + gy * ry]).astype(np.float64)  # (4, N)
        prior = cv2.resize(prior0, (n, n), interpolation=cv2.INTER_NEAREST)[inner].ravel()
        ref_in = ref[inner].ravel()
        q = np.array([p[0] / f, p[1] / f, p[2], p[3]])  # shifts in this level's px
        for _ in range(steps):
            warped = cv2.warpAffine(cur, _similarity(q, n / 2, turn), (n, n),
                                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
            r = warped[inner].ravel().astype(np.float64) - ref_in
            w = prior * np.minimum(1.0, huber_gray / (np.abs(r) + 1e-6))
            jw = jac * w
            step = np.linalg.solve(jw @ jac.T + 1e-3 * np.eye(4), jw @ r)
            q -= step
            if np.abs(step[:2]).max() < 1e-3 and np.abs(step[2:]).max() < 1e-5:
                break
        p = np.array([q[0] * f, q[1] * f, q[2], q[3]])
    return _similarity(p, size / 2, turn)


def _resample(patch: FacePatch, oversample: int) -> FacePatch:
    """The patch at another oversampling (patch px scale with it: pixel x of the new one is old x * ratio)."""
    n = oversample * (patch.size + 2 * patch.margin)
    ratio = oversample / patch.oversample
    image = cv2.warpAffine(patch.image, np.array([[ratio, 0.0, 0.0], [0.0, ratio, 0.0]]), (n, n),
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return FacePatch(image=image, to_crop=patch.to_crop, size=patch.size, margin=patch.margin, oversample=oversample)


def head_motion_px(w: np.ndarray, size: int) -> float:
    """How far the similarity w (crop px) moves the face: the largest displacement of the corners of the
    crop's inner 60 % (the face, not the margin where a small rotation moves most)."""
    pts = np.array([[x, y, 1.0] for x in (0.2 * size, 0.8 * size) for y in (0.2 * size, 0.8 * size)])
    return float(np.abs(pts @ np.asarray(w).T - pts[:, :2]).max())


REGISTRATION = ("auto", "always", "off", "own")


def pair_crops(onset: FacePatch, apex: FacePatch, registration: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The (onset, apex) recognition crops, grey uint8 (size, size), both cut with the onset's framing.
    registration: "auto" (the live path) registers the apex onto the onset when the head moved by
    `MIN_HEAD_PX` or more, "always" whatever the fit, "off" never; "own" cuts each crop with its own
    frame's framing (for comparison in mex-bench fidelity)."""
    if registration not in REGISTRATION:
        raise ValueError(f"registration must be one of {REGISTRATION}, not {registration!r}")
    if onset.size != apex.size:
        raise ValueError(f"onset patch is for {onset.size} px crops but apex patch for {apex.size} px")
    if onset.oversample != apex.oversample:  # the face crossed the crop's size: cut both alike
        k = max(onset.oversample, apex.oversample)
        onset, apex = (p if p.oversample == k else _resample(p, k) for p in (onset, apex))
    onset_crop = _crop_from(onset, np.linalg.inv(_affine3(onset.to_crop))[:2])
    if registration == "own":
        return onset_crop, _crop_from(apex, np.linalg.inv(_affine3(apex.to_crop))[:2])
    crop_to_frame = np.linalg.inv(_affine3(onset.to_crop))
    coarse = _crop_from(apex, crop_to_frame[:2])
    if registration == "off":
        return onset_crop, coarse
    w = register(onset_crop, coarse, onset.to_crop)
    if registration == "auto" and head_motion_px(w, onset.size) < MIN_HEAD_PX * onset.size / CROP_SIZE:
        return onset_crop, coarse
    return onset_crop, _crop_from(apex, (crop_to_frame @ _affine3(w))[:2])
