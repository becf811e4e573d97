"""The apex of a pre-segmented clip from the flow between its onset and each frame, and the frames
whose probabilities are pooled around it.

Chosen on the real CASME II clips of `casme2-frames` (the first 10 subjects; `mex-bench live-gap
--frames` reports them and the other 10 apart, and what each step is worth; docs/spotting.md):
- **Local motion**: the flow onset -> frame less the least-squares similarity (shift, rotation, scale)
  of the whole field: what is left of head motion after the tracker's alignment.
- **Drift**: a database clip ends back near neutral, so what local motion the clip's end still shows
  (over its last `END_S`) is drift (lighting, a slow turn, the tracker creeping); it is taken as
  growing linearly from the onset and removed. The step that matters most: without it the largest
  motion is often late, at the drift's end.
- **Profile**: per frame the 95th percentile of the local motion's magnitude (a movement is a few
  patches of the face), averaged over `SMOOTH_S`.
- **Apex**: the middle of the plateau around the profile's peak (the frames next to it still at
  `PLATEAU` of the peak or more): an annotator marks the middle of a held peak; its first frame is
  often several frames early.
A clip that does not come back (cut at its apex) shows its movement at the end: when the drift-corrected
peak is under `RETURN_FRAC` of the end's own local motion, the profile is taken without the drift step.

Pooling: the label of one apex frame depends on that frame; the probabilities of `k` frames spread
evenly over `POOL_HALF_S` either side of the apex (nearest kept frames, the onset never) are averaged.
"""
from __future__ import annotations

import numpy as np

END_S = 0.02  # the clip's last this-long is its drift (mean local motion over it)
SMOOTH_S = 0.11  # the profile is averaged over this window (centred)
PLATEAU = 0.85  # frames around the peak at this share of it or more are its plateau
RETURN_FRAC = 0.3  # drift-corrected peak under this share of the end's local motion: the clip did not come back
POOL_HALF_S = 0.07  # pooled frames lie within this of the apex
POOL_FRAMES = 3  # frames pooled for a pre-segmented clip (mex-live --segmented)


def local_motion(flow: np.ndarray) -> np.ndarray:
    """(n, 2, H, W) flow fields (u, v in one unit: a fraction of the crop's width) less each field's
    least-squares similarity (shift, rotation, scale) over the grid."""
    n, _, h, w = flow.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = (xs.ravel() + 0.5) / w - 0.5, (ys.ravel() + 0.5) / w - 0.5 * h / w
    one, zero = np.ones_like(x), np.zeros_like(x)
    basis = np.concatenate([np.stack([one, zero, x, -y], 1), np.stack([zero, one, y, x], 1)])  # (2HW, 4)
    b = flow.reshape(n, 2 * h * w).T.astype(np.float64)
    fit = basis @ np.linalg.lstsq(basis, b, rcond=None)[0]
    return (b - fit).T.reshape(flow.shape).astype(np.float32)


def apex_profile(flow: np.ndarray, t: np.ndarray, fps: float, ignore: np.ndarray | None = None,
                 similarity: bool = True, drift: bool = True) -> np.ndarray:
    """Per frame, the smoothed 95th percentile of drift-corrected local motion (see the module's doc).
    `flow[k]` is onset -> frame `t[k]` (frames after the onset, t[0] = 0, increasing); `ignore` (n, H, W)
    bool: motion that does not count (a blinking eye). `similarity`, `drift` off: without that step
    (what each step is worth, `mex-bench live-gap --frames`)."""
    t = np.asarray(t, np.float64)
    res = local_motion(flow) if similarity else flow.astype(np.float32)
    end = res[t >= t[-1] - END_S * fps].mean(0)
    a = (t / max(t[-1], 1.0))[:, None, None, None]

    def profile(r):
        m = np.hypot(r[:, 0], r[:, 1])
        if ignore is not None:
            m[ignore] = 0.0
        m = np.percentile(m.reshape(len(r), -1), 95, axis=1)
        near = np.abs(t[:, None] - t[None, :]) <= SMOOTH_S * fps / 2
        return (near * m[None, :]).sum(1) / near.sum(1)

    raw = profile(res)
    if not drift:
        return raw
    corrected = profile(res - a * end)
    return corrected if corrected[1:].max() >= RETURN_FRAC * raw[-1] else raw


def flow_apex(flow: np.ndarray, t: np.ndarray, fps: float) -> int:
    """Index (into t) of the apex: the middle of the plateau around apex_profile's peak after the onset."""
    if len(t) < 2:
        raise ValueError("an apex needs the onset and at least one more frame")
    return plateau_middle(apex_profile(flow, t, fps))


def plateau_middle(profile: np.ndarray) -> int:
    """Index of the middle of the run of frames around the profile's peak (after index 0) that stay at
    `PLATEAU` of the peak or more."""
    peak = 1 + int(np.argmax(profile[1:]))
    lo = hi = peak
    while lo > 1 and profile[lo - 1] >= PLATEAU * profile[peak]:
        lo -= 1
    while hi + 1 < len(profile) and profile[hi + 1] >= PLATEAU * profile[peak]:
        hi += 1
    return (lo + hi) // 2


def pool_indices(t: np.ndarray, apex: int, fps: float, k: int, half_s: float = POOL_HALF_S) -> list[int]:
    """Indices (into t, frames after the onset) of up to `k` frames spread evenly over `half_s` either
    side of t[apex], the nearest kept frame to each target, the onset never; the apex first."""
    t = np.asarray(t, np.float64)
    if k <= 1:
        return [apex]
    targets = t[apex] + np.linspace(-half_s, half_s, k) * fps
    others = np.flatnonzero(t > t[0]) if len(t) > 1 else np.array([apex])
    picked = [int(others[np.argmin(np.abs(t[others] - g))]) for g in targets]
    return [apex, *dict.fromkeys(i for i in picked if i != apex)]
