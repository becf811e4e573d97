"""mex.features: the encoding, its input checks, and every flow backend's parity with OpenCV's CPU TV-L1.

Parity pairs are real face photos warped by known smooth sub-pixel motion plus noise
(mex.features.synthetic). 64x64 crops keep the torch-on-CPU solve to about a second.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mex.features import (BackendUnavailable, FlowBackend, area_resize_matrix, available_backends, crop_flow,
                          encode, encode_batch, flow_to_features, get_backend)
from mex.features.backends import OpenCVFlow, TorchFlow, resolve
from mex.features.synthetic import synthetic_pairs
from mex.features.tvl1_torch import TVL1, TVL1Params, linear_resize_matrix, pyramid_sizes
from mex.labels import INPUT_SHAPE

cv2 = pytest.importorskip("cv2")
HAVE_OPENCV_TVL1 = "cpu" in available_backends()
needs_opencv_tvl1 = pytest.mark.skipif(not HAVE_OPENCV_TVL1, reason="OpenCV contrib (cv2.optflow) is not installed")
SIZE = 64
MARGIN = SIZE // 8  # EPE is measured inside this border: outside it both solvers see zero padding


def epe(flow: np.ndarray, truth: np.ndarray) -> float:
    """Mean end-point error (px) of (2, H, W) flows inside the margin."""
    return float(np.sqrt(((flow - truth) ** 2).sum(0))[MARGIN:-MARGIN, MARGIN:-MARGIN].mean())


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


class single_thread:
    """torch on 1 CPU thread: many tiny ops are faster than with OpenMP on a shared machine."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def gpu_backends() -> list:
    """Backends that need CUDA, skipped here with the reason when it is missing."""
    reason_torch = None if torch.cuda.is_available() else "torch sees no CUDA device"
    try:
        get_backend("opencv-cuda")
        reason_cv = None
    except BackendUnavailable as e:
        reason_cv = str(e)
    return [pytest.param("torch-cuda", marks=pytest.mark.skipif(reason_torch is not None, reason=str(reason_torch))),
            pytest.param("opencv-cuda", marks=pytest.mark.skipif(reason_cv is not None, reason=str(reason_cv)))]


def make_backend(label: str) -> FlowBackend:
    return {"torch-cpu": lambda: TorchFlow("cpu"), "torch-cuda": lambda: TorchFlow("cuda"),
            "opencv-cuda": lambda: get_backend("opencv-cuda")}[label]()


@pytest.fixture(scope="module")
def pairs():
    """Pairs, truth, and the reference flow: OpenCV's CPU TV-L1, or where OpenCV contrib is missing (the
    GPU image) our torch solver on the CPU, which test_torch_cpu_parity_with_opencv ties to OpenCV."""
    items = synthetic_pairs(4, SIZE, seed=3)
    onset = np.stack([p.onset for p in items]).astype(np.float32)
    apex = np.stack([p.apex for p in items]).astype(np.float32)
    truth = np.stack([p.flow for p in items])
    with single_thread():
        u, v = crop_flow(onset, apex, OpenCVFlow() if HAVE_OPENCV_TVL1 else TorchFlow("cpu"))
    reference = np.stack([u, v], axis=1)
    return onset, apex, truth, reference, flow_to_features(u, v)


def check_parity(backend: FlowBackend, pairs) -> None:
    onset, apex, truth, reference, reference_features = pairs
    u, v = crop_flow(onset, apex, backend)
    ours = np.stack([u, v], axis=1)
    epe_ours = np.mean([epe(f, t) for f, t in zip(ours, truth)])
    epe_opencv = np.mean([epe(f, t) for f, t in zip(reference, truth)])
    assert epe_ours <= 1.10 * epe_opencv, f"{backend}: EPE {epe_ours:.3f} px vs OpenCV CPU {epe_opencv:.3f} px"
    features = flow_to_features(u, v)
    for k in range(len(features)):
        r = correlation(features[k], reference_features[k])
        assert r >= 0.98, f"{backend}: pair {k} features correlate {r:.4f} with the CPU path's"


@needs_opencv_tvl1
def test_opencv_cpu_recovers_the_known_motion(pairs):
    _, _, truth, reference, _ = pairs
    for flow, t in zip(reference, truth):
        assert epe(flow, t) < 0.6 * epe(np.zeros_like(t), t)  # noise (1.5 grey levels) bounds small motions


@needs_opencv_tvl1
def test_torch_cpu_parity_with_opencv(pairs):
    with single_thread():
        check_parity(TorchFlow("cpu"), pairs)


@pytest.mark.parametrize("label", gpu_backends())
def test_gpu_backend_parity_with_opencv(label, pairs):
    check_parity(make_backend(label), pairs)


@pytest.mark.parametrize("check_every", [None, 4])
def test_masked_iterations_do_not_change_the_flow(check_every):
    """Checking convergence rarely (a GPU) or never (a CUDA graph: fixed counts, converged pairs frozen
    by a mask) computes the same flow as checking after every inner iteration."""
    params = TVL1Params(nscales=2, warps=2, inner_iterations=6, outer_iterations=3, epsilon=0.05)
    items = synthetic_pairs(3, 32, seed=5)
    i0 = torch.tensor(np.stack([p.onset for p in items]), dtype=torch.float32)
    i1 = torch.tensor(np.stack([p.apex for p in items]), dtype=torch.float32)
    i1[2] = i0[2]  # identical frames: converges at once while the others keep iterating
    every, rarely = TVL1(params, check_every=1), TVL1(params, check_every=check_every)
    with single_thread():
        u_every, v_every = every(i0, i1)
        u_rarely, v_rarely = rarely(i0, i1)
    assert every.inner_iterations_run < rarely.inner_iterations_run
    torch.testing.assert_close(u_rarely, u_every)
    torch.testing.assert_close(v_rarely, v_every)


FUSED_STEP_CHECK = textwrap.dedent("""
    import torch
    from mex.features.tvl1_torch import FLOAT_EPS, inner_step
    from mex.features.tvl1_triton import fused_inner_step

    g = torch.Generator().manual_seed(0)
    b, h, w = 2, 19, 37  # 16 x 32 tiles that do not divide the image
    rand = lambda scale: torch.randn(b, h, w, generator=g) * scale
    u1, u2, p11, p12, p21, p22, i1wx, i1wy, rho_c = (rand(s) for s in (0.5, 0.5, .1, .1, .1, .1, 20, 20, 10))
    grad = i1wx ** 2 + i1wy ** 2
    state = [u1, u2, p11, p12, p21, p22, torch.tensor([float("inf"), 1e-9])]  # pair 1 has converged
    eager = list(state)
    kw = dict(l_t=0.045, theta=0.3, taut=0.25 / 0.3, scaled_epsilon=1e-4 * h * w, float_eps=FLOAT_EPS)
    for _ in range(2):
        state = fused_inner_step(*state[:6], i1wx, i1wy, grad, rho_c, state[6], **kw)
        eager = inner_step(*eager[:6], i1wx, i1wy, grad, rho_c, eager[6], **kw)
    for name, a, e in zip("u1 u2 p11 p12 p21 p22 error".split(), state, eager):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=name)
    assert torch.equal(state[0][1], u1[1]), "a converged pair must stay frozen"
    print("fused step ok")
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_fused_triton_step_equals_eager_step():
    """The fused Triton kernel, run by Triton's CPU interpreter (it has not run on a GPU here)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # read when kernels are decorated: own process
    done = subprocess.run([sys.executable, "-c", FUSED_STEP_CHECK], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_fused_triton_kernel_compiles_for_h100():
    """Ahead-of-time compile to an sm_90 cubin (Triton's bundled ptxas): no GPU needed, none used."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mex.features.tvl1_triton import BLOCK_H, BLOCK_W, _inner_step_kernel

    pointers = ("u1 u2 p11 p12 p21 p22 i1wx i1wy grad rho error_in u1o u2o p11o p12o p21o p22o error_out").split()
    signature = {f"{name}_ptr": "*fp32" for name in pointers}
    signature.update(H="i32", W="i32", l_t="fp32", theta="fp32", taut="fp32", scaled_epsilon="fp32",
                     float_eps="fp32", BLOCK_H="constexpr", BLOCK_W="constexpr")
    source = ASTSource(fn=_inner_step_kernel, signature=signature, constexprs={"BLOCK_H": BLOCK_H, "BLOCK_W": BLOCK_W})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    assert kernel.asm["cubin"]


def test_resize_weights_match_opencv():
    x = np.random.default_rng(0).random((37, 45)).astype(np.float32)
    down = cv2.resize(x, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    ours = linear_resize_matrix(37, down.shape[0], 1 / 0.8) @ x @ linear_resize_matrix(45, down.shape[1], 1 / 0.8).T
    np.testing.assert_allclose(ours, down, atol=1e-5)
    up = cv2.resize(x, (60, 50), interpolation=cv2.INTER_LINEAR)
    ours = linear_resize_matrix(37, 50, 37 / 50) @ x @ linear_resize_matrix(45, 60, 45 / 60).T
    np.testing.assert_allclose(ours, up, atol=1e-5)
    for n in (128, 64, 33):
        area = cv2.resize(x[:, :33] if n == 33 else np.resize(x, (n, n)), (28, 28), interpolation=cv2.INTER_AREA)
        src = x[:, :33] if n == 33 else np.resize(x, (n, n))
        np.testing.assert_allclose(area_resize_matrix(src.shape[0], 28) @ src @ area_resize_matrix(src.shape[1], 28).T,
                                   area, atol=1e-5)


def test_pyramid_sizes_match_opencv():
    params = TVL1Params()
    for side in (128, 64, 32):
        sizes, image = [(side, side)], np.zeros((side, side), np.float32)
        for _ in range(1, params.nscales):
            image = cv2.resize(image, None, fx=params.scale_step, fy=params.scale_step)
            if min(image.shape) < 16:
                break
            sizes.append(image.shape)
        assert pyramid_sizes(side, side, params) == sizes


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_opencv_tvl1), "torch"])
def test_rightward_motion_is_positive_u(backend):
    """Channel 0 is horizontal flow, positive when the face moves right (and v is down-positive)."""
    items = synthetic_pairs(1, 48, seed=7)
    onset = items[0].onset.astype(np.float32)
    apex = np.roll(onset, shift=(1, 0), axis=(0, 1)).copy()  # content moves 1 px down
    apex = np.roll(apex, shift=1, axis=1)  # and 1 px right
    with single_thread():
        u, v = (OpenCVFlow() if backend == "cpu" else TorchFlow("cpu")).flow(onset[None], apex[None])
    inner = (slice(8, -8), slice(8, -8))
    assert 0.8 < np.median(u[0][inner]) < 1.2
    assert 0.8 < np.median(v[0][inner]) < 1.2


def test_channel_order_is_u_v_strain():
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32)
    u = (xs / 63.0)[None]  # grows to the right
    v = np.zeros_like(u)  # no vertical motion: v and, here, strain (constant ux) carry nothing
    features = flow_to_features(u, v)[0]
    assert features.shape == INPUT_SHAPE and features.dtype == np.float32
    assert np.all(np.diff(features[0], axis=1) > 0) and features[0].min() >= 0 and features[0].max() <= 1
    assert not features[1].any()
    assert not features[2].any()


class RecordingFlow(FlowBackend):
    """Returns a fixed smooth flow and remembers what it was given, without solving anything."""

    name = "recording"

    def __init__(self):
        self.calls = []

    def flow(self, onset, apex):
        self.calls.append((onset.copy(), apex.copy()))
        ys, xs = np.mgrid[0:onset.shape[1], 0:onset.shape[2]].astype(np.float32)
        u = np.broadcast_to(np.sin(xs / 9.0) * np.cos(ys / 7.0), onset.shape).copy()
        return u, 0.5 * u.transpose(0, 2, 1).copy() if onset.shape[1] == onset.shape[2] else u


def face(size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def test_encode_returns_the_model_input():
    backend = RecordingFlow()
    out = encode(face(), face(seed=1), flow=backend)
    assert out.shape == INPUT_SHAPE and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.max() > 0.5
    np.testing.assert_array_equal(out, encode_batch([face()], [face(seed=1)], flow=backend)[0])


def test_bgr_and_float_inputs_become_the_same_grey_levels():
    backend = RecordingFlow()
    gray = face()
    encode(gray, face(seed=1), flow=backend)
    encode(np.repeat(gray[:, :, None], 3, axis=2), face(seed=1), flow=backend)  # BGR with B = G = R
    encode(gray.astype(np.float32) / 255, face(seed=1), flow=backend)  # float in [0, 1]
    (a, _), (b, _), (c, _) = backend.calls
    np.testing.assert_allclose(b, a, atol=1e-3)
    np.testing.assert_allclose(c, a, atol=1e-3)


def test_constant_images_encode_to_zeros_without_solving():
    backend = RecordingFlow()
    flat = np.full((40, 40), 128, np.uint8)
    out = encode_batch([flat, face(), face()], [face(), flat, face(seed=2)], flow=backend)
    assert not out[0].any() and not out[1].any() and out[2].any()
    assert len(backend.calls) == 1 and len(backend.calls[0][0]) == 1  # only the moving pair was solved


@pytest.mark.parametrize("onset, apex, message", [
    (face(40), face(48), "same size"),
    (np.zeros((0, 40), np.uint8), face(), "empty"),
    (np.full((40, 40), np.nan, np.float32), face().astype(np.float32) / 255, "NaN"),
    (face().astype(np.int16), face(), "dtype int16"),
    (face()[None], face(), "shape"),
    (np.zeros((40, 40, 4), np.uint8), face(), "shape"),
    (face().astype(np.float32), face(), r"\[0, 1\]"),
    (face(16), face(16), "minimum"),
    ([[1, 2], [3, 4]], face(), "numpy array"),
])
def test_malformed_input_is_a_clear_error(onset, apex, message):
    with pytest.raises(ValueError, match=message):
        encode(onset, apex, flow=RecordingFlow())


def test_batch_errors():
    with pytest.raises(ValueError, match="one crop size"):
        encode_batch([face(40), face(48)], [face(40), face(48)], flow=RecordingFlow())
    with pytest.raises(ValueError, match="2 onset crops but 1 apex"):
        encode_batch([face(), face()], [face()], flow=RecordingFlow())
    with pytest.raises(ValueError, match="empty batch"):
        encode_batch([], [], flow=RecordingFlow())


def test_backend_selection():
    assert resolve("auto") == available_backends()[0]
    assert get_backend("auto") is get_backend("auto")  # built (and logged) once
    with pytest.raises(ValueError, match="unknown flow backend"):
        get_backend("farneback")
    if "opencv-cuda" not in available_backends():
        with pytest.raises(BackendUnavailable, match="opencv-cuda"):
            get_backend("opencv-cuda")


@needs_opencv_tvl1
def test_encode_end_to_end_on_opencv():
    items = synthetic_pairs(2, SIZE, seed=11)
    onset = [p.onset for p in items]
    apex = [p.apex for p in items]
    out = encode_batch(onset, apex, flow="cpu")
    stacked = (np.stack(onset).astype(np.float32), np.stack(apex).astype(np.float32))
    np.testing.assert_array_equal(out, flow_to_features(*crop_flow(*stacked, OpenCVFlow())))
    truth = flow_to_features(np.stack([p.flow[0] for p in items]), np.stack([p.flow[1] for p in items]))
    for k in range(2):
        # u and v against the true motion's encoding (noise and TV smoothing keep this well below 1)
        assert correlation(out[k, :2], truth[k, :2]) > 0.6
