"""Dual TV-L1 optical flow on the CPU: OpenCV's algorithm with its inner loop compiled by numba.

Same algorithm, parameters and steps as opencv_contrib's `cv::optflow::DualTVL1OpticalFlow`
(`modules/optflow/src/tvl1flow.cpp`, see tvl1_torch.py for the step-by-step description): the
pyramid, the bicubic warps, the 5x5 median of the flow and the flow going up a level are OpenCV's
own functions (cv2.resize, cv2.remap, cv2.medianBlur, called as tvl1flow.cpp calls them), and the
inner iterations (thresholding, primal update, stopping sum, dual update) are transcribed in float32
in two numba loops, with the same branches and stopping rule.

Why: OpenCV runs each inner iteration as six separate passes over a dozen images (estimateV,
two divergences, estimateU, two forward gradients, estimateDualVariables), each a parallel_for with
its own overhead; at the live crop size (144 px with padding, about 130 inner iterations per level)
that overhead is most of the solve. Two fused passes per iteration do the same arithmetic in a
fraction of the time (measured in docs/features.md and `mex-bench flow`).

numba and cv2 are imported when the first solver is built; the compiled loops are cached on disk
(numba's cache=True, in __pycache__ next to this file) so later processes skip the compilation.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

from .params import FLOAT_EPS, MIN_LEVEL_SIDE, TVL1Params

FLT_EPSILON = np.float32(FLOAT_EPS)  # a float32 constant, so the comparison stays in float32


@functools.cache
def _compile():
    """The two loops of one inner iteration, jitted once per process (loaded from numba's cache)."""
    import numba

    def jit(fn):
        # error_model="numpy": IEEE division (no zero checks), so LLVM can vectorise the pixel loops;
        # fastmath stays off so every float32 operation rounds as written.
        try:
            return numba.njit(cache=True, nogil=True, error_model="numpy")(fn)
        except RuntimeError as e:  # nowhere to cache (a read-only install and an unwritable HOME): run uncached
            warnings.warn(f"numba {e}; the flow loops are compiled in this process instead (set NUMBA_CACHE_DIR "
                          "to a writable folder to keep them)", RuntimeWarning, stacklevel=2)
            return numba.njit(nogil=True, error_model="numpy")(fn)

    @jit
    def inner_loop(u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, l_t, theta, taut,
                   scaled_epsilon, iterations):
        """Up to `iterations` inner iterations, stopping once sum((u - u_prev)^2) <= scaled_epsilon.
        Updates u and p in place; returns (last error, iterations run)."""
        h, w = u1.shape
        zero_row = np.zeros(w, np.float32)  # p above the first row, for the divergence
        column_sums = np.zeros(w, np.float32)  # per-column partial sums of the update: no loop-carried sum
        error = np.float32(np.inf)
        done = 0
        while done < iterations and error > scaled_epsilon:
            # estimateV, divergence(p), estimateU: per pixel, reading p (unchanged in this pass)
            column_sums[:] = 0
            for y in range(h):
                q11, q21 = p11[y], p21[y]
                q12, q22 = p12[y], p22[y]
                a12 = p12[y - 1] if y > 0 else zero_row
                a22 = p22[y - 1] if y > 0 else zero_row
                r1, r2 = u1[y], u2[y]
                gxr, gyr, gr, rcr = i1wx[y], i1wy[y], grad[y], rho_c[y]
                for x in range(w):
                    gx, gy, g = gxr[x], gyr[x], gr[x]
                    u1k, u2k = r1[x], r2[x]
                    rho = rcr[x] + (gx * u1k + gy * u2k)
                    lg = l_t * g
                    if rho < -lg:
                        t = l_t
                    elif rho > lg:
                        t = -l_t
                    elif g > FLT_EPSILON:
                        t = -rho / g
                    else:
                        t = np.float32(0.0)
                    # divergence: backward differences, p taken as 0 before the first column / row
                    left11 = q11[x - 1] if x > 0 else np.float32(0.0)
                    left21 = q21[x - 1] if x > 0 else np.float32(0.0)
                    div1 = (q11[x] - left11) + (q12[x] - a12[x])
                    div2 = (q21[x] - left21) + (q22[x] - a22[x])
                    n1 = (u1k + t * gx) + theta * div1
                    n2 = (u2k + t * gy) + theta * div2
                    r1[x] = n1
                    r2[x] = n2
                    column_sums[x] += (n1 - u1k) * (n1 - u1k) + (n2 - u2k) * (n2 - u2k)
            error = np.float32(column_sums.astype(np.float64).sum())
            # forwardGradient(u) and estimateDualVariables: per pixel, reading u (unchanged in this pass)
            for y in range(h):
                r1, r2 = u1[y], u2[y]
                b1 = u1[y + 1] if y < h - 1 else r1  # below the last row: the row itself, so u_y = 0
                b2 = u2[y + 1] if y < h - 1 else r2
                q11, q12, q21, q22 = p11[y], p12[y], p21[y], p22[y]
                for x in range(w):
                    u1x = r1[x + 1] - r1[x] if x < w - 1 else np.float32(0.0)
                    u2x = r2[x + 1] - r2[x] if x < w - 1 else np.float32(0.0)
                    u1y = b1[x] - r1[x]
                    u2y = b2[x] - r2[x]
                    ng1 = np.float32(1.0) + taut * np.sqrt(u1x * u1x + u1y * u1y)
                    ng2 = np.float32(1.0) + taut * np.sqrt(u2x * u2x + u2y * u2y)
                    q11[x] = (q11[x] + taut * u1x) / ng1
                    q12[x] = (q12[x] + taut * u1y) / ng1
                    q21[x] = (q21[x] + taut * u2x) / ng2
                    q22[x] = (q22[x] + taut * u2y) / ng2
            done += 1
        return error, done

    return inner_loop


def centred_gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's centeredGradient: (I[x+1] - I[x-1]) / 2, one-sided halves at the borders."""
    padded = np.pad(image, 1, mode="edge")
    half = np.float32(0.5)
    return half * (padded[1:-1, 2:] - padded[1:-1, :-2]), half * (padded[2:, 1:-1] - padded[:-2, 1:-1])


class TVL1Numba:
    """`TVL1Numba()(i0, i1)`: (H, W) float32 grey levels in 0..255 -> (u1, u2) float32 (H, W).

    u1 is horizontal, u2 vertical, such that i1(x + u) ~ i0(x). `inner_iterations_run` counts the
    inner iterations of the last call (all levels)."""

    def __init__(self, params: TVL1Params = TVL1Params()):
        import cv2

        if params.median_filtering not in (0, 1, 3, 5):
            raise ValueError(f"median_filtering={params.median_filtering}: cv2.medianBlur on float images "
                             "supports 3 and 5 (0 or 1 = off)")
        self.cv2 = cv2
        self.params = params
        self.inner_loop = _compile()
        self.inner_iterations_run = 0

    def __call__(self, i0: np.ndarray, i1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cv2, p = self.cv2, self.params
        if i0.shape != i1.shape or i0.ndim != 2:
            raise ValueError(f"expected two (H, W) images of one shape, got {i0.shape} and {i1.shape}")
        # OpenCV's calc() reads float input as 0..1 and scales it by 255 (convertTo): the backends hand
        # it x / 255, so the same rounding happens here.
        levels = [tuple(((np.asarray(im, np.float32) / np.float32(255)).astype(np.float64) * 255.0).astype(np.float32)
                        for im in (i0, i1))]
        for _ in range(1, p.nscales):
            a, b = (cv2.resize(im, None, fx=p.scale_step, fy=p.scale_step) for im in levels[-1])
            if a.shape[0] < MIN_LEVEL_SIDE or a.shape[1] < MIN_LEVEL_SIDE:
                break
            levels.append((a, b))
        self.inner_iterations_run = 0
        u1 = np.zeros(levels[-1][0].shape, np.float32)
        u2 = np.zeros_like(u1)
        up = np.float32(1.0 / p.scale_step)
        for s in range(len(levels) - 1, -1, -1):
            u1, u2 = self._solve_level(*levels[s], u1, u2)
            if s > 0:
                h, w = levels[s - 1][0].shape
                u1 = cv2.resize(u1, (w, h)) * up
                u2 = cv2.resize(u2, (w, h)) * up
        return u1, u2

    def _solve_level(self, i0, i1, u1, u2):
        cv2, p = self.cv2, self.params
        h, w = i0.shape
        scaled_epsilon = np.float32(p.epsilon * p.epsilon * h * w)
        l_t = np.float32(p.lam * p.theta)
        theta = np.float32(p.theta)
        taut = np.float32(p.tau / p.theta)
        u1, u2 = np.ascontiguousarray(u1, np.float32), np.ascontiguousarray(u2, np.float32)
        i1x, i1y = centred_gradient(i1)
        p11, p12, p21, p22 = (np.zeros((h, w), np.float32) for _ in range(4))
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        i1_stack = cv2.merge((i1, i1x, i1y))
        for _ in range(p.warps):
            # OpenCV's three remaps (INTER_CUBIC, zeros outside) as one over the stacked images, with the
            # maps converted to fixed point once: the same sample points and weights, bit for bit
            maps = cv2.convertMaps(xs + u1, ys + u2, cv2.CV_16SC2)
            i1w, i1wx, i1wy = cv2.split(cv2.remap(i1_stack, *maps, cv2.INTER_CUBIC))
            grad = i1wx * i1wx + i1wy * i1wy
            rho_c = i1w - i1wx * u1 - i1wy * u2 - i0
            error = np.float32(np.finfo(np.float32).max)
            for _ in range(p.outer_iterations):
                if not error > scaled_epsilon:
                    break
                if p.median_filtering > 1:
                    u1 = cv2.medianBlur(u1, p.median_filtering)
                    u2 = cv2.medianBlur(u2, p.median_filtering)
                error, done = self.inner_loop(u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, l_t, theta, taut,
                                              scaled_epsilon, p.inner_iterations)
                self.inner_iterations_run += done
        return u1, u2
