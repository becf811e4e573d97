"""Online onset/apex spotting on aligned face crops.

Per frame (a fraction of a millisecond; no future frames needed):
1. The crop is reduced to `work_px` and blurred (noise averages out; sub-pixel motion survives as
   intensity change).
2. It is compared with a reference crop from `ref_lag_s` earlier, after registering the two: what the
   tracker's alignment leaves of head motion (lag, landmark jitter) is a small similarity, and it
   must not count as a micro-expression. Phase correlation gives the shift, two robust Lucas-Kanade
   steps add rotation and scale; Huber weights keep the moving brow or lip corner out of the fit.
3. Per face sub-region (left/right brow, eye, mouth corner, plus control regions on nose and cheeks)
   the largest local mean absolute difference (over `cell_px` squares) becomes a z-score against that
   region's own running noise level; the median z over all regions is subtracted, so what changes
   the whole face (lighting, residual misalignment) cancels and only local motion remains.
4. The motion signal is the largest regional z. It crossing `z_on` opens an interval; the onset is
   the last frame before the crossing at the floor, the apex the peak. The offset is the first frame
   after the peak back at `z_floor` (for `quiet_s`), or the first frame from which the face stopped
   changing (the same z against the crop `still_lag_s` before under `z_still` for `still_s`): a real
   face settles near, not at, where it started.
The reference is frozen from the crossing until the interval has slid out of the lag window, so the
reference never shows the movement itself (no echo `ref_lag_s` later).

Rejected intervals (each recorded with its reason, REJECTIONS; `take_rejections()`):
- the way back of a movement that ended settled (`return`);
- longer than `max_event_s`: an expression, a pose change, speech or a held glance, not a micro one;
  followed to its end and recorded as one interval ("long": MEGC's macro-expressions);
- blinks: both eyes changing by more than `blink_gray` gray levels (a closing lid covers the iris,
  far more change than any eyelid micro-movement, and one eye alone is not a blink);
- fast head motion: the registration had to move the crop by more than `max_motion_px` (at the crop's
  rim, working pixels), where what it leaves behind cannot be told from a micro-expression;
- the rest is explained by where the face moved between the reference and the apex (`_explain`:
  dense flow per face part): a turn or nod in depth, the upper lids coming down (partial blinks, on
  a dim face too), the eyes moving alone (a glance), the jaw dropping (speech).

Delay: a candidate (onset, apex and offset together) is emitted `quiet_s` or `still_s + pause_s`
after its offset (a movement that ended settled is held `pause_s` in case it goes on), at most
`max_event_s + still_s + pause_s` (1.05 s) after its onset, whatever the fps. Spotting starts
`ref_lag_s + warmup_s` (1.0 s) after a face appears.
"""
from __future__ import annotations

import time
from collections import deque
from itertools import islice
from dataclasses import dataclass, replace

import cv2
import numpy as np

from realtime.apex import POOL_FRAMES, apex_profile, local_motion, plateau_middle, pool_indices
from realtime.packets import Candidate, FaceFrame, Rejection

# sub-regions of the canonical crop as (x0, y0, x1, y1) fractions (eyes at (0.3, 0.36), (0.7, 0.36))
REGIONS = {
    "brows_l": (0.10, 0.10, 0.48, 0.29),
    "brows_r": (0.52, 0.10, 0.90, 0.29),
    "eyes_l": (0.14, 0.29, 0.46, 0.44),
    "eyes_r": (0.54, 0.29, 0.86, 0.44),
    "mouth_l": (0.20, 0.60, 0.50, 0.88),
    "mouth_r": (0.50, 0.60, 0.80, 0.88),
    "nose": (0.40, 0.42, 0.60, 0.62),  # control: does not move in brow/eye/mouth actions
    "cheek_l": (0.14, 0.46, 0.36, 0.60),  # control
    "cheek_r": (0.64, 0.46, 0.86, 0.60),  # control
}
FACE_REGIONS = ("brows", "eyes", "mouth")
# masks over REGIONS: where a movement is spotted (the others are controls), the eyes, the brows
FACE = np.array([k.split("_")[0] in FACE_REGIONS for k in REGIONS])
EYES = np.array([k.startswith("eyes") for k in REGIONS])
BROWS = np.array([k.startswith("brows") for k in REGIONS])
BROWS_MOUTH = FACE & ~EYES  # a movement there is not a blink's
BLINK_ROWS = (0.10, 0.44)  # brows to lower lids, as fractions of the crop's height (ClipSpotter: a blink's motion)
# parts of the canonical crop whose motion explains an interval (see Spotter._explain)
PARTS = {
    "brow_l": (0.10, 0.10, 0.48, 0.29), "brow_r": (0.52, 0.10, 0.90, 0.29),
    "lid_l": (0.16, 0.27, 0.44, 0.365), "lid_r": (0.56, 0.27, 0.84, 0.365),  # upper lid and iris
    "low_l": (0.16, 0.365, 0.44, 0.45), "low_r": (0.56, 0.365, 0.84, 0.45),  # lower lid
    "corner_l": (0.16, 0.62, 0.40, 0.86), "corner_r": (0.60, 0.62, 0.84, 0.86),  # lip corners
    "jaw": (0.38, 0.78, 0.62, 0.98),  # lower lip and chin
    "nose": (0.40, 0.40, 0.60, 0.62),  # rigid: moves only with the head
}
# why an interval was not reported (Rejection.reason)
REJECTIONS = {
    "long": "moved for longer than max_event_s: an expression, a pose change, speech or a held glance",
    "blink": "a blink: both eyes changed by more than blink_gray, or the upper lids moved down more than the "
             "brows and mouth moved (partial blinks, one eye, a downward glance)",
    "gaze": "a glance: the eyes moved sideways or up, the brows and mouth still",
    "speech": "talking: the lower lip and jaw moved more than the lip corners",
    "return": "the face going back to how it was before a movement that ended settled elsewhere (return_s)",
    "head": "the head moved: registration had to move the crop by more than max_motion_px, or the nose moved "
            "against the face after it (a turn or a nod in depth)",
}


@dataclass
class SpotterConfig:
    ref_lag_s: float = 0.3  # reference crop this long before; must exceed the longest onset -> apex
    max_event_s: float = 0.5  # longer movements are not micro-expressions
    max_macro_s: float = 4.0  # longer movements are followed to their end up to this long (then cut)
    quiet_s: float = 0.02  # the signal stays at the floor this long (at least one frame) to end an interval
    still_lag_s: float = 0.05  # the face's change is also measured against the crop this long before ...
    still_s: float = 0.2  # ... and an interval ends when that change has stayed under z_still this long
    z_still: float = 2.0  # median regional z of that short-lag change taken as "the face has stopped changing"
    pause_s: float = 0.35  # a movement that ended settled is held this long: one starting by then continues it
    return_s: float = 1.0  # an interval this soon after a reported one that takes the face back is its return
    return_share: float = 0.6  # ... when the face at its apex is this close (share of the change) to before it
    stats_s: float = 3.0  # time constant of each region's running noise level
    warmup_s: float = 0.7  # noise statistics are learnt this long before anything is spotted
    z_on: float = 5.0  # regional z that opens an interval
    noise_floor_gray: float = 0.25  # the noise level used for z is at least this (gray levels)
    z_floor: float = 1.5  # regional z taken as "no motion" (onset / offset boundaries)
    blink_gray: float = 12.0  # both eyes changing this much (gray levels, largest cell) = a blink
    max_motion_px: float = 2.0  # intervals during which registration moved the crop further are head motion
    min_gain: float = 0.005  # the light's gain (relative) below which registration leaves the gray levels alone
    # explaining an interval by where the face moved (Spotter._explain; pixels of the spotting crop)
    min_part_px: float = 0.5  # a part moving less than this explains nothing
    head_share: float = 0.35  # the nose or the median part moved this share of the most-moving one: the head moved
    eye_dominance: float = 1.5  # an eye moving this many times more than brows, lip corners and jaw: eyes alone
    jaw_dominance: float = 1.5  # the jaw dropping this many times more than the lip corners move: speech
    history_s: float = 6.0  # how much signal `signal_history()` keeps
    work_px: int = 64  # working size of the crop
    blur_px: float = 1.2  # Gaussian blur at the working size: noise and interpolation differences average out
    cell_px: int = 7  # side of the square a region's change is averaged over, at the working size
    lk_steps: int = 2  # Gauss-Newton steps of the registration
    huber_gray: float = 2.0  # residuals above this (gray levels) count less in the registration
    # frames near the apex (within realtime.apex.POOL_HALF_S) whose probabilities are averaged with the apex's;
    # each costs one more encoding (the online default keeps the apex alone; ClipSpotter pools by default)
    pool_frames: int = 1


class Spotter:
    def __init__(self, fps: float, config: SpotterConfig | None = None):
        self.fps = float(fps)
        self.cfg = c = config or SpotterConfig()
        frames = lambda s: max(1, int(round(s * self.fps)))  # noqa: E731 - seconds -> frames at this fps
        self.lag, self.max_len, self.quiet = frames(c.ref_lag_s), frames(c.max_event_s), frames(c.quiet_s)
        self.still_lag, self.still = min(frames(c.still_lag_s), self.lag), frames(c.still_s)
        self.return_len, self.pause = frames(c.return_s), frames(c.pause_s)
        self.max_macro = frames(c.max_macro_s)
        self.warmup, self.alpha = frames(c.warmup_s), 1.0 / frames(c.stats_s)
        n = c.work_px
        self.boxes = {k: (int(x0 * n), int(y0 * n), int(x1 * n), int(y1 * n))
                      for k, (x0, y0, x1, y1) in REGIONS.items()}
        self.names = list(REGIONS)
        self.window = cv2.createHanningWindow((n // 2, n // 2), cv2.CV_32F)
        self.c0 = n / 2  # the crop's centre, both coordinates
        # the fit samples every other pixel (the blur makes neighbours alike) away from the crop's rim,
        # where warping replicates edge pixels
        self.border = border = n // 16
        self.grid = np.s_[border:n - border:2, border:n - border:2]
        self.grid_n = len(range(border, n - border, 2))
        self.ridge = 1e-3 * np.eye(4, dtype=np.float32)  # keeps the normal equations solvable on a flat crop
        ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) - np.float32(n / 2)
        self.xc, self.yc = xs[self.grid].ravel(), ys[self.grid].ravel()
        # ring buffers over the span an interval can need: lag before it, the interval, and the quiet tail
        keep = self.lag + self.max_len + max(self.quiet, self.still) + 2
        self.crops: deque[tuple[int, np.ndarray]] = deque(maxlen=keep)  # (index, work crop)
        self.faces: deque[FaceFrame] = deque(maxlen=keep)
        self.signal: deque[tuple[int, float, int]] = deque(maxlen=keep)  # (index, z, argmax region)
        self.change: deque[float] = deque(maxlen=keep)  # largest regional z against the crop still_lag before
        # (index, its reference's index, the crop registered onto that reference)
        self.aligned: deque[tuple[int, int, np.ndarray]] = deque(maxlen=self.still_lag + 1)
        self.eye_gray: deque[float] = deque(maxlen=keep)  # min over both eyes of the raw change
        self.others: deque[float] = deque(maxlen=keep)  # largest z of the brows and mouth regions
        self.motion: deque[float] = deque(maxlen=keep)  # how far the registration had to move the crop
        self.history: deque[float] = deque(maxlen=max(2, int(c.history_s * self.fps)))
        self.mu = np.zeros(len(REGIONS), np.float32)
        self.var = np.zeros(len(REGIONS), np.float32)
        self.seen = 0  # frames with a face since the last reset
        self.frozen: tuple[int, np.ndarray] | None = None  # reference held over an interval
        self.frozen_face: FaceFrame | None = None  # its face frame
        self.hold_until = -1  # frame index the frozen reference is kept past
        self.open: int | None = None  # frame index where the current interval was triggered
        self.long: list | None = None  # the open interval outlasted max_event_s: [onset, peak index, z, region]
        self.block_until = -1  # no interval opens up to this frame (after a too-long movement)
        self.last_z = np.zeros(len(REGIONS), np.float32)
        self.rejections: list[Rejection] = []  # since the last take_rejections()
        # the last reported interval that ended with the face settled away from where it started:
        # (offset index, the work crop before it), to tell its return from a new movement
        self.settled: tuple[int, np.ndarray] | None = None
        self.spoke_at: int | None = None  # offset of the last interval rejected as speech
        self.pending: Candidate | None = None  # ended settled, held for pause_s in case the movement goes on

    # -- per frame -------------------------------------------------------------------------------
    def push(self, ff: FaceFrame) -> list[Candidate]:
        t0 = time.perf_counter()
        out = self._push(ff)
        ff.frame.stage_ms["spot"] = (time.perf_counter() - t0) * 1e3
        return out

    def _push(self, ff: FaceFrame) -> list[Candidate]:
        out = self._step(ff)
        i = ff.frame.index
        if self.pending is not None and (self.long is not None or ff.crop is None or (
                self.open is None and i - self.pending.offset_index > self.pause)):
            out = self._release() + out  # no movement continued it (or none can now)
        return out

    def _release(self) -> list[Candidate]:
        """The held candidate, if any, confirmed now."""
        if self.pending is None:
            return []
        cand, self.pending = replace(self.pending, t_apex_confirmed=time.monotonic()), None
        return [cand]

    def _step(self, ff: FaceFrame) -> list[Candidate]:
        if ff.crop is None:  # no face: whatever was open cannot be finished, start over when it is back
            self.history.append(0.0)
            self.last_z[:] = 0
            self._reset()
            return []
        work = self._work(ff.crop)
        i = ff.frame.index
        self.crops.append((i, work))
        self.faces.append(ff)
        self.seen += 1
        ref = self._reference(i)
        if ref is None:
            self.history.append(0.0)
            return []
        aligned, motion = self._register(ref[1], work)
        d = self._regions(cv2.absdiff(aligned, ref[1]))
        eye_gray = float(d[EYES].min())
        if self.seen <= self.lag + self.warmup:  # learn the noise level first
            self._learn(d, first=self.seen == self.lag + 1)
            self.history.append(0.0)
            return []
        # the noise level has a floor: on a clean, still clip the running spread gets so small that
        # sub-gray-level interpolation residue would count as motion
        sd = np.maximum(np.sqrt(self.var), self.cfg.noise_floor_gray)
        z = (d - self.mu) / sd
        z -= sorted(z.tolist())[len(z) // 2]  # whole-face change (lighting, residual misalignment) is not local motion
        # while an interval is open every crop is registered onto the same frozen reference, so the change
        # from the crop still_lag before is a difference of two registered crops (no second registration);
        # the reference's noise level (which includes `ref_lag_s` of drift) errs towards "still"
        self.aligned.append((i, ref[0], aligned))
        j, ref_j, before = self.aligned[0]
        if len(self.aligned) > self.still_lag and j == i - self.still_lag and ref_j == ref[0]:
            zv = (self._regions(cv2.absdiff(aligned, before)) - self.mu) / sd
            self.change.append(float((zv - sorted(zv.tolist())[len(zv) // 2])[FACE].max()))
        else:
            self.change.append(np.inf)  # not measured (no common reference): not still
        self.last_z = z
        k = int(np.argmax(np.where(FACE, z, -np.inf)))
        s = float(z[k])
        self.signal.append((i, s, k))
        self.eye_gray.append(eye_gray)
        self.others.append(float(z[BROWS_MOUTH].max()))
        self.motion.append(motion)
        self.history.append(s)
        if self.open is None:
            if s >= self.cfg.z_on and i > self.block_until:
                self.open = i
                if ref is not self.frozen:  # its face frame, for explaining the interval (it may leave `faces`)
                    self.frozen_face = next(f for f in reversed(self.faces) if f.frame.index == ref[0])
                self.frozen = ref
            elif self.frozen is None or i > self.hold_until:
                self._learn(d)
            return []
        return self._follow(i)

    def _work(self, crop: np.ndarray) -> np.ndarray:
        """The aligned crop at the working size, blurred (step 1)."""
        n = self.cfg.work_px
        if crop.shape[0] != 2 * n:
            crop = cv2.resize(crop, (2 * n, 2 * n), interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(cv2.pyrDown(crop).astype(np.float32), (0, 0), self.cfg.blur_px)

    def _reference(self, i: int) -> tuple[int, np.ndarray] | None:
        if self.frozen is not None and (self.open is not None or i - self.lag <= self.hold_until):
            return self.frozen
        self.frozen = None
        if len(self.crops) <= self.lag or self.crops[-1 - self.lag][0] != i - self.lag:
            return None  # not enough consecutive frames yet
        return self.crops[-1 - self.lag]

    def _difference(self, ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Per-region change after registering cur onto ref: the largest mean |cur - ref| over any
        `cell_px` square in the region (a lip corner moves a small patch, not a whole region); and
        the smaller of the two eyes' changes; the registration's motion."""
        aligned, motion = self._register(ref, cur)
        d = self._regions(cv2.absdiff(aligned, ref))
        return d, float(d[EYES].min()), motion

    def _regions(self, absdiff: np.ndarray) -> np.ndarray:
        """Per region, the largest mean of |difference| over a `cell_px` square."""
        diff = cv2.blur(absdiff, (self.cfg.cell_px, self.cfg.cell_px))
        return np.array([cv2.minMaxLoc(diff[y0:y1, x0:x1])[1] for x0, y0, x1, y1 in self.boxes.values()], np.float32)

    def _register(self, ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, float]:
        """cur warped onto ref by a small similarity and its light matched, and how far that moved it
        (pixels at the crop's rim)."""
        p = self._fit(ref, cur)
        return self._warp(cur, p) / np.float32(1 + p[4]), float(np.hypot(p[0], p[1]) + self.c0 * np.hypot(p[2], p[3]))

    def _fit(self, ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """p = (tx, ty, s, r, g): the similarity taking cur onto ref (working crops), and the light's
        gain g (cur moved = (1 + g) ref: flicker, a lamp, auto exposure scale the face's gray levels,
        which no registration removes and which would bias it).

        Phase correlation gives the shift, Gauss-Newton (Lucas-Kanade) steps refine shift, rotation and
        scale, with Huber weights so the few pixels where the face itself moved do not pull the fit.
        The gain is the median ratio of the moved crop to ref after the first step (the moving brow or lip corner
        is a few pixels of many, and a least-squares gain would take some of its change for light), and
        0 when under `min_gain`: a movement of the face's own parts shifts that median by about as much,
        and light changing less leaves less than the noise."""
        # the shift at half size is close enough for the fit to start from, at a quarter of the cost;
        # windowed copies: cv2.phaseCorrelate multiplies its inputs by the window in place
        (dx, dy), _ = cv2.phaseCorrelate(cv2.pyrDown(ref) * self.window, cv2.pyrDown(cur) * self.window)
        p = np.array([2 * dx, 2 * dy, 0.0, 0.0, 0.0])
        gx = cv2.Sobel(ref, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
        gy = cv2.Sobel(ref, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
        g = self.grid
        gx, gy = gx[g].ravel(), gy[g].ravel()
        ref_g = ref[g].ravel()
        lit = np.flatnonzero(ref_g > 32)  # the gain from pixels bright enough for a ratio to mean something
        jac = np.stack([gx, gy, gx * self.xc + gy * self.yc, gy * self.xc - gx * self.yc])  # (4, N)
        for step in range(self.cfg.lk_steps):
            moved = self._warp(cur, p, on_grid=True).ravel()
            if step == 0 and len(lit):  # the median ratio (np.partition: np.median's overhead is most of its cost)
                ratio = moved[lit] / ref_g[lit]
                gain = float(np.partition(ratio, len(ratio) // 2)[len(ratio) // 2]) - 1.0
                p[4] = gain if abs(gain) > self.cfg.min_gain else 0.0
            r = moved - (1 + p[4]) * ref_g
            jw = jac * np.minimum(1.0, self.cfg.huber_gray / (np.abs(r) + 1e-6))
            ok, step = cv2.solve(jw @ jac.T + self.ridge, jw @ r, flags=cv2.DECOMP_CHOLESKY)
            p[:4] -= step.ravel()
        return p

    def _warp(self, img: np.ndarray, p: np.ndarray, on_grid: bool = False) -> np.ndarray:
        """img sampled at x + t + [[s, -r], [r, s]] (x - c): the crop moved by p = (tx, ty, s, r) (p in
        working pixels; img may be larger than the working crop: t scales with it);
        `on_grid`: only at the fit's sample points (a quarter of the pixels: the fit's cost).

        Cubic: bilinear sampling at half a pixel blurs, and the blur of a sub-pixel shift would read
        as motion at every edge (and bias the fit)."""
        k = img.shape[0] / self.cfg.work_px
        tx, ty, sc, rot = p[0] * k, p[1] * k, p[2], p[3]  # p[4], the light's gain, is not a warp
        a, b, c = 1 + sc, rot, self.c0 * k
        ox, oy = tx - sc * c + rot * c, ty - rot * c - sc * c
        size = img.shape[::-1]
        if on_grid:  # x = border + 2 u
            k = self.border
            a, b, ox, oy, size = 2 * a, 2 * b, ox + (a - b) * k, oy + (b + a) * k, (self.grid_n, self.grid_n)
        m = np.array([[a, -b, ox], [b, a, oy]], np.float32)
        return cv2.warpAffine(img, m, size, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    def _learn(self, d: np.ndarray, first: bool = False) -> None:
        if first:
            self.mu[:], self.var[:] = d, (0.2 * d) ** 2
            return
        warm = self.seen > self.lag + self.warmup
        a = self.alpha if warm else 2.0 / (self.seen - self.lag + 1)
        delta = d - self.mu
        if warm:  # winsorised: an unspotted head move or blink must not inflate the noise level
            sd = np.sqrt(self.var)
            delta = np.clip(delta, -3 * sd, 3 * sd)
        self.mu += a * delta
        self.var = (1 - a) * (self.var + a * delta * delta)

    # -- intervals -------------------------------------------------------------------------------
    def _follow(self, i: int) -> list[Candidate]:
        """An interval is open: it ends when the face is back (the signal at the floor for `quiet` frames
        after its peak) or has stopped changing (the change against the crop `still_lag_s` before under
        `z_still` for `still_s`, and the signal no longer growing): a real face settles near, not at, where
        it started (drift, residual tone, posture), so waiting for it to come back would follow most
        micro-expressions as long."""
        if self.long is not None:
            return self._follow_long(i)
        sig = [(j, s, k) for j, s, k in self.signal if j >= self.open]
        peak = max(range(len(sig)), key=lambda q: sig[q][1])
        tail = sig[peak + 1:]
        quiet = 0
        for _, s, _ in reversed(tail):
            if s > self.cfg.z_floor:
                break
            quiet += 1
        if quiet >= self.quiet:  # back: the movement ended where it was half way back (its return is no part of it)
            return self._close(i, next(j for j, s, _ in tail if s <= sig[peak][1] / 2))
        # the face has stopped changing: over the last still_s (all after the crossing) the short-lag change's
        # median is under z_still (one frame's largest regional z is noisy), and the signal is not growing
        # (a slow movement changes little from frame to frame)
        first = len(sig) - self.still  # the still_s window: sig[first:], consecutive frames after the crossing
        if first > 0 and sig[first][0] == i - self.still + 1:
            change = list(islice(self.change, len(self.change) - self.still, None))
            if (np.median(change) <= self.cfg.z_still
                    and max(s for _, s, _ in sig[first:]) <= max(s for _, s, _ in sig[:first]) + self.cfg.z_still):
                return self._close(i, sig[first][0], settled=True)
        onset = self._onset(self.open)
        if i - quiet - onset >= self.max_len + self.still:  # moving for too long for a micro-expression:
            self.long, self.frozen = [onset, *sig[peak]], None  # followed to its end, not reported
            held = self.pending
            if held is not None and onset - held.offset_index <= self.pause:  # it goes on from the held one: one
                self.long[0], self.pending = held.onset.frame.index, None  # long movement from the held one's onset
        return []

    def _follow_long(self, i: int) -> list[Candidate]:
        """A movement longer than `max_event_s`, compared from then on with the crop `ref_lag_s` before
        (not the frozen one: under drift the face would never look like it again). It ends when nothing
        has changed for about `ref_lag_s` (back, or settled in a new pose), or `max_macro_s` after its
        onset; it is recorded as rejected ("long": the macro-expression
        intervals of MEGC's long-video benchmark)."""
        j, s, k = self.signal[-1]
        if s > self.long[2]:
            self.long[1:] = [j, s, k]
        # unchanged against the crop ref_lag_s before, over the last ref_lag_s (the median: one frame's largest
        # regional z is noisy; the whole lag: a movement out and back looks unchanged at its turn)
        recent = [s for j, s, _ in self.signal if j > i - self.lag]
        onset, peak, _, region = self.long
        still = len(recent) == self.lag and np.median(recent) <= self.cfg.z_still
        if not still and i - onset < self.max_macro:
            return []
        offset = max(peak, i - self.lag) if still else i
        self._reject("long", onset, peak, offset, self._part(region), {"seconds": (offset - onset) / self.fps})
        self.open, self.long = None, None
        return []

    def _onset(self, trigger: int) -> int:
        """The last frame at the floor before the signal crossed z_on (fixed once an interval opens)."""
        onset = trigger
        for j, s, _ in reversed([h for h in self.signal if h[0] < trigger]):
            onset = j
            if s <= self.cfg.z_floor:
                break
        return onset

    def provisional(self) -> tuple[FaceFrame, FaceFrame] | None:
        """While an interval is open: its onset and the peak so far, the pair a candidate will carry if
        the peak holds (live callers start computing its features before the apex is confirmed)."""
        if self.open is None or self.long is not None:
            return None
        onset = self._onset(self.open)
        apex = max((h for h in self.signal if h[0] >= onset), key=lambda h: h[1])[0]
        faces = {f.frame.index: f for f in self.faces}
        if onset not in faces or apex not in faces:
            return None
        return faces[onset], faces[apex]

    def _close(self, i: int, offset: int, settled: bool = False) -> list[Candidate]:
        """End the open interval at `offset` (frame i is the latest): a candidate, or a rejection.
        `settled`: the face stopped changing away from where it started; from now on it is compared with
        how it settled (held for the lag window as the pre-interval reference is after a return), so staying
        there is no movement, and moving back soon after is this interval's return, not a new one."""
        trigger, before, before_face = self.open, self.frozen, self.frozen_face
        self.open = None
        self.hold_until = i  # keep the reference until the interval leaves the lag window
        if settled:
            self.frozen, self.frozen_face = self.crops[-1], self.faces[-1]
        history = list(self.signal)
        onset = self._onset(trigger)
        span = [h for h in history if onset <= h[0] <= offset]
        apex, _, region = max(span, key=lambda h: h[1])
        faces = {f.frame.index: f for f in self.faces}
        if onset not in faces or apex not in faces:
            return []
        inside = [(g, m, o) for (j, _, _), g, m, o in zip(history, self.eye_gray, self.motion, self.others)
                  if onset <= j <= offset]
        eye_gray = max((g for g, _, _ in inside), default=0.0)
        motion = max((m for _, m, _ in inside), default=0.0)
        others = max((o for _, _, o in inside), default=0.0)
        if offset - onset > self.max_len:  # it ended, but later than a micro-expression does
            reason, detail = "long", {"seconds": (offset - onset) / self.fps}
        elif eye_gray > self.cfg.blink_gray and others < self.cfg.z_on:
            # both eyes changed far more than an eyelid micro-movement can, and nothing else moved by itself
            # (a micro-expression with a blink in it is still a micro-expression)
            reason, detail = "blink", {"eye_gray": eye_gray}
        elif motion > self.cfg.max_motion_px:  # what registration leaves then is not told from a micro-expression
            reason, detail = "head", {"motion_px": motion}
        elif (back := self._returning(onset, apex)) is not None:
            reason, detail = "return", {"share": back}
        else:
            reason, detail = self._explain(before_face, faces[apex], onset)
        # a chain of movements each ending settled (speech, a glance and its way back) keeps the face as it
        # was before the first: the way back to it is told from there; a face that came back ends the chain
        chained = self.settled is not None and onset - self.settled[0] <= self.return_len
        origin = self.settled[1] if chained else before[1]
        self.settled = (offset, origin) if settled else None
        held = self.pending
        if reason == "return" and held is not None and onset - held.offset_index <= self.pause:
            # the held movement going straight back: one movement out and back, which ends half way back
            top = max(s for _, s, _ in span)
            half = next(j for j, s, _ in span if s >= top / 2)
            first, self.pending = held.onset.frame.index, None
            if half - first > self.max_len:  # out and back too slowly for a micro-expression
                self._reject("long", first, held.apex.frame.index, offset, held.region,
                             {"seconds": (offset - first) / self.fps})
                return []
            self._reject(reason, onset, apex, offset, self._part(region), detail)
            t = faces[half].frame.t_video if half in faces else held.offset_s
            return [replace(held, offset_index=half, offset_s=t, t_apex_confirmed=time.monotonic())]
        if reason is not None:
            self._reject(reason, onset, apex, offset, self._part(region), detail)
            return self._release()  # what was held is complete: this was something else
        region_name = self._part(region)
        first = self.pending
        if first is not None and offset - first.onset.frame.index <= self.max_len:  # one movement, with a pause
            onset = first.onset.frame.index
            faces.setdefault(onset, first.onset)
            if self._away(origin, first.apex) >= self._away(origin, faces[apex]):  # the apex: furthest from before
                apex, region_name = first.apex.frame.index, first.region
                faces.setdefault(apex, first.apex)
            self.pending = None
        out = self._release()
        lo = onset - self.lag
        signal = np.array([s for j, s, _ in history if lo <= j <= offset + self.quiet], np.float32)
        cand = Candidate(onset=faces[onset], apex=faces[apex], offset_index=offset,
                         offset_s=faces[offset].frame.t_video, signal=signal, t_apex_confirmed=time.monotonic(),
                         region=region_name, pool=self._pool(faces, onset, apex, offset))
        if settled:  # the face may go on moving after a pause: held for pause_s
            self.pending = cand
            return out
        return out + [cand]

    def _pool(self, faces: dict[int, FaceFrame], onset: int, apex: int, offset: int) -> tuple[FaceFrame, ...]:
        """The frames whose probabilities are averaged with the apex's (`pool_frames`; () for the apex alone)."""
        if self.cfg.pool_frames <= 1:
            return ()
        t = np.array(sorted(j for j in faces if onset <= j <= offset))
        picked = pool_indices(t - onset, int(np.flatnonzero(t == apex)[0]), self.fps, self.cfg.pool_frames)
        return tuple(faces[int(t[k])] for k in picked)

    def _away(self, before: np.ndarray, face: FaceFrame) -> float:
        """How far a face frame's crop has moved from `before` (a working crop): the largest face region's
        change above the median region's."""
        d, _, _ = self._difference(before, self._work(face.crop))
        return float((d - np.median(d))[FACE].max())

    def _returning(self, onset: int, apex: int) -> float | None:
        """Soon after an interval that ended with the face settled elsewhere: how close the apex is to the
        face before that interval, as a share of how far the onset was from it; None when it is not a
        return (no such interval, too late, or the apex is not closer by `return_share`)."""
        if self.settled is None or onset - self.settled[0] > self.return_len:
            return None
        faces = {f.frame.index: f for f in self.faces}
        share = self._away(self.settled[1], faces[apex]) / max(self._away(self.settled[1], faces[onset]), 1e-6)
        return share if share <= self.cfg.return_share else None

    def _explain(self, ref: FaceFrame, apex: FaceFrame, onset: int) -> tuple[str | None, dict[str, float]]:
        """Why an interval is not a micro-expression, from where the face moved between the reference
        (before the interval) and the apex (`motion_parts`); None: nothing rules it out.

        - head: the nose (rigid) and most parts moved by `min_part_px` or more, and either of them
          `head_share` as much as the part that moved most (a turn or a nod in depth moves the whole
          face against the registration, nose included; an action moves one or two parts);
        - blink / gaze: an eye moved `eye_dominance` times more than brows, lip corners and jaw, its
          upper lid (with the iris) down (a blink, full or partial, or a downward glance), or sideways
          or up with the upper lid moving at least 0.6 times as much as the lower (a glance; a lid
          tightener pulls the lower lid, sideways too, well beyond the upper);
        - speech: the jaw (lower lip and chin) dropped, `jaw_dominance` times more than the lip
          corners moved (a smile or a frown moves the corners, not the jaw); within `return_s` of
          speech, closing counts too (alone, the lower lip and chin going up is a chin raise)."""
        c = self.cfg
        parts = self.motion_parts(ref.crop, apex.crop)
        mag = {k: float(np.hypot(*v)) for k, v in parts.items()}
        detail = {f"{k}_{a}": float(v[j]) for k, v in parts.items() for j, a in enumerate("xy")}
        top = max(mag.values())
        if top < c.min_part_px:
            return None, detail
        median = sorted(mag.values())[len(mag) // 2]
        if min(median, mag["nose"]) >= c.min_part_px and max(median, mag["nose"]) >= c.head_share * top:
            return "head", detail
        eye = max("lr", key=lambda e: mag[f"lid_{e}"] + mag[f"low_{e}"])
        (lx, ly), eyes = parts[f"lid_{eye}"], max(mag[f"lid_{eye}"], mag[f"low_{eye}"])
        rest = max(mag[k] for k in ("brow_l", "brow_r", "corner_l", "corner_r", "jaw"))
        if eyes >= c.min_part_px and eyes >= c.eye_dominance * rest:
            if ly > 0 and ly >= abs(lx):
                return "blink", detail
            # a glance moves the iris (in the upper-lid part) at least about as much as what lies under it; a
            # lid tightener (AU7) pulls the lower lid, sideways too, well beyond the upper
            if mag[f"lid_{eye}"] >= 0.6 * mag[f"low_{eye}"]:
                return "gaze", detail
        jaw_dx, jaw_dy = parts["jaw"]
        # the jaw dropping; while talking (speech rejected return_s before) also closing, which alone would be
        # a chin raise
        talking = self.spoke_at is not None and onset - self.spoke_at <= self.return_len
        if (mag["jaw"] >= c.min_part_px and (jaw_dy if not talking else abs(jaw_dy)) > abs(jaw_dx)
                and mag["jaw"] >= c.jaw_dominance * max(mag["corner_l"], mag["corner_r"])):
            return "speech", detail
        return None, detail

    def motion_parts(self, ref: np.ndarray, cur: np.ndarray) -> dict[str, np.ndarray]:
        """Per part of the crop (PARTS), the (dx, dy) its most-moving third moved from ref to cur, in
        pixels of the crop, after registering cur onto ref."""
        ref_f, cur_f = ref.astype(np.float32), cur.astype(np.float32)
        p = self._fit(self._work(ref_f), self._work(cur_f))
        aligned = self._warp(cur_f, p) / np.float32(1 + p[4])
        flow = cv2.calcOpticalFlowFarneback(np.clip(ref_f, 0, 255).astype(np.uint8),
                                            np.clip(aligned, 0, 255).astype(np.uint8),
                                            None, 0.5, 3, 11, 3, 5, 1.1, 0)
        n = ref.shape[0]
        out = {}
        for k, (x0, y0, x1, y1) in PARTS.items():
            f = flow[int(y0 * n):int(y1 * n), int(x0 * n):int(x1 * n)].reshape(-1, 2)
            m = np.hypot(f[:, 0], f[:, 1])
            top = f[m >= np.percentile(m, 67)]
            out[k] = top.mean(0)
        return out

    def _part(self, region: int) -> str:
        """The face region (brows, eyes, mouth...) of a REGIONS index."""
        return self.names[region].split("_")[0]

    def _reject(self, reason: str, onset: int, apex: int, offset: int, region: str, detail: dict) -> None:
        if reason == "speech":
            self.spoke_at = offset
        t = {f.frame.index: f.frame.t_video for f in self.faces}
        when = [round(t.get(j, j / self.fps), 4) for j in (onset, apex, offset)]
        self.rejections.append(Rejection(onset, apex, offset, *when, reason, region,
                                         {k: round(float(v), 3) for k, v in detail.items()}))

    def take_rejections(self) -> list[Rejection]:
        """The intervals rejected since the last call, oldest first."""
        out, self.rejections = self.rejections, []
        return out

    def _reset(self) -> None:
        self.crops.clear()
        self.faces.clear()
        self.signal.clear()
        self.eye_gray.clear()
        self.others.clear()
        self.motion.clear()
        self.seen, self.frozen, self.hold_until, self.open, self.block_until = 0, None, -1, None, -1
        self.long, self.settled, self.spoke_at = None, None, None
        self.change.clear()
        self.aligned.clear()

    # -- end of stream and display ---------------------------------------------------------------
    def flush(self) -> list[Candidate]:
        """End of stream: an interval still open ends at the last frame; a held candidate is confirmed."""
        if self.open is None or not self.signal:
            return self._release()
        last = self.signal[-1][0]
        if self.long is not None:
            onset, peak, _, region = self.long
            self._reject("long", onset, peak, last, self._part(region), {"seconds": (last - onset) / self.fps})
            self.open, self.long = None, None
            return self._release()
        return self._close(last, last) + self._release()

    def signal_history(self) -> np.ndarray:
        """The motion signal (largest regional z, after removing whole-face change), oldest first."""
        return np.array(self.history, np.float32)

    def region_motion(self) -> dict[str, float]:
        """The latest frame's motion z per face region (brows, eyes, mouth), for the overlay."""
        z = dict(zip(self.names, self.last_z.tolist()))
        return {r: max(0.0, z[f"{r}_l"], z[f"{r}_r"]) for r in FACE_REGIONS}


class ClipSpotter(Spotter):
    """One pre-segmented clip (`mex-live --segmented`): a database clip as CASME II, SAMM and SMIC
    distribute them, from at or just before the onset to the offset. Such a clip is shorter than the
    online spotter's warm-up and has no still baseline to learn noise from, so nothing is spotted
    online: the face frames are kept and the apex is chosen when the clip ends.

    The onset is the first face frame, the offset the last. The apex is chosen on the flow from the
    onset to each kept frame (Farneback on the spotting crops, averaged to 48 x 48), by the rule of
    realtime/apex.py, chosen on real CASME II clips: the local motion left after the field's
    similarity, less the drift the clip's end still shows, its 95th percentile smoothed over time, and
    the middle of the plateau around its peak. The brows' and eyes' motion does not count on frames
    near a closing lid (`_blinks`). A clip that does not come back (cut at its apex) takes the profile
    without the drift step. The candidate pools `pool_frames` frames spread over
    realtime.apex.POOL_HALF_S either side of the apex (the recognizer averages their probabilities).

    At most `max_frames` face frames are kept (their crops, not the frame images): whenever they fill
    up, every other one is dropped and the spacing of kept frames doubles (a clip of any length keeps
    at most `max_frames`, evenly spaced; the last face frame is always kept). One candidate, at
    the end of the stream; none if the clip has fewer than two face frames."""

    def __init__(self, fps: float, config: SpotterConfig | None = None, max_frames: int = 500,
                 pool_frames: int = POOL_FRAMES):
        super().__init__(fps, config)
        self.max_frames, self.pool_frames = max_frames, pool_frames
        self.blink_s = 0.02  # the lid on its way around a detected closing: what a blink leaves in the profile
        self.kept: list[tuple[FaceFrame, np.ndarray]] = []  # (face frame without its image, work crop)
        self.last: tuple[FaceFrame, np.ndarray] | None = None  # the latest face frame, kept or not
        self.stride, self.n_faces = 1, 0

    def _push(self, ff: FaceFrame) -> list[Candidate]:
        if ff.crop is None:  # frames without a face are skipped; the onset stays
            self.history.append(0.0)
            return []
        work = self._work(ff.crop)
        face = replace(ff, frame=replace(ff.frame, image=None))  # the crop is kept, not the frame image
        self.last = (face, work)
        if self.n_faces % self.stride == 0:
            if len(self.kept) == self.max_frames:
                del self.kept[1::2]
                self.stride *= 2
            if self.n_faces % self.stride == 0:
                self.kept.append(self.last)
        self.n_faces += 1
        if self.n_faces == 1:
            self.history.append(0.0)
            return []
        d, _, _ = self._difference(self.kept[0][1], work)  # change from the onset, for the display
        self.last_z = d - sorted(d.tolist())[len(d) // 2]
        self.history.append(float(self.last_z[FACE].max()))
        return []

    def provisional(self) -> None:
        return None  # the apex is known only at the end of the clip

    @staticmethod
    def flow48(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """Farneback flow ref -> cur (gray crops of one size) area-averaged to (2, 48, 48), in units of the
        crop's width: the form of `casme2-frames`' flow48, on which the apex rule was chosen (the window
        scaled from the database crops' 231 px)."""
        n = ref.shape[1]
        win = max(5, int(round(15 * n / 231)) | 1)
        flow = cv2.calcOpticalFlowFarneback(ref, cur, None, 0.5, 3, win, 3, 5, 1.2, 0)
        return cv2.resize(flow, (48, 48), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / np.float32(n)

    def _blinks(self, frames: list[tuple[FaceFrame, np.ndarray]], t: np.ndarray) -> np.ndarray:
        """(n, 48, 48) bool: the eyes and brows of the frames within `blink_s` of a closing lid, whose motion
        is not the apex's. A closing lid: against the straight path from onset to end (each frame's crop
        blended from the onset and end crops registered onto it), both eyes change by more than
        `blink_gray` (the online rule), or by half as much and more than the brows (a brow movement
        reaches the eye regions less; a lid on its way does)."""
        first, last = frames[0][1], frames[-1][1]
        change = []
        for (_, work), a in zip(frames, t / max(t[-1], 1)):
            on, _ = self._register(work, first)
            back, _ = self._register(work, last)
            change.append(self._regions(cv2.absdiff(work, (1 - a) * on + a * back)))
        change = np.array(change)
        eyes, brows = change[:, EYES].min(1), change[:, BROWS].max(1)
        closing = (eyes > self.cfg.blink_gray) | ((eyes > self.cfg.blink_gray / 2) & (eyes > brows))
        near = (np.abs(t[:, None] - t[None, closing]) <= self.blink_s * self.fps).any(1)
        ignore = np.zeros((len(frames), 48, 48), bool)
        ignore[near, int(BLINK_ROWS[0] * 48):int(BLINK_ROWS[1] * 48)] = True
        return ignore

    def flush(self) -> list[Candidate]:
        frames = self.kept if not self.kept or self.kept[-1] is self.last else [*self.kept, self.last]
        if len(frames) < 2:
            return []
        onset, end = frames[0][0], frames[-1][0]
        t = np.array([f.frame.index - onset.frame.index for f, _ in frames])
        flow = np.stack([self.flow48(onset.crop, f.crop) for f, _ in frames])
        profile = apex_profile(flow, t, self.fps, ignore=self._blinks(frames, t))
        q = plateau_middle(profile)
        moved = np.hypot(*local_motion(flow[q:q + 1])[0])  # (48, 48): where the face moved at the apex
        mean = {k: moved[int(y0 * 48):int(y1 * 48), int(x0 * 48):int(x1 * 48)].mean()
                for k, (x0, y0, x1, y1) in REGIONS.items() if k.split("_")[0] in FACE_REGIONS}
        pool = pool_indices(t, q, self.fps, self.pool_frames)
        return [Candidate(onset=onset, apex=frames[q][0], offset_index=end.frame.index, offset_s=end.frame.t_video,
                          signal=profile.astype(np.float32), t_apex_confirmed=time.monotonic(),
                          region=max(mean, key=mean.get).split("_")[0],
                          pool=tuple(frames[k][0] for k in pool) if len(pool) > 1 else ())]
