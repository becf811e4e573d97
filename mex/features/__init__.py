"""The one feature path: (onset, apex) face crops -> float32 (3, 28, 28) in [0, 1], channels (u, v, strain).

`mex-train`'s raw-dataset readers and `mex-live` both call `encode` / `encode_batch`; nothing else
makes model inputs. The recipe (ENCODING_VERSION in mex.labels) is the composite set's
(data/megc2019-composite-flow/README.md):

1. both crops to grey levels in 0..255 (uint8 as is; float in [0, 1] times 255; BGR with the
   cv2.COLOR_BGR2GRAY weights 0.114 B + 0.587 G + 0.299 R, unrounded);
2. TV-L1 flow onset -> apex with OpenCV's default parameters and algorithm (backends.py), u horizontal (positive =
   motion to the right), v vertical (positive = down), computed on the crops padded by FLOW_PAD px
   of replicated edge and cropped back: TV-L1 warps with zeros outside the image, which gives the
   outermost pixels spurious flows of several px that differ from solver to solver and would set
   the min-max range of the whole channel (measured in docs/features.md);
3. optical strain sqrt(ux^2 + vy^2 + 1/2 (uy + vx)^2), derivatives by central differences
   (one-sided at the borders, numpy.gradient);
4. each channel min-max scaled to [0, 1] over the crop, at crop resolution;
5. resized to 28x28 with OpenCV's INTER_AREA weights (pixel-area averaging), done here as two small
   matrix products so that this module needs no cv2 and the same code runs for every backend.

No signal gives zeros, not noise blown up to [0, 1]: a pair in which either crop is constant encodes
to all zeros (no flow is computed), and a channel whose values span less than MIN_RANGE encodes to
zeros. Malformed input (crops of different sizes, empty, NaN/inf, unsupported dtype or shape, floats
outside [0, 1], crops smaller than MIN_CROP_SIZE) raises ValueError naming the problem.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..labels import INPUT_SHAPE
from .backends import BackendUnavailable, FlowBackend, available_backends, get_backend
from .params import TVL1Params

__all__ = ["encode", "encode_batch", "crop_flow", "flow_to_features", "get_backend", "available_backends",
           "FlowBackend", "BackendUnavailable", "TVL1Params", "CROP_SIZE", "FLOW_PAD", "MIN_CROP_SIZE", "MIN_RANGE"]

CROP_SIZE = 224  # side of the live recognition crop (px): about the databases' own face crops (CASME II's are
# about 231 x 282), so the flow is solved at the scale the training images were computed at
MIN_CROP_SIZE = 32  # smaller crops give a 2-level pyramid and would have to be upsampled to 28x28
FLOW_PAD = 8  # px of replicated edge around each crop while solving (see step 2)
MIN_RANGE = 1e-6  # a channel spanning less than this (px, or strain units) carries no signal
BGR_TO_GRAY = np.array([0.114, 0.587, 0.299], dtype=np.float32)  # cv2.COLOR_BGR2GRAY


def _gray(image, what: str) -> np.ndarray:
    """One crop as float32 (H, W) grey levels in 0..255, or ValueError saying what is wrong with it."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what}: expected a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError(f"{what}: empty image (shape {image.shape})")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"{what}: expected a (H, W) grey or (H, W, 3) BGR image, got shape {image.shape}")
    if image.dtype == np.uint8:
        gray = image.astype(np.float32)
    elif image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError(f"{what}: contains NaN or infinity")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{what}: float images must be in [0, 1] (OpenCV's convention), got {lo:g}..{hi:g}; "
                             "pass uint8 for 0..255")
        gray = image.astype(np.float32) * np.float32(255)
    else:
        raise ValueError(f"{what}: dtype {image.dtype} is not supported; pass uint8 (0..255) or float in [0, 1]")
    if gray.ndim == 3:
        gray = gray @ BGR_TO_GRAY
    h, w = gray.shape
    if h < MIN_CROP_SIZE or w < MIN_CROP_SIZE:
        raise ValueError(f"{what}: crop is {h}x{w} px; the minimum is {MIN_CROP_SIZE}x{MIN_CROP_SIZE} "
                         f"(the live pipeline uses {CROP_SIZE}x{CROP_SIZE})")
    return gray


def area_resize_matrix(n_src: int, n_dst: int) -> np.ndarray:
    """(n_dst, n_src) weights of cv2.resize INTER_AREA shrinking one axis: each output pixel is the
    mean of the source pixels its footprint covers, partly covered ones weighted by the overlap."""
    if n_dst > n_src:
        raise ValueError(f"area resize shrinks only ({n_src} -> {n_dst})")
    scale = n_src / n_dst
    weights = np.zeros((n_dst, n_src), dtype=np.float64)
    for i in range(n_dst):
        start, end = i * scale, min((i + 1) * scale, n_src)
        for s in range(int(np.floor(start)), int(np.ceil(end))):
            weights[i, s] = min(end, s + 1) - max(start, s)
        weights[i] /= weights[i].sum()
    return weights


def _minmax(channels: np.ndarray) -> np.ndarray:
    """Scale each (pair, channel) image to [0, 1]; zero where its range is below MIN_RANGE."""
    lo = channels.min(axis=(-2, -1), keepdims=True)
    span = channels.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span >= MIN_RANGE, (channels - lo) / np.maximum(span, MIN_RANGE), 0.0)


def flow_to_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Steps 3-5: flow (B, H, W) x 2 -> float32 (B, 3, 28, 28) in [0, 1]."""
    u = u.astype(np.float64)
    v = v.astype(np.float64)
    uy, ux = np.gradient(u, axis=(-2, -1))
    vy, vx = np.gradient(v, axis=(-2, -1))
    strain = np.sqrt(ux ** 2 + vy ** 2 + 0.5 * (uy + vx) ** 2)
    scaled = _minmax(np.stack([u, v, strain], axis=1))
    _, out_h, out_w = INPUT_SHAPE
    rows = area_resize_matrix(u.shape[-2], out_h)
    cols = area_resize_matrix(u.shape[-1], out_w)
    return np.clip(rows @ scaled @ cols.T, 0.0, 1.0).astype(np.float32)


def crop_flow(onset: np.ndarray, apex: np.ndarray, backend: FlowBackend) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: flow (u, v) of (B, H, W) float32 grey crops, solved with FLOW_PAD px of edge padding."""
    pad = ((0, 0), (FLOW_PAD, FLOW_PAD), (FLOW_PAD, FLOW_PAD))
    u, v = backend.flow(np.pad(onset, pad, mode="edge"), np.pad(apex, pad, mode="edge"))
    inside = (slice(None), slice(FLOW_PAD, u.shape[1] - FLOW_PAD), slice(FLOW_PAD, u.shape[2] - FLOW_PAD))
    return u[inside], v[inside]


def encode_batch(onsets: Sequence[np.ndarray], apexes: Sequence[np.ndarray],
                 flow: str | FlowBackend = "auto") -> np.ndarray:
    """Pairs of aligned face crops -> float32 (B, 3, 28, 28). All crops must have one size.

    `flow` is a backend name ("auto" or one of backends.BACKENDS) or a FlowBackend. The whole
    batch goes to the backend in one call, which is what the batched GPU backends want.
    """
    if len(onsets) != len(apexes):
        raise ValueError(f"{len(onsets)} onset crops but {len(apexes)} apex crops")
    if len(onsets) == 0:
        raise ValueError("empty batch: no pairs to encode")
    onset = [_gray(img, f"pair {k} onset") for k, img in enumerate(onsets)]
    apex = [_gray(img, f"pair {k} apex") for k, img in enumerate(apexes)]
    for k, (a, b) in enumerate(zip(onset, apex)):
        if a.shape != b.shape:
            raise ValueError(f"pair {k}: onset crop is {a.shape[0]}x{a.shape[1]} but apex crop is "
                             f"{b.shape[0]}x{b.shape[1]}; the two crops must have the same size")
        if a.shape != onset[0].shape:
            raise ValueError(f"pair {k}: crops are {a.shape[0]}x{a.shape[1]} but pair 0's are "
                             f"{onset[0].shape[0]}x{onset[0].shape[1]}; a batch needs one crop size")

    backend = get_backend(flow) if isinstance(flow, str) else flow  # built even when unused: fails early
    features = np.zeros((len(onset), *INPUT_SHAPE), dtype=np.float32)
    moving = [k for k in range(len(onset)) if np.ptp(onset[k]) > 0 and np.ptp(apex[k]) > 0]
    if moving:
        u, v = crop_flow(np.stack([onset[k] for k in moving]), np.stack([apex[k] for k in moving]), backend)
        if not (np.isfinite(u).all() and np.isfinite(v).all()):
            raise RuntimeError(f"flow backend {backend.name!r} returned NaN or infinity")
        features[moving] = flow_to_features(u, v)
    return features


def encode(onset: np.ndarray, apex: np.ndarray, flow: str | FlowBackend = "auto") -> np.ndarray:
    """One pair of aligned face crops (uint8 grey or BGR, same size) -> float32 (3, 28, 28) in [0, 1]."""
    return encode_batch([onset], [apex], flow)[0]
