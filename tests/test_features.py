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

from conftest import HAVE_OPENCV_TVL1, RUN_WHERE, needs_opencv_tvl1

cv2 = pytest.importorskip("cv2")
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
    reason_torch = None if torch.cuda.is_available() else f"torch sees no CUDA device ({RUN_WHERE})"
    try:
        get_backend("opencv-cuda")
        reason_cv = None
    except BackendUnavailable as e:
        reason_cv = f"{e} ({RUN_WHERE})"
    torch_marks = pytest.mark.skipif(reason_torch is not None, reason=str(reason_torch))
    return [pytest.param(label, marks=torch_marks)
            for label in ("torch-cuda", "torch-cuda-nograph", "torch-cuda-eager")] + [
        pytest.param("opencv-cuda", marks=pytest.mark.skipif(reason_cv is not None, reason=str(reason_cv)))]


def make_backend(label: str) -> FlowBackend:
    """torch-cuda is the default (Triton kernel per level and warp + CUDA graph where Triton is installed)."""
    return {"torch-cpu": lambda: TorchFlow("cpu"), "torch-cuda": lambda: TorchFlow("cuda"),
            "torch-cuda-nograph": lambda: TorchFlow("cuda", cuda_graph=False),
            "torch-cuda-eager": lambda: TorchFlow("cuda", fused=False),
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


needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")


@needs_opencv_tvl1
@needs_numba
def test_numba_parity_with_opencv(pairs):
    check_parity(get_backend("numba"), pairs)


@needs_opencv_tvl1
@needs_numba
def test_numba_follows_opencv_at_the_live_crop_size():
    """At the live size (mex.features.CROP_SIZE, solved FLOW_PAD px larger) the numba solver is OpenCV's algorithm:
    the same flow inside the padding up to float rounding and the odd stopping decision, the same features."""
    from mex.features import CROP_SIZE, FLOW_PAD

    item = synthetic_pairs(1, CROP_SIZE, seed=5)[0]
    onset, apex = item.onset[None].astype(np.float32), item.apex[None].astype(np.float32)
    u_cv, v_cv = crop_flow(onset, apex, OpenCVFlow())
    u_nb, v_nb = crop_flow(onset, apex, get_backend("numba"))
    inner = np.s_[:, FLOW_PAD:-FLOW_PAD, FLOW_PAD:-FLOW_PAD]
    assert np.abs(u_nb - u_cv)[inner].mean() < 0.01 and np.abs(v_nb - v_cv)[inner].mean() < 0.01
    assert np.abs(u_nb - u_cv)[inner].max() < 0.25 and np.abs(v_nb - v_cv)[inner].max() < 0.25
    features_cv, features_nb = flow_to_features(u_cv, v_cv), flow_to_features(u_nb, v_nb)
    for c in range(3):
        assert correlation(features_nb[0, c], features_cv[0, c]) > 0.99, f"channel {c}"


@pytest.mark.parametrize("name",
                         [pytest.param("cpu", marks=needs_opencv_tvl1), pytest.param("numba", marks=needs_numba)])
def test_backend_gives_the_same_flow_when_called_from_two_threads(name, pairs):
    """mex-live's recognizer and speculator share one backend and may call it at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    onset, apex = pairs[0], pairs[1]
    backend = get_backend(name)
    alone = [backend.flow(onset[k:k + 1], apex[k:k + 1]) for k in range(len(onset))]
    jobs = [k for k in range(len(onset)) for _ in range(3)]  # each pair three times, all at once
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda k: backend.flow(onset[k:k + 1], apex[k:k + 1]), jobs))
    for j, (u, v) in enumerate(together):
        np.testing.assert_array_equal(u, alone[j // 3][0])
        np.testing.assert_array_equal(v, alone[j // 3][1])


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


FUSED_SOLVE_CHECK = textwrap.dedent("""
    import numpy as np
    import torch
    from mex.features import tvl1_triton
    from mex.features.synthetic import synthetic_pairs
    from mex.features.tvl1_torch import FLOAT_EPS, TVL1, TVL1Params, median_blur

    torch.set_num_threads(1)
    # Tiles smaller than the images and not dividing them (the GPU configs are 512 / 1024 px).
    tvl1_triton.SMALL_BATCH_CONFIG = tvl1_triton.LARGE_BATCH_CONFIG = (256, 4)

    # The median: one launch with no inner iterations applies it once per outer iteration.
    g = torch.Generator().manual_seed(0)
    u1, u2 = torch.randn(2, 2, 19, 23, generator=g)
    u2[1, :, 7] = 1.5  # ties
    zeros = [torch.zeros_like(u1) for _ in range(8)]
    iterations = torch.zeros(2, dtype=torch.int32)
    kw = dict(l_t=0.045, theta=0.3, taut=0.25 / 0.3, scaled_epsilon=1.0, float_eps=FLOAT_EPS, inner_iterations=0)
    for outer in (1, 2):
        m1, m2 = u1.clone(), u2.clone()
        tvl1_triton.solve_warp(m1, m2, *zeros, iterations, outer_iterations=outer, median_filtering=5, **kw)
        e1, e2 = u1, u2
        for _ in range(outer):
            e1, e2 = median_blur(e1, 5), median_blur(e2, 5)
        assert torch.equal(m1, e1) and torch.equal(m2, e2), f"median x{outer} differs from median_blur"

    # The whole solve against the eager solver: 2 pairs of 24x28, levels 24x28 and 19x22.
    items = synthetic_pairs(1, 28, seed=5)
    onset = torch.tensor(items[0].onset, dtype=torch.float32)[2:26]
    apex = torch.tensor(items[0].apex, dtype=torch.float32)[2:26]
    i0 = torch.stack([onset, onset])
    i1 = torch.stack([apex, onset + 0.1 * (apex - onset)])  # pair 1: a tenth of the motion, converges early
    params = TVL1Params(nscales=2, warps=2, inner_iterations=8, outer_iterations=3, epsilon=0.03)
    fused = TVL1(params, fused=True)
    u_fused, v_fused = fused(i0, i1)
    eager = TVL1(params, check_every=1)
    u_eager, v_eager = eager(i0, i1)
    torch.testing.assert_close(u_fused, u_eager, rtol=0, atol=1e-4)
    torch.testing.assert_close(v_fused, v_eager, rtol=0, atol=1e-4)
    assert u_eager.abs().max() > 0.5  # a real flow, not two zero fields
    # Each pair stopped exactly where the eager solver stops it when it is solved alone.
    alone = []
    for k in range(2):
        solver = TVL1(params, check_every=1)
        solver(i0[k:k + 1], i1[k:k + 1])
        alone.append(solver.inner_iterations_run)
    per_pair = fused.iterations_per_pair.tolist()
    assert per_pair == alone, (per_pair, alone)
    full = params.nscales * params.warps * params.outer_iterations * params.inner_iterations
    # pair 0 runs some warps to the full count and converges in others; pair 1 converges early
    assert full - 3 * params.inner_iterations < per_pair[0] < full and per_pair[1] < full // 2, per_pair
    print("fused solve ok", per_pair)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) >= "2.0.0",
                    reason="Triton's CPU interpreter (triton 3.6) turns 1-element arrays into loop bounds with int(), "
                           f"which numpy 2 refuses: this check needs numpy 1.x ({RUN_WHERE})")
def test_fused_triton_solve_equals_eager_solver():
    """The per-(level, warp) Triton kernel, run by Triton's CPU interpreter:
    its 5x5 median equals median_blur exactly, its flow equals the eager solver's up to float rounding,
    and each pair runs as many inner iterations as the eager solver gives it (one pair converges early)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # read when kernels are decorated: own process
    done = subprocess.run([sys.executable, "-c", FUSED_SOLVE_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                    reason=f"needs CUDA and Triton ({RUN_WHERE})")
def test_fused_cuda_solve_equals_eager_cuda_solve():
    """On a GPU: the Triton path, with and without the CUDA graph (replayed twice: static buffers), gives
    the eager loop's flow, and each pair the iterations the eager solver gives it alone."""
    items = synthetic_pairs(3, 48, seed=5)
    i0 = torch.tensor(np.stack([p.onset for p in items]), dtype=torch.float32, device="cuda")
    i1 = torch.tensor(np.stack([p.apex for p in items]), dtype=torch.float32, device="cuda")
    i1[2] = i0[2]  # converges at once
    eager = TVL1(TVL1Params(), check_every=1)
    u_eager, v_eager = eager(i0, i1)
    alone = []
    for k in range(3):
        eager(i0[k:k + 1], i1[k:k + 1])
        alone.append(eager.inner_iterations_run)
    for flow in (TorchFlow("cuda", cuda_graph=False), TorchFlow("cuda", cuda_graph=True)):
        for _ in range(2):
            u, v = flow.solve(i0, i1)
            # GPU rounding (FMA, sqrt for hypot) may move a pair's stop by an iteration, whose update is
            # ~epsilon = 0.01 px RMS; a race between the kernel's phases would show as far more
            for ours, theirs in ((u, u_eager), (v, v_eager)):
                assert (ours - theirs).abs().max() < 2e-2 and (ours - theirs).abs().mean() < 1e-3
            assert np.abs(flow.solver.iterations_per_pair.cpu().numpy() - alone).max() <= 5, alone
        assert flow.cuda_graph == bool(flow._graphs) and not flow._graph_failed


def test_failed_cuda_graph_capture_falls_back_with_one_warning(caplog):
    """No CUDA here: the capture fails, one warning is logged and the flow is the eager solve's."""
    params = TVL1Params(nscales=1, warps=1, inner_iterations=3, outer_iterations=1)
    items = synthetic_pairs(1, 32, seed=2)
    onset, apex = items[0].onset[None].astype(np.float32), items[0].apex[None].astype(np.float32)
    flow = TorchFlow("cpu", params=params)
    expected = flow.flow(onset, apex)
    flow.cuda_graph = True  # as on CUDA; the capture needs CUDA, so it fails here
    with caplog.at_level("WARNING", logger="mex.features.backends"):
        for _ in range(2):
            got = flow.flow(onset, apex)
            np.testing.assert_array_equal(got[0], expected[0])
    assert [r.message.startswith("CUDA-graph capture of the TV-L1 solve failed") for r in caplog.records] == [True]
    assert flow._graph_failed and "CUDA graph" not in repr(flow)


def median25_network() -> list[tuple[int, int, str]]:
    """The comparator network of tvl1_triton._median25, read from its source (no Triton import):
    (a, b, kind) per statement, kind "both" for `va, vb = min, max`, "min" / "max" for one output."""
    import ast

    source = open(os.path.join(os.path.dirname(__file__), "..", "mex", "features", "tvl1_triton.py")).read()
    function = next(f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef) and f.name == "_median25")

    def call(node, name):  # tl.<name>(vA, vB) -> (A, B)
        assert isinstance(node, ast.Call) and ast.unparse(node.func) == f"tl.{name}", ast.unparse(node)
        return tuple(int(arg.id[1:]) for arg in node.args)

    network = []
    for statement in function.body[1:-1]:  # between the docstring and the return
        assert isinstance(statement, ast.Assign), ast.unparse(statement)
        target, value = statement.targets[0], statement.value
        if isinstance(target, ast.Tuple):
            a, b = call(value.elts[0], "minimum")
            assert call(value.elts[1], "maximum") == (a, b) and [t.id for t in target.elts] == [f"v{a}", f"v{b}"]
            network.append((a, b, "both"))
        elif isinstance(value, ast.Call) and ast.unparse(value.func) == "tl.minimum":
            a, b = call(value, "minimum")
            assert target.id == f"v{a}", ast.unparse(statement)
            network.append((a, b, "min"))
        else:
            a, b = call(value, "maximum")
            assert target.id == f"v{b}", ast.unparse(statement)
            network.append((a, b, "max"))
    assert ast.unparse(function.body[-1]) == "return v12"
    return network


def test_median_network_selects_the_median_of_25():
    """0-1 principle: a min/max network that returns the 13th smallest of every 0/1 input does so for
    every input. All 2^25 inputs, bit-parallel: wires 0..19 enumerate 2^20 inputs as bits of uint64
    words, wires 20..24 are constant per round. Then random floats against numpy's median."""
    network = median25_network()
    assert len(network) == 113
    n = np.arange(1 << 20, dtype=np.uint32)
    popcount = np.zeros(n.shape, np.int64)
    for bit in range(20):
        popcount += (n >> bit) & 1
    low = [np.packbits(((n >> bit) & 1).astype(bool), bitorder="little").view(np.uint64) for bit in range(20)]
    ones, zeros = np.full_like(low[0], np.iinfo(np.uint64).max), np.zeros_like(low[0])
    for high in range(32):
        v = low + [ones if (high >> bit) & 1 else zeros for bit in range(5)]
        for a, b, kind in network:
            lo, hi = v[a] & v[b], v[a] | v[b]
            if kind != "max":
                v[a] = lo
            if kind != "min":
                v[b] = hi
        expected = np.packbits(popcount + bin(high).count("1") >= 13, bitorder="little").view(np.uint64)
        assert np.array_equal(v[12], expected), f"wrong median for some input with high bits {high:05b}"

    values = np.random.default_rng(0).standard_normal((25, 1000)).astype(np.float32)
    values[:, :10] = np.round(values[:, :10])  # ties
    v = list(values)
    for a, b, kind in network:
        lo, hi = np.minimum(v[a], v[b]), np.maximum(v[a], v[b])
        v[a], v[b] = (lo if kind != "max" else v[a]), (hi if kind != "min" else v[b])
    np.testing.assert_array_equal(v[12], np.median(values, axis=0))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_fused_triton_kernel_compiles_for_h100():
    """Ahead-of-time compile to sm_90 cubins (Triton's bundled ptxas) in both launch configurations,
    without spilling: no GPU needed, none used."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mex.features.tvl1_triton import LARGE_BATCH_CONFIG, SMALL_BATCH_CONFIG, _warp_kernel

    pointers = "u1 u2 p11 p12 p21 p22 i1wx i1wy grad rho m1 m2".split()
    signature = {f"{name}_ptr": "*fp32" for name in pointers}
    signature.update(iterations_ptr="*i32", H="i32", W="i32", outer_iterations="i32", inner_iterations="i32",
                     l_t="fp32", theta="fp32", taut="fp32", scaled_epsilon="fp32", float_eps="fp32",
                     MEDIAN="constexpr", BLOCK="constexpr")
    for block, num_warps in (SMALL_BATCH_CONFIG, LARGE_BATCH_CONFIG):
        source = ASTSource(fn=_warp_kernel, signature=signature, constexprs={"MEDIAN": True, "BLOCK": block})
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": num_warps, "num_stages": 1})
        assert kernel.asm["cubin"]
        assert "bar.sync" in kernel.asm["ptx"]  # the phase barriers survived compilation
        assert ".local" not in kernel.asm["ptx"], f"BLOCK={block}, {num_warps} warps spills registers"


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


@pytest.mark.parametrize("backend",
                         [pytest.param("cpu", marks=needs_opencv_tvl1), pytest.param("numba", marks=needs_numba),
                          "torch"])
def test_rightward_motion_is_positive_u(backend):
    """Channel 0 is horizontal flow, positive when the face moves right (and v is down-positive)."""
    items = synthetic_pairs(1, 48, seed=7)
    onset = items[0].onset.astype(np.float32)
    apex = np.roll(onset, shift=(1, 0), axis=(0, 1)).copy()  # content moves 1 px down
    apex = np.roll(apex, shift=1, axis=1)  # and 1 px right
    with single_thread():
        u, v = {"cpu": OpenCVFlow, "numba": lambda: get_backend("numba"),
                "torch": lambda: TorchFlow("cpu")}[backend]().flow(
            onset[None], apex[None])
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


@needs_opencv_tvl1
def test_bench_flow_recipes_compares_every_recipe_with_the_default(tmp_path):
    import json

    from benchmarks.cli import main as bench

    assert bench(["flow-recipes", "--pairs", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "flow-recipes.json").read_text())["results"]
    assert rows[0]["recipe"].startswith("default") and rows[0]["corr_min_pair"] == pytest.approx(1.0)
    assert all(r["ms_per_pair"] > 0 and r["epe_truth_px"] > 0 for r in rows)
    assert any(r["crop_px"] == 64 and not r["faithful"] for r in rows)  # half-size crops change the features


@needs_numba
def test_numba_without_a_writable_cache_runs_uncached(monkeypatch):
    """An install folder and a HOME the user cannot write: numba finds no cache location and refuses
    cache=True; the loops are then compiled in the process, with a warning that says how to keep them."""
    from numba.core import caching

    from mex.features import tvl1_numba

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])  # no locator: as with nowhere to write
    tvl1_numba._compile.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="cannot cache function.*NUMBA_CACHE_DIR"):
            loop = tvl1_numba._compile()
        assert type(loop._cache).__name__ == "NullCache"  # compiled in the process, nothing on disk
    finally:
        tvl1_numba._compile.cache_clear()
