"""Dual TV-L1 optical flow in PyTorch: OpenCV's `cv::optflow::DualTVL1OpticalFlow`, batched.

The algorithm is Zach, Pock, Bischof (DAGM 2007) as described by Sánchez, Meinhardt-Llopis, Facciolo
(IPOL 2013) and implemented in opencv_contrib `modules/optflow/src/tvl1flow.cpp`. This file follows
that implementation step by step so the two agree up to float rounding:

- images in 0..255 (OpenCV multiplies float input in [0, 1] by 255); lambda is tuned for that range;
- a pyramid made by repeated INTER_LINEAR resizes by `scale_step`, stopping before a side < 16 px;
- per level: p = 0; per warp: bicubic remap of I1 and its centred gradient with zero outside the image,
  then outer iterations (5x5 median of the flow, then inner iterations of the primal-dual update);
- the stopping rule sum((u - u_prev)^2) <= epsilon^2 * H * W, checked after every inner iteration, and
  (as in OpenCV) a converged inner loop also ends the outer loop of that warp;
- the flow goes up a level by INTER_LINEAR resize and division by `scale_step`.

Batching: every pair keeps its own stopping state. A pair that has converged is frozen by a mask
(torch.where) instead of a Python branch, so extra iterations never change a result. The host asks
"has every pair converged?" every `check_every` inner iterations (and before each outer iteration)
and stops early if so: 1 on the CPU, where the check is free; larger on a GPU, where each check is a
device synchronisation; None never asks: fixed iteration counts, no host synchronisation.

fused=True (CUDA + Triton; tvl1_triton.py) replaces the outer and inner loops of each warp by one
Triton launch for the whole batch, which applies the same stopping rule per pair on the device: no
host synchronisation and no wasted iterations, so the whole solve can be captured in a CUDA graph
(backends.TorchFlow does). `check_every` is then unused.

Only the default gamma = 0 (no illumination term) and useInitialFlow = false are implemented.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .params import FLOAT_EPS, MIN_LEVEL_SIDE, TVL1Params

REMAP_STEPS = 32  # cv::remap's sub-pixel resolution (INTER_TAB_SIZE)


def pyramid_sizes(height: int, width: int, params: TVL1Params) -> list[tuple[int, int]]:
    """Level sizes, finest first, as OpenCV computes them (round(side * scale_step), chained)."""
    sizes = [(height, width)]
    for _ in range(1, params.nscales):
        h, w = sizes[-1]
        # cv::resize with fx=fy=scale_step: dsize = saturate_cast<int>(side * scale) (round half even)
        nh, nw = round(h * params.scale_step), round(w * params.scale_step)
        if nh < MIN_LEVEL_SIDE or nw < MIN_LEVEL_SIDE:
            break
        sizes.append((nh, nw))
    return sizes


def linear_resize_matrix(n_src: int, n_dst: int, inv_scale: float) -> np.ndarray:
    """(n_dst, n_src) weights of cv::resize INTER_LINEAR along one axis (float images).

    Source coordinate of destination i: (i + 0.5) * inv_scale - 0.5; below 0 it clamps to pixel 0,
    past the end it replicates the last pixel. inv_scale is 1/fx when resizing by a factor (the
    pyramid) and n_src/n_dst when resizing to a size (the flow going up a level), as in OpenCV.
    """
    weights = np.zeros((n_dst, n_src), dtype=np.float64)
    for i in range(n_dst):
        f = (i + 0.5) * inv_scale - 0.5
        s = math.floor(f)
        a = f - s
        if s < 0:
            s, a = 0, 0.0
        if s >= n_src - 1:
            s, a = n_src - 1, 0.0
        weights[i, s] += 1.0 - a
        weights[i, min(s + 1, n_src - 1)] += a
    return weights


def _resize(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Separable resize of (B, H, W) by row and column weight matrices: rows @ image @ cols^T."""
    return rows @ images @ cols.T


def centred_gradient(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's centeredGradient: (I[x+1] - I[x-1]) / 2, one-sided halves at the borders."""
    padded = F.pad(image[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = 0.5 * (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2])
    dy = 0.5 * (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1])
    return dx, dy


def forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's forwardGradient: u[x+1] - u[x], zero on the last column / row."""
    dx = F.pad(u[:, :, 1:] - u[:, :, :-1], (0, 1))
    dy = F.pad(u[:, 1:, :] - u[:, :-1, :], (0, 0, 0, 1))
    return dx, dy


def divergence(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """OpenCV's divergence: backward differences with p = 0 before the first column / row."""
    return p1 - F.pad(p1[:, :, :-1], (1, 0)) + p2 - F.pad(p2[:, :-1, :], (0, 0, 1, 0))


def median_blur(u: torch.Tensor, size: int) -> torch.Tensor:
    """cv::medianBlur(u, size) on float images: replicated borders."""
    r = size // 2
    padded = F.pad(u[:, None], (r, r, r, r), mode="replicate")[:, 0]
    windows = padded.unfold(1, size, 1).unfold(2, size, 1)  # (B, H, W, size, size)
    return windows.reshape(*u.shape, size * size).median(dim=-1).values


def warp_bicubic(stack: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """cv::remap(INTER_CUBIC, BORDER_CONSTANT 0) of (B, C, H, W) at (x + u1, y + u2).

    grid_sample's bicubic uses the same a = -0.75 kernel; the sample positions are rounded to
    OpenCV's 1/32 px grid, so both interpolate at the same points.
    """
    _, _, h, w = stack.shape
    ys = torch.arange(h, device=stack.device, dtype=stack.dtype).view(1, h, 1)
    xs = torch.arange(w, device=stack.device, dtype=stack.dtype).view(1, 1, w)
    # cv::remap turns float maps into fixed point with 1/32 px steps (INTER_BITS = 5), rounding to nearest.
    x = torch.round((xs + u1) * REMAP_STEPS) / REMAP_STEPS
    y = torch.round((ys + u2) * REMAP_STEPS) / REMAP_STEPS
    grid = torch.stack((2.0 * x / (w - 1) - 1.0, 2.0 * y / (h - 1) - 1.0), dim=-1)
    return F.grid_sample(stack, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def inner_step(u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, error, *, l_t, theta, taut,
               scaled_epsilon, float_eps):
    """One inner iteration for the pairs whose `error` (B,) is above `scaled_epsilon`; the others are
    returned unchanged. Returns the new (u1, u2, p11, p12, p21, p22, error)."""
    active = (error > scaled_epsilon).view(-1, 1, 1)
    # Thresholding step (OpenCV estimateV). clamp(-rho/grad, -l_t, l_t) is its three cases in one;
    # it differs only where grad <= float eps, by < 2e-5 px.
    rho = rho_c + i1wx * u1 + i1wy * u2
    step = (-rho / grad.clamp_min(float_eps)).clamp(-l_t, l_t)
    new_u1 = u1 + step * i1wx + theta * divergence(p11, p12)
    new_u2 = u2 + step * i1wy + theta * divergence(p21, p22)
    new_error = ((new_u1 - u1) ** 2 + (new_u2 - u2) ** 2).sum(dim=(1, 2))
    u1 = torch.where(active, new_u1, u1)
    u2 = torch.where(active, new_u2, u2)
    # Dual update (OpenCV estimateDualVariables) on the new u.
    u1x, u1y = forward_gradient(u1)
    u2x, u2y = forward_gradient(u2)
    n1 = 1.0 + taut * torch.hypot(u1x, u1y)
    n2 = 1.0 + taut * torch.hypot(u2x, u2y)
    return (u1, u2,
            torch.where(active, (p11 + taut * u1x) / n1, p11),
            torch.where(active, (p12 + taut * u1y) / n1, p12),
            torch.where(active, (p21 + taut * u2x) / n2, p21),
            torch.where(active, (p22 + taut * u2y) / n2, p22),
            torch.where(active.view(-1), new_error, error))


class TVL1:
    """Batched TV-L1 flow: `TVL1()(i0, i1)` with (B, H, W) float tensors in 0..255 -> (u1, u2).

    u1 is horizontal, u2 vertical, such that i1(x + u) ~ i0(x). Resize matrices are built once per
    image size and kept on the device, so a CUDA-graph capture sees no host-to-device copies.
    """

    def __init__(self, params: TVL1Params = TVL1Params(), check_every: int | None = 1, fused: bool = False):
        self.params = params
        self.check_every = check_every
        self.fused = fused
        if fused:  # Triton is optional: imported only when the fused solve is asked for
            from .tvl1_triton import MEDIAN_SIZE, solve_warp

            if params.median_filtering > 1 and params.median_filtering != MEDIAN_SIZE:
                raise ValueError(f"fused=True implements only a {MEDIAN_SIZE}x{MEDIAN_SIZE} median, "
                                 f"not median_filtering={params.median_filtering}")
            self._solve_warp = solve_warp
        self._plans: dict[tuple, list] = {}
        # Eager: inner iterations the batch ran in the last call (all levels; a batch iterates while any
        # of its pairs does). Fused: None, see iterations_per_pair.
        self.inner_iterations_run: int | None = 0
        # Fused only: (B,) int32 on the device, inner iterations each pair ran in the last call (all
        # levels and warps), written by the kernel (reading it synchronises).
        self.iterations_per_pair: torch.Tensor | None = None

    def _plan(self, height: int, width: int, device: torch.device) -> list:
        """Per level: (size, down-resize rows/cols from the finer level, up-resize to the finer level)."""
        key = (height, width, str(device))
        if key not in self._plans:
            sizes = pyramid_sizes(height, width, self.params)
            plan = []

            def matrix(n_src, n_dst, inv_scale):
                return torch.from_numpy(linear_resize_matrix(n_src, n_dst, inv_scale)).float().to(device)

            for level, (h, w) in enumerate(sizes):
                down = up = None
                if level > 0:
                    fh, fw = sizes[level - 1]
                    inv = 1.0 / self.params.scale_step
                    down = (matrix(fh, h, inv), matrix(fw, w, inv))
                    up = (matrix(h, fh, h / fh), matrix(w, fw, w / fw))
                plan.append(((h, w), down, up))
            self._plans[key] = plan
        return self._plans[key]

    @torch.no_grad()
    def __call__(self, i0: torch.Tensor, i1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if i0.shape != i1.shape or i0.ndim != 3:
            raise ValueError("expected two (B, H, W) tensors of one shape, "
                             f"got {tuple(i0.shape)} and {tuple(i1.shape)}")
        b, h, w = i0.shape
        plan = self._plan(h, w, i0.device)
        pyramid = [(i0.float(), i1.float())]
        for _, down, _ in plan[1:]:
            rows, cols = down
            pyramid.append((_resize(pyramid[-1][0], rows, cols), _resize(pyramid[-1][1], rows, cols)))

        if self.fused:
            self.inner_iterations_run = None
            self.iterations_per_pair = torch.zeros(b, dtype=torch.int32, device=i0.device)
        else:
            self.inner_iterations_run = 0
        (ch, cw), _, _ = plan[-1]
        u1 = i0.new_zeros(b, ch, cw)
        u2 = i0.new_zeros(b, ch, cw)
        for level in range(len(plan) - 1, -1, -1):
            solve = self._solve_level_fused if self.fused else self._solve_level
            u1, u2 = solve(*pyramid[level], u1, u2)
            if level > 0:
                rows, cols = plan[level][2]
                u1 = _resize(u1, rows, cols) / self.params.scale_step
                u2 = _resize(u2, rows, cols) / self.params.scale_step
        return u1, u2

    def _all_converged(self, error, scaled_epsilon, k: int) -> bool:
        """Host check (a device sync on a GPU) on inner iterations 0, check_every, 2 check_every, ..."""
        return self.check_every is not None and k % self.check_every == 0 and not bool((error > scaled_epsilon).any())

    def _solve_level(self, i0, i1, u1, u2):
        p = self.params
        b, h, w = i0.shape
        scaled_epsilon = p.epsilon * p.epsilon * h * w
        l_t = p.lam * p.theta
        taut = p.tau / p.theta
        i1x, i1y = centred_gradient(i1)
        source = torch.stack((i1, i1x, i1y), dim=1)
        p11, p12, p21, p22 = (torch.zeros_like(i0) for _ in range(4))

        for _ in range(p.warps):
            i1w, i1wx, i1wy = warp_bicubic(source, u1, u2).unbind(dim=1)
            grad = i1wx * i1wx + i1wy * i1wy
            rho_c = i1w - i1wx * u1 - i1wy * u2 - i0
            # Per-pair squared update of the last inner iteration; +inf = "not converged yet".
            error = torch.full((b,), math.inf, device=i0.device)
            for _ in range(p.outer_iterations):
                if self._all_converged(error, scaled_epsilon, 0):
                    break
                active = (error > scaled_epsilon).view(b, 1, 1)
                if p.median_filtering > 1:
                    u1 = torch.where(active, median_blur(u1, p.median_filtering), u1)
                    u2 = torch.where(active, median_blur(u2, p.median_filtering), u2)
                for k in range(p.inner_iterations):
                    if self._all_converged(error, scaled_epsilon, k):
                        break
                    self.inner_iterations_run += 1
                    u1, u2, p11, p12, p21, p22, error = inner_step(
                        u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, error,
                        l_t=l_t, theta=p.theta, taut=taut, scaled_epsilon=scaled_epsilon, float_eps=FLOAT_EPS)
        return u1, u2

    def _solve_level_fused(self, i0, i1, u1, u2):
        """_solve_level with each warp's outer and inner loops in one Triton launch (tvl1_triton)."""
        p = self.params
        h, w = i0.shape[1:]
        i1x, i1y = centred_gradient(i1)
        source = torch.stack((i1, i1x, i1y), dim=1)
        # The kernel updates u and p in place (u1, u2 are __call__'s own) and indexes every (B, H, W)
        # buffer as b * H * W + y * W + x: contiguous.
        u1, u2 = u1.contiguous(), u2.contiguous()
        duals = [torch.zeros_like(u1) for _ in range(4)]
        scratch = (torch.empty_like(u1), torch.empty_like(u1))
        for _ in range(p.warps):
            i1w, i1wx, i1wy = (t.contiguous() for t in warp_bicubic(source, u1, u2).unbind(dim=1))
            grad = i1wx * i1wx + i1wy * i1wy
            rho_c = i1w - i1wx * u1 - i1wy * u2 - i0
            self._solve_warp(u1, u2, *duals, i1wx, i1wy, grad, rho_c, self.iterations_per_pair,
                             l_t=p.lam * p.theta, theta=p.theta, taut=p.tau / p.theta,
                             scaled_epsilon=p.epsilon * p.epsilon * h * w, float_eps=FLOAT_EPS,
                             inner_iterations=p.inner_iterations, outer_iterations=p.outer_iterations,
                             median_filtering=p.median_filtering, scratch=scratch)
        return u1, u2
