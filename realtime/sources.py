"""Where frames come from: a camera, a video file, a folder of frames, or the generated demo clip.

Every source yields `Frame`s (index, capture time, video time, BGR image) from `frames()` and says
how the pipeline must treat it when a later stage falls behind:

- `live = True` (camera): the pipeline never blocks the capture thread; when the next queue is full
  the oldest frame is dropped and counted.
- `live = False` (file, folder, demo): the capture thread blocks; nothing is dropped and the output is
  deterministic.

`state` is a short word the overlay shows: "starting", "ok", "reconnecting", "eof", "closed".
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .packets import Frame


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message names the file or the camera index."""


class Source:
    """What every source shares (the contract the pipeline relies on is realtime.stages.Source)."""

    live: bool = False
    realtime: bool = False  # a recording played at its own frame rate
    name: str = "source"
    fps: float = 30.0
    width: int = 0
    height: int = 0
    state: str = "starting"
    total_frames: int | None = None  # known length (files, demo), None for cameras
    truth: dict | None = None  # planted events (demo only)

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.reconnects = 0
        self.read_failures = 0
        self.lost_frames = 0  # a live source: frames its rate says came while it was not delivering
        self.outage: str | None = None  # a live source: why it is reconnecting ("no frame for 2 s")

    def frames(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self) -> None:
        """Ask `frames()` to end soon (thread-safe); it returns after the frame being read."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self.stop()
        self.state = "closed"

    @property
    def paced(self) -> bool:
        return self.live or self.realtime

    def describe(self) -> str:
        return f"{self.name} {self.width}x{self.height} @ {self.fps:g} fps"


class _Pacer:
    """Sleeps so that frame i is released no earlier than start + i / fps (the file's own pace)."""

    def __init__(self, fps: float, stop: threading.Event):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.stop = stop
        self.t0: float | None = None

    def wait(self, i: int) -> None:
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
            return
        delay = self.t0 + i * self.period - now
        if delay > 0:
            self.stop.wait(delay)


def readable(path: Path, flag: str) -> None:
    """SourceError, naming `flag`, unless `path` is a regular file this user may read: what OpenCV would
    only call an unknown format."""
    if not path.exists():
        raise SourceError(f"{flag} {path}: file does not exist")
    if path.is_dir():
        raise SourceError(f"{flag} {path}: is a folder, not a video file")
    if not path.is_file():
        raise SourceError(f"{flag} {path}: not a regular file (a device or a pipe); a camera is --camera N or "
                          "--video /dev/videoN")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        raise SourceError(f"{flag} {path}: permission denied (this user may not read it)") from None
    except OSError as e:
        raise SourceError(f"{flag} {path}: cannot be read ({e.strerror or e})") from None


class VideoSource(Source):
    """A video file, decoded by OpenCV. As fast as possible by default; `realtime=True` paces it."""

    live = False

    def __init__(self, path: str | Path, realtime: bool = False, loop_frames: int | None = None,
                 fps: float | None = None, flag: str = "--video"):
        """fps: the file's true frame rate where its container states a wrong one (high-speed footage is
        often stored at 25 or 30 fps); default the container's. flag: what the user named the file with."""
        super().__init__()
        import cv2

        self.path = Path(path)
        self.realtime = realtime
        self.loop_frames = loop_frames  # > file length: rewind and continue (memory-flatness runs)
        self.name = f"video {self.path.name}"
        readable(self.path, flag)
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{flag} {self.path}: cannot open this file as a video (unknown or damaged format)")
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(f"{flag} {self.path}: opened but no frame could be decoded (empty or damaged file)")
        stated = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps or (stated if stated and math.isfinite(stated) and 1 <= stated <= 1000 else 30.0))
        self.height, self.width = first.shape[:2]
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.total_frames = loop_frames if loop_frames else (n if n > 0 else None)
        self._cap = cap
        self._first = first

    def frames(self) -> Iterator[Frame]:
        import cv2

        cap, first = self._cap, self._first
        self._first = None
        if cap is None:
            cap = cv2.VideoCapture(str(self.path))
            ok, first = cap.read()
            if not ok:
                raise SourceError(f"--video {self.path}: cannot be read again")
        self.state = "ok"
        pacer = _Pacer(self.fps, self._stop) if self.realtime else None
        i = 0
        img = first
        t_read = 0.0
        try:
            while not self._stop.is_set():
                if img is None:
                    t0 = time.perf_counter()
                    ok, img = cap.read()
                    t_read = (time.perf_counter() - t0) * 1000.0
                    if not ok or img is None:
                        if self.loop_frames and i < self.loop_frames and i > 0:
                            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                            ok, img = cap.read()
                            if not ok:
                                break
                        else:
                            break
                if self.loop_frames and i >= self.loop_frames:
                    break
                if pacer is not None:
                    pacer.wait(i)
                yield Frame(i, time.monotonic(), i / self.fps, img, {"capture": t_read})
                img = None
                i += 1
        finally:
            cap.release()
            self._cap = None
            self.state = "eof" if not self._stop.is_set() else "closed"


    def close(self) -> None:
        super().close()
        if self._cap is not None and self._first is not None:  # opened but never read: release now
            self._cap.release()
            self._cap = None
            self._first = None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def _natural_key(path: Path) -> list:
    """img2 before img10: the research databases number their frames without leading zeros."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class FrameFolderSource(Source):
    """A folder of numbered frame images, as CASME II, SAMM and SMIC are distributed: read in
    natural order (img2 before img10) at the rate the caller gives (a folder has none of its own).
    Grey images are read as colour. Like a video file: never dropped, `realtime=True` paces it."""

    live = False

    def __init__(self, path: str | Path, fps: float, realtime: bool = False):
        super().__init__()
        import cv2

        self.path = Path(path)
        self.realtime = realtime
        self.name = f"frames {self.path.name}/"
        self.files = sorted((f for f in self.path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()),
                            key=_natural_key)
        if not self.files:
            raise SourceError(f"--video {self.path}: a folder, but it holds no frame images "
                              f"({', '.join(IMAGE_SUFFIXES)})")
        if not (fps and math.isfinite(fps) and fps > 0):
            raise SourceError(f"--video {self.path}: a folder of frames has no frame rate of its own; give it with "
                              f"--fps (CASME II and SAMM: 200, SMIC-HS: 100)")
        self.fps = float(fps)
        first = self._read(self.files[0], cv2)
        self.height, self.width = first.shape[:2]
        self.total_frames = len(self.files)

    def _read(self, file: Path, cv2) -> np.ndarray:
        img = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if img is None:
            raise SourceError(f"--video {self.path}: frame {file.name} cannot be read as an image "
                              "(damaged or not an image)")
        if self.height and img.shape[:2] != (self.height, self.width):
            raise SourceError(f"--video {self.path}: frame {file.name} is {img.shape[1]}x{img.shape[0]}, the first "
                              f"frame {self.width}x{self.height}: all frames of a clip must have one size")
        return img

    def frames(self) -> Iterator[Frame]:
        import cv2

        self.state = "ok"
        pacer = _Pacer(self.fps, self._stop) if self.realtime else None
        for i, file in enumerate(self.files):
            if self._stop.is_set():
                break
            t0 = time.perf_counter()
            img = self._read(file, cv2)
            t_read = (time.perf_counter() - t0) * 1000.0
            if pacer is not None:
                pacer.wait(i)
            yield Frame(i, time.monotonic(), i / self.fps, img, {"capture": t_read})
        self.state = "eof" if not self._stop.is_set() else "closed"


class ArraySource(Source):
    """Frames from memory (an iterable of BGR images): the demo, tests and benchmarks.

    `live=True` makes it behave like a camera towards the pipeline (drop oldest); `realtime=True`
    paces it at `fps`.
    """

    def __init__(self, images: Iterable[np.ndarray], fps: float, live: bool = False, realtime: bool = False,
                 name: str = "frames", total_frames: int | None = None):
        super().__init__()
        self._images = images
        self.fps = float(fps)
        self.live = live
        self.realtime = realtime
        self.name = name
        self.total_frames = total_frames

    def frames(self) -> Iterator[Frame]:
        pacer = _Pacer(self.fps, self._stop) if self.realtime else None
        self.state = "ok"
        it = iter(self._images)
        i = 0
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                img = next(it)
            except StopIteration:
                break
            t_read = (time.perf_counter() - t0) * 1000.0
            if i == 0:
                self.height, self.width = img.shape[:2]
            if pacer is not None:
                pacer.wait(i)
            t_cap = time.monotonic()
            t_video = i / self.fps
            yield Frame(i, t_cap, t_video, img, {"capture": t_read})
            i += 1
        self.state = "eof" if not self._stop.is_set() else "closed"


class DemoSource(ArraySource):
    """The demo: a clip generated now from the shipped face photo, with micro-expressions planted
    at known frames (realtime/synth.py). No camera, no download, nothing written to disk: frames are
    rendered straight into the pipeline (on the capture thread), and `truth` holds the planted events.
    """

    def __init__(self, seed: int = 0, realtime: bool = False, spec=None):
        from . import synth

        self.spec = spec if spec is not None else synth.demo_spec(seed=seed)
        self.truth = synth.truth(self.spec)
        super().__init__(synth.render(self.spec), float(self.spec.fps), live=False, realtime=realtime, name="demo",
                         total_frames=self.truth["frames"])
        self.width, self.height = (int(v) for v in self.spec.size)


def recording(path: str | Path, fps: float | None = None, realtime: bool = False) -> Source:
    """A recorded input: a folder of frame images (`fps` its rate) or a video file (`fps` its true rate
    where the container states a wrong one)."""
    path = Path(path)
    if path.is_dir():
        return FrameFolderSource(path, fps, realtime=realtime)
    return VideoSource(path, realtime=realtime, fps=fps)


CaptureFactory = Callable[[int], object]


def _default_capture(index: int | str):
    import cv2

    # OpenCV logs its own warnings for a missing device; mex-live prints one clear message instead
    old = cv2.getLogLevel() if hasattr(cv2, "getLogLevel") else None
    if old is not None:
        cv2.setLogLevel(0)  # silent
    try:
        return cv2.VideoCapture(index)
    finally:
        if old is not None:
            cv2.setLogLevel(old)


class _Deadline:
    """Calls on a capture made on a thread of their own, waited for at most a deadline: a network stream
    that stalls with its socket open makes OpenCV's read (or open) hang for its own 30 s, and neither the
    stall nor Ctrl-C may wait that long. A call that misses its deadline is abandoned: the thread finishes
    it and releases what it holds (a capture is never touched by two threads at once)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def call(self, fn, timeout_s: float, release=None):
        """fn()'s result, or None when it did not return within `timeout_s` or the source was stopped
        meanwhile (then `release(result)` runs on its thread once fn returns)."""
        box, done, lock = [], threading.Event(), threading.Lock()
        abandoned = []

        def work():
            try:
                result = fn()
            except Exception:  # a driver error is a failed call, not a crash
                result = None
            with lock:
                if abandoned:
                    if result is not None and release is not None:
                        release(result)
                    return
                box.append(result)
                done.set()

        threading.Thread(target=work, name="mex-capture-call", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not done.wait(0.05):
            if self.stop.is_set() or time.monotonic() > deadline:
                with lock:
                    if not done.is_set():
                        abandoned.append(True)
                        return None
                break
        return box[0]


class CameraSource(Source):
    """An OpenCV camera or live stream. Never blocks the pipeline (live=True: the oldest frames are dropped
    when a stage falls behind, and counted). A failing or unplugged camera, or a stream that stops sending
    (no frame for `read_timeout_s`, a deadline of our own: OpenCV's is 30 s) is not fatal: `state` turns to
    "reconnecting" (`outage` says why), the capture is reopened with exponential backoff (0.25 s doubling
    to 4 s), and frames resume with increasing indices; the frames the outage cost at the source's rate are
    counted (`lost_frames`). `stop()` returns within a fraction of a second whatever the stream does. A
    camera that cannot be opened at start is an error.
    """

    live = True

    def __init__(self, index: int | str, width: int | None = None, height: int | None = None, fps: float | None = None,
                 capture_factory: CaptureFactory | None = None, backoff_s: float = 0.25, backoff_max_s: float = 4.0,
                 fail_after: int = 5, open_timeout_s: float = 5.0, flag: str = "--camera",
                 read_timeout_s: float = 2.0):
        """index: a camera number, a device path (/dev/video0) or a stream URL (rtsp://, http://): all are
        live sources that OpenCV opens the same way; `flag` names the option in messages."""
        super().__init__()
        self.read_timeout_s = read_timeout_s
        self._calls = _Deadline(self._stop)
        self.index = int(index) if isinstance(index, int) or str(index).isdigit() else str(index)
        self.name = f"camera {self.index}" if isinstance(self.index, int) else f"stream {self.index}"
        self.flag = flag
        self.req_width, self.req_height, self.req_fps = width, height, fps
        self._factory = capture_factory or _default_capture
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.fail_after = fail_after  # consecutive failed reads that count as "camera gone"
        self.open_timeout_s = open_timeout_s
        self._pending: np.ndarray | None = None  # the frame `_open` read to prove the camera works
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(
                f"{flag} {self.index}: cannot open this camera or stream (no such device or address, busy, "
                "unreachable, or no permission)"
            )
        self.state = "ok"

    def _open(self):
        import cv2

        cap = self._factory(self.index)
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        if self.req_width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(self.req_width))
        if self.req_height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(self.req_height))
        if self.req_fps:
            cap.set(cv2.CAP_PROP_FPS, float(self.req_fps))
        # first frame within the open timeout, or the camera is not usable
        deadline = time.monotonic() + self.open_timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            ok, img = cap.read()
            if ok and img is not None:
                self.height, self.width = img.shape[:2]
                self._pending = img
                fps = cap.get(cv2.CAP_PROP_FPS)
                self.fps = (float(fps) if fps and math.isfinite(fps) and 1 <= fps <= 1000
                            else float(self.req_fps or 30.0))
                return cap
            time.sleep(0.02)
        cap.release()
        return None


    def frames(self) -> Iterator[Frame]:
        i = 0
        t_start = time.monotonic()
        t_last = t_start  # the last frame delivered: the outage's start
        fails = 0
        delay = self.backoff_s
        img, self._pending = self._pending, None

        def release(cap):
            cap.release()

        try:
            while not self._stop.is_set():
                if self._cap is None:  # reconnecting
                    self.state = "reconnecting"
                    if self._stop.wait(delay):
                        break
                    delay = min(delay * 2, self.backoff_max_s)
                    self._cap = self._calls.call(self._open, self.open_timeout_s + self.read_timeout_s, release)
                    if self._cap is None:
                        continue
                    self.reconnects += 1
                    delay = self.backoff_s
                    img = self._pending
                    self._pending = None
                t_read = 0.0
                if img is None:
                    t0 = time.perf_counter()
                    cap = self._cap
                    got = self._calls.call(cap.read, self.read_timeout_s, lambda _: cap.release())
                    t_read = (time.perf_counter() - t0) * 1000.0
                    if got is None:  # no answer within the deadline (or stopped): the stream stalled
                        self._cap = None  # the read still holds it, and releases it when it returns
                        if not self._stop.is_set():
                            self.read_failures += 1
                            self.outage = self.outage or f"no frame for {self.read_timeout_s:g} s"
                        continue
                    ok, img = got
                    if not ok or img is None:
                        img = None
                        fails += 1
                        self.read_failures += 1
                        if fails >= self.fail_after:
                            self.outage = self.outage or f"{fails} reads in a row failed"
                            self._cap.release()
                            self._cap = None
                            fails = 0
                        else:
                            self._stop.wait(0.01)
                        continue
                fails = 0
                t_cap = time.monotonic()
                if self.outage is not None:  # back: what the outage cost at the source's rate
                    self.lost_frames += max(0, round((t_cap - t_last) * self.fps) - 1)
                    self.outage = None
                self.state = "ok"
                t_last = t_cap
                yield Frame(i, t_cap, t_cap - t_start, img, {"capture": t_read})
                img = None
                i += 1
        finally:
            if self._cap is not None:  # idle: a read still running was handed its release above
                self._cap.release()
                self._cap = None
            self.state = "closed"
