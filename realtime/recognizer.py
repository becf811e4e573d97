"""Candidate -> Event: the recognition crops of the candidate's onset and apex (realtime/framing.py),
features through the one feature path (mex.features), probabilities from the runtime. A candidate that
carries a pool of frames near its apex (`Candidate.pool`) is encoded as (onset, each of them), all
pairs in one batch, and its probabilities are their mean: the label then does not hinge on one frame.

Prefetch (paced sources): while the spotter holds an interval open, waiting for the motion to settle
before it confirms the apex (3-4 frames at 30 fps), the pipeline passes the pair the interval would be
confirmed with now (`prefetch(onset, apex)`). A background thread encodes one such pair at a time; only
the newest offer waits (an offer not yet started is replaced, whichever face it is for). When the
candidate arrives its features are taken if the pair is the one encoded (or waited for while it is being
encoded), and encoded then otherwise. Features are a pure function of the two patches, so events are the
same with and without it; only the time from confirmation to label changes.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from mex.labels import CLASSES

from .channels import RingStats
from .framing import pair_crops
from .packets import Candidate, Event, FaceFrame

PairKey = tuple[int, int, int]  # (face id, onset frame index, apex frame index)


class Recognizer:
    def __init__(self, runtime, flow: str = "auto", encode: Callable | None = None, classes: Sequence[str] = CLASSES):
        """`encode(onset, apex, flow=)` per pair of crops; by default the whole batch goes through
        mex.features.encode_batch (the same path as mex.features.encode, one flow call per batch)."""
        self.runtime = runtime
        self.flow = flow
        self.encode = encode
        self.classes = tuple(classes)
        if encode is None:
            from mex import features

            self._encode_batch = features.encode_batch
        else:
            self._encode_batch = None
        self.skipped = 0  # candidates that could not be encoded
        self._ahead = _Prefetch(lambda onset, apex: self.features([(onset, apex)])[0])

    @property
    def prefetched(self) -> int:
        return self._ahead.computed

    @property
    def prefetch_used(self) -> int:
        return self._ahead.used

    def prefetch(self, onset: FaceFrame, apex: FaceFrame, stats: RingStats | None = None) -> None:
        if onset.patch is not None and apex.patch is not None:
            self._ahead.offer(onset, apex, stats)

    def close(self) -> None:
        self._ahead.close()

    def features(self, pairs: Sequence[tuple[FaceFrame, FaceFrame]]) -> np.ndarray:
        """(onset, apex) face frames -> float32 (n, 3, 28, 28)."""
        crops = [pair_crops(onset.patch, apex.patch) for onset, apex in pairs]
        onsets, apexes = [a for a, _ in crops], [b for _, b in crops]
        if self._encode_batch is not None:
            return np.asarray(self._encode_batch(onsets, apexes, flow=self.flow), dtype=np.float32)
        return np.stack([np.asarray(self.encode(a, b, flow=self.flow), dtype=np.float32)
                         for a, b in zip(onsets, apexes)])

    def _encode(self, pairs: list[tuple[FaceFrame, FaceFrame]]) -> list[np.ndarray | None]:
        """Features per (onset, apex) pair (None for one that cannot be encoded)."""
        if not pairs:
            return []
        try:
            return list(self.features(pairs))
        except (ValueError, RuntimeError):
            # one bad pair must not stop a live run: encode pair by pair
            rows = []
            for pair in pairs:
                try:
                    rows.append(self.features([pair])[0])
                except (ValueError, RuntimeError):
                    rows.append(None)
            return rows

    def __call__(self, cands: list[Candidate], stats: RingStats | None = None) -> list[Event]:
        t0 = time.perf_counter()
        usable = [c for c in cands if c.onset.patch is not None and c.apex.patch is not None]
        self.skipped += len(cands) - len(usable)  # a candidate without a face patch
        # per candidate its apex, then the rest of its pool (frames without a face patch left out)
        apexes = [[c.apex, *(a for a in c.pool if a is not c.apex and a.patch is not None)] for c in usable]
        ready = [[self._ahead.take(c.onset, c.apex)] + [None] * (len(a) - 1) for c, a in zip(usable, apexes)]
        todo = [(k, j) for k, rows in enumerate(ready) for j, r in enumerate(rows) if r is None]
        for (k, j), row in zip(todo, self._encode([(usable[k].onset, apexes[k][j]) for k, j in todo])):
            ready[k][j] = row
        # a candidate whose apex cannot be encoded is skipped and counted; a pool frame that cannot is left out
        kept = [(c, [r for r in rows if r is not None]) for c, rows in zip(usable, ready) if rows[0] is not None]
        self.skipped += len(usable) - len(kept)
        if not kept:
            return []
        cands = [c for c, _ in kept]
        x = np.stack([r for _, rows in kept for r in rows])
        t1 = time.perf_counter()
        probs = np.asarray(self.runtime.probs(x), dtype=np.float64)
        ends = np.cumsum([len(rows) for _, rows in kept])
        p = np.stack([probs[end - len(rows):end].mean(0) for (_, rows), end in zip(kept, ends)])
        t2 = time.perf_counter()
        now = time.monotonic()
        if stats is not None:  # per candidate: a batch's time shared out, one sample per candidate
            for _ in cands:
                stats.add("encode", (t1 - t0) * 1000.0 / len(cands))
                stats.add("infer", (t2 - t1) * 1000.0 / len(cands))
        return [Event(
            onset_frame=int(c.onset.frame.index), apex_frame=int(c.apex.frame.index),
            offset_frame=None if c.offset_index is None else int(c.offset_index),
            onset_s=round(float(c.onset_s), 6), apex_s=round(float(c.apex_s), 6),
            offset_s=None if c.offset_s is None else round(float(c.offset_s), 6),
            label=self.classes[int(np.argmax(row))],
            probs={name: round(float(v), 6) for name, v in zip(self.classes, row)},
            latency_ms=round((now - c.apex.frame.t_capture) * 1000.0, 3),
            confirm_ms=round((now - c.t_apex_confirmed) * 1000.0, 3), face_id=int(c.face_id),
        ) for c, row in zip(cands, p)]


class _Prefetch:
    """The Recognizer's background encoder: `offer` (newest wins), `take` (the features if that pair was
    encoded, waiting while it is being encoded; else None), `close`. Keeps the last `keep` results.
    Its thread starts with the first offer."""

    def __init__(self, encode: Callable[[FaceFrame, FaceFrame], np.ndarray], keep: int = 8):
        self.encode = encode
        self.keep = keep
        self._cond = threading.Condition()
        self._wanted: tuple[PairKey, FaceFrame, FaceFrame, RingStats | None] | None = None
        self._busy: PairKey | None = None
        self._done: dict[PairKey, np.ndarray | None] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self.computed = 0  # pairs encoded ahead
        self.used = 0  # candidates that found their features ready (or being computed)

    def offer(self, onset: FaceFrame, apex: FaceFrame, stats: RingStats | None) -> None:
        key = (onset.face_id, onset.frame.index, apex.frame.index)
        with self._cond:
            if self._closed or key in self._done or key == self._busy or (self._wanted and self._wanted[0] == key):
                return
            self._wanted = (key, onset, apex, stats)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mex-prefetch", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def take(self, onset: FaceFrame, apex: FaceFrame) -> np.ndarray | None:
        key = (onset.face_id, onset.frame.index, apex.frame.index)
        with self._cond:
            if self._wanted is not None and self._wanted[0] == key:
                self._wanted = None  # not started: the recognizer encodes it now instead
            while self._busy == key and not self._closed:
                self._cond.wait()
            x = self._done.pop(key, None)
        if x is not None:
            self.used += 1
        return x

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                (key, onset, apex, stats), self._wanted = self._wanted, None
                self._busy = key
            t0 = time.perf_counter()
            try:
                x = np.asarray(self.encode(onset, apex), dtype=np.float32)
            except (ValueError, RuntimeError):
                x = None  # the recognizer will try again, and skip and count it
            if stats is not None:
                stats.add("speculate", (time.perf_counter() - t0) * 1000.0)
            with self._cond:
                self._done[key] = x
                while len(self._done) > self.keep:
                    self._done.pop(next(iter(self._done)))
                self.computed += 1
                self._busy = None
                self._cond.notify_all()
