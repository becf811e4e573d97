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
4. The motion signal is the largest regional z. It crossing `z_on` opens an interval; the offset is
   the first frame after the peak back at `z_floor` (for `quiet_s`), the onset the last frame before
   the crossing at the floor, the apex the peak between them.
The reference is frozen from the crossing until the interval has slid out of the lag window, so the
reference never shows the movement itself (no echo `ref_lag_s` later).

Rejected intervals:
- longer than `max_event_s`: an expression or a pose change, not a micro one;
- blinks: both eyes changing by more than `blink_gray` gray levels (a closing lid covers the iris,
  far more change than any eyelid micro-movement, and one eye alone is not a blink);
- fast head motion: the registration had to move the crop by more than `max_motion_px` (at the crop's
  rim, working pixels), where what it leaves behind cannot be told from a micro-expression.

Delay: a candidate (onset, apex and offset together) is emitted `quiet_s` after its offset, and at
most `max_event_s` (0.5 s) after the signal first crossed `z_on`, whatever the fps. Spotting starts
`ref_lag_s + warmup_s` (1.0 s) after a face appears.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace

import cv2
import numpy as np

from realtime.packets import Candidate, FaceFrame

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


@dataclass
class SpotterConfig:
    ref_lag_s: float = 0.3  # reference crop this long before; must exceed the longest onset -> apex
    max_event_s: float = 0.5  # longer movements are not micro-expressions
    quiet_s: float = 0.02  # the signal stays at the floor this long (at least one frame) to end an interval
    stats_s: float = 3.0  # time constant of each region's running noise level
    warmup_s: float = 0.7  # noise statistics are learnt this long before anything is spotted
    z_on: float = 5.0  # regional z that opens an interval
    noise_floor_gray: float = 0.25  # the noise level used for z is at least this (gray levels)
    z_floor: float = 1.5  # regional z taken as "no motion" (onset / offset boundaries)
    blink_gray: float = 12.0  # both eyes changing this much (gray levels, largest cell) = a blink
    max_motion_px: float = 2.0  # intervals during which registration moved the crop further are head motion
    history_s: float = 6.0  # how much signal `signal_history()` keeps
    work_px: int = 64  # working size of the crop
    blur_px: float = 1.2  # Gaussian blur at the working size: noise and interpolation differences average out
    cell_px: int = 7  # side of the square a region's change is averaged over, at the working size
    lk_steps: int = 2  # Gauss-Newton steps of the registration
    huber_gray: float = 2.0  # residuals above this (gray levels) count less in the registration


class Spotter:
    def __init__(self, fps: float, config: SpotterConfig | None = None):
        self.fps = float(fps)
        self.cfg = c = config or SpotterConfig()
        frames = lambda s: max(1, int(round(s * self.fps)))  # noqa: E731 - seconds -> frames at this fps
        self.lag, self.max_len, self.quiet = frames(c.ref_lag_s), frames(c.max_event_s), frames(c.quiet_s)
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
        keep = self.lag + self.max_len + self.quiet + 2
        self.crops: deque[tuple[int, np.ndarray]] = deque(maxlen=keep)  # (index, work crop)
        self.faces: deque[FaceFrame] = deque(maxlen=keep)
        self.signal: deque[tuple[int, float, int]] = deque(maxlen=keep)  # (index, z, argmax region)
        self.eye_gray: deque[float] = deque(maxlen=keep)  # min over both eyes of the raw change
        self.motion: deque[float] = deque(maxlen=keep)  # how far the registration had to move the crop
        self.history: deque[float] = deque(maxlen=max(2, int(c.history_s * self.fps)))
        self.mu = np.zeros(len(REGIONS), np.float32)
        self.var = np.zeros(len(REGIONS), np.float32)
        self.seen = 0  # frames with a face since the last reset
        self.frozen: tuple[int, np.ndarray] | None = None  # reference held over an interval
        self.hold_until = -1  # frame index the frozen reference is kept past
        self.open: int | None = None  # frame index where the current interval was triggered
        self.block_until = -1  # no interval opens up to this frame (after a too-long movement)
        self.last_z = np.zeros(len(REGIONS), np.float32)

    # -- per frame -------------------------------------------------------------------------------
    def push(self, ff: FaceFrame) -> list[Candidate]:
        t0 = time.perf_counter()
        out = self._push(ff)
        ff.frame.stage_ms["spot"] = (time.perf_counter() - t0) * 1e3
        return out

    def _push(self, ff: FaceFrame) -> list[Candidate]:
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
        d, eye_gray, motion = self._difference(ref[1], work)
        if self.seen <= self.lag + self.warmup:  # learn the noise level first
            self._learn(d, first=self.seen == self.lag + 1)
            self.history.append(0.0)
            return []
        # the noise level has a floor: on a clean, still clip the running spread gets so small that
        # sub-gray-level interpolation residue would count as motion
        z = (d - self.mu) / np.maximum(np.sqrt(self.var), self.cfg.noise_floor_gray)
        z -= sorted(z.tolist())[len(z) // 2]  # whole-face change (lighting, residual misalignment) is not local motion
        self.last_z = z
        k = int(np.argmax(z[:6]))
        s = float(z[k])
        self.signal.append((i, s, k))
        self.eye_gray.append(eye_gray)
        self.motion.append(motion)
        self.history.append(s)
        if self.open is None:
            if s >= self.cfg.z_on and i > self.block_until:
                self.open = i
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
        return d, float(min(d[2], d[3])), motion

    def _regions(self, absdiff: np.ndarray) -> np.ndarray:
        """Per region, the largest mean of |difference| over a `cell_px` square."""
        diff = cv2.blur(absdiff, (self.cfg.cell_px, self.cfg.cell_px))
        return np.array([cv2.minMaxLoc(diff[y0:y1, x0:x1])[1] for x0, y0, x1, y1 in self.boxes.values()], np.float32)

    def _register(self, ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, float]:
        """cur warped onto ref by a small similarity, and how far that moved it (pixels at the crop's rim).

        Phase correlation gives the shift, Gauss-Newton (Lucas-Kanade) steps refine shift, rotation and
        scale, with Huber weights so the few pixels where the face itself moved do not pull the fit."""
        # the shift at half size is close enough for the fit to start from, at a quarter of the cost;
        # windowed copies: cv2.phaseCorrelate multiplies its inputs by the window in place
        (dx, dy), _ = cv2.phaseCorrelate(cv2.pyrDown(ref) * self.window, cv2.pyrDown(cur) * self.window)
        p = np.array([2 * dx, 2 * dy, 0.0, 0.0])
        gx = cv2.Sobel(ref, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
        gy = cv2.Sobel(ref, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
        g = self.grid
        gx, gy = gx[g].ravel(), gy[g].ravel()
        jac = np.stack([gx, gy, gx * self.xc + gy * self.yc, gy * self.xc - gx * self.yc])  # (4, N)
        ref_g = ref[g].ravel()
        for _ in range(self.cfg.lk_steps):
            r = self._warp(cur, p, on_grid=True).ravel() - ref_g
            jw = jac * np.minimum(1.0, self.cfg.huber_gray / (np.abs(r) + 1e-6))
            ok, step = cv2.solve(jw @ jac.T + self.ridge, jw @ r, flags=cv2.DECOMP_CHOLESKY)
            p -= step.ravel()
        return self._warp(cur, p), float(np.hypot(p[0], p[1]) + self.c0 * np.hypot(p[2], p[3]))

    def _warp(self, img: np.ndarray, p: np.ndarray, on_grid: bool = False) -> np.ndarray:
        """img sampled at x + t + [[s, -r], [r, s]] (x - c): the crop moved by p = (tx, ty, s, r);
        `on_grid`: only at the fit's sample points (a quarter of the pixels: the fit's cost).

        Cubic: bilinear sampling at half a pixel blurs, and the blur of a sub-pixel shift would read
        as motion at every edge (and bias the fit)."""
        tx, ty, sc, rot = p.tolist()
        a, b, c = 1 + sc, rot, self.c0
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
        """An interval is open: close it when the signal has been at the floor for `quiet` frames."""
        sig = [(j, s, k) for j, s, k in self.signal if j >= self.open]
        peak = max(range(len(sig)), key=lambda q: sig[q][1])
        tail = sig[peak + 1:]
        quiet = 0
        for _, s, _ in reversed(tail):
            if s > self.cfg.z_floor:
                break
            quiet += 1
        if quiet < self.quiet:
            if i - self.open >= self.max_len:  # too long for a micro-expression: drop it, start afresh
                self.open, self.frozen, self.block_until = None, None, i + self.lag
            return []
        offset = tail[len(tail) - quiet][0]
        return self._close(i, offset)

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
        if self.open is None:
            return None
        onset = self._onset(self.open)
        apex = max((h for h in self.signal if h[0] >= onset), key=lambda h: h[1])[0]
        faces = {f.frame.index: f for f in self.faces}
        if onset not in faces or apex not in faces:
            return None
        return faces[onset], faces[apex]

    def _close(self, i: int, offset: int) -> list[Candidate]:
        trigger = self.open
        self.open = None
        self.hold_until = i  # keep the pre-interval reference until the interval leaves the lag window
        history = list(self.signal)
        onset = self._onset(trigger)
        span = [h for h in history if onset <= h[0] <= offset]
        apex, _, region = max(span, key=lambda h: h[1])
        inside = [(g, m) for (j, _, _), g, m in zip(history, self.eye_gray, self.motion) if onset <= j <= offset]
        if max((g for g, _ in inside), default=0.0) > self.cfg.blink_gray:
            return []  # a blink: both eyes changed far more than an eyelid micro-movement can
        if max((m for _, m in inside), default=0.0) > self.cfg.max_motion_px:
            return []  # the head moved too fast: what is left after registration cannot be told from a micro-expression
        faces = {f.frame.index: f for f in self.faces}
        if onset not in faces or apex not in faces:
            return []
        lo = onset - self.lag
        signal = np.array([s for j, s, _ in history if lo <= j <= offset + self.quiet], np.float32)
        return [Candidate(onset=faces[onset], apex=faces[apex], offset_index=offset, offset_s=faces[offset].frame.t_video, signal=signal,
                          t_apex_confirmed=time.monotonic(), region=self.names[region].split("_")[0])]

    def _reset(self) -> None:
        self.crops.clear()
        self.faces.clear()
        self.signal.clear()
        self.eye_gray.clear()
        self.motion.clear()
        self.seen, self.frozen, self.hold_until, self.open, self.block_until = 0, None, -1, None, -1

    # -- end of stream and display ---------------------------------------------------------------
    def flush(self) -> list[Candidate]:
        """End of stream: an interval still open ends at the last frame."""
        if self.open is None or not self.signal:
            return []
        return self._close(self.signal[-1][0], self.signal[-1][0])

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

    The onset is the first face frame, the offset the last. Frame t, a fraction `a` of the way from
    onset to end, is compared with the straight path between the two: onset and end crops are
    registered onto it (as above), blended (1 - a, a), and the regional change from the blend, above the
    median region's, is its score. Slow drift (head, lighting) moves the face along that path and
    scores little; the database clip's end, back near neutral, scores nothing; the movement, away
    from both ends, scores most. A blink is not the apex: on a frame where both eyes change by more
    than `blink_gray`, or by more than half of it and more than the brows (a closing lid; a brow
    movement reaches the eyes less), the eyes and brows count as unchanged, and each region's change is the median over
    `smooth_s`, which removes what is left of the blink around those frames; the frame with the
    largest change is the apex.

    A clip holding only onset..apex frames ends at its peak, and the path runs through the movement:
    when the best score is under `return_frac` of the end's own change from the onset, the clip did
    not come back, and the apex is the frame most unlike the onset (same regions, blink rule and
    median), usually near the end.

    At most `max_frames` face frames are kept (their crops, not the frame images): whenever they fill
    up, every other one is dropped and the spacing of kept frames doubles (a clip of any length keeps
    at most `max_frames`, evenly spaced; the last face frame is always kept). One candidate, at
    the end of the stream; none if the clip has fewer than two face frames."""

    def __init__(self, fps: float, config: SpotterConfig | None = None, max_frames: int = 500,
                 smooth_s: float = 0.03):
        super().__init__(fps, config)
        self.max_frames, self.smooth_s = max_frames, smooth_s
        # the clip came back toward neutral when its movement stands out from the onset -> end path by at
        # least this fraction of the end's own change from the onset (generated clips: 0.43 or more for
        # database-like clips with drift, mostly under 0.35 for clips cut at their apex). Set low: a
        # database clip is what --segmented is for, and "most unlike the onset" is the rule that picked
        # apexes at the end of real CASME II clips
        self.return_frac = 0.3
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
        self.history.append(float(self.last_z[:6].max()))
        return []

    def provisional(self) -> None:
        return None  # the apex is known only at the end of the clip

    def _scores(self, d: np.ndarray, blink: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
        """Per frame (rows of d), the largest face region's change above the median region's, and that
        region. On blink frames the eyes and brows count as unchanged, and each region's change is the
        median over 2 * half + 1 frames: what is left of a blink around those frames (the lid on its way)
        lasts a few frames, a movement's peak longer."""
        z = (d - np.median(d, axis=1, keepdims=True))[:, :6]
        z[blink, :4] = 0.0
        padded = np.pad(z, ((half, half), (0, 0)), mode="edge")
        z = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1, axis=0), axis=-1)
        return z.max(1), z.argmax(1)

    def flush(self) -> list[Candidate]:
        frames = self.kept if not self.kept or self.kept[-1] is self.last else [*self.kept, self.last]
        if len(frames) < 2:
            return []
        (onset, first), (end, last) = frames[0], frames[-1]
        i0, n = onset.frame.index, end.frame.index - onset.frame.index
        off_path, from_onset = [], []
        for face, work in frames:
            a = (face.frame.index - i0) / n
            on, _ = self._register(work, first)
            back, _ = self._register(work, last)
            off_path.append(self._regions(cv2.absdiff(work, (1 - a) * on + a * back)))
            from_onset.append(self._regions(cv2.absdiff(work, on)))
        off_path, from_onset = np.array(off_path), np.array(from_onset)
        # a closing lid: both eyes change by more than `blink_gray` (the online rule), or by half as much
        # and more than the brows (a brow movement reaches the eye regions less; a lid on its way does)
        eyes = off_path[:, 2:4].min(1)
        blink = (eyes > self.cfg.blink_gray) | ((eyes > self.cfg.blink_gray / 2) & (eyes > off_path[:, :2].max(1)))
        half = int(self.smooth_s * self.fps / self.stride / 2)
        path_score, path_region = self._scores(off_path, blink, half)
        onset_score, onset_region = self._scores(from_onset, blink, half)
        returned = path_score.max() >= self.return_frac * onset_score[-1]
        score, region = (path_score, path_region) if returned else (onset_score, onset_region)
        q = 1 + int(np.argmax(score[1:]))  # the onset is not its own apex
        return [Candidate(onset=onset, apex=frames[q][0], offset_index=end.frame.index, offset_s=end.frame.t_video, signal=score.astype(np.float32),
                          t_apex_confirmed=time.monotonic(), region=self.names[region[q]].split("_")[0])]
