"""What the user sees while it runs.

- `TerminalOverlay`: a rich Live panel (fps, per-stage latency, a row per face: id, state, its motion
  signal and regions, its last label; the last events with face and class probabilities, an uncertain
  one's label dim and marked "(uncertain)"). Works in any terminal, tmux included.
- `WindowOverlay`: an OpenCV window with the annotated frame (every face's box, id, last label and
  landmarks; with one face its region motion and signal plot, with several a small plot under each
  box; the last event's label and probability bars, grey and marked "uncertain" when it is). Opened
  only when a display is usable: this OpenCV is a Qt build, and `cv2.imshow` without a reachable
  display kills the process (no Python exception), so `display_usable()` checks first, in a throwaway
  subprocess.

Both are driven from the main thread by `update(pipeline)`.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_SPARK = "▁▂▃▄▅▆▇█"
_STAGE_ORDER = ["capture", "wait", "track", "spot", "frame", "encode", "infer", "confirm", "latency"]


def _x11_reachable(display: str) -> tuple[bool, str]:
    host, _, rest = display.rpartition(":")
    num = rest.split(".")[0]
    if not num.isdigit():
        return False, f"DISPLAY={display!r} is not a valid X display name"
    try:
        if host in ("", "unix"):
            path = f"/tmp/.X11-unix/X{num}"
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1.0)
            s.connect(path)
        else:
            s = socket.create_connection((host, 6000 + int(num)), timeout=1.0)
        s.close()
        return True, ""
    except OSError as e:
        return False, f"X display {display} is not reachable ({e.strerror or e})"


def display_usable(probe: bool = True) -> tuple[bool, str]:
    """(usable, reason). Checks DISPLAY / WAYLAND_DISPLAY, that the server answers, and (probe=True)
    that OpenCV can open a window in a subprocess, so a failure there cannot kill this process."""
    display = os.environ.get("DISPLAY", "")
    wayland = os.environ.get("WAYLAND_DISPLAY", "")
    if not display and not wayland:
        return False, "no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    if display:
        ok, why = _x11_reachable(display)
        if not ok and not wayland:
            return False, why
    elif wayland:
        run = os.environ.get("XDG_RUNTIME_DIR", "")
        sock = wayland if wayland.startswith("/") else os.path.join(run, wayland)
        if not Path(sock).exists():
            return False, f"Wayland display {wayland} is not reachable"
    if not probe:
        return True, ""
    code = ("import cv2, numpy as np; cv2.namedWindow('p'); cv2.imshow('p', np.zeros((8,8,3),np.uint8)); "
            "cv2.waitKey(1); cv2.destroyAllWindows()")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, "opening an OpenCV window timed out"
    if r.returncode != 0:
        tail = r.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        return False, f"OpenCV cannot open a window here ({tail[0][:160]})"
    return True, ""


def sparkline(values: np.ndarray, width: int = 60) -> str:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return ""
    v = v[-width:]
    v = np.where(np.isfinite(v), v, np.nan)
    if np.all(np.isnan(v)):
        return " " * len(v)
    lo, hi = np.nanmin(v), np.nanmax(v)
    span = hi - lo if hi > lo else 1.0
    out = []
    for x in v:
        out.append(" " if np.isnan(x) else _SPARK[int(round((x - lo) / span * (len(_SPARK) - 1)))])
    return "".join(out)


def _stage_rows(pipeline, n: int = 300):
    stats = pipeline.stats
    names = stats.stages()
    ordered = [s for s in _STAGE_ORDER if s in names] + sorted(s for s in names if s not in _STAGE_ORDER)
    rows = []
    for name in ordered:
        s = stats.recent(name, n)
        s = s[np.isfinite(s)]
        if s.size:
            p50, p95, p99 = np.percentile(s, [50, 95, 99])
            rows.append((name, p50, p95, p99))
    return rows


class TerminalOverlay:
    """rich Live terminal overlay, refreshed from the main thread (about 8 times a second)."""

    def __init__(self, console=None, title: str = "mex-live", refresh_hz: float = 8.0):
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console()
        self.title = title
        self._live = Live(console=self.console, refresh_per_second=refresh_hz, transient=False, auto_refresh=False)
        self._period = 1.0 / refresh_hz
        self._last = 0.0
        self._started = False

    def __enter__(self):
        self._live.start()
        self._started = True
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._started:
            self._live.stop()
            self._started = False

    def update(self, pipeline, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._period:
            return
        self._last = now
        self._live.update(self.render(pipeline), refresh=True)

    def render(self, pipeline):
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        st = pipeline.snapshot()
        c = st.counters or {}
        colors = {"face": "green", "reacquired": "cyan", "lost": "yellow", "no_face": "red"}
        if st.frame is None:
            face_state = "waiting"
        elif len(st.faces) <= 1:
            face_state = st.faces[0].face.state if st.faces else "no_face"
        else:
            face_state = f"{len(st.faces)} faces"
        fcol = colors.get(face_state, "white")
        scol = {"ok": "green", "reconnecting": "bold red", "eof": "blue"}.get(st.source_state, "white")
        head = Text.assemble(
            ("source ", "dim"), (f"{pipeline.source.name} ", "bold"), (f"[{st.source_state}]", scol),
            ("   face ", "dim"), (face_state, f"bold {fcol}"),
            ("   fps ", "dim"), (f"{st.fps:6.1f}", "bold"),
            ("\nframes ", "dim"), (f"{c.get('frames_processed', 0)}/{c.get('frames_read', 0)}", ""),
            ("  dropped ", "dim"), (str(c.get("dropped_frames", 0)), "yellow" if c.get("dropped_frames") else ""),
            ("  candidates ", "dim"), (str(c.get("candidates", 0)), ""),
            ("  events ", "dim"), (str(c.get("events", 0)), "bold"),
            ("  reconnects ", "dim"), (str(c.get("reconnects", 0)), ""),
        )
        lat = Table(title="stage latency, ms (last 300)", title_justify="left", expand=False,
                    show_edge=False, pad_edge=False)
        for col in ("stage", "p50", "p95", "p99"):
            lat.add_column(col, justify="right" if col != "stage" else "left")
        for name, p50, p95, p99 in _stage_rows(pipeline):
            lat.add_row(name, f"{p50:.2f}", f"{p95:.2f}", f"{p99:.2f}")
        sig = Table(title="faces", title_justify="left", expand=False, show_edge=False, pad_edge=False)
        for col in ("id", "state", "motion", "regions", "last label"):
            sig.add_column(col)
        for v in st.faces:
            regions = "  ".join(f"{k} {float(x):.2f}" for k, x in list((v.regions or {}).items())[:3])
            sig.add_row(f"#{v.face.face_id}", Text(v.face.state, style=colors.get(v.face.state, "white")),
                        Text(sparkline(v.signal, 48) if v.signal is not None else "", style="cyan"), regions,
                        v.label or "-")
        ev = Table(title="last events", expand=False, show_edge=False, pad_edge=False)
        for col in ("face", "onset", "apex", "offset", "t (s)", "label", "probabilities", "latency ms"):
            ev.add_column(col)
        for e in reversed(st.events[-6:]):
            probs = "  ".join(f"{k[:3]} {v:.2f}" for k, v in e.probs.items())
            ev.add_row(f"#{e.face_id}", str(e.onset_frame), str(e.apex_frame),
                       "-" if e.offset_frame is None else str(e.offset_frame), f"{e.apex_s:.2f}",
                       Text(f"{e.label} (uncertain)", style="dim") if e.uncertain else e.label, probs,
                       f"{e.latency_ms:.1f}")
        return Panel(Group(head, Text(""), sig, Text(""), lat, Text(""), ev), title=self.title, border_style="blue")


class WindowOverlay:
    """OpenCV window with the annotated newest frame. `q` or Esc (or closing the window) stops the run.
    Construct only after `display_usable()` said yes."""

    def __init__(self, title: str = "mex-live", max_hz: float = 30.0):
        import cv2

        self.title = title
        self._period = 1.0 / max_hz
        self._last = 0.0
        self._last_index = -1
        # resizable, without the Qt toolbar; sized to the frame when the first one arrives
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        self._open = True
        self._sized = False

    def update(self, pipeline, force: bool = False) -> None:
        import cv2

        from .sinks import annotate

        if not self._open:
            return
        now = time.monotonic()
        if not force and now - self._last < self._period:
            cv2.waitKey(1)
            return
        self._last = now
        st = pipeline.snapshot()
        frame = st.frame
        if frame is not None and frame.image is not None and frame.index != self._last_index:
            self._last_index = frame.index
            if not self._sized:
                h, w = frame.image.shape[:2]
                cv2.resizeWindow(self.title, w, h)
                self._sized = True
            cv2.imshow(self.title, annotate(frame.image, st))
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            pipeline.stop()
        try:
            if self._last_index >= 0 and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                pipeline.stop()
                self._open = False
        except cv2.error:
            pass

    def close(self) -> None:
        import cv2

        if self._open:
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self._open = False
