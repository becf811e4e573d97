"""Where results go: the JSONL event log, the annotated-video recorder, and the frame annotator
that the recorder and the window overlay share."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from mex.labels import CLASSES

from .packets import DisplayState, Event, FaceFrame, Rejection
from .stages import EventSink, FrameSink


class SinkError(RuntimeError):
    """An output cannot be written; the message names the flag and the file."""


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
    spotter rejected and why), flushed as each is written (a killed run keeps every line it reported)
    and fsynced at close."""

    def __init__(self, path: str | Path, flag: str = "--events"):
        self.path = Path(path)
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", encoding="utf-8")
        except OSError as e:
            raise SinkError(f"{flag} {self.path}: cannot write ({e.strerror or e})") from None
        self._lock = threading.Lock()
        self.count = 0

    def on_event(self, event: Event) -> None:
        self._write(event.to_json())

    def on_rejection(self, rejection: Rejection) -> None:
        self._write(rejection.to_json())

    def _write(self, record: dict) -> None:
        line = json.dumps(json_safe(record), separators=(", ", ": "), allow_nan=False)
        with self._lock:
            if self._f is None:
                return
            self._f.write(line + "\n")
            self._f.flush()
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._f is None:
                return
            self._f.flush()
            try:
                os.fsync(self._f.fileno())
            except OSError:
                pass
            self._f.close()
            self._f = None


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
        self.stream.write(
            f"event  frames {frames:<16s} apex {event.apex_s:7.2f} s  "
            f"{event.label:<8s} [{p}]  latency {event.latency_ms:.1f} ms\n"
        )
        self.stream.flush()


# ---------------------------------------------------------------------------------- annotation
_CLASS_COLORS = {"negative": (60, 60, 230), "positive": (60, 200, 60), "surprise": (230, 160, 40)}
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


def annotate(image: np.ndarray, face: FaceFrame | None, state: DisplayState, show_event_s: float = 2.0) -> np.ndarray:
    """A copy of `image` with the face box and landmarks, region motion, the last event's label and
    probability bars, and the motion-signal plot."""
    import cv2

    img = image.copy()
    h, w = img.shape[:2]
    s = max(0.35, min(1.0, w / 900))  # text scale follows the frame size
    st = face.state if face is not None else "no_face"
    color = _STATE_COLORS.get(st, (200, 200, 200))
    if face is not None and face.box is not None:
        x, y, bw, bh = (int(v) for v in face.box)
        cv2.rectangle(img, (x, y), (x + bw, y + bh), color, 2)
    if face is not None and face.landmarks is not None:
        pts = np.asarray(face.landmarks)
        step = max(1, len(pts) // 160)
        for px, py in pts[::step, :2].astype(int):
            cv2.circle(img, (int(px), int(py)), 1, (255, 255, 120), -1, cv2.LINE_AA)

    # header: state, fps, frame
    _panel(img, 0, 0, int(330 * s) + 60, int(26 * s) + 12)
    idx = face.frame.index if face is not None else -1
    _text(img, f"{st}  {state.fps:5.1f} fps  frame {idx}", (6, int(22 * s) + 4), 0.6 * s + 0.1, color)

    # region motion bars (top right)
    if state.regions:
        items = list(state.regions.items())[:8]
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

    # last event: label and probability bars (left, under the header)
    ev = state.events[-1] if state.events else None
    t_now = face.frame.t_video if face is not None else None
    if ev is not None and (t_now is None or t_now - ev.apex_s <= show_event_s):
        y0 = int(26 * s) + 20
        lc = _CLASS_COLORS.get(ev.label, (255, 255, 255))
        _panel(img, 0, y0 - 4, int(260 * s) + 40, y0 + int(24 * s) + len(ev.probs) * (int(16 * s) + 6) + 10)
        _text(img, f"{ev.label.upper()}  {ev.probs.get(ev.label, 0):.2f}", (6, y0 + int(20 * s)), 0.7 * s + 0.1, lc, 2)
        for i, name in enumerate(CLASSES if set(CLASSES) == set(ev.probs) else ev.probs):
            y = y0 + int(28 * s) + 4 + i * (int(16 * s) + 6)
            p = float(ev.probs.get(name, 0.0))
            x_bar = 6 + int(80 * s)
            cv2.rectangle(img, (x_bar, y), (x_bar + int(150 * s * p) + 1, y + int(12 * s) + 2),
                          _CLASS_COLORS.get(name, (200, 200, 200)), -1)
            _text(img, name[:8], (6, y + int(12 * s) + 2), 0.45 * s + 0.05)

    # signal plot (bottom strip)
    sig = state.signal
    if sig is not None and np.size(sig) > 1:
        sig = np.asarray(sig, dtype=np.float64).ravel()
        sig = sig[-min(len(sig), w // 2):]
        sh = max(30, h // 8)
        _panel(img, 0, h - sh, w, h)
        finite = np.isfinite(sig)
        if finite.any():
            lo, hi = float(np.min(sig[finite])), float(np.max(sig[finite]))
            norm = (np.where(finite, sig, lo) - lo) / (hi - lo if hi > lo else 1.0)
            xs = np.linspace(4, w - 4, len(sig))
            ys = (h - 4) - norm * (sh - 8)
            pts = np.stack([xs, ys], 1).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], False, (80, 230, 255), 1, cv2.LINE_AA)
        _text(img, "motion", (6, h - sh + int(14 * s) + 2), 0.45 * s + 0.05)
    return img


class VideoRecorder(FrameSink):
    """Writes the annotated video (`--record out.mp4`): every frame for a file, the newest frames for
    a camera (the frame-sink queue drops the oldest when the writer falls behind)."""

    def __init__(self, path: str | Path, fps: float, flag: str = "--record"):
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.flag = flag
        self._writer = None
        self.frames = 0
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"{flag} {self.path}: cannot write ({e.strerror or e})") from None
        # fail now, with the flag's name, not mid-run: a small writer proves the folder and the container
        self._open(64, 64).release()
        self.path.unlink(missing_ok=True)

    def _open(self, w: int, h: int):
        import cv2

        ext = self.path.suffix.lower()
        fourccs = {".avi": ["MJPG", "XVID"], ".mkv": ["mp4v", "MJPG"], ".mp4": ["mp4v", "avc1"],
                   ".mov": ["mp4v", "avc1"]}.get(ext)
        if fourccs is None:
            raise SinkError(f"{self.flag} {self.path}: unknown video container {ext or '(no suffix)'}; use .mp4, .avi, .mkv or .mov")
        for cc in fourccs:
            wr = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*cc), self.fps, (w, h))
            if wr.isOpened():
                return wr
            wr.release()
        raise SinkError(f"{self.flag} {self.path}: OpenCV cannot write this container (try .mp4 or .avi)")

    def on_frame(self, face: FaceFrame, state: DisplayState) -> None:
        img = face.frame.image
        if img is None:
            return
        if self._writer is None:
            self._writer = self._open(img.shape[1], img.shape[0])
        self._writer.write(annotate(img, face, state))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
