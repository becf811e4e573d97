"""Every file a command writes (mex-live, --batch, mex-export, mex-bench, mex-train) goes through here.

- Checked before any work starts (`Outputs.file`, `Outputs.folder`): its folder exists (made if
  missing) and takes a new file, it is not an input of the run (compared by device and inode, so a
  hard link, a symlink or `..` is caught; a file inside an input folder neither), not another output of
  the run, and it exists only with --force.
- Written whole or not at all (`replacing`, `write_text`): under a temporary name of its own in the
  same folder (tempfile: two writers, or a stale file of that name, never collide), fsynced, then
  renamed over the target; a failed write removes the temporary file and leaves the target as it was.
- Line logs (`LineFile`, the event logs) are appended to as they happen, so a killed run keeps every
  line; a write that fails is cut back to the last whole line, so the log stays valid JSON lines.
- An OSError while writing becomes an `OutputError` naming the flag, the file and what to do.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: a temporary file gets the permissions a plain open() would have given

_REASONS = {
    errno.ENOSPC: "the disk is full; free some space or choose another disk",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another disk",
    errno.EFBIG: "the file is too large for this file system (or the file-size limit); choose another disk",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.EIO: "input/output error (a failing disk or a lost network share); choose another disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "its folder does not exist",
    errno.EISDIR: "it is a folder; give a file name",
}


class OutputError(Exception):
    """An output cannot be written; the message names the flag and the file and what to do."""


def write_error(flag: str, path, error: OSError) -> OutputError:
    """`error` as the user reads it: which output, which file, why in words, what to do."""
    reason = _REASONS.get(error.errno, error.strerror or str(error))
    return OutputError(f"{flag} {path}: cannot write: {reason}")


def identity(path) -> tuple[int, int] | None:
    """(device, inode) of an existing file or folder, else None: two names of one file compare equal."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _make_folder(flag: str, path: Path, folder: Path) -> None:
    try:
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{flag} {path}: {folder} is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a part of the path is a file
        raise OutputError(f"{flag} {path}: a part of the path is a file, not a folder") from None
    except OSError as e:
        raise write_error(flag, path, e) from None


def _probe(flag: str, path: Path, folder: Path) -> None:
    """Create and remove a file in `folder`: the one test that a write will be allowed (permissions as this
    user, a read-only mount, ACLs); and a full disk said now rather than after the run."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mex-probe-"):
            pass
    except OSError as e:
        raise write_error(flag, path, e) from None
    if shutil.disk_usage(folder).free == 0:
        raise write_error(flag, path, OSError(errno.ENOSPC, "no space left"))


class Outputs:
    """The outputs of one run, checked at start against its inputs and each other.

    `inputs`: the files and folders the run reads (None entries are skipped); `force`: an existing
    output file may be replaced."""

    def __init__(self, inputs: Iterable = (), force: bool = False):
        self.force = force
        self.inputs = [(Path(p), Path(p).resolve(), identity(p)) for p in inputs if p is not None]
        self._taken: dict = {}  # resolved path or (device, inode) -> the flag that writes there

    def _is_input(self, path: Path, target: Path, ident) -> Path | None:
        for given, resolved, input_ident in self.inputs:
            if target == resolved or (ident is not None and ident == input_ident):
                return given
            if resolved.is_dir() and target.is_relative_to(resolved):
                return given
        return None

    def file(self, flag: str, path, replaceable: bool = False) -> Path:
        """Check the output file `path` of `flag` (its folder is made if missing); returns it as a Path.
        `replaceable`: a file that belongs to another output (the report beside a model) is replaced with it,
        --force or not."""
        try:
            return self._file(flag, Path(path), replaceable)
        except OSError as e:  # a folder on the way this user may not even look into
            raise write_error(flag, path, e) from None

    def folder(self, flag: str, path, make: bool = True) -> Path:
        """Check the output folder `path` of `flag`, made if missing (with `make=False` only checked: the
        nearest folder that exists above it must take it); returns it as a Path."""
        try:
            return self._folder(flag, Path(path), make)
        except OSError as e:
            raise write_error(flag, path, e) from None

    def _file(self, flag: str, path: Path, replaceable: bool) -> Path:
        target, ident = path.resolve(), identity(path)
        source = self._is_input(path, target, ident)
        if source is not None:
            raise OutputError(f"{flag} {path}: that is an input of this run ({source}); choose another file")
        for key in (target, ident):
            if key is not None and key in self._taken:
                raise OutputError(f"{flag} {path}: {self._taken[key]} writes there too; choose another file")
        if target.is_dir():
            raise OutputError(f"{flag} {path}: is a folder; give a file name")
        if path.exists() and not (self.force or replaceable):
            raise OutputError(f"{flag} {path}: file exists; pass --force to replace it")
        _make_folder(flag, path, target.parent)
        _probe(flag, path, target.parent)
        self._taken[target] = flag
        if ident is not None:
            self._taken[ident] = flag
        return path

    def _folder(self, flag: str, path: Path, make: bool) -> Path:
        source = self._is_input(path, path.resolve(), identity(path))
        if source is not None and source.resolve() != path.resolve():  # writing next to the inputs is fine
            raise OutputError(f"{flag} {path}: is inside the input {source}; choose another folder")
        if path.exists() and not path.is_dir():
            raise OutputError(f"{flag} {path}: is a file; give a folder")
        if make:
            _make_folder(flag, path, path)
            _probe(flag, path, path)
            return path
        above = next(p for p in [path.absolute(), *path.absolute().parents] if p.exists())
        if not above.is_dir():
            raise OutputError(f"{flag} {path}: {above} is a file, not a folder")
        _probe(flag, path, above)
        return path


def new_temporary(path, flag: str) -> Path:
    """A new, empty file beside `path` with a name no other writer has (and `path`'s suffix, for writers
    that choose the format by it: OpenCV, matplotlib); its folder is made if missing."""
    path = Path(path)
    _make_folder(flag, path, path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
    except OSError as e:
        raise write_error(flag, path, e) from None
    return Path(tmp)


def finish(tmp: Path, path, flag: str) -> None:
    """Make the finished temporary file `tmp` the file `path` (fsynced, then renamed over it at once)."""
    try:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(flag, path, e) from None


@contextmanager
def temporary_path(path, flag: str) -> Iterator[Path]:
    """A new temporary file beside `path` (new_temporary) to write, renamed over `path` when the block
    ends; removed if the block fails. An OSError becomes an OutputError naming `flag` and `path`."""
    tmp = new_temporary(path, flag)
    try:
        yield tmp
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(flag, path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finish(tmp, path, flag)


@contextmanager
def replacing(path, flag: str, mode: str = "w", **open_kw):
    """An open file whose contents replace `path` whole when the block ends (see temporary_path)."""
    with temporary_path(path, flag) as tmp:
        try:
            with open(tmp, mode, **open_kw) as f:
                yield f
        except OSError as e:  # a write or the close (its flush) failed
            raise write_error(flag, path, e) from None


def write_text(path, text: str, flag: str = "--out") -> Path:
    with replacing(path, flag, encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_bytes(path, data: bytes, flag: str = "--out") -> Path:
    with replacing(path, flag, "wb") as f:
        f.write(data)
    return Path(path)


class LineFile:
    """A log of text lines, each written whole and flushed as it comes (a killed run keeps every line).
    Opened as a new file renamed over `path` (an existing file, even one hard-linked elsewhere, is replaced,
    never truncated in place). A write that fails (full disk, I/O error) is cut back to the last whole
    line and raises an OutputError naming `flag` and `path`; later writes are refused with the same error."""

    def __init__(self, path, flag: str):
        self.path, self.flag = Path(path), flag
        with temporary_path(self.path, flag):
            pass  # an empty file under the final name
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise write_error(flag, self.path, e) from None
        self._size = 0  # bytes up to the end of the last whole line
        self._lock = threading.Lock()
        self.failed: OutputError | None = None
        self.lines = 0

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write_line(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        with self._lock:
            if self.failed is not None:
                raise self.failed
            if self._fd is None:
                return
            done = 0
            try:
                while done < len(data):
                    done += os.write(self._fd, data[done:])
            except OSError as e:
                self.failed = write_error(self.flag, self.path, e)
                try:
                    os.ftruncate(self._fd, self._size)  # the log ends on its last whole line
                except OSError:
                    pass
                raise self.failed from None
            self._size += len(data)
            self.lines += 1

    def close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            except OSError:
                pass  # every line was written by os.write already; fsync only hurries the disk
            os.close(fd)
