"""Face pairs with known sub-pixel motion, for flow parity tests and benchmarks.

A shipped face photo is cropped and warped by a smooth random displacement field (0.1-2 px at the
crop size), both frames are rendered at 4x the crop size and area-downsampled (so they are equally
sharp), and sensor noise is added. The true flow follows OpenCV's convention: apex(x + flow) = onset(x).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FACES = Path(__file__).resolve().parent.parent / "assets" / "faces"
# Face boxes (x, y, side) in the shipped photos, so the crops look like aligned face crops.
FACE_BOXES = {"astronaut.jpg": (150, 20, 150), "camera.png": (160, 40, 140)}
SUPERSAMPLE = 4


@dataclass
class SyntheticPair:
    onset: np.ndarray  # uint8 (S, S)
    apex: np.ndarray  # uint8 (S, S)
    flow: np.ndarray  # float32 (2, S, S): true (u, v) in px, apex(x + flow) = onset(x)


def _smooth_field(rng: np.random.Generator, size: int, max_px: float) -> np.ndarray:
    """(2, size, size) displacement: a 4x4 grid of random vectors, bicubically interpolated."""
    import cv2

    coarse = rng.uniform(-1.0, 1.0, size=(2, 4, 4)).astype(np.float32)
    field = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return field * (max_px / max(np.abs(field).max(), 1e-6))


def synthetic_pair(rng: np.random.Generator, size: int, photo: str = "astronaut.jpg",
                   max_px: float = 1.0, noise: float = 1.5) -> SyntheticPair:
    """One pair at `size` x `size`: motion up to `max_px` px, Gaussian noise of `noise` grey levels."""
    import cv2

    image = cv2.imread(str(FACES / photo), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(FACES / photo)
    x, y, side = FACE_BOXES[photo]
    big = size * SUPERSAMPLE
    face = cv2.resize(image[y:y + side, x:x + side], (big, big), interpolation=cv2.INTER_CUBIC).astype(np.float32)

    flow = _smooth_field(rng, size, max_px)
    # At the supersampled scale the displacement is SUPERSAMPLE times larger.
    flow_big = np.stack([cv2.resize(c, (big, big), interpolation=cv2.INTER_LINEAR) for c in flow]) * SUPERSAMPLE
    grid_x, grid_y = np.meshgrid(np.arange(big, dtype=np.float32), np.arange(big, dtype=np.float32))
    # onset(x) = apex(x + flow): sample the apex (the plain photo) at the displaced positions.
    onset_big = cv2.remap(face, grid_x + flow_big[0], grid_y + flow_big[1], cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT)

    def render(frame: np.ndarray) -> np.ndarray:
        small = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        return np.clip(np.rint(small + rng.normal(0.0, noise, small.shape)), 0, 255).astype(np.uint8)

    return SyntheticPair(render(onset_big), render(face), flow.astype(np.float32))


def synthetic_pairs(count: int, size: int, seed: int = 0) -> list[SyntheticPair]:
    """`count` pairs alternating the two photos, max motion spread over 0.5-2 px."""
    rng = np.random.default_rng(seed)
    photos = sorted(FACE_BOXES)
    return [synthetic_pair(rng, size, photos[i % len(photos)], max_px=float(rng.uniform(0.5, 2.0)))
            for i in range(count)]
