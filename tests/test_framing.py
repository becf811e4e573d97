"""The recognition crop (realtime/framing.py): training framing, one transform per pair, registration."""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from mex.features import crop_flow, get_backend
from realtime import framing
from realtime.packets import Frame
from realtime.synth import ClipSpec, PlantedEvent, render, truth
from realtime.tracking import FaceTracker

mp = pytest.importorskip("mediapipe")

FRAMING_JSON = Path(__file__).resolve().parent.parent / "data" / "megc2019-composite-flow" / "framing.json"


def test_target_is_the_casme2_framing_of_the_training_crops():
    mean = json.loads(FRAMING_JSON.read_text())["datasets"]["casme2"]["mean"]
    for i, xy in framing.TARGET.items():
        assert xy == pytest.approx(mean[i], abs=1e-4), i


def moved(image: np.ndarray, dx: float, dy: float, deg: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """The whole frame moved as a head would move: a similarity about the frame's centre."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, scale)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)


def track(images, fps=30.0, mesh_every=1):
    with FaceTracker(mesh_every=mesh_every) as tracker:
        return [tracker.track(Frame(i, 0.0, i / fps, im)) for i, im in enumerate(images)]


def flow_px(onset: np.ndarray, apex: np.ndarray) -> np.ndarray:
    u, v = crop_flow(onset[None].astype(np.float32), apex[None].astype(np.float32), get_backend("auto"))
    return np.hypot(u[0], v[0])


def test_recognition_crop_frames_the_face_as_the_training_crops_do():
    still = list(render(ClipSpec(seconds=0.1, fps=30, events=0, noise=0.0, face_px=150)))[0]
    ff = track([still])[0]
    onset, _ = framing.pair_crops(ff.patch, ff.patch)
    big = cv2.resize(onset, (224, 224), interpolation=cv2.INTER_CUBIC)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True) as mesh:
        found = mesh.process(cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)).multi_face_landmarks
    lm = np.array([(p.x, p.y) for p in found[0].landmark])
    # eye corners and nose tip where CASME II's crops have them, within about 3 of their std over the 145 crops
    for i in (33, 133, 362, 263, 1):
        assert lm[i] == pytest.approx(framing.TARGET[i], abs=0.03), i


def test_a_pure_head_move_between_onset_and_apex_leaves_almost_no_flow():
    still = list(render(ClipSpec(seconds=0.1, fps=30, events=0, noise=0.0)))[0]
    onset, apex = track([still, moved(still, 1.4, -0.9, deg=1.5, scale=1.015)])
    raw = flow_px(*framing.pair_crops(onset.patch, apex.patch, registration="own"))
    reg = flow_px(*framing.pair_crops(onset.patch, apex.patch))
    assert raw.mean() > 0.5  # each crop cut with its own landmarks: the move (and jitter) is all flow
    assert reg.mean() < 0.1 and np.percentile(reg, 95) < 0.2


def test_the_face_own_movement_survives_registration():
    event = PlantedEvent("brow_raise", onset_s=0.2, duration_s=0.4, amplitude_px=2.5, apex_frac=0.5)
    spec = ClipSpec(seconds=0.8, fps=30, events=[event], noise=0.0, face_px=150)
    images = list(render(spec))
    gt = truth(spec)["events"][0]
    onset_img, apex_img = images[gt["onset"]], moved(images[gt["apex"]], -1.2, 0.8, deg=-1.0)
    onset, apex = track([onset_img, apex_img])
    mag = flow_px(*framing.pair_crops(onset.patch, apex.patch))
    n = framing.CROP_SIZE
    brows = mag[int(0.05 * n):int(0.25 * n), :]  # brows sit above the eye corners (y 0.28)
    nose = mag[int(0.35 * n):int(0.55 * n), int(0.4 * n):int(0.6 * n)]
    assert np.percentile(brows, 95) > 1.2 and nose.mean() < 0.06


@pytest.mark.parametrize("kind", ["brow_lower", "lip_corner_pull"])
def test_a_still_head_keeps_its_facial_movement_whole(kind):
    """Head still: the fit stays under MIN_HEAD_PX, so the live crops are the two frames as cut (the
    registration is not applied and cannot take part of a frown or a smile for head motion)."""
    event = PlantedEvent(kind, onset_s=0.2, duration_s=0.4, amplitude_px=2.5, apex_frac=0.5)
    spec = ClipSpec(seconds=0.8, fps=30, events=[event], noise=1.0, head_motion=0.0, head_moves=0)
    images = list(render(spec))
    gt = truth(spec)["events"][0]
    onset, apex = track([images[gt["onset"]], images[gt["apex"]]])
    live, off = framing.pair_crops(onset.patch, apex.patch), framing.pair_crops(onset.patch, apex.patch, "off")
    assert np.array_equal(live[1], off[1])
    assert flow_px(*live).max() > 1.0  # the movement is there


def test_registration_is_applied_only_where_the_head_moved():
    still = list(render(ClipSpec(seconds=0.1, fps=30, events=0, noise=0.0)))[0]
    for dx, applied in ((0.05, False), (1.4, True)):
        onset, apex = track([still, moved(still, dx, -0.5 * dx)])
        live = framing.pair_crops(onset.patch, apex.patch)[1]
        off = framing.pair_crops(onset.patch, apex.patch, "off")[1]
        always = framing.pair_crops(onset.patch, apex.patch, "always")[1]
        assert np.array_equal(live, always if applied else off), dx
    with pytest.raises(ValueError, match="registration must be one of"):
        framing.pair_crops(onset.patch, apex.patch, "maybe")


def test_registration_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (128, 128)).astype(np.float32), (0, 0), 2.0)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    to_crop = np.array([[1.5, 0.0, 0.0], [0.0, 1.2, 0.0]])  # an anisotropic framing, as the training crops'
    t = np.array([0.8, -0.5])
    turn = to_crop[:, :2] @ framing.ROTATION @ np.linalg.inv(to_crop[:, :2])
    w = framing._similarity(np.array([*t, 0.01, math.radians(1.0)]), 64.0, turn)
    apex = cv2.warpAffine(tex, w, (128, 128), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
    # warpAffine's forward map: apex(W x) = tex(x), the W that registration must find; it looks at the
    # nose box only, so it is checked there closely and over the whole crop loosely
    got = framing.register(tex, apex, to_crop)
    x0, y0, x1, y1 = np.array(framing.STABLE) * 128
    for (a, b, c, d), tol in (((x0, y0, x1, y1), 0.05), ((0, 0, 127, 127), 0.3)):
        pts = np.array([[a, b, 1], [c, b, 1], [a, d, 1], [c, d, 1]], np.float64)
        assert np.abs(pts @ got.T - pts @ w.T).max() < tol


def test_eyes_framing_puts_the_eyes_where_the_target_has_them():
    m = framing.eyes_framing(np.array([100.0, 120.0]), np.array([160.0, 110.0]), size=128)
    got = (m @ np.array([[100.0, 120.0, 1.0], [160.0, 110.0, 1.0]]).T).T
    np.testing.assert_allclose(got, framing.TARGET_EYES * 128, atol=1e-9)


@pytest.mark.parametrize("det", [0.8, 1.25])
def test_a_patch_is_oversampled_where_the_face_is_larger_than_the_crop(det):
    """A shrinking transform cuts at twice the crop's resolution (aliasing); both kinds give the same
    crops, and a pair mixing them (the face crossed the crop's size) is cut alike."""
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.uniform(0, 255, (400, 400)).astype(np.float32), (0, 0), 3.0)
    frame = cv2.normalize(frame, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    s = math.sqrt(det)
    to_crop = np.array([[s, 0.0, -40.0], [0.0, s, -30.0]])
    patch = framing.cut_patch(frame, to_crop, size=96)
    assert patch.oversample == (2 if det < 1 else 1)
    want = cv2.warpAffine(frame, to_crop, (96, 96), flags=cv2.INTER_CUBIC)
    crop, _ = framing.pair_crops(patch, patch)
    inner = np.s_[8:-8, 8:-8]
    assert np.abs(crop[inner].astype(float) - want[inner]).mean() < 3.0
    other = framing.cut_patch(frame, to_crop * np.array([[1.0], [1.0]]) * (1.3 if det < 1 else 0.7), size=96)
    assert other.oversample != patch.oversample
    a, b = framing.pair_crops(patch, other, registration="own")
    assert a.shape == b.shape == (96, 96)
    _, b1 = framing.pair_crops(other, other, registration="own")
    assert np.abs(b[inner].astype(float) - b1[inner]).mean() < 1.5


def test_patches_of_different_crop_sizes_are_refused():
    a = framing.cut_patch(np.zeros((64, 64), np.uint8), np.eye(2, 3), size=64)
    b = framing.cut_patch(np.zeros((64, 64), np.uint8), np.eye(2, 3), size=48)
    with pytest.raises(ValueError, match="64 px crops but apex patch for 48"):
        framing.pair_crops(a, b)
