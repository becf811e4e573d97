"""The output layer every command writes through (mex.outputs), under injected faults: a full disk (a
small tmpfs where the test may mount one, else ENOSPC injected), read-only folders (as a non-root user,
or a read-only mount), hard links, symlinks, stale temporary files."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mex import outputs
from mex.outputs import LineFile, OutputError, Outputs, replacing, write_text

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only; where it cannot be mounted, the tests that need a real full disk skip and
    the ENOSPC-injection tests below cover the same code)."""
    disk = tmp_path / "disk"
    if not _mount(disk, "size=64k"):
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill `disk` until `leave` bytes (rounded to its pages) are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


@contextmanager
def as_nobody():
    """Permissions as the unprivileged user nobody (root bypasses them): the effective uid only, given back after."""
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def open_tmp():
    """A folder anyone may enter (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="mex-outputs-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


# ------------------------------------------------------------------------------------ checks at start
def test_an_output_is_never_an_input_under_any_name(tmp_path):
    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir()
    clip.write_bytes(b"video")
    os.link(clip, tmp_path / "hard.jsonl")
    os.symlink(clip, tmp_path / "soft.jsonl")
    frames = tmp_path / "frames"
    frames.mkdir()
    outs = Outputs([clip, frames], force=True)  # --force never lets an input be replaced
    for name in ("hard.jsonl", "soft.jsonl", "in/../in/clip.mp4", "frames/ev.jsonl"):
        with pytest.raises(OutputError, match="that is an input of this run"):
            outs.file("--events", tmp_path / name)
    assert clip.read_bytes() == b"video"


def test_two_outputs_never_share_a_file_and_existing_files_need_force(tmp_path):
    (tmp_path / "old.json").write_text("kept")
    os.link(tmp_path / "old.json", tmp_path / "same.json")
    outs = Outputs(force=True)
    outs.file("--summary", tmp_path / "old.json")
    with pytest.raises(OutputError, match="--summary writes there too"):
        outs.file("--events", tmp_path / "same.json")  # another name of the same file
    with pytest.raises(OutputError, match="file exists; pass --force"):
        Outputs().file("--events", tmp_path / "old.json")
    with pytest.raises(OutputError, match="is a folder"):
        Outputs().file("--events", tmp_path)


def test_an_output_folder_is_made_and_one_under_a_file_is_refused(tmp_path):
    assert Outputs().file("--summary", tmp_path / "new" / "deep" / "run.json").parent.is_dir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="--summary .*afile/run.json: .*afile is a file, not a folder"):
        Outputs().file("--summary", tmp_path / "afile" / "run.json")
    with pytest.raises(OutputError, match="--out .*afile: is a file; give a folder"):
        Outputs().folder("--out", tmp_path / "afile")
    with pytest.raises(OutputError, match="a part of the path is a file"):
        Outputs().folder("--out", tmp_path / "afile" / "results")
    with pytest.raises(OutputError, match="afile is a file, not a folder"):
        Outputs().folder("--out", tmp_path / "afile" / "results" / "run", make=False)
    Outputs().folder("--out", tmp_path / "later" / "run", make=False)  # only checked: made by the run
    assert not (tmp_path / "later").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as the user nobody needs root")
def test_a_folder_the_user_cannot_write_is_refused_at_start(open_tmp):
    locked = open_tmp / "locked"
    locked.mkdir(mode=0o755)  # root's: nobody may enter it, not write in it
    private = open_tmp / "private"
    private.mkdir(mode=0o700)  # nobody may not even look inside
    for path in (locked / "run.json", private / "run.json", private / "sub" / "run.json"):
        with as_nobody(), pytest.raises(OutputError) as e:
            Outputs().file("--summary", path)
        assert str(e.value) == f"--summary {path}: cannot write: permission denied; choose a folder you can write to"
    with as_nobody(), pytest.raises(OutputError, match="--out .*: cannot write: permission denied"):
        Outputs().folder("--out", private / "results")


def test_a_read_only_file_system_is_refused_at_start(tmp_path):
    ro = tmp_path / "ro"
    if not _mount(ro, "ro,size=64k"):
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        with pytest.raises(OutputError, match="--record .*out.mp4: cannot write: the file system is read-only"):
            Outputs().file("--record", ro / "out.mp4")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_a_full_disk_is_refused_at_start(tiny_disk):
    _fill(tiny_disk, 0)
    with pytest.raises(OutputError, match="the disk is full"):
        Outputs().file("--events", tiny_disk / "ev.jsonl")


# ------------------------------------------------------------------------------------ whole files
def test_a_file_is_replaced_whole_beside_a_stale_tmp_and_a_hard_link(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    os.link(target, tmp_path / "elsewhere.json")
    stale = tmp_path / "run.json.tmp"
    stale.write_text("someone else's")
    write_text(target, '{"new": 1}\n', flag="--summary")
    assert json.loads(target.read_text()) == {"new": 1}
    assert stale.read_text() == "someone else's" and (tmp_path / "elsewhere.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.json", "run.json", "run.json.tmp"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~outputs._UMASK)  # as a plain open() makes it


def test_a_write_that_fails_keeps_the_old_file_and_names_flag_and_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.csv"
    target.write_text("old table\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    with pytest.raises(OutputError) as e:
        with replacing(target, "--out") as f:
            f.write("new table\n")
    assert str(e.value) == f"--out {target}: cannot write: the disk is full; free some space or choose another disk"
    assert target.read_text() == "old table\n" and [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_a_full_disk_mid_write_keeps_the_old_file(tiny_disk):
    target = tiny_disk / "run.json"
    target.write_text("old")
    _fill(tiny_disk, 4096)
    with pytest.raises(OutputError, match="the disk is full"):
        write_text(target, "x" * 100_000, flag="--summary")
    assert target.read_text() == "old" and sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "run.json"]


# ------------------------------------------------------------------------------------ line logs
def test_a_line_log_cut_by_a_full_disk_ends_on_a_whole_line(tiny_disk):
    _fill(tiny_disk, 4096)
    log = LineFile(tiny_disk / "ev.jsonl", "--events")
    written = 0
    with pytest.raises(OutputError, match=f"--events {tiny_disk / 'ev.jsonl'}: cannot write: the disk is full"):
        for i in range(1000):
            log.write_line(json.dumps({"event": i, "pad": "x" * 300}))
            written += 1
    with pytest.raises(OutputError):  # later lines are refused too: no line after a gap
        log.write_line("{}")
    log.close()
    lines = (tiny_disk / "ev.jsonl").read_text().splitlines(keepends=True)
    assert 0 < len(lines) == written and all(line.endswith("\n") for line in lines)
    assert [json.loads(line)["event"] for line in lines] == list(range(written))


def test_a_line_log_keeps_whole_lines_when_a_write_breaks_half_way(tmp_path, monkeypatch):
    log = LineFile(tmp_path / "ev.jsonl", "--rejections")
    log.write_line('{"a": 1}')
    real_write = os.write

    def half_then_eio(fd, data):
        if len(data) > 4:
            return real_write(fd, data[:4])  # part of the line reached the file, then the disk failed
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(outputs.os, "write", half_then_eio)
    with pytest.raises(OutputError, match="--rejections .*input/output error"):
        log.write_line('{"b": 2}')
    monkeypatch.undo()
    log.close()
    assert (tmp_path / "ev.jsonl").read_text() == '{"a": 1}\n'


def test_a_line_log_replaces_a_hard_linked_file_without_truncating_the_other_name(tmp_path):
    (tmp_path / "ev.jsonl").write_text("another run's events\n")
    os.link(tmp_path / "ev.jsonl", tmp_path / "kept.jsonl")
    log = LineFile(tmp_path / "ev.jsonl", "--events")
    log.write_line("{}")
    log.close()
    assert (tmp_path / "kept.jsonl").read_text() == "another run's events\n"
    assert (tmp_path / "ev.jsonl").read_text() == "{}\n"


# ------------------------------------------------------------------------------------ the recorder
def _display_state(i: int, h: int = 240, w: int = 320):
    from realtime.packets import DisplayState, Frame

    img = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)  # noise: compresses badly
    return DisplayState(frame=Frame(i, 0.0, i / 30, img))


def test_a_recording_is_renamed_into_place_only_when_finished(tmp_path):
    from realtime.sinks import VideoRecorder, _frames_in

    rec = VideoRecorder(tmp_path / "out.mp4", fps=30)
    for i in range(5):
        rec.on_frame(_display_state(i))
    assert not (tmp_path / "out.mp4").exists()  # still under its temporary name
    rec.close()
    assert _frames_in(tmp_path / "out.mp4") == 5 and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_a_recording_cut_by_a_full_disk_is_removed_with_a_message(tiny_disk):
    from realtime.sinks import VideoRecorder

    rec = VideoRecorder(tiny_disk / "out.mp4", fps=30)
    for i in range(40):  # ~40 KB a frame of noise: far past the disk
        rec.on_frame(_display_state(i))
    with pytest.raises(OutputError, match=r"--record .*out.mp4: the video of 40 frames could not be finished "
                                          r"\(the disk is full\); the unplayable file was removed"):
        rec.close()
    assert list(tiny_disk.iterdir()) == []


def test_a_run_whose_event_log_fills_the_disk_stops_naming_it_and_the_log_stays_valid(tiny_disk):
    from test_pipeline import images, make

    from realtime.sinks import EventLog, ListSink
    from realtime.sources import ArraySource

    _fill(tiny_disk, 4096)
    log, kept = EventLog(tiny_disk / "ev.jsonl"), ListSink()
    s = make(ArraySource(images(3000), fps=30), event_sinks=[kept, log]).run()  # ~300 events: far past 4 KiB
    assert f"--events {tiny_disk / 'ev.jsonl'}: cannot write: the disk is full" in s["error"]
    assert s["frames_read"] < 3000  # the run stopped
    lines = (tiny_disk / "ev.jsonl").read_text().splitlines(keepends=True)
    assert lines and all(line.endswith("\n") for line in lines)
    assert [json.loads(line)["apex_frame"] for line in lines] == [e.apex_frame for e in kept.events[:len(lines)]]
