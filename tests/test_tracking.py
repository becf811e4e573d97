import builtins
import math

import cv2
import numpy as np
import pytest

from realtime import synth
from realtime.packets import Frame
from realtime.synth import ClipSpec, render
from realtime.tracking import CANONICAL_EYES, FaceTracker

pytest.importorskip("mediapipe")


def frames_of(images, fps=30.0):
    return [Frame(index=i, t_capture=0.0, t_video=i / fps, image=im) for i, im in enumerate(images)]


def test_states_face_lost_no_face_reacquired():
    images = list(render(ClipSpec(seconds=2.0, events=0, seed=2)))
    for i in range(10, 40):  # 1 s blanked out: lost for lost_s, then no face
        images[i] = np.zeros_like(images[i])
    with FaceTracker(lost_s=0.3) as tracker:
        out = [tracker.track(f) for f in frames_of(images)]
    states = [ff.state for ff in out]
    assert states[:10] == ["face"] * 10
    assert states[10:19] == ["lost"] * 9 and set(states[19:40]) == {"no_face"}
    assert states[40] == "reacquired" and set(states[41:]) == {"face"}
    assert out[15].crop is None and out[15].box is not None and out[30].box is None
    ff = out[5]
    assert ff.crop.shape == (128, 128) and ff.crop.dtype == np.uint8
    assert ff.landmarks.shape == (468, 2) and "track" in ff.frame.stage_ms


@pytest.mark.parametrize("angle,scale", [(0.0, 1.0), (20.0, 0.7), (-15.0, 1.3)])
def test_alignment_puts_the_eyes_at_the_canonical_positions(angle, scale):
    photo = synth._photo("astronaut.jpg")
    kp = synth.keypoints("astronaut.jpg")
    eyes = np.array([(kp["eye_l_out"] + kp["eye_l_in"]) / 2, (kp["eye_r_out"] + kp["eye_r_in"]) / 2])
    m = cv2.getRotationMatrix2D(tuple(map(float, eyes.mean(0))), angle, 2.0 * scale)
    m[:, 2] += np.array([320, 240]) - eyes.mean(0)
    image = cv2.warpAffine(photo, m, (640, 480), borderMode=cv2.BORDER_REFLECT101)
    true_eyes = eyes @ m[:, :2].T + m[:, 2]
    with FaceTracker(crop_size=128) as tracker:
        ff = tracker.track(frames_of([image])[0])
        m = tracker.faces[0].m
        in_crop = true_eyes @ m[:, :2].T + m[:, 2]
    assert ff.state == "face"
    assert np.abs(in_crop - CANONICAL_EYES * 128).max() < 1.5
    # and the crop is upright: the eye line is horizontal
    assert abs(math.degrees(math.atan2(*(in_crop[1] - in_crop[0])[::-1]))) < 1.0


def test_largest_face_is_tracked():
    (image,) = render(ClipSpec(seconds=1 / 30, events=0, second_face="camera.png"))
    with FaceTracker() as tracker:
        ff = tracker.track(frames_of([image])[0])
    x, y, w, h = ff.box
    assert abs(x + w / 2 - 320) < 60 and abs(y + h / 2 - 240) < 80


def test_haar_fallback_with_a_warning_when_mediapipe_is_missing(monkeypatch):
    real_import = builtins.__import__

    def no_mediapipe(name, *args, **kwargs):
        if name.startswith("mediapipe"):
            raise ImportError("no mediapipe here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    with pytest.warns(RuntimeWarning, match="Haar"):
        tracker = FaceTracker()
    assert tracker.name == "haar"
    images = list(render(ClipSpec(seconds=0.2, events=0, seed=1)))
    out = [tracker.track(f) for f in frames_of(images)]
    assert {ff.state for ff in out} == {"face"} and out[-1].crop.shape == (128, 128)
    x, y, w, h = out[-1].box
    assert abs(x + w / 2 - 320) < 60


def test_haar_fallback_without_cascades_says_what_to_install(monkeypatch):
    """OpenCV 5 dropped cv2.CascadeClassifier from the main package: a clear error, not an AttributeError."""
    import cv2

    from realtime.tracking import FaceTracker

    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(RuntimeError, match="no Haar cascade.*mediapipe"):
        FaceTracker(backend="haar")
