"""Flow backends behind one interface: `backend.flow(onset, apex) -> (u, v)`.

Every backend takes two (B, H, W) float32 arrays of grey levels in 0..255 and returns the TV-L1 flow
(u horizontal, v vertical, in px, apex(x + flow) ~ onset(x)) as two float32 (B, H, W) arrays, with the
same parameters (`TVL1Params`, OpenCV's defaults). Choose one by name with `get_backend`:

- "cpu": OpenCV contrib `cv2.optflow.DualTVL1OpticalFlow`, one pair at a time; the reference.
- "numba": `tvl1_numba.TVL1Numba`, the same algorithm on the CPU with OpenCV's own resize, remap and
  median, and the inner iterations compiled by numba as two fused loops: faster than "cpu" at the live
  crop size (benchmarks/results/cpu2-x86_64/flow.md), features within 0.98 correlation of it (tests/test_features.py).
- "opencv-cuda": `cv2.cuda_OpticalFlowDual_TVL1`, only where OpenCV was built with CUDA (PyPI wheels
  never are). Its CUDA implementation has no median filtering and a single iteration count
  (inner x outer), so it is the same algorithm but not bit-for-bit the CPU one.
- "torch": `tvl1_torch.TVL1`, batched, on CUDA when there is one, else on the CPU (slow; for tests).
  On CUDA with Triton installed: one Triton launch per (pyramid level, warp) (tvl1_triton.py) and the
  whole solve captured as a CUDA graph per batch shape (docs/results.md, "What has run where").
- "auto": opencv-cuda, else torch on CUDA, else numba, else cpu.

cv2, numba and torch are imported lazily: the GPU image has torch + numpy and may have OpenCV without
contrib, and mex-live on the CPU starts seconds faster without torch.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from .params import TVL1Params

if TYPE_CHECKING:
    from .tvl1_torch import TVL1

log = logging.getLogger(__name__)

BACKENDS = ("cpu", "numba", "opencv-cuda", "torch")
DEFAULT_PARAMS = TVL1Params()


class BackendUnavailable(RuntimeError):
    """The named backend cannot run on this machine; the message says why."""


class FlowBackend:
    """Base class: `name`, `device`, and `flow(onset, apex) -> (u, v)` on (B, H, W) float32 in 0..255.

    `flow` may be called from several threads at once (mex-live's recognizer and speculator share one
    backend): a backend whose solver object keeps state between calls (OpenCV's algorithm objects,
    captured CUDA graphs with static buffers) serialises its calls with a lock."""

    name = ""
    device = "cpu"

    def flow(self, onset: np.ndarray, apex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"


def _opencv_optflow():
    try:
        import cv2
    except ImportError:
        raise BackendUnavailable("flow backend 'cpu' needs OpenCV (opencv-contrib-python)") from None
    if not hasattr(cv2, "optflow"):
        raise BackendUnavailable(
            f"flow backend 'cpu' needs OpenCV's contrib module cv2.optflow; the installed cv2 {cv2.__version__} "
            "has none (install opencv-contrib-python)")
    return cv2


class OpenCVFlow(FlowBackend):
    name = "cpu"

    def __init__(self, params: TVL1Params = DEFAULT_PARAMS):
        cv2 = _opencv_optflow()
        # Positional: the keyword for inner iterations is misspelt ("innnerIterations") in cv2 4.x.
        self._algo = cv2.optflow.DualTVL1OpticalFlow_create(
            params.tau, params.lam, params.theta, params.nscales, params.warps, params.epsilon,
            params.inner_iterations, params.outer_iterations, params.scale_step, 0.0,
            params.median_filtering, False)
        self._lock = threading.Lock()  # the algorithm object keeps its buffers between calls

    def flow(self, onset, apex):
        u = np.empty_like(onset)
        v = np.empty_like(onset)
        with self._lock:
            for k in range(len(onset)):
                # OpenCV reads float input as 0..1 and multiplies it by 255 itself.
                f = self._algo.calc(onset[k] / np.float32(255), apex[k] / np.float32(255), None)
                u[k], v[k] = f[..., 0], f[..., 1]
        return u, v


def _numba_reason() -> str | None:
    """None when the numba backend can run here, else why not (nothing is imported to find out)."""
    needed = (("numba", "numba"), ("OpenCV", "cv2"))
    missing = [name for name, module in needed if importlib.util.find_spec(module) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


class NumbaFlow(FlowBackend):
    """Re-entrant: every call works on its own arrays, so threads solve side by side (no lock)."""

    name = "numba"

    def __init__(self, params: TVL1Params = DEFAULT_PARAMS):
        reason = _numba_reason()
        if reason:
            raise BackendUnavailable(f"flow backend 'numba' is unavailable: {reason} (pip install numba "
                                     "opencv-contrib-python)")
        from .tvl1_numba import TVL1Numba

        self.solver = TVL1Numba(params)

    def flow(self, onset, apex):
        u = np.empty_like(onset)
        v = np.empty_like(onset)
        for k in range(len(onset)):
            u[k], v[k] = self.solver(onset[k], apex[k])
        return u, v


def _opencv_cuda_reason() -> str | None:
    """None when OpenCV's CUDA TV-L1 can run here, else why not."""
    try:
        import cv2
    except ImportError:
        return "OpenCV is not installed"
    if not hasattr(cv2, "cuda_OpticalFlowDual_TVL1"):
        return f"the installed cv2 {cv2.__version__} has no cuda_OpticalFlowDual_TVL1 (built without CUDA)"
    if cv2.cuda.getCudaEnabledDeviceCount() < 1:
        return f"the installed cv2 {cv2.__version__} sees no CUDA device"
    return None


class OpenCVCudaFlow(FlowBackend):
    """Not run by us yet: no CUDA build of OpenCV was available (see docs/features.md)."""

    name = "opencv-cuda"
    device = "cuda"

    def __init__(self, params: TVL1Params = DEFAULT_PARAMS):
        reason = _opencv_cuda_reason()
        if reason:
            raise BackendUnavailable(f"flow backend 'opencv-cuda' is unavailable: {reason}")
        import cv2

        self._cv2 = cv2
        self._algo = cv2.cuda_OpticalFlowDual_TVL1.create(
            params.tau, params.lam, params.theta, params.nscales, params.warps, params.epsilon,
            params.inner_iterations * params.outer_iterations, params.scale_step, 0.0, False)
        self._lock = threading.Lock()

    def flow(self, onset, apex):
        u = np.empty_like(onset)
        v = np.empty_like(onset)
        i0, i1 = self._cv2.cuda_GpuMat(), self._cv2.cuda_GpuMat()
        with self._lock:
            for k in range(len(onset)):
                i0.upload(np.ascontiguousarray(onset[k] / np.float32(255)))
                i1.upload(np.ascontiguousarray(apex[k] / np.float32(255)))
                f = self._algo.calc(i0, i1, None).download()
                u[k], v[k] = f[..., 0], f[..., 1]
        return u, v


class _GraphedSolve:
    """The whole solve for one (B, H, W), captured once as a CUDA graph; each call copies the images
    into static inputs, replays the graph and returns its static outputs (overwritten by the next call).

    Follows torch's documented recipe (torch.cuda.CUDAGraph): warm-up calls on a side stream, which
    compile the Triton kernels and build the solver's resize matrices (no host-to-device copies may
    happen during capture), then one capture. Needs a solve with no host synchronisation: TVL1(fused=True).
    """

    def __init__(self, solver: TVL1, shape: tuple[int, int, int], device: str):
        import torch

        self.i0 = torch.zeros(shape, device=device)
        self.i1 = torch.zeros(shape, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                solver(self.i0, self.i1)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA work of other threads (the live pipeline's model) may go on during capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.u1, self.u2 = solver(self.i0, self.i1)
        self.iterations_per_pair = solver.iterations_per_pair

    def __call__(self, i0, i1):
        self.i0.copy_(i0)
        self.i1.copy_(i1)
        self.graph.replay()
        return self.u1, self.u2


class TorchFlow(FlowBackend):
    """Our TV-L1 in torch.

    fused (default: on CUDA when Triton is importable): one Triton launch per (pyramid level, warp)
    runs all of the warp's iterations with the per-pair stopping rule on the device
    (tvl1_triton.py); otherwise the eager torch loop, which checks convergence on the host every 10
    inner iterations on CUDA (a guess, not tuned) and after every one on the CPU.
    cuda_graph (default: whenever fused): the whole solve is captured as a CUDA graph per (B, H, W),
    at most MAX_GRAPHS kept (oldest dropped); if a capture fails, one warning is logged and every
    later call solves without a graph.
    """

    name = "torch"
    MAX_GRAPHS = 8

    def __init__(self, device: str | None = None, params: TVL1Params = DEFAULT_PARAMS,
                 fused: bool | None = None, cuda_graph: bool | None = None):
        import torch

        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = self.device.startswith("cuda")
        if on_gpu and not torch.cuda.is_available():
            raise BackendUnavailable("flow backend 'torch' on cuda: torch sees no CUDA device")
        if fused is None:
            fused = on_gpu and importlib.util.find_spec("triton") is not None
        if cuda_graph is None:
            cuda_graph = fused and on_gpu
        if cuda_graph and not (fused and on_gpu):
            raise ValueError("cuda_graph=True needs CUDA and fused=True (the eager loop synchronises with the host)")
        self.cuda_graph = cuda_graph
        from .tvl1_torch import TVL1  # torch is imported only when this backend is used

        self.solver = TVL1(params, check_every=10 if on_gpu else 1, fused=fused)
        self._graphs: dict[tuple, _GraphedSolve] = {}
        self._graph_failed = False
        self._lock = threading.Lock()  # a graph's static buffers (and its outputs) belong to one call at a time

    def __repr__(self) -> str:
        step = "Triton kernel per level and warp" if self.solver.fused else "eager torch loop"
        graph = ", CUDA graph" if self.cuda_graph and not self._graph_failed else ""
        return f"TorchFlow(device={self.device!r}, {step}{graph})"

    def _graphed(self, shape: tuple[int, int, int]) -> _GraphedSolve | None:
        """The captured solve for this shape (captured on first use), or None once a capture failed."""
        if shape not in self._graphs and not self._graph_failed:
            try:
                graphed = _GraphedSolve(self.solver, shape, self.device)
            except Exception as e:  # noqa: BLE001 - any capture failure: fall back to the eager solve
                log.warning("CUDA-graph capture of the TV-L1 solve failed (%s: %s); solving without a graph "
                            "from now on", type(e).__name__, e)
                self._graph_failed = True
                return None
            if len(self._graphs) >= self.MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[shape] = graphed
        return self._graphs.get(shape)

    def solve(self, i0, i1):
        """(B, H, W) float32 tensors on self.device -> (u1, u2) tensors (a graph's are overwritten by the
        next call of the same shape)."""
        graphed = self._graphed(tuple(i0.shape)) if self.cuda_graph else None
        if graphed is None:
            return self.solver(i0, i1)
        u1, u2 = graphed(i0, i1)
        self.solver.iterations_per_pair = graphed.iterations_per_pair
        return u1, u2

    def flow(self, onset, apex):
        torch = self._torch
        with self._lock:
            u, v = self.solve(torch.from_numpy(onset).to(self.device), torch.from_numpy(apex).to(self.device))
            return u.cpu().numpy(), v.cpu().numpy()


# Device nodes an NVIDIA driver creates (Linux, containers, WSL). Where none exists, "auto" need not
# import torch (seconds) to learn that there is no CUDA.
NVIDIA_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/proc/driver/nvidia/version")


def _torch_cuda() -> bool:
    if not any(os.path.exists(node) for node in NVIDIA_DEVICE_NODES):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def available_backends() -> list[str]:
    """Backends that can run here, in `auto`'s order of preference."""
    names = []
    if _opencv_cuda_reason() is None:
        names.append("opencv-cuda")
    if _torch_cuda():
        names.append("torch")
    if _numba_reason() is None:
        names.append("numba")
    try:
        _opencv_optflow()
        names.append("cpu")
    except BackendUnavailable:
        pass
    if "torch" not in names:
        names.append("torch")  # on the CPU: always possible, slow
    return names


def resolve(name: str) -> str:
    """The concrete backend `name` stands for ("auto" -> the first of available_backends())."""
    if name == "auto":
        return available_backends()[0]
    if name not in BACKENDS:
        raise ValueError(f"unknown flow backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    return name


@functools.lru_cache(maxsize=None)
def get_backend(name: str = "auto") -> FlowBackend:
    """The backend for `name` ("auto" or one of BACKENDS); built and logged once per name."""
    concrete = resolve(name)
    backend = {"cpu": OpenCVFlow, "numba": NumbaFlow, "opencv-cuda": OpenCVCudaFlow, "torch": TorchFlow}[concrete]()
    if name == "auto":
        log.info("flow backend: auto -> %r (available here: %s)", backend, ", ".join(available_backends()))
    else:
        log.info("flow backend: %r", backend)
    return backend
