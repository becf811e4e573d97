"""mex-live end to end on short generated clips: deterministic events from a file, clear errors,
Ctrl-C, the demo, and the window overlay under a private Xvfb."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from realtime import cli, synth

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

DEFAULT_MODEL = ROOT / "mex" / "assets" / "default.onnx"
# Runs that see faces need a tracker: mediapipe, or OpenCV 4's Haar cascade as the fallback. The GPU
# machine has neither (OpenCV 5 headless, no mediapipe), so there these skip and say why.
needs_tracker = pytest.mark.skipif(
    importlib.util.find_spec("mediapipe") is None and not hasattr(__import__("cv2"), "CascadeClassifier"),
    reason="no face tracker: neither mediapipe nor OpenCV's Haar cascade (cv2.CascadeClassifier) is installed")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = Path(shutil.copy(DEFAULT_MODEL, d / "model.onnx"))  # the shipped model, as users get it
    spec = synth.ClipSpec(fps=30.0, seconds=4.0, size=(320, 240), events=2, duration_s=(0.2, 0.3),
                          amplitude_px=(2.0, 3.0), face_px=90.0, seed=3)
    clip = d / "clip.mp4"
    truth = synth.write_clip(clip, spec)
    return {"dir": d, "model": model, "clip": clip, "truth": truth}


def _env(**extra):
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _live(args, timeout=120, **env):
    return subprocess.run([PY, "-m", "realtime.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=_env(**env))


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _untimed(events):
    return [{k: v for k, v in e.items() if k not in ("latency_ms", "confirm_ms")} for e in events]


@needs_tracker
def test_video_gives_the_same_events_twice(work, capsys):
    d = work["dir"]
    runs = []
    for k in range(2):
        out = d / f"events{k}.jsonl"
        rc = cli.main(["--video", str(work["clip"]), "--model", str(work["model"]), "--events", str(out),
                       "--display", "none"])
        text = capsys.readouterr().out
        assert rc == 0, text
        assert "120 processed / 120 read, 0 dropped" in text
        runs.append(_events(out))
    assert _untimed(runs[0]) == _untimed(runs[1])
    for e in runs[0]:
        assert set(e) == {"onset_frame", "apex_frame", "offset_frame", "onset_s", "apex_s", "offset_s", "label",
                          "probs", "latency_ms", "confirm_ms", "face_id", "uncertain"}
        assert e["uncertain"] is (max(e["probs"].values()) < 0.6)
        assert e["onset_frame"] <= e["apex_frame"] and e["apex_s"] == pytest.approx(e["apex_frame"] / 30, abs=1e-5)
        assert e["label"] in e["probs"] and e["latency_ms"] >= 0


@needs_tracker
def test_record_writes_the_annotated_video(work, capsys):
    import cv2

    out = work["dir"] / "rec.mp4"
    rc = cli.main(["--video", str(work["clip"]), "--model", str(work["model"]), "--record", str(out),
                   "--display", "none", "--max-frames", "40"])
    capsys.readouterr()
    assert rc == 0
    cap = cv2.VideoCapture(str(out))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, img = cap.read()
    cap.release()
    assert ok and img.shape == (240, 320, 3) and n == 40


def test_bad_inputs_exit_non_zero_with_a_message(work, tmp_path, capsys):
    model = str(work["model"])
    cases = [
        (["--video", str(tmp_path / "missing.mp4"), "--model", model], "--video"),
        (["--camera", "97", "--model", model], "--camera 97"),
        (["--video", str(work["clip"]), "--model", str(tmp_path / "none.onnx")], "--model"),
        (["--video", str(work["clip"]), "--model", model, "--events", "/proc/forbidden/e.jsonl"], "--events"),
    ]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 500)
    cases.append((["--video", str(junk), "--model", model], "junk.mp4"))
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not an onnx file")
    cases.append((["--video", str(work["clip"]), "--model", str(bad_model)], "bad.onnx"))
    import onnx

    other = onnx.load(str(work["model"]))  # a model made for another feature encoding
    for prop in other.metadata_props:
        if prop.key == "mex.encoding_version":
            prop.value = "some-other-encoding-v9"
    onnx.save(other, str(tmp_path / "other.onnx"))
    cases.append((["--video", str(work["clip"]), "--model", str(tmp_path / "other.onnx")], "some-other-encoding-v9"))
    nan_model = onnx.load(str(work["model"]))  # NaN weights: mex-live must refuse it at start-up
    from onnx import numpy_helper

    init = nan_model.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), init.name))
    onnx.save(nan_model, str(tmp_path / "nan.onnx"))
    cases.append((["--video", str(work["clip"]), "--model", str(tmp_path / "nan.onnx")], "not probabilities"))
    # outputs: never an input, never each other, an existing file only with --force
    clip, before = str(work["clip"]), work["clip"].read_bytes()
    old = tmp_path / "old.jsonl"
    old.write_text("kept\n")
    same = str(tmp_path / "same.out")
    cases += [
        (["--video", clip, "--model", model, "--events", clip], "that is an input"),
        (["--video", clip, "--model", model, "--record", clip, "--force"], "that is an input"),
        (["--video", clip, "--model", model, "--events", model], "that is an input"),
        (["--video", clip, "--model", model, "--events", str(old)], "file exists; pass --force"),
        (["--video", clip, "--model", model, "--events", same, "--record", same], "--events writes there too"),
        (["--video", clip, "--model", model, "--record", str(tmp_path / "out.xyz")], "unknown video container .xyz"),
        (["--video", clip, "--model", model, "--width", "640"], "--width/--height set a camera's"),
        (["--video", clip, "--model", model, "--fps", "0"], "--fps 0: a frame rate"),
        (["--video", "/dev/video97", "--model", model], "--video /dev/video97: cannot open this camera or stream"),
        (["--batch", str(tmp_path), "--model", model], "--batch needs --out"),
        (["--video", clip, "--model", model, "--out", str(tmp_path / "o")], "--out goes with --batch"),
        (["--video", "rtsp://127.0.0.1:9/cam", "--model", model, "--segmented"], "is a live stream"),
    ]
    for argv, needle in cases:
        rc = cli.main([*argv, "--display", "none"])
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert err.startswith("mex-live: error:") and needle in err, (argv, err)
    assert work["clip"].read_bytes() == before and old.read_text() == "kept\n" and not (tmp_path / "out.xyz").exists()


def _frame_folder(clip: Path, folder: Path, suffix: str = ".png") -> int:
    """The clip's frames as img1.png, img2.png, ... (numbered as CASME II numbers them: no leading zeros)."""
    import cv2

    folder.mkdir()
    cap = cv2.VideoCapture(str(clip))
    n = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        n += 1
        cv2.imwrite(str(folder / f"img{n}{suffix}"), img)
    cap.release()
    return n


@needs_tracker
def test_frame_folder_gives_the_events_of_the_same_frames_as_a_video(work, tmp_path, capsys):
    folder = tmp_path / "EP01_01"
    assert _frame_folder(work["clip"], folder) == 120
    (folder / "notes.txt").write_text("not a frame")  # other files in the folder are not frames
    runs = []
    for source in (["--video", str(work["clip"])], ["--video", str(folder), "--fps", "30"]):
        out = tmp_path / f"events{len(runs)}.jsonl"
        rc = cli.main([*source, "--model", str(work["model"]), "--events", str(out), "--display", "none"])
        text = capsys.readouterr().out
        assert rc == 0, text
        assert "120 processed / 120 read, 0 dropped" in text
        runs.append(_events(out))
    assert runs[1] and _untimed(runs[1]) == _untimed(runs[0])  # lossless frames in img1..img120 order


@needs_tracker
def test_bad_frame_folders_name_the_problem(work, tmp_path, capsys):
    import cv2

    model = str(work["model"])
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = tmp_path / "frames"
    _frame_folder(work["clip"], folder, ".jpg")
    for argv, needle in [(["--video", str(folder)], "--fps"),
                         (["--video", str(empty), "--fps", "200"], "no frame images")]:
        assert cli.main([*argv, "--model", model, "--display", "none"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mex-live: error:") and needle in err and str(argv[1]) in err, err
    (folder / "img50.jpg").write_bytes(b"\xff\xd8 truncated")  # a damaged frame half-way: the run stops, naming it
    assert cli.main(["--video", str(folder), "--fps", "30", "--model", model, "--display", "none"]) == 1
    err = capsys.readouterr().err
    assert "frame img50.jpg cannot be read" in err and "Traceback" not in err, err
    _frame_folder(work["clip"], other := tmp_path / "sizes", ".jpg")
    cv2.imwrite(str(other / "img7.jpg"), np.zeros((10, 10, 3), np.uint8))
    assert cli.main(["--video", str(other), "--fps", "30", "--model", model, "--display", "none"]) == 1
    assert "img7.jpg is 10x10" in capsys.readouterr().err


@needs_tracker
def test_segmented_clip_gives_one_event_at_the_planted_apex(work, tmp_path, capsys):
    """A CASME II-like clip: 0.6 s at 200 fps, the movement from 0.05 s. Too short for the online
    spotter's warm-up (it finds nothing, which is why --segmented exists); as one pre-segmented clip
    it gives one event whose apex is the planted one."""
    spec = synth.ClipSpec(fps=200.0, seconds=0.6, size=(320, 240), face_px=100.0, seed=1,
                          events=[synth.PlantedEvent("brow_raise", onset_s=0.05, duration_s=0.3, amplitude_px=3.0)])
    clip = tmp_path / "EP01_01.mp4"
    apex = synth.write_clip(clip, spec)["events"][0]["apex"]
    found = {}
    for mode in ([], ["--segmented"]):
        out = tmp_path / f"events{len(found)}.jsonl"
        assert cli.main(["--video", str(clip), "--model", str(work["model"]), "--events", str(out),
                         "--display", "none", *mode]) == 0
        capsys.readouterr()
        found[bool(mode)] = _events(out)
    assert found[False] == []
    (event,) = found[True]
    assert event["onset_frame"] == 0 and event["offset_frame"] == 119 and abs(event["apex_frame"] - apex) <= 2, event
    assert cli.main(["--demo", "--segmented", "--model", str(work["model"]), "--display", "none"]) == 2
    assert "--segmented needs --video" in capsys.readouterr().err


def test_console_script_exit_status_and_message(work, tmp_path):
    r = _live(["--video", str(tmp_path / "nope.avi"), "--model", str(work["model"]), "--display", "none"], timeout=60)
    assert r.returncode == 2 and "--video" in r.stderr and "nope.avi" in r.stderr and "Traceback" not in r.stderr


@needs_tracker
def test_sigint_is_a_clean_stop_with_the_event_log_flushed(work):
    out = work["dir"] / "sigint.jsonl"
    clip = work["dir"] / "long.mp4"  # 20 s at its own pace: a loaded machine cannot finish it before the signal
    synth.write_clip(clip, synth.ClipSpec(fps=30.0, seconds=20.0, size=(320, 240), events=6, duration_s=(0.2, 0.3),
                                          amplitude_px=(2.0, 3.0), face_px=90.0, seed=4))
    # A shell's background job inherits SIGINT ignored, and Python then installs no Ctrl-C handler (mex-live
    # rightly keeps that: nohup'd jobs stop by SIGTERM). The child gets the default a terminal gives it.
    proc = subprocess.Popen([PY, "-m", "realtime.cli", "--video", str(clip), "--realtime", "--model",
                             str(work["model"]), "--events", str(out), "--display", "none"], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "ready in" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "ready in" in line, proc.stderr.read() if proc.poll() is not None else "no ready line"
        time.sleep(1.5)  # partway through the clip, played at its own pace
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopped     by the user" in stdout and "Traceback" not in stderr
    events = _events(out)  # every line complete JSON
    found = int(stdout.split("events      ")[1].split()[0])
    assert len(events) == found
    processed = int(stdout.split("frames      ")[1].split()[0])
    assert 0 < processed < 600  # stopped partway, not at the end of the clip


@needs_tracker
def test_demo_runs_end_to_end_and_reports_planted_events(capsys):
    from realtime.runtimes import DEFAULT_MODEL

    assert DEFAULT_MODEL.is_file(), "the default model must ship with the repository"
    rc = cli.main(["--demo", "--display", "none"])  # the Quickstart command, in-process to save an interpreter start
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    assert "600 processed / 600 read, 0 dropped" in out.out
    assert "planted micro-expressions found" in out.out and "fps over" in out.out


@needs_tracker
def test_cut_demo_scores_what_it_saw_and_never_imports_torch():
    """The CPU path (OpenCV flow, ONNX Runtime) needs no torch: importing it costs seconds of start-up.
    A run cut short is scored on the planted events inside the frames it read, not on the whole clip."""
    code = ("import sys; from realtime.cli import main; "
            "rc = main(['--demo', '--display', 'none', '--max-frames', '120']); "
            "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torch imported: False" in run.stdout
    assert "120 processed / 120 read" in run.stdout
    assert "2 of 2 planted micro-expressions found" in run.stdout  # the demo plants 2 within the first 120 frames


# ------------------------------------------------------------------------------------------ window
@pytest.fixture(scope="module")
def xvfb(tmp_path_factory):
    """A private Xvfb whose screen is also written to a file (-fbdir), so the test can look at it.
    Xvfb picks a display it could bind and says so when it is ready (-displayfd): an absent socket file
    does not prove a number free, X clients try the abstract socket first. -noreset: the app's display
    probe is a client that comes and goes, and the last client leaving would regenerate the server."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb): window overlay not tested")
    fbdir = tmp_path_factory.mktemp("xvfb")
    log = open(fbdir / "xvfb.log", "wb")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(write_fd), "-screen", "0", "800x600x24", "-nolisten", "tcp",
                             "-noreset", "-fbdir", str(fbdir)], pass_fds=(write_fd,), stdout=log, stderr=log)
    os.close(write_fd)
    with os.fdopen(read_fd) as r:
        number = r.readline().strip()  # written once the server accepts connections; empty if it died
    if not number.isdigit():
        proc.kill()
        log.close()
        pytest.skip(f"Xvfb did not start: {(fbdir / 'xvfb.log').read_text(errors='replace')[-300:]}")
    yield f":{number}", fbdir / "Xvfb_screen0"
    proc.terminate()
    proc.wait(5)
    log.close()


def _screen(path: Path):
    """The Xvfb screen (an XWD file) as an (H, W, 3) array."""
    import struct

    import numpy as np

    b = path.read_bytes()
    f = struct.unpack(">25I", b[:100])
    header, w, h, bytes_per_line, ncolors = f[0], f[4], f[5], f[12], f[19]
    off = header + 12 * ncolors
    return np.frombuffer(b[off:off + bytes_per_line * h], np.uint8).reshape(h, bytes_per_line // 4, 4)[:, :w, :3]


def _drawn(screen) -> tuple[float, float]:
    """(share of the X screen that is not black, spread of its values): Qt's empty window is one flat
    grey, a video frame is textured."""
    lit = screen.max(axis=2) > 8
    return float(lit.mean()), float(screen[lit].std()) if lit.any() else 0.0


@needs_tracker
def test_window_overlay_under_xvfb(work, xvfb):
    display, screen = xvfb
    err = open(work["dir"] / "window.stderr", "w")  # a file, not a pipe nobody reads while the app runs
    proc = subprocess.Popen([PY, "-m", "realtime.cli", "--video", str(work["clip"]), "--model", str(work["model"]),
                             "--display", "window", "--realtime", "--max-frames", "120"], cwd=ROOT,
                            env=_env(DISPLAY=display, QT_QPA_PLATFORM="xcb"), stdout=subprocess.DEVNULL,
                            stderr=err, text=True)
    samples = []
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            samples.append(_drawn(_screen(screen)))
            time.sleep(0.2)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        err.close()
    stderr = (work["dir"] / "window.stderr").read_text()
    assert proc.returncode == 0, stderr[-2000:]
    assert "window overlay: on" in stderr and "not available" not in stderr
    # the 320x240 frame is 16 % of the 800x600 screen
    assert any(lit > 0.10 and spread > 20 for lit, spread in samples), \
        f"no video frame on the X screen {display}: (lit share, spread) samples {samples}; stderr {stderr[-800:]}"


@needs_tracker
def test_window_without_a_display_falls_back_and_does_not_crash(work, monkeypatch, capsys):
    if Path("/tmp/.X11-unix/X93").exists():
        pytest.skip("display :93 exists here")
    monkeypatch.setenv("DISPLAY", ":93")  # set but unreachable: must be detected before any cv2 window call
    rc = cli.main(["--video", str(work["clip"]), "--model", str(work["model"]), "--display", "window",
                   "--max-frames", "20"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "window overlay not available" in err and ":93" in err


def test_display_auto_is_the_terminal_overlay_on_a_terminal_and_a_window_needs_a_display(monkeypatch, capsys):
    assert cli.display_choice("auto") == "none"  # captured stdout is not a terminal
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.display_choice("auto") == "terminal" and cli.display_choice("none") == "none"
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli.display_choice("window") == "terminal"
    assert "window overlay not available: no display" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--demo", "--no-display"])  # one flag for it: --display


class _UnpluggedCamera:
    """Delivers 30 frames of the test clip, then every read fails (unplugged); the first reopen is
    refused, the next one works again."""

    opens = 0

    def __init__(self, index, frames):
        _UnpluggedCamera.opens += 1
        self.frames, self.n = frames, 0
        self.ok = _UnpluggedCamera.opens != 2

    def isOpened(self):
        return self.ok

    def set(self, *a):
        return True

    def get(self, prop):
        return 30.0

    def read(self):
        time.sleep(1 / 60)
        self.n += 1
        if _UnpluggedCamera.opens == 1 and self.n > 30:
            return False, None
        return True, self.frames[self.n % len(self.frames)]

    def release(self):
        self.ok = False


@needs_tracker
def test_camera_unplugged_mid_run_shows_state_and_resumes(work, monkeypatch, capsys):
    from realtime import sources

    frames = [f.image for f in sources.VideoSource(work["clip"]).frames()][:60]
    _UnpluggedCamera.opens = 0
    monkeypatch.setattr(sources, "_default_capture", lambda i: _UnpluggedCamera(i, frames))
    rc = cli.main(["--camera", "0", "--model", str(work["model"]), "--display", "none", "--max-frames", "60"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "camera 0: reconnecting" in out.err and "camera 0: ok (resumed)" in out.err
    assert "camera      1 reconnects" in out.out and "60 read" in out.out


def test_shortfalls_name_a_truncated_file_and_a_faceless_one():
    from types import SimpleNamespace

    src = SimpleNamespace(name="video cut.mp4", total_frames=100, live=False)
    ok = {"frames_read": 100, "face_frames": 90, "interrupted": False, "aborted": False}
    assert cli.shortfalls(ok, src, None) == []
    cut = dict(ok, frames_read=37)
    (note,) = cli.shortfalls(cut, src, None)
    assert "37 of the 100 frames" in note and "cut.mp4" in note
    assert cli.shortfalls(cut, src, 37) == [] and cli.shortfalls(dict(cut, interrupted=True), src, None) == []
    (note,) = cli.shortfalls(dict(ok, face_frames=0), src, None)
    assert "no face was found in any of the 100 frames" in note


def test_a_video_without_a_face_says_so(tmp_path, capsys):
    import cv2

    path = tmp_path / "wall.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    for i in range(15):
        writer.write(np.full((120, 160, 3), 40 + i, np.uint8))
    writer.release()
    assert cli.main(["--video", str(path), "--display", "none"]) == 0
    out = capsys.readouterr()
    assert "no face was found in any of the 15 frames" in out.err and "warning" in out.out


def test_every_command_says_its_version(capsys):
    import re
    import tomllib

    import mex
    from benchmarks.cli import main as bench_main
    from export.cli import main as export_main
    from train.cli import main as train_main

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert mex.__version__ == declared
    for prog, entry in (("mex-live", cli.main), ("mex-train", train_main), ("mex-export", export_main),
                        ("mex-bench", bench_main)):
        with pytest.raises(SystemExit) as done:
            entry(["--version"])
        assert done.value.code == 0
        assert re.match(rf"{prog} {re.escape(declared)} ", capsys.readouterr().out)


def test_fps_gives_a_file_its_true_rate(work, capsys):
    assert cli.main(["--video", str(work["clip"]), "--model", str(work["model"]), "--fps", "120", "--display", "none",
                     "--max-frames", "10"]) == 0
    assert "@ 120 fps)" in capsys.readouterr().out


@needs_tracker
def test_summary_json_says_what_the_run_did(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert cli.main(["--demo", "--display", "none", "--max-frames", "60", "--summary", str(out)]) == 0
    text = capsys.readouterr().out
    s = json.loads(out.read_text())
    assert s["frames_read"] == s["frames_processed"] == 60 and s["input"]["fps"] == 30.0
    assert s["events"] == int(text.split("events      ")[1].split()[0]) and s["warnings"] == []
    assert {"track", "spot"} <= set(s["stages_ms"]) and s["stages_ms"]["track"]["n"] == 60


@needs_tracker
def test_native_log_lines_are_hidden_unless_verbose():
    base = [sys.executable, "-m", "realtime.cli", "--demo", "--display", "none", "--max-frames", "40"]
    quiet = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    loud = subprocess.run([*base, "--verbose"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == loud.returncode == 0
    assert "W0000" in loud.stderr or "INFO: Created TensorFlow Lite" in loud.stderr  # there is chatter to hide
    assert "W0000" not in quiet.stderr and "TensorFlow Lite" not in quiet.stderr
    assert "mex-live: demo" in quiet.stdout and "summary" in quiet.stdout


def test_streams_and_devices_are_live_sources_not_missing_files():
    for video in ("rtsp://10.0.0.2:554/stream", "http://cam.local/video.mjpg", "/dev/video0"):
        assert cli.is_stream(video), video
    for video in ("clip.mp4", "/data/CASME2/sub01/EP02_01f", None):
        assert not cli.is_stream(video), video


@needs_tracker
def test_batch_runs_every_recording_records_failures_and_resumes(work, tmp_path, capsys):
    import csv

    root = tmp_path / "recordings"
    (root / "day1").mkdir(parents=True)
    shutil.copy(work["clip"], root / "day1" / "a.mp4")
    shutil.copy(work["clip"], root / "b.mp4")
    (root / "day1" / "broken.mp4").write_bytes(b"\x00garbage" * 300)
    assert _frame_folder(work["clip"], root / "EP01_01") == 120
    out = tmp_path / "out"
    argv = ["--batch", str(root), "--out", str(out), "--fps", "30", "--model", str(work["model"]), "--max-frames", "40"]
    assert cli.main(argv) == 1  # one input failed; the others ran
    text = capsys.readouterr().out.replace("\n", " ")  # rich wraps long lines
    with (out / "summary.csv").open(newline="") as f:
        rows = {r["input"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"day1/a.mp4", "b.mp4", "day1/broken.mp4", "EP01_01"}
    assert rows["day1/broken.mp4"]["status"] == "error" and "broken.mp4" in rows["day1/broken.mp4"]["error"]
    for name in ("day1/a.mp4", "b.mp4", "EP01_01"):
        assert rows[name]["status"] == "ok" and rows[name]["frames_read"] == "40", rows[name]
        events = _events(out / f"{name}.events.jsonl")
        assert int(rows[name]["events"]) == len(events)
    assert "3 of 4 inputs ok" in text
    assert cli.main(argv) == 1  # a rerun retries only the failed input
    assert "3 done before, 1 to run" in " ".join(capsys.readouterr().out.split())  # rich wraps long paths


@needs_tracker
def test_rejections_write_why_each_movement_was_not_reported(work, tmp_path, capsys):
    from realtime.spotting import REJECTIONS

    spec = synth.ClipSpec(fps=30.0, seconds=6.0, size=(320, 240), face_px=90.0, events=0, partial_blinks=2,
                          speech=1, contrast=0.5, seed=4)
    clip = tmp_path / "distractors.mp4"
    gt = synth.write_clip(clip, spec)
    rej, summary = tmp_path / "rejections.jsonl", tmp_path / "run.json"
    assert cli.main(["--video", str(clip), "--model", str(work["model"]), "--rejections", str(rej),
                     "--summary", str(summary), "--display", "none"]) == 0
    text = capsys.readouterr().out
    lines = _events(rej)
    assert lines, "the blinks and the speech moved the face: the spotter saw them"
    assert all(r["rejected"] in REJECTIONS and r["onset_frame"] <= r["apex_frame"] <= r["offset_frame"] for r in lines)
    assert all(any(d["start"] - 3 <= r["offset_frame"] and r["onset_frame"] <= d["end"] + 3 for d in gt["distractors"])
               for r in lines)
    counts = json.loads(summary.read_text())["rejected"]
    assert sum(counts.values()) == len(lines) and json.loads(summary.read_text())["events"] == 0
    assert "not micro" in text and "--rejections" in text
    # the debug stream is an output like the others: never over an input, never over a file without --force
    assert cli.main(["--video", str(clip), "--rejections", str(clip), "--display", "none"]) == 2
    assert cli.main(["--video", str(clip), "--rejections", str(rej), "--display", "none"]) == 2
    assert "--rejections" in capsys.readouterr().err
