"""Where results go: the JSONL event log, the annotated-video recorder, and the frame annotator
that the recorder and the window overlay share."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from mex.labels import CLASSES
from mex.outputs import LineFile, OutputError, finish, new_temporary

from .packets import DisplayState, Event, Rejection
from .stages import EventSink, FrameSink


def json_safe(value):
    """JSON has no NaN or infinity: such a number is written as null, so every line stays valid JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class EventLog(EventSink):
    """One JSON object per line (a detected micro-expression, or with `--rejections` an interval the
    spotter rejected and why), written whole as each comes (a killed run keeps every line it reported;
    a full disk leaves the log ending on its last whole line: mex.outputs.LineFile)."""

    def __init__(self, path: str | Path, flag: str = "--events"):
        self.path = Path(path)
        self._file = LineFile(self.path, flag)

    @property
    def count(self) -> int:
        return self._file.lines

    @property
    def closed(self) -> bool:
        return self._file.closed

    def on_event(self, event: Event) -> None:
        self._write(event.to_json())

    def on_rejection(self, rejection: Rejection) -> None:
        self._write(rejection.to_json())

    def _write(self, record: dict) -> None:
        self._file.write_line(json.dumps(json_safe(record), separators=(", ", ": "), allow_nan=False))

    def close(self) -> None:
        self._file.close()


class ListSink(EventSink):
    """Keeps events in memory (the demo's summary, tests)."""

    def __init__(self):
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)


class PrintSink(EventSink):
    """One line per event on a stream (headless runs without the terminal overlay)."""

    def __init__(self, stream):
        self.stream = stream

    def on_event(self, event: Event) -> None:
        p = " ".join(f"{k}={v:.2f}" for k, v in event.probs.items())
        off = "-" if event.offset_frame is None else event.offset_frame
        frames = f"{event.onset_frame}-{event.apex_frame}-{off}"
        label = event.label + (" (uncertain)" if event.uncertain else "")
        self.stream.write(
            f"event  face {event.face_id}  frames {frames:<16s} apex {event.apex_s:7.2f} s  "
            f"{label:<8s} [{p}]  latency {event.latency_ms:.1f} ms\n"
        )
        self.stream.flush()


# ---------------------------------------------------------------------------------- annotation
_CLASS_COLORS = {"negative": (60, 60, 230), "positive": (60, 200, 60), "surprise": (230, 160, 40)}
_UNCERTAIN_COLOR = (170, 170, 170)  # an uncertain event's label: grey, whatever its class
_STATE_COLORS = {"face": (80, 220, 80), "reacquired": (80, 220, 220), "lost": (60, 140, 255), "no_face": (60, 60, 230)}


def _text(img, s, org, scale=0.5, color=(240, 240, 240), thick=1):
    import cv2

    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def _panel(img, x0, y0, x1, y1, alpha=0.55):
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 > x0 and y1 > y0:
        roi = img[y0:y1, x0:x1]
        roi[:] = (roi * (1 - alpha)).astype(np.uint8)


def _plot(img, sig, x0: int, y0: int, x1: int, y1: int, color) -> None:
    """A signal as a polyline in the box (x0, y0)-(x1, y1), scaled to its own range."""
    import cv2

    sig = np.asarray(sig, dtype=np.float64).ravel()
    finite = np.isfinite(sig)
    if sig.size < 2 or not finite.any() or x1 - x0 < 4:
        return
    lo, hi = float(np.min(sig[finite])), float(np.max(sig[finite]))
    norm = (np.where(finite, sig, lo) - lo) / (hi - lo if hi > lo else 1.0)
    pts = np.stack([np.linspace(x0, x1, len(sig)), y1 - norm * (y1 - y0)], 1).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(img, [pts], False, color, 1, cv2.LINE_AA)


def annotate(image: np.ndarray, state: DisplayState, show_event_s: float = 2.0) -> np.ndarray:
    """A copy of `image` with every face: its box, id and last label, its landmarks and a small plot of
    its motion signal under the box; the header (faces, fps, frame); with one face its region motion and
    the motion signal along the bottom; the last event's label and probability bars."""
    import cv2

    img = image.copy()
    h, w = img.shape[:2]
    s = max(0.35, min(1.0, w / 900))  # text scale follows the frame size
    views = [v for v in state.faces if v.face.box is not None]
    for v in views:
        face = v.face
        color = _STATE_COLORS.get(face.state, (200, 200, 200))
        x, y, bw, bh = (int(q) for q in face.box)
        cv2.rectangle(img, (x, y), (x + bw, y + bh), color, 2)
        if face.landmarks is not None:
            pts = np.asarray(face.landmarks)
            for px, py in pts[::max(1, len(pts) // 160), :2].astype(int):
                cv2.circle(img, (int(px), int(py)), 1, (255, 255, 120), -1, cv2.LINE_AA)
        tag = f"#{face.face_id}" + (f" {v.label}" if v.label else "")
        _text(img, tag, (x, max(int(14 * s), y - 6)), 0.5 * s + 0.1, _CLASS_COLORS.get(v.label, color))
        if v.signal is not None and len(views) > 1:
            _plot(img, np.asarray(v.signal)[-120:], x, y + bh + 4, x + bw, y + bh + 4 + max(12, bh // 5),
                  (80, 230, 255))

    # header: faces, fps, frame
    first = state.faces[0].face.state if state.faces else "no_face"
    head = first if len(state.faces) <= 1 else f"{len(views)} faces"
    _panel(img, 0, 0, int(330 * s) + 60, int(26 * s) + 12)
    idx = state.frame.index if state.frame is not None else -1
    color = _STATE_COLORS.get(first, (200, 200, 200)) if len(state.faces) <= 1 else (240, 240, 240)
    _text(img, f"{head}  {state.fps:5.1f} fps  frame {idx}", (6, int(22 * s) + 4), 0.6 * s + 0.1, color)

    one = state.faces[0] if len(state.faces) == 1 else None
    # region motion bars (top right), one face
    if one is not None and one.regions:
        items = list(one.regions.items())[:8]
        vmax = max(1e-6, max(float(v) for _, v in items))
        bw_ = int(120 * s) + 40
        x0 = w - bw_ - int(90 * s) - 10
        _panel(img, x0 - 4, 0, w, 8 + len(items) * (int(16 * s) + 6))
        for i, (name, v) in enumerate(items):
            y = 6 + i * (int(16 * s) + 6)
            frac = float(v) / vmax
            cv2.rectangle(img, (x0 + int(90 * s), y), (x0 + int(90 * s) + int(bw_ * frac), y + int(12 * s) + 2),
                          (200, 170, 60), -1)
            _text(img, str(name)[:10], (x0, y + int(12 * s) + 2), 0.45 * s + 0.05)

    # last event: face, label and probability bars (left, under the header)
    ev = state.events[-1] if state.events else None
    t_now = state.frame.t_video if state.frame is not None else None
    if ev is not None and (t_now is None or t_now - ev.apex_s <= show_event_s):
        y0 = int(26 * s) + 20
        lc = _UNCERTAIN_COLOR if ev.uncertain else _CLASS_COLORS.get(ev.label, (255, 255, 255))
        title = f"#{ev.face_id} {ev.label.upper()}  {ev.probs.get(ev.label, 0):.2f}" + ("  uncertain" * ev.uncertain)
        title_w = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * s + 0.1, 2)[0][0]
        _panel(img, 0, y0 - 4, max(int(260 * s) + 40, title_w + 16),
               y0 + int(24 * s) + len(ev.probs) * (int(16 * s) + 6) + 10)
        _text(img, title, (6, y0 + int(20 * s)), 0.7 * s + 0.1, lc, 2)
        for i, name in enumerate(CLASSES if set(CLASSES) == set(ev.probs) else ev.probs):
            y = y0 + int(28 * s) + 4 + i * (int(16 * s) + 6)
            p = float(ev.probs.get(name, 0.0))
            x_bar = 6 + int(80 * s)
            cv2.rectangle(img, (x_bar, y), (x_bar + int(150 * s * p) + 1, y + int(12 * s) + 2),
                          _CLASS_COLORS.get(name, (200, 200, 200)), -1)
            _text(img, name[:8], (6, y + int(12 * s) + 2), 0.45 * s + 0.05)

    # motion signal (bottom strip), one face
    if one is not None and one.signal is not None and np.size(one.signal) > 1:
        sh = max(30, h // 8)
        _panel(img, 0, h - sh, w, h)
        _plot(img, np.asarray(one.signal).ravel()[-(w // 2):], 4, h - sh + 4, w - 4, h - 4, (80, 230, 255))
        _text(img, "motion", (6, h - sh + int(14 * s) + 2), 0.45 * s + 0.05)
    return img


class VideoRecorder(FrameSink):
    """Writes the annotated video (`--record out.mp4`): every frame for a file, the newest frames for
    a camera (the frame-sink queue drops the oldest when the writer falls behind).

    The video is written under a temporary name beside `path` and renamed into place once it is finished
    and reads back. OpenCV's writer reports no write errors (a full disk gives a file without its index
    that no player opens), so a video that does not read back is removed and `close()` says why."""

    CONTAINERS = {".avi": ["MJPG", "XVID"], ".mkv": ["mp4v", "MJPG"], ".mp4": ["mp4v", "avc1"],
                  ".mov": ["mp4v", "avc1"]}

    def __init__(self, path: str | Path, fps: float, flag: str = "--record"):
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.flag = flag
        ext = self.path.suffix.lower()
        if ext not in self.CONTAINERS:
            raise OutputError(f"{flag} {self.path}: unknown video container {ext or '(no suffix)'}; "
                              "use .mp4, .avi, .mkv or .mov")
        self._writer = None
        self.frames = 0
        self._tmp = new_temporary(self.path, flag)
        # fail now, with the flag's name, not mid-run: a small writer proves the container
        self._open(64, 64).release()

    def _open(self, w: int, h: int):
        import cv2

        for cc in self.CONTAINERS[self.path.suffix.lower()]:
            wr = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*cc), self.fps, (w, h))
            if wr.isOpened():
                return wr
            wr.release()
        self._tmp.unlink(missing_ok=True)
        raise OutputError(f"{self.flag} {self.path}: this OpenCV build cannot write {self.path.suffix} video "
                          "(try .mp4 or .avi)")

    def on_frame(self, state: DisplayState) -> None:
        img = state.frame.image
        if img is None:
            return
        if self._writer is None:
            self._writer = self._open(img.shape[1], img.shape[0])
        self._writer.write(annotate(img, state))
        self.frames += 1

    def close(self) -> None:
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self.frames == 0:  # nothing was recorded: no file
            tmp.unlink(missing_ok=True)
            return
        readable = _frames_in(tmp)
        if readable < 1:
            free = shutil.disk_usage(tmp.parent).free
            tmp.unlink(missing_ok=True)
            why = "the disk is full" if free < 1 << 20 else "the written file does not read back"
            raise OutputError(f"{self.flag} {self.path}: the video of {self.frames} frames could not be finished "
                              f"({why}); the unplayable file was removed")
        finish(tmp, self.path, self.flag)


def _frames_in(path: Path) -> int:
    """How many frames a video file's container announces; 0 when OpenCV cannot open it."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
