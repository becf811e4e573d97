"""`mex-live --batch PATH --out DIR`: every recording under PATH through the same live pipeline, one
after another, for researchers with folders of recordings or database clip folders.

An input is a video file (VIDEO_SUFFIXES) or a folder holding frame images (a database clip). Each
one's events go to DIR/<its path below PATH, '/' as '__'>.events.jsonl and one row per input to
DIR/summary.csv (input, status, frames read, frames with a face, events, labels, events per face id as
"id=events ...", warnings, error),
written as each input ends. A rerun skips the inputs whose row says "ok" and retries the others; an
input that fails is recorded as "error" and the batch goes on.
"""
from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path

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
    rel = path.relative_to(root) if path != root and root.is_dir() else Path(path.name)
    return str(rel).replace("/", "__")


def read_summary(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["input"]: row for row in csv.DictReader(f)}


def write_summary(path: Path, rows: dict[str, dict]) -> None:
    """The whole table, replaced atomically: a killed batch leaves the previous table, never half a row."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows[k] for k in sorted(rows))
    tmp.replace(path)


def run_batch(args, runtime, console) -> int:
    """Returns the number of inputs that failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .cli import make_pipeline, shortfalls
    from .pipeline import PipelineConfig
    from .sinks import EventLog, ListSink
    from .sources import SourceError, recording

    root, out = Path(args.batch), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "summary.csv"
    rows = read_summary(table)
    inputs = find_inputs(root)
    todo = [p for p in inputs if rows.get(input_name(p, root), {}).get("status") != "ok"]
    console.print(f"mex-live batch: {len(inputs)} inputs under {root}, {len(inputs) - len(todo)} done before, "
                  f"{len(todo)} to run -> {out}")
    failed = 0
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
                source = recording(path, args.fps)
                events = ListSink()
                log = EventLog(out / f"{name}.events.jsonl")
                config = PipelineConfig(queue_size=args.queue_size, max_frames=args.max_frames)
                try:
                    pipe = make_pipeline(source, runtime, args.flow, args.tracker, args.segmented, [events, log],
                                         config=config, max_faces=args.max_faces)
                except BaseException:
                    source.close()  # not handed to a pipeline
                    log.close()
                    raise
                summary = pipe.run()  # closes the source, the tracker and the log
                labels = Counter(e.label for e in events.events)
                row.update(frames_read=summary["frames_read"], face_frames=summary["face_frames"],
                           events=summary["events"], labels=" ".join(f"{k}={v}" for k, v in sorted(labels.items())),
                           faces=" ".join(f"{f['face_id']}={f['events']}" for f in summary["faces"]),
                           warnings="; ".join(shortfalls(summary, source, args.max_frames)),
                           error=summary["error"] or "", status="error" if summary["error"] else "ok")
            except (SourceError, ValueError, RuntimeError, OSError) as e:
                row["error"] = f"{type(e).__name__}: {e}"
            row["seconds"] = f"{time.monotonic() - t0:.1f}"
            rows[name] = row
            write_summary(table, rows)
            if row["status"] != "ok":
                failed += 1
                console.print(f"[red]failed[/red] {name}: {row['error']}")
            bar.advance(task)
    ok = sum(r["status"] == "ok" for r in rows.values())
    console.print(f"mex-live batch: {ok} of {len(rows)} inputs ok; table {table}")
    return failed
