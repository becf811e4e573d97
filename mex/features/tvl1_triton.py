"""One fused Triton kernel per TV-L1 inner iteration, over the whole batch.

The eager torch step (tvl1_torch.inner_step) is ~35 small kernels. Fused, it is one launch plus a
zeroed error buffer: each program takes a tile of one image and, per pixel, recomputes the primal
update u_new at the pixel and at its right and lower neighbours (they need only the old u and p),
so the dual update on grad(u_new) needs no grid-wide barrier. The per-pair squared update is summed
per tile and added atomically; a pair that has converged copies its state through, and one of its
programs carries its error over, so the stopping semantics are the eager step's exactly.

Triton is optional: this module is imported only when a fused solve is asked for. Its output is
tested against the eager step on the CPU with TRITON_INTERPRET=1; it has NOT been run on a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_H = 16
BLOCK_W = 32


@triton.jit
def _primal(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr, i1wx_ptr, i1wy_ptr, grad_ptr, rho_ptr,
            ys, xs, valid, W, l_t, theta, float_eps):
    """Old u and new u (thresholding + primal update, OpenCV estimateV/estimateU) at pixels (ys, xs)."""
    idx = ys * W + xs
    u1 = tl.load(u1_ptr + idx, mask=valid, other=0.0)
    u2 = tl.load(u2_ptr + idx, mask=valid, other=0.0)
    i1wx = tl.load(i1wx_ptr + idx, mask=valid, other=0.0)
    i1wy = tl.load(i1wy_ptr + idx, mask=valid, other=0.0)
    grad = tl.load(grad_ptr + idx, mask=valid, other=1.0)
    rho = tl.load(rho_ptr + idx, mask=valid, other=0.0) + i1wx * u1 + i1wy * u2
    step = tl.minimum(tl.maximum(-rho / tl.maximum(grad, float_eps), -l_t), l_t)
    left = valid & (xs > 0)
    up = valid & (ys > 0)
    # divergence: backward differences with p = 0 before the first column / row (OpenCV's)
    div1 = (tl.load(p11_ptr + idx, mask=valid, other=0.0) - tl.load(p11_ptr + idx - 1, mask=left, other=0.0)
            + tl.load(p12_ptr + idx, mask=valid, other=0.0) - tl.load(p12_ptr + idx - W, mask=up, other=0.0))
    div2 = (tl.load(p21_ptr + idx, mask=valid, other=0.0) - tl.load(p21_ptr + idx - 1, mask=left, other=0.0)
            + tl.load(p22_ptr + idx, mask=valid, other=0.0) - tl.load(p22_ptr + idx - W, mask=up, other=0.0))
    return u1, u2, u1 + step * i1wx + theta * div1, u2 + step * i1wy + theta * div2


@triton.jit
def _inner_step_kernel(u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr,
                       i1wx_ptr, i1wy_ptr, grad_ptr, rho_ptr, error_in_ptr,
                       u1o_ptr, u2o_ptr, p11o_ptr, p12o_ptr, p21o_ptr, p22o_ptr, error_out_ptr,
                       H, W, l_t, theta, taut, scaled_epsilon, float_eps,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    b = tl.program_id(0)
    ty = tl.program_id(1)
    tx = tl.program_id(2)
    ys = ty * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    xs = tx * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (ys < H) & (xs < W)
    image = b * H * W  # offset of this pair's image in every (B, H, W) buffer
    idx = image + ys * W + xs
    error_prev = tl.load(error_in_ptr + b)
    p11 = tl.load(p11_ptr + idx, mask=inside, other=0.0)
    p12 = tl.load(p12_ptr + idx, mask=inside, other=0.0)
    p21 = tl.load(p21_ptr + idx, mask=inside, other=0.0)
    p22 = tl.load(p22_ptr + idx, mask=inside, other=0.0)
    if error_prev > scaled_epsilon:
        # this pair's image in each input buffer (fresh names: the else branch reads the originals)
        u1_b = u1_ptr + image
        u2_b = u2_ptr + image
        p11_b = p11_ptr + image
        p12_b = p12_ptr + image
        p21_b = p21_ptr + image
        p22_b = p22_ptr + image
        i1wx_b = i1wx_ptr + image
        i1wy_b = i1wy_ptr + image
        grad_b = grad_ptr + image
        rho_b = rho_ptr + image
        has_right = inside & (xs + 1 < W)
        has_down = inside & (ys + 1 < H)
        u1, u2, u1n, u2n = _primal(u1_b, u2_b, p11_b, p12_b, p21_b, p22_b, i1wx_b, i1wy_b, grad_b, rho_b,
                                   ys, xs, inside, W, l_t, theta, float_eps)
        _u1, _u2, u1r, u2r = _primal(u1_b, u2_b, p11_b, p12_b, p21_b, p22_b, i1wx_b, i1wy_b, grad_b, rho_b,
                                     ys, xs + 1, has_right, W, l_t, theta, float_eps)
        _u1, _u2, u1d, u2d = _primal(u1_b, u2_b, p11_b, p12_b, p21_b, p22_b, i1wx_b, i1wy_b, grad_b, rho_b,
                                     ys + 1, xs, has_down, W, l_t, theta, float_eps)
        # dual update on the forward gradient of the new u (zero on the last column / row)
        u1x = tl.where(has_right, u1r - u1n, 0.0)
        u1y = tl.where(has_down, u1d - u1n, 0.0)
        u2x = tl.where(has_right, u2r - u2n, 0.0)
        u2y = tl.where(has_down, u2d - u2n, 0.0)
        n1 = 1.0 + taut * tl.sqrt(u1x * u1x + u1y * u1y)
        n2 = 1.0 + taut * tl.sqrt(u2x * u2x + u2y * u2y)
        tl.store(u1o_ptr + idx, u1n, mask=inside)
        tl.store(u2o_ptr + idx, u2n, mask=inside)
        tl.store(p11o_ptr + idx, (p11 + taut * u1x) / n1, mask=inside)
        tl.store(p12o_ptr + idx, (p12 + taut * u1y) / n1, mask=inside)
        tl.store(p21o_ptr + idx, (p21 + taut * u2x) / n2, mask=inside)
        tl.store(p22o_ptr + idx, (p22 + taut * u2y) / n2, mask=inside)
        d1 = u1n - u1
        d2 = u2n - u2
        tl.atomic_add(error_out_ptr + b, tl.sum(tl.where(inside, d1 * d1 + d2 * d2, 0.0)))
    else:
        # converged pair: frozen; one program carries its error over
        tl.store(u1o_ptr + idx, tl.load(u1_ptr + idx, mask=inside, other=0.0), mask=inside)
        tl.store(u2o_ptr + idx, tl.load(u2_ptr + idx, mask=inside, other=0.0), mask=inside)
        tl.store(p11o_ptr + idx, p11, mask=inside)
        tl.store(p12o_ptr + idx, p12, mask=inside)
        tl.store(p21o_ptr + idx, p21, mask=inside)
        tl.store(p22o_ptr + idx, p22, mask=inside)
        if (tx == 0) & (ty == 0):
            tl.atomic_add(error_out_ptr + b, error_prev)


def fused_inner_step(u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, error, *, l_t, theta, taut,
                     scaled_epsilon, float_eps):
    """Same contract as tvl1_torch.inner_step: new (u1, u2, p11, p12, p21, p22, error)."""
    b, h, w = u1.shape
    outputs = [torch.empty_like(t) for t in (u1, u2, p11, p12, p21, p22)]
    error_out = torch.zeros_like(error)
    grid = (b, triton.cdiv(h, BLOCK_H), triton.cdiv(w, BLOCK_W))
    _inner_step_kernel[grid](u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, error,
                             *outputs, error_out, h, w, l_t, theta, taut, scaled_epsilon, float_eps,
                             BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W)
    return (*outputs, error_out)
