"""TV-L1 on the GPU: one Triton kernel launch per (pyramid level, warp) for the whole batch.

tvl1_torch.TVL1(fused=True) calls `solve_warp` once per warp instead of looping over the outer and
inner iterations on the host. The launch has one program (CTA) per pair; the program walks its
image in flat tiles of BLOCK pixels and runs, for that pair, every outer iteration of the warp:

  while outer < outer_iterations and the pair has not converged:
      5x5 median of u1 and u2 (when median_filtering > 1): tiles -> scratch, barrier, scratch -> u, barrier
      while inner < inner_iterations and the pair has not converged:
          phase A (every tile): thresholding + primal update of u in place; sum of (u_new - u)^2
          barrier
          phase B (every tile): dual update of p in place from the forward gradient of the new u
          barrier
          converged = sum <= scaled_epsilon

This is tvl1_torch's eager loop for one pair exactly (TVL1._solve_level): the stopping rule after
every inner iteration, a converged inner loop also ends the outer loop, the step that converges is
applied in full. The sum runs over all tiles of the program, so the decision needs no other program
and no host: the launch never synchronises with the host, and a whole solve can be captured in a
CUDA graph. A phase reads only what the previous phases wrote: phase A reads u at its own pixels and
p at the pixel and its left / upper neighbours; phase B reads u at the pixel and its right / lower
neighbours and p at its own pixels. Those neighbours may belong to other threads of the same program,
hence `tl.debug_barrier()` (a CTA-wide bar.sync, which also orders the global-memory stores and
loads of the CTA's threads) between the phases. Programs never read each other's pairs.

The 5x5 median is a comparator network over the 25 neighbours with replicated borders (the
neighbour coordinates are clamped into the image), exactly tvl1_torch.median_blur: it only selects,
so the result is bit-for-bit the same. The network (_median25) is Batcher's odd-even merge sort on 32
wires with wires 25..31 fixed at +inf, pruned to what the 13th smallest value needs: 113
compare-exchanges, 202 min/max. tests/test_features.py proves it on all 2^25 zero-one inputs (the
0-1 principle) and compares the kernel's median with median_blur.

Bicubic warping, gradients and pyramid resizes stay in torch (a few kernels per warp).

Triton is optional: this module is imported only when a fused solve is asked for. It is tested on
the CPU with TRITON_INTERPRET=1 against the eager solver, and compiled ahead of time for sm_90; it has
NOT been run on a GPU: its speed and its behaviour on real hardware (the barriers) are unmeasured.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# (pixels per tile, warps per program): a tile is BLOCK consecutive pixels of the flat H x W image,
# 2 per thread. Per the sm_90 compile (cuobjdump): 1024 / 16 warps uses 106 registers per thread, so one
# program fills an SM's register file: fewer tiles per phase (21 at 144 x 144), for small batches;
# 512 / 8 warps uses 112, two programs per SM, so a batch of 256 fits the H100's 132 SMs in one wave.
# Neither is tuned on a GPU. 1024 / 8 warps needed 214 registers; 2048 / 16 spilled.
SMALL_BATCH_CONFIG = (1024, 16)
LARGE_BATCH_CONFIG = (512, 8)
LARGE_BATCH = 128  # batches of at least this many pairs use LARGE_BATCH_CONFIG
MEDIAN_SIZE = 5  # the only median size the kernel implements (OpenCV's default); 0 or 1 = none


@triton.jit
def _median25(v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18, v19,
              v20, v21, v22, v23, v24):
    """The 13th smallest of 25 values, elementwise (see the module docstring for the network)."""
    v0, v1 = tl.minimum(v0, v1), tl.maximum(v0, v1)
    v2, v3 = tl.minimum(v2, v3), tl.maximum(v2, v3)
    v4, v5 = tl.minimum(v4, v5), tl.maximum(v4, v5)
    v6, v7 = tl.minimum(v6, v7), tl.maximum(v6, v7)
    v8, v9 = tl.minimum(v8, v9), tl.maximum(v8, v9)
    v10, v11 = tl.minimum(v10, v11), tl.maximum(v10, v11)
    v12, v13 = tl.minimum(v12, v13), tl.maximum(v12, v13)
    v14, v15 = tl.minimum(v14, v15), tl.maximum(v14, v15)
    v16, v17 = tl.minimum(v16, v17), tl.maximum(v16, v17)
    v18, v19 = tl.minimum(v18, v19), tl.maximum(v18, v19)
    v20, v21 = tl.minimum(v20, v21), tl.maximum(v20, v21)
    v22, v23 = tl.minimum(v22, v23), tl.maximum(v22, v23)
    v0, v2 = tl.minimum(v0, v2), tl.maximum(v0, v2)
    v1, v3 = tl.minimum(v1, v3), tl.maximum(v1, v3)
    v4, v6 = tl.minimum(v4, v6), tl.maximum(v4, v6)
    v5, v7 = tl.minimum(v5, v7), tl.maximum(v5, v7)
    v8, v10 = tl.minimum(v8, v10), tl.maximum(v8, v10)
    v9, v11 = tl.minimum(v9, v11), tl.maximum(v9, v11)
    v12, v14 = tl.minimum(v12, v14), tl.maximum(v12, v14)
    v13, v15 = tl.minimum(v13, v15), tl.maximum(v13, v15)
    v16, v18 = tl.minimum(v16, v18), tl.maximum(v16, v18)
    v17, v19 = tl.minimum(v17, v19), tl.maximum(v17, v19)
    v20, v22 = tl.minimum(v20, v22), tl.maximum(v20, v22)
    v21, v23 = tl.minimum(v21, v23), tl.maximum(v21, v23)
    v1, v2 = tl.minimum(v1, v2), tl.maximum(v1, v2)
    v5, v6 = tl.minimum(v5, v6), tl.maximum(v5, v6)
    v9, v10 = tl.minimum(v9, v10), tl.maximum(v9, v10)
    v13, v14 = tl.minimum(v13, v14), tl.maximum(v13, v14)
    v17, v18 = tl.minimum(v17, v18), tl.maximum(v17, v18)
    v21, v22 = tl.minimum(v21, v22), tl.maximum(v21, v22)
    v0, v4 = tl.minimum(v0, v4), tl.maximum(v0, v4)
    v1, v5 = tl.minimum(v1, v5), tl.maximum(v1, v5)
    v2, v6 = tl.minimum(v2, v6), tl.maximum(v2, v6)
    v3, v7 = tl.minimum(v3, v7), tl.maximum(v3, v7)
    v8, v12 = tl.minimum(v8, v12), tl.maximum(v8, v12)
    v9, v13 = tl.minimum(v9, v13), tl.maximum(v9, v13)
    v10, v14 = tl.minimum(v10, v14), tl.maximum(v10, v14)
    v11, v15 = tl.minimum(v11, v15), tl.maximum(v11, v15)
    v16, v20 = tl.minimum(v16, v20), tl.maximum(v16, v20)
    v17, v21 = tl.minimum(v17, v21), tl.maximum(v17, v21)
    v18, v22 = tl.minimum(v18, v22), tl.maximum(v18, v22)
    v19, v23 = tl.minimum(v19, v23), tl.maximum(v19, v23)
    v2, v4 = tl.minimum(v2, v4), tl.maximum(v2, v4)
    v3, v5 = tl.minimum(v3, v5), tl.maximum(v3, v5)
    v10, v12 = tl.minimum(v10, v12), tl.maximum(v10, v12)
    v11, v13 = tl.minimum(v11, v13), tl.maximum(v11, v13)
    v18, v20 = tl.minimum(v18, v20), tl.maximum(v18, v20)
    v19, v21 = tl.minimum(v19, v21), tl.maximum(v19, v21)
    v1, v2 = tl.minimum(v1, v2), tl.maximum(v1, v2)
    v3, v4 = tl.minimum(v3, v4), tl.maximum(v3, v4)
    v5, v6 = tl.minimum(v5, v6), tl.maximum(v5, v6)
    v9, v10 = tl.minimum(v9, v10), tl.maximum(v9, v10)
    v11, v12 = tl.minimum(v11, v12), tl.maximum(v11, v12)
    v13, v14 = tl.minimum(v13, v14), tl.maximum(v13, v14)
    v17, v18 = tl.minimum(v17, v18), tl.maximum(v17, v18)
    v19, v20 = tl.minimum(v19, v20), tl.maximum(v19, v20)
    v21, v22 = tl.minimum(v21, v22), tl.maximum(v21, v22)
    v0, v8 = tl.minimum(v0, v8), tl.maximum(v0, v8)
    v1, v9 = tl.minimum(v1, v9), tl.maximum(v1, v9)
    v2, v10 = tl.minimum(v2, v10), tl.maximum(v2, v10)
    v3, v11 = tl.minimum(v3, v11), tl.maximum(v3, v11)
    v4, v12 = tl.minimum(v4, v12), tl.maximum(v4, v12)
    v5, v13 = tl.minimum(v5, v13), tl.maximum(v5, v13)
    v6, v14 = tl.minimum(v6, v14), tl.maximum(v6, v14)
    v7 = tl.minimum(v7, v15)
    v16, v24 = tl.minimum(v16, v24), tl.maximum(v16, v24)
    v4, v8 = tl.minimum(v4, v8), tl.maximum(v4, v8)
    v5, v9 = tl.minimum(v5, v9), tl.maximum(v5, v9)
    v6, v10 = tl.minimum(v6, v10), tl.maximum(v6, v10)
    v7, v11 = tl.minimum(v7, v11), tl.maximum(v7, v11)
    v20, v24 = tl.minimum(v20, v24), tl.maximum(v20, v24)
    v2, v4 = tl.minimum(v2, v4), tl.maximum(v2, v4)
    v3, v5 = tl.minimum(v3, v5), tl.maximum(v3, v5)
    v6, v8 = tl.minimum(v6, v8), tl.maximum(v6, v8)
    v7, v9 = tl.minimum(v7, v9), tl.maximum(v7, v9)
    v10, v12 = tl.minimum(v10, v12), tl.maximum(v10, v12)
    v11, v13 = tl.minimum(v11, v13), tl.maximum(v11, v13)
    v18, v20 = tl.minimum(v18, v20), tl.maximum(v18, v20)
    v19, v21 = tl.minimum(v19, v21), tl.maximum(v19, v21)
    v22, v24 = tl.minimum(v22, v24), tl.maximum(v22, v24)
    v1, v2 = tl.minimum(v1, v2), tl.maximum(v1, v2)
    v3, v4 = tl.minimum(v3, v4), tl.maximum(v3, v4)
    v5, v6 = tl.minimum(v5, v6), tl.maximum(v5, v6)
    v7, v8 = tl.minimum(v7, v8), tl.maximum(v7, v8)
    v9, v10 = tl.minimum(v9, v10), tl.maximum(v9, v10)
    v11, v12 = tl.minimum(v11, v12), tl.maximum(v11, v12)
    v13 = tl.minimum(v13, v14)
    v17, v18 = tl.minimum(v17, v18), tl.maximum(v17, v18)
    v19, v20 = tl.minimum(v19, v20), tl.maximum(v19, v20)
    v21, v22 = tl.minimum(v21, v22), tl.maximum(v21, v22)
    v23, v24 = tl.minimum(v23, v24), tl.maximum(v23, v24)
    v16 = tl.maximum(v0, v16)
    v17 = tl.maximum(v1, v17)
    v18 = tl.maximum(v2, v18)
    v19 = tl.maximum(v3, v19)
    v20 = tl.maximum(v4, v20)
    v21 = tl.maximum(v5, v21)
    v6 = tl.minimum(v6, v22)
    v7 = tl.minimum(v7, v23)
    v8 = tl.minimum(v8, v24)
    v16 = tl.maximum(v8, v16)
    v17 = tl.maximum(v9, v17)
    v10 = tl.minimum(v10, v18)
    v11 = tl.minimum(v11, v19)
    v12 = tl.minimum(v12, v20)
    v13 = tl.minimum(v13, v21)
    v10 = tl.maximum(v6, v10)
    v11 = tl.maximum(v7, v11)
    v12 = tl.minimum(v12, v16)
    v13 = tl.minimum(v13, v17)
    v12 = tl.maximum(v10, v12)
    v11 = tl.minimum(v11, v13)
    v12 = tl.maximum(v11, v12)
    return v12


@triton.jit
def _median5x5(u_ptr, ys, xs, inside, H, W):
    """5x5 median of u at pixels (ys, xs), replicated borders (neighbour coordinates clamped)."""
    r0 = tl.maximum(ys - 2, 0) * W
    r1 = tl.maximum(ys - 1, 0) * W
    r2 = ys * W
    r3 = tl.minimum(ys + 1, H - 1) * W
    r4 = tl.minimum(ys + 2, H - 1) * W
    c0 = tl.maximum(xs - 2, 0)
    c1 = tl.maximum(xs - 1, 0)
    c2 = xs
    c3 = tl.minimum(xs + 1, W - 1)
    c4 = tl.minimum(xs + 2, W - 1)
    return _median25(
        tl.load(u_ptr + r0 + c0, mask=inside, other=0.0), tl.load(u_ptr + r0 + c1, mask=inside, other=0.0),
        tl.load(u_ptr + r0 + c2, mask=inside, other=0.0), tl.load(u_ptr + r0 + c3, mask=inside, other=0.0),
        tl.load(u_ptr + r0 + c4, mask=inside, other=0.0), tl.load(u_ptr + r1 + c0, mask=inside, other=0.0),
        tl.load(u_ptr + r1 + c1, mask=inside, other=0.0), tl.load(u_ptr + r1 + c2, mask=inside, other=0.0),
        tl.load(u_ptr + r1 + c3, mask=inside, other=0.0), tl.load(u_ptr + r1 + c4, mask=inside, other=0.0),
        tl.load(u_ptr + r2 + c0, mask=inside, other=0.0), tl.load(u_ptr + r2 + c1, mask=inside, other=0.0),
        tl.load(u_ptr + r2 + c2, mask=inside, other=0.0), tl.load(u_ptr + r2 + c3, mask=inside, other=0.0),
        tl.load(u_ptr + r2 + c4, mask=inside, other=0.0), tl.load(u_ptr + r3 + c0, mask=inside, other=0.0),
        tl.load(u_ptr + r3 + c1, mask=inside, other=0.0), tl.load(u_ptr + r3 + c2, mask=inside, other=0.0),
        tl.load(u_ptr + r3 + c3, mask=inside, other=0.0), tl.load(u_ptr + r3 + c4, mask=inside, other=0.0),
        tl.load(u_ptr + r4 + c0, mask=inside, other=0.0), tl.load(u_ptr + r4 + c1, mask=inside, other=0.0),
        tl.load(u_ptr + r4 + c2, mask=inside, other=0.0), tl.load(u_ptr + r4 + c3, mask=inside, other=0.0),
        tl.load(u_ptr + r4 + c4, mask=inside, other=0.0))


@triton.jit
def _warp_kernel(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, i1wx_ptr, i1wy_ptr, grad_ptr, rho_ptr,
                 m1_ptr, m2_ptr, iterations_ptr,
                 H, W, outer_iterations, inner_iterations, l_t, theta, taut, scaled_epsilon, float_eps,
                 MEDIAN: tl.constexpr, BLOCK: tl.constexpr):
    """One warp of one pair per program: every outer and inner iteration, in place on u and p."""
    pair = tl.program_id(0)
    n = H * W
    image = pair.to(tl.int64) * n  # offset of this pair's image in every (B, H, W) buffer
    u1_ptr += image
    u2_ptr += image
    p11_ptr += image
    p12_ptr += image
    p21_ptr += image
    p22_ptr += image
    i1wx_ptr += image
    i1wy_ptr += image
    grad_ptr += image
    rho_ptr += image
    m1_ptr += image
    m2_ptr += image
    offsets = tl.arange(0, BLOCK)

    active = pair >= 0  # the pair has not converged in this warp (a scalar i1 for the loop carry)
    inner_total = pair * 0  # inner iterations this pair ran in this warp
    outer = 0
    while (outer < outer_iterations) & active:
        if MEDIAN:
            for start in range(0, n, BLOCK):
                idx = start + offsets
                inside = idx < n
                ys = idx // W
                xs = idx % W
                tl.store(m1_ptr + idx, _median5x5(u1_ptr, ys, xs, inside, H, W), mask=inside)
                tl.store(m2_ptr + idx, _median5x5(u2_ptr, ys, xs, inside, H, W), mask=inside)
            tl.debug_barrier()  # every median read u before anyone overwrites it
            for start in range(0, n, BLOCK):
                idx = start + offsets
                inside = idx < n
                tl.store(u1_ptr + idx, tl.load(m1_ptr + idx, mask=inside, other=0.0), mask=inside)
                tl.store(u2_ptr + idx, tl.load(m2_ptr + idx, mask=inside, other=0.0), mask=inside)
            tl.debug_barrier()
        inner = 0
        while (inner < inner_iterations) & active:
            # Phase A: thresholding (OpenCV estimateV, as one clamp) and primal update (estimateU).
            error = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)
            for start in range(0, n, BLOCK):
                idx = start + offsets
                inside = idx < n
                ys = idx // W
                xs = idx % W
                left = inside & (xs > 0)
                up = inside & (ys > 0)
                u1 = tl.load(u1_ptr + idx, mask=inside, other=0.0)
                u2 = tl.load(u2_ptr + idx, mask=inside, other=0.0)
                i1wx = tl.load(i1wx_ptr + idx, mask=inside, other=0.0)
                i1wy = tl.load(i1wy_ptr + idx, mask=inside, other=0.0)
                grad = tl.load(grad_ptr + idx, mask=inside, other=1.0)
                rho = tl.load(rho_ptr + idx, mask=inside, other=0.0) + i1wx * u1 + i1wy * u2
                step = tl.minimum(tl.maximum(-rho / tl.maximum(grad, float_eps), -l_t), l_t)
                # divergence: backward differences with p = 0 before the first column / row (OpenCV's)
                div1 = (tl.load(p11_ptr + idx, mask=inside, other=0.0)
                        - tl.load(p11_ptr + idx - 1, mask=left, other=0.0)
                        + tl.load(p12_ptr + idx, mask=inside, other=0.0)
                        - tl.load(p12_ptr + idx - W, mask=up, other=0.0))
                div2 = (tl.load(p21_ptr + idx, mask=inside, other=0.0)
                        - tl.load(p21_ptr + idx - 1, mask=left, other=0.0)
                        + tl.load(p22_ptr + idx, mask=inside, other=0.0)
                        - tl.load(p22_ptr + idx - W, mask=up, other=0.0))
                new_u1 = u1 + step * i1wx + theta * div1
                new_u2 = u2 + step * i1wy + theta * div2
                tl.store(u1_ptr + idx, new_u1, mask=inside)
                tl.store(u2_ptr + idx, new_u2, mask=inside)
                d1 = new_u1 - u1
                d2 = new_u2 - u2
                error += tl.sum(tl.where(inside, d1 * d1 + d2 * d2, 0.0), axis=0)
            tl.debug_barrier()  # phase B reads the new u of right / lower neighbours
            # Phase B: dual update (OpenCV estimateDualVariables) on the forward gradient of the new u.
            for start in range(0, n, BLOCK):
                idx = start + offsets
                inside = idx < n
                ys = idx // W
                xs = idx % W
                right = inside & (xs + 1 < W)
                down = inside & (ys + 1 < H)
                u1 = tl.load(u1_ptr + idx, mask=inside, other=0.0)
                u2 = tl.load(u2_ptr + idx, mask=inside, other=0.0)
                u1x = tl.where(right, tl.load(u1_ptr + idx + 1, mask=right, other=0.0) - u1, 0.0)
                u1y = tl.where(down, tl.load(u1_ptr + idx + W, mask=down, other=0.0) - u1, 0.0)
                u2x = tl.where(right, tl.load(u2_ptr + idx + 1, mask=right, other=0.0) - u2, 0.0)
                u2y = tl.where(down, tl.load(u2_ptr + idx + W, mask=down, other=0.0) - u2, 0.0)
                n1 = 1.0 + taut * tl.sqrt(u1x * u1x + u1y * u1y)
                n2 = 1.0 + taut * tl.sqrt(u2x * u2x + u2y * u2y)
                tl.store(p11_ptr + idx, (tl.load(p11_ptr + idx, mask=inside, other=0.0) + taut * u1x) / n1, mask=inside)
                tl.store(p12_ptr + idx, (tl.load(p12_ptr + idx, mask=inside, other=0.0) + taut * u1y) / n1, mask=inside)
                tl.store(p21_ptr + idx, (tl.load(p21_ptr + idx, mask=inside, other=0.0) + taut * u2x) / n2, mask=inside)
                tl.store(p22_ptr + idx, (tl.load(p22_ptr + idx, mask=inside, other=0.0) + taut * u2y) / n2, mask=inside)
            tl.debug_barrier()  # the next phase A reads p of left / upper neighbours and overwrites u
            # the eager stopping rule: stop after the iteration whose update is <= epsilon^2 * H * W
            active = error > scaled_epsilon
            inner += 1
        inner_total += inner
        outer += 1
    tl.store(iterations_ptr + pair, tl.load(iterations_ptr + pair) + inner_total)


def solve_warp(u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, iterations, *, l_t, theta, taut,
               scaled_epsilon, float_eps, inner_iterations, outer_iterations, median_filtering,
               scratch=None):
    """Every outer iteration of one warp for the whole batch, in one launch, in place.

    u1, u2, p11, p12, p21, p22 (B, H, W) float32 are updated in place; i1wx, i1wy, grad, rho_c are
    the warp's inputs (as in tvl1_torch.inner_step); `iterations` (B,) int32 gets each pair's inner
    iterations added. `scratch`: two (B, H, W) float32 buffers for the median (allocated if None).
    Every tensor must be contiguous float32 on one CUDA device (or the CPU under TRITON_INTERPRET=1).
    """
    b, h, w = u1.shape
    for t in (u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c):
        if t.shape != (b, h, w) or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"solve_warp: expected contiguous float32 ({b}, {h}, {w}), "
                             f"got {t.dtype} {tuple(t.shape)}")
    if iterations.shape != (b,) or iterations.dtype != torch.int32:
        raise ValueError(f"solve_warp: iterations must be int32 ({b},), "
                         f"got {iterations.dtype} {tuple(iterations.shape)}")
    if median_filtering > 1 and median_filtering != MEDIAN_SIZE:
        raise ValueError(f"the fused TV-L1 kernel implements only a {MEDIAN_SIZE}x{MEDIAN_SIZE} median, "
                         f"not median_filtering={median_filtering}")
    m1, m2 = scratch if scratch is not None else (torch.empty_like(u1), torch.empty_like(u2))
    block, num_warps = LARGE_BATCH_CONFIG if b >= LARGE_BATCH else SMALL_BATCH_CONFIG
    _warp_kernel[(b,)](u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, m1, m2, iterations,
                       h, w, outer_iterations, inner_iterations, l_t, theta, taut, scaled_epsilon, float_eps,
                       MEDIAN=median_filtering > 1, BLOCK=block, num_warps=num_warps, num_stages=1)
