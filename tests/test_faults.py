"""mex-live under faults, end to end: outputs that cannot be written (checked at start, or failing at the
end), a source that breaks mid-way, signals at each phase, and --batch names, stops and bad tables.
The output layer itself (full disks, read-only folders, hard links) is tested in test_outputs.py."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mex import outputs
from realtime import cli, synth

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "mex" / "assets" / "default.onnx"
needs_tracker = pytest.mark.skipif(
    __import__("importlib").util.find_spec("mediapipe") is None and not hasattr(__import__("cv2"), "CascadeClassifier"),
    reason="no face tracker: neither mediapipe nor OpenCV's Haar cascade is installed")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "clip.mp4"
    synth.write_clip(path, synth.ClipSpec(fps=30.0, seconds=4.0, size=(320, 240), events=2, duration_s=(0.2, 0.3),
                                          amplitude_px=(2.0, 3.0), face_px=90.0, seed=3))
    return path


def _frames(video: Path, folder: Path) -> int:
    import cv2

    folder.mkdir(parents=True)
    cap, n = cv2.VideoCapture(str(video)), 0
    while (got := cap.read())[0]:
        n += 1
        cv2.imwrite(str(folder / f"img{n}.png"), got[1])
    cap.release()
    return n


def _count(text: str, what: str) -> int:
    return int(text.split(what)[1].split()[0])


# ------------------------------------------------------------------------------------ single runs
def test_outputs_that_cannot_be_written_are_refused_before_the_run(clip, tmp_path, capsys, monkeypatch):
    from realtime import runtimes

    shipped = Path(shutil.copy(MODEL, tmp_path / "shipped.onnx"))
    monkeypatch.setattr(runtimes, "DEFAULT_MODEL", shipped)  # the model used when --model is not given
    (tmp_path / "afile").write_text("x")
    os.link(clip, tmp_path / "link.jsonl")
    before = clip.read_bytes()
    run = ["--video", str(clip), "--display", "none"]
    for extra, needle in [
        (["--summary", str(tmp_path / "afile" / "run.json")], "afile is a file, not a folder"),
        (["--events", str(tmp_path / "link.jsonl"), "--force"], "that is an input of this run"),
        (["--record", str(tmp_path / "afile" / "out.mp4")], "afile is a file, not a folder"),
        (["--events", str(shipped), "--force"], "that is an input of this run"),
        (["--max-frames", "0"], "--max-frames 0: at least 1"),
        (["--max-frames", "-3"], "--max-frames -3: at least 1"),
    ]:
        t0 = time.monotonic()
        assert cli.main([*run, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("mex-live: error:") and needle in err and "Traceback" not in err, err
        assert time.monotonic() - t0 < 5  # refused at once, not after the run
    assert clip.read_bytes() == before and shipped.read_bytes() == MODEL.read_bytes()


def test_inputs_that_cannot_be_read_say_why(clip, tmp_path, capsys):
    run = ["--display", "none"]
    for argv, needle in [
        (["--video", "/dev/null"], "--video /dev/null: not a regular file (a device or a pipe)"),
        (["--video", str(clip), "--model", f"{tmp_path}/"], "is a folder; give the exported model file"),
    ]:
        assert cli.main([*argv, *run]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_a_file_this_user_may_not_read_is_named_as_such(clip, capsys):
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mex-faults-"))
    try:
        folder.chmod(0o755)
        private = Path(shutil.copy(clip, folder / "private.mp4"))
        private.chmod(0o600)  # root's alone
        os.seteuid(65534)  # as the user nobody: permissions apply (root would read it)
        try:
            assert cli.main(["--video", str(private), "--display", "none"]) == 2
        finally:
            os.seteuid(0)
        err = capsys.readouterr().err
        assert f"--video {private}: permission denied (this user may not read it)" in err, err
    finally:
        shutil.rmtree(folder)


@needs_tracker
def test_a_one_frame_segmented_clip_says_why_it_has_no_label(clip, tmp_path, capsys):
    import cv2

    folder = tmp_path / "one"
    folder.mkdir()
    cap = cv2.VideoCapture(str(clip))
    cv2.imwrite(str(folder / "img1.png"), cap.read()[1])
    cap.release()
    assert cli.main(["--video", str(folder), "--fps", "200", "--segmented", "--model", str(MODEL),
                     "--display", "none"]) == 0
    out = capsys.readouterr().out
    assert "events      0 found" in out and "only 1 frame with a face; a label needs at least 2" in out


@needs_tracker
def test_a_summary_that_cannot_be_written_at_the_end_is_said_and_fails_the_run(clip, tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)  # the disk fills during the run
    target = tmp_path / "run.json"
    rc = cli.main(["--video", str(clip), "--model", str(MODEL), "--display", "none", "--max-frames", "30",
                   "--summary", str(target)])
    out = capsys.readouterr()
    assert rc == 1 and "frames      30 processed" in out.out  # the summary is still shown
    assert f"--summary {target}: cannot write: the disk is full" in out.err and "Traceback" not in out.err
    assert list(tmp_path.iterdir()) == []  # no half file, no temporary file


@needs_tracker
def test_a_frame_folder_that_breaks_mid_way_still_labels_what_was_found(clip, tmp_path, capsys):
    import cv2

    folder = tmp_path / "EP01"
    assert _frames(clip, folder) == 120
    cv2.imwrite(str(folder / "img110.png"), np.zeros((10, 10, 3), np.uint8))
    events = tmp_path / "ev.jsonl"
    assert cli.main(["--video", str(folder), "--fps", "30", "--model", str(MODEL), "--display", "none",
                     "--events", str(events)]) == 1
    out = capsys.readouterr()
    assert "img110.png is 10x10" in out.err and "Ctrl-C" not in out.err and "Traceback" not in out.err
    found, candidates = _count(out.out, "events      "), _count(out.out, "found (")
    assert found == candidates >= 1 and len(events.read_text().splitlines()) == found


@needs_tracker
def test_a_late_ctrl_c_does_not_change_a_finished_runs_exit_status(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "realtime.cli", "--demo", "--display", "none", "--max-frames",
                             "30"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if "lip-corner pulls positive" in line:  # the summary's last line: the run is over
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]


# ------------------------------------------------------------------------------------ --batch
def _table(out: Path) -> dict[str, dict]:
    with (out / "summary.csv").open(newline="") as f:
        return {r["input"]: r for r in csv.DictReader(f)}


def test_bad_batches_are_refused_plainly_before_any_work(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "summary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.csv").write_text("name,score\na,1\n")
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "a.mp4").write_bytes(b"not read: the batch is refused first")
    for batch, out, needle in [
        (tmp_path / "empty", tmp_path / "o1", "holds no video files"),
        (rec, tmp_path / "notes.txt", "is a file; give a folder"),
        (rec, tmp_path / "notes.txt" / "o", "a part of the path is a file"),
        (rec, foreign, "summary.csv there is not a mex-live batch table"),
        (rec, other, "summary.csv there is not a mex-live batch table"),
    ]:
        assert cli.main(["--batch", str(batch), "--out", str(out), "--model", str(MODEL)]) == 2, out
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o1").exists()  # an empty batch writes no summary.csv
    assert (other / "summary.csv").read_text() == "name,score\na,1\n"


def test_batch_names_cannot_collide(tmp_path):
    from realtime.batch import events_path, find_inputs, input_name

    root = tmp_path / "b"
    (root / "x").mkdir(parents=True)
    for name in ("x/y.mp4", "x__y.mp4", "x/y.mp4.events.jsonl"):
        (root / name).write_bytes(b"")
    names = [input_name(p, root) for p in find_inputs(root)]
    assert names == ["x/y.mp4", "x__y.mp4"]
    assert len({events_path(tmp_path / "out", n) for n in names}) == 2


@needs_tracker
def test_a_batch_stopped_mid_input_records_it_stopped_and_a_rerun_finishes_it(clip, tmp_path, capsys, monkeypatch):
    from realtime import sources

    root = tmp_path / "rec"
    (root / "x").mkdir(parents=True)
    shutil.copy(clip, root / "x" / "y.mp4")
    shutil.copy(clip, root / "x__y.mp4")  # the name '/' as '__' once gave both inputs
    out = tmp_path / "out"
    argv = ["--batch", str(root), "--out", str(out), "--model", str(MODEL), "--fps", "200"]
    real = sources.recording

    def ctrl_c_in_the_second(path, fps=None, realtime=False):
        assert fps is None  # --fps is the frame folders' rate: a video file keeps its own
        source = real(path, fps, realtime)
        if path.name != "x__y.mp4":  # the second in path order
            return source
        frames = source.frames

        def then_ctrl_c():
            for frame in frames():
                if frame.index == 20:
                    signal.raise_signal(signal.SIGINT)  # as a terminal's Ctrl-C: to the main thread
                yield frame
        source.frames = then_ctrl_c
        return source

    monkeypatch.setattr(sources, "recording", ctrl_c_in_the_second)
    assert cli.main(argv) == 0  # stopped by the user: not a failure
    text = " ".join(capsys.readouterr().out.split())
    rows = _table(out)
    assert rows["x__y.mp4"]["status"] == "stopped" and 20 <= int(rows["x__y.mp4"]["frames_read"]) < 120
    assert rows["x/y.mp4"]["status"] == "ok" and rows["x/y.mp4"]["frames_read"] == "120"
    assert "--fps 200 is the rate of the frame folders" in text and "recorded as stopped" in text
    for name in rows:
        events = [json.loads(line) for line in (out / f"{name}.events.jsonl").read_text().splitlines()]
        assert all(e["apex_s"] == pytest.approx(e["apex_frame"] / 30, abs=1e-5) for e in events)  # its own rate
    monkeypatch.setattr(sources, "recording", real)
    assert cli.main(argv) == 0
    assert "1 done before, 1 to run" in " ".join(capsys.readouterr().out.split())
    assert {r["status"] for r in _table(out).values()} == {"ok"}


# ------------------------------------------------------------------------------------ mex-bench, mex-train
def test_bench_inputs_and_outputs_are_refused_before_any_work(tmp_path, capsys):
    from benchmarks.cli import main as bench

    (tmp_path / "afile").write_text("x")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    (tmp_path / "notes.mp4").write_text("not a video")
    res = str(tmp_path / "res")
    for argv, needle in [
        (["--clip", str(tmp_path / "nope.mp4"), "--out", res], f"--clip {tmp_path / 'nope.mp4'}: file does not exist"),
        (["--clip", str(tmp_path / "notes.mp4"), "--out", res], "--clip"),
        (["--clip", str(tmp_path), "--out", res], "is a folder, not a video file"),
        (["--model", str(tmp_path / "junk.onnx"), "--out", res], "--model"),
        (["--out", str(tmp_path / "afile")], "is a file; give a folder"),
    ]:
        assert bench(["latency", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("mex-bench: error:") and needle in err and "Traceback" not in err, err
    assert not any((tmp_path / "res").glob("latency*"))


def test_train_refuses_an_out_it_cannot_write_before_training(tmp_path, capsys):
    from train.cli import main as train

    (tmp_path / "afile").write_text("x")
    assert train(["loso", "--out", str(tmp_path / "afile" / "run"), "--profile", "cpu-quick"]) == 2
    assert "afile" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ live streams
class StallingCapture:
    """A stream that sends `good` frames and then stalls with its socket open (every later read hangs, as
    OpenCV's does for 30 s) until released; the captures opened after it send frames again."""

    opens = 0

    def __init__(self, good: int = 20):
        StallingCapture.opens += 1
        self.first = StallingCapture.opens == 1
        self.good, self.n = good, 0
        self.released = threading.Event()

    def isOpened(self):
        return True

    def set(self, *a):
        return True

    def get(self, prop):
        return 50.0

    def read(self):
        self.n += 1
        if self.first and self.n > self.good:
            self.released.wait(30)  # hangs: only a deadline of our own gets past it
            return False, None
        time.sleep(0.02)
        return True, np.zeros((24, 32, 3), np.uint8)

    def release(self):
        self.released.set()


def test_a_stalled_stream_is_seen_within_the_deadline_and_reconnected():
    from realtime.sources import CameraSource

    StallingCapture.opens = 0
    cam = CameraSource("http://127.0.0.1:9/stream", capture_factory=lambda i: StallingCapture(), backoff_s=0.01,
                       read_timeout_s=0.3, flag="--video")
    t0, seen, outages = time.monotonic(), [], set()
    for frame in cam.frames():
        seen.append(frame.t_capture)
        outages.add(cam.outage)
        if len(seen) == 40:
            break
    cam.close()
    gap = max(b - a for a, b in zip(seen, seen[1:]))
    assert cam.reconnects == 1 and 0.3 <= gap < 2.0 and time.monotonic() - t0 < 10  # not OpenCV's 30 s
    assert cam.lost_frames >= round(0.3 * 50) - 1  # the stall's frames at the stream's 50 fps are counted


def test_stop_returns_within_a_second_while_a_stream_hangs():
    from realtime.sources import CameraSource

    StallingCapture.opens = 0
    cam = CameraSource("rtsp://127.0.0.1:9/stream", capture_factory=lambda i: StallingCapture(good=2),
                       read_timeout_s=60.0, flag="--video")  # a deadline far off: only stop() can end the wait
    frames = cam.frames()
    next(frames), next(frames)
    ended = threading.Event()

    def drain():
        for _ in frames:
            pass
        ended.set()

    threading.Thread(target=drain, daemon=True).start()
    time.sleep(0.3)  # the reader now hangs in read()
    t0 = time.monotonic()
    cam.stop()  # what Ctrl-C does
    assert ended.wait(1.0) and time.monotonic() - t0 < 1.0


@needs_tracker
def test_a_stalled_stream_is_reported_and_its_lost_frames_counted(clip, monkeypatch, capsys):
    from realtime import sources

    StallingCapture.opens = 0
    monkeypatch.setattr(sources, "_default_capture", lambda i: StallingCapture(good=15))
    rc = cli.main(["--video", "http://127.0.0.1:9/stream", "--model", str(MODEL), "--display", "none",
                   "--max-frames", "30"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "stream http://127.0.0.1:9/stream: reconnecting (no frame for 2 s; retrying with backoff)" in out.err
    assert "ok (resumed)" in out.err and "frames lost while reconnecting" in out.out
