"""`mex-live --batch PATH --out DIR`: every recording under PATH through the same live pipeline, one
after another, for researchers with folders of recordings or database clip folders.

An input is a video file (VIDEO_SUFFIXES) or a folder holding frame images (a database clip), named by
its path below PATH. Its events go to DIR/<that path>.events.jsonl (the tree of PATH mirrored, so two
inputs can never share a file) and one row per input to DIR/summary.csv (input, status, frames read,
frames with a face, events, labels, events per face id as "id=events ...", warnings, error), written
as each input ends. Status: "ok"; "error" (the input failed; the batch goes on); "stopped" (Ctrl-C or
SIGTERM stopped it mid-way; the batch ends there). A rerun skips the inputs whose row says "ok" and runs
the others again. `--fps` is the rate of the frame folders; a video file keeps its own.
"""
from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path

from mex.outputs import OutputError, Outputs, replacing

from .sources import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")
COLUMNS = ("input", "status", "frames_read", "face_frames", "events", "labels", "faces", "warnings", "error",
           "seconds")


def find_inputs(root: Path) -> list[Path]:
    """Video files and folders of frame images under `root` (itself, if it is one), in path order."""
    if root.is_file():
        return [root]
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            found.append(path)
        elif path.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in path.iterdir() if f.is_file()):
            found.append(path)
    if root.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in root.iterdir() if f.is_file()):
        found.insert(0, root)
    return found


def input_name(path: Path, root: Path) -> str:
    """The input's path below `root` ('/'-separated), or its own name when it is `root`."""
    return (path.relative_to(root) if path != root and root.is_dir() else Path(path.name)).as_posix()


def events_path(out: Path, name: str) -> Path:
    return out / f"{name}.events.jsonl"


def read_summary(path: Path) -> dict[str, dict]:
    """The rows of an earlier batch's summary.csv; OutputError when the file there is something else."""
    if not path.exists():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise ValueError(f"its columns are {reader.fieldnames}")
            return {row["input"]: row for row in reader}
    except (ValueError, UnicodeDecodeError, csv.Error) as e:
        raise OutputError(f"--out {path.parent}: {path.name} there is not a mex-live batch table ({e}); "
                          "choose another --out, or move that file away") from None
    except OSError as e:
        raise OutputError(f"--out {path.parent}: cannot read {path.name} there ({e.strerror or e})") from None


def write_summary(path: Path, rows: dict[str, dict]) -> None:
    """The whole table, replaced atomically: a killed batch leaves the previous table, never half a row."""
    with replacing(path, "--out", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows[k] for k in sorted(rows))


def plan(args, console) -> tuple[list[Path], Path, dict]:
    """The inputs under --batch, the --out folder (checked) and the rows of an earlier run; OutputError or
    ValueError (the message names the flag) when there is nothing to do or nowhere to write."""
    root = Path(args.batch)
    inputs = find_inputs(root)
    if not inputs:
        raise ValueError(f"--batch {root}: holds no video files ({', '.join(VIDEO_SUFFIXES)}) and no folders of "
                         f"frame images ({', '.join(IMAGE_SUFFIXES)}): nothing to run")
    names = {}
    for path in inputs:
        name = input_name(path, root)
        if name in names:  # only the root frame folder and a subfolder of the same name can meet
            raise ValueError(f"--batch {root}: {path} and {names[name]} would both be named {name}; rename one")
        names[name] = path
    out = Outputs().folder("--out", args.out)
    rows = read_summary(out / "summary.csv")
    videos = sum(p.is_file() for p in inputs)
    if args.fps is not None and videos:
        console.print(f"[yellow]note[/yellow]: --fps {args.fps:g} is the rate of the frame folders; the {videos} "
                      "video files keep the rate their containers state")
    return inputs, out, rows


def run_batch(args, runtime, console, inputs: list[Path], out: Path, rows: dict) -> int:
    """Runs the inputs not done before (until Ctrl-C or SIGTERM stops one); returns how many failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .cli import make_pipeline, shortfalls
    from .pipeline import PipelineConfig
    from .sinks import EventLog, ListSink
    from .sources import SourceError, recording

    root = Path(args.batch)
    table = out / "summary.csv"
    todo = [p for p in inputs if rows.get(input_name(p, root), {}).get("status") != "ok"]
    console.print(f"mex-live batch: {len(inputs)} inputs under {root}, {len(inputs) - len(todo)} done before, "
                  f"{len(todo)} to run -> {out}")
    failed, stopped = 0, False
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[now]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("recordings", total=len(todo), now="")
        for path in todo:
            name = input_name(path, root)
            bar.update(task, now=name)
            t0 = time.monotonic()
            row = {"input": name, "status": "error", "frames_read": 0, "face_frames": 0, "events": 0, "labels": "",
                   "faces": "", "warnings": "", "error": "", "seconds": ""}
            try:
                source = recording(path, args.fps if path.is_dir() else None)
                events = ListSink()
                try:
                    log = EventLog(events_path(out, name))
                except BaseException:
                    source.close()
                    raise
                config = PipelineConfig(queue_size=args.queue_size, max_frames=args.max_frames)
                try:
                    pipe = make_pipeline(source, runtime, args.flow, args.tracker, args.segmented, [events, log],
                                         config=config, max_faces=args.max_faces)
                except BaseException:
                    source.close()  # not handed to a pipeline
                    log.close()
                    raise
                summary = pipe.run()  # closes the source, the tracker and the log
                stopped = summary["interrupted"]
                labels = Counter(e.label for e in events.events)
                status = "error" if summary["error"] else "stopped" if stopped else "ok"
                row.update(frames_read=summary["frames_read"], face_frames=summary["face_frames"],
                           events=summary["events"], labels=" ".join(f"{k}={v}" for k, v in sorted(labels.items())),
                           faces=" ".join(f"{f['face_id']}={f['events']}" for f in summary["faces"]),
                           warnings="; ".join(shortfalls(summary, source, args.max_frames, args.segmented)),
                           error=summary["error"] or "", status=status)
            except KeyboardInterrupt:  # before this input's pipeline ran
                row.update(status="stopped")
                stopped = True
            except OutputError as e:  # --out cannot take more: the inputs after this one could not be written
                row["error"] = str(e)
                stopped = True
            except (SourceError, ValueError, RuntimeError, OSError) as e:
                row["error"] = f"{type(e).__name__}: {e}"
            row["seconds"] = f"{time.monotonic() - t0:.1f}"
            rows[name] = row
            write_summary(table, rows)
            if row["status"] == "error":
                failed += 1
                console.print(f"[red]failed[/red] {name}: {row['error']}")
            bar.advance(task)
            if stopped:
                break
    ok = sum(r["status"] == "ok" for r in rows.values())
    if stopped and row["status"] == "stopped":
        console.print(f"mex-live batch: stopped during {name} (recorded as stopped: a rerun runs it again)")
    console.print(f"mex-live batch: {ok} of {len(rows)} inputs ok; table {table}")
    return failed
