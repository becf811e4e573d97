"""What connects the live pipeline's threads: bounded channels with an explicit policy when full, and
per-stage millisecond samples in preallocated ring buffers (flat memory on long runs)."""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

EOS = object()  # the end-of-stream marker a channel's `close()` puts last


class Aborted(Exception):
    """The pipeline was aborted while a stage waited on a queue."""


class Channel:
    """A bounded FIFO between two threads with an explicit policy when full.

    drop_oldest=True: `put` never blocks; the oldest item is discarded and counted.
    drop_oldest=False: `put` blocks until there is room (or the pipeline aborts).
    The end-of-stream marker is never dropped and never blocks.
    """

    def __init__(self, name: str, maxsize: int, drop_oldest: bool, abort: threading.Event):
        self.name = name
        self.maxsize = max(1, int(maxsize))
        self.drop_oldest = drop_oldest
        self._abort = abort
        self._items: deque = deque()
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item) -> None:
        with self._cond:
            if item is not EOS:
                if self.drop_oldest:
                    while len(self._items) >= self.maxsize:
                        # never drop the end marker (it is always last, so the oldest is a real item)
                        self._items.popleft()
                        self.dropped += 1
                else:
                    while len(self._items) >= self.maxsize:
                        if self._abort.is_set():
                            raise Aborted(self.name)
                        self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._abort.is_set():
                    raise Aborted(self.name)
                wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(self.name)
                self._cond.wait(wait)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_nowait(self):
        with self._cond:
            if not self._items or self._items[0] is EOS:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        self.put(EOS)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


class RingStats:
    """Per-stage millisecond samples in fixed, preallocated ring buffers (flat memory)."""

    def __init__(self, capacity: int = 65536):
        self.capacity = capacity
        self._buf: dict[str, np.ndarray] = {}
        self._n: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            buf = self._buf.get(stage)
            if buf is None:
                buf = self._buf[stage] = np.full(self.capacity, np.nan)  # touched now, not while running
                self._n[stage] = 0
            buf[self._n[stage] % self.capacity] = ms
            self._n[stage] += 1

    def samples(self, stage: str) -> np.ndarray:
        with self._lock:
            buf = self._buf.get(stage)
            if buf is None:
                return np.empty(0)
            n = self._n[stage]
            return buf[: min(n, self.capacity)].copy()

    def recent(self, stage: str, n: int = 300) -> np.ndarray:
        """The last `n` samples of a stage (oldest first)."""
        with self._lock:
            buf = self._buf.get(stage)
            if buf is None:
                return np.empty(0)
            total = self._n[stage]
            n = min(n, total, self.capacity)
            end = total % self.capacity
            idx = (np.arange(end - n, end)) % self.capacity
            return buf[idx].copy()

    def stages(self) -> list[str]:
        with self._lock:
            return list(self._buf)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage in self.stages():
            s = self.samples(stage)
            if s.size:
                p50, p95, p99 = np.percentile(s, [50, 95, 99])
                out[stage] = {"n": int(self._n[stage]), "mean": float(s.mean()), "p50": float(p50),
                              "p95": float(p95), "p99": float(p99), "max": float(s.max())}
        return out
