"""mex-bench live-loso: LOSO accuracy through the live path, on the raw clips of a database.

For whoever holds CASME II, SAMM or SMIC-HS. `mex-train loso --keep-models --out RUN` keeps every
fold's model (RUN/folds/<subject>.pt, train/loso.py). Each clip of the database (read by the
readers of `mex-train prepare`, train/datasets.py: the coding sheet, the frame folders) that RUN's
composite set also holds is played from its onset frame to its offset frame through the code of
`mex-live --video CLIP --fps FPS --segmented` (realtime.cli.make_pipeline: face tracker, ClipSpotter,
Recognizer), the recognizer running the model of the fold that held out the clip's subject with
the torch runtime (realtime/runtimes.py, on the CPU): the checkpoint is the model, so nothing is
exported per fold (ONNX Runtime's parity with torch is checked by mex-export). The same model
scores the clip's composite image from RUN's data. A fold of several seeds averages its seeds'
probabilities on both sides.

Writes to --out: live-loso-<dataset>.csv (a row per clip, written as each clip ends: the fold model
used and the subject it held out, the live label and probabilities, the frame the live path took as
the apex and the sheet's, the composite label and probabilities) and live-loso.json / live-loso.md,
made from every live-loso-*.csv in --out (run once per database into one folder for all three):
UF1 / UAR / accuracy per dataset on both sides. A clip for which the live path gives no event (no
face found, say) counts as a miss of its class.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from mex.features.backends import BACKENDS as FLOW_BACKENDS
from mex.labels import CLASSES, DATASETS

from .common import environment, results_dir, write_json

FPS = {"casme2": 200.0, "samm": 200.0, "smic": 100.0}  # the databases' camera rates
COLUMNS = ("dataset", "subject", "clip", "emotion", "label", "model", "held_out", "frames", "apex_sheet",
           "apex_live", "live_pred", *(f"live_p_{c}" for c in CLASSES), "composite_pred",
           *(f"composite_p_{c}" for c in CLASSES), "error")


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True, choices=sorted(FPS), help="which database --root holds")
    p.add_argument("--root", required=True, metavar="RAW",
                   help="the database as distributed (the layouts of mex-train prepare, docs/datasets.md)")
    p.add_argument("--run", required=True, metavar="RUN",
                   help="a finished `mex-train loso --keep-models` folder (run.json, folds/)")
    p.add_argument("--data", metavar="DIR", help="the composite-format folder of the run (default: the one its "
                   "run.json names)")
    p.add_argument("--frames", metavar="FOLDER",
                   help="casme2: the frame folder under RAW (default Cropped: subNN/EPxx/reg_imgN.jpg; the raw camera "
                        "frames: CASME2_RAW_selected)")
    p.add_argument("--fps", type=float, help="the clips' frame rate (default: casme2 and samm 200, smic 100)")
    p.add_argument("--flow", default="auto", choices=["auto", *FLOW_BACKENDS], help="as mex-live --flow")
    p.add_argument("--tracker", default="auto", choices=["auto", "mediapipe", "haar"], help="as mex-live --tracker")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N clips (a quick check)")


class FoldModel:
    """The fold's torch runtimes, one per seed, their probabilities averaged: a runtime for the Recognizer."""

    def __init__(self, runtimes: list):
        self.runtimes = runtimes
        self.name, self.info, self.path = runtimes[0].name, runtimes[0].info, runtimes[0].path

    def probs(self, batch: np.ndarray) -> np.ndarray:
        return np.mean([r.probs(batch) for r in self.runtimes], axis=0)


def load_fold_model(run: Path, subject: str, seeds: int) -> tuple[object, str]:
    """The runtime of the fold that held out `subject` (its single torch runtime, or the seeds' FoldModel) and
    its files (relative to `run`). ValueError naming the file when one is missing or its meta says it held out
    another subject."""
    from mex.checkpoint import load_checkpoint
    from realtime.runtimes import load_runtime
    from train.loso import fold_model_paths

    runtimes = []
    for path in fold_model_paths(run, subject, seeds):
        if not path.is_file():
            raise ValueError(f"{path}: fold model missing; run `mex-train loso --keep-models` with the run's "
                             "arguments (a finished run writes them without retraining)")
        held_out = load_checkpoint(path)[1]["meta"].get("held_out")  # written by train.loso.save_fold_models
        if held_out != subject:
            raise ValueError(f"{path}: holds the fold of subject {held_out!r}, not {subject!r}")
        runtimes.append(load_runtime(path, "torch", device="cpu"))
    files = " ".join(str(r.path.relative_to(run)) for r in runtimes)
    return (runtimes[0] if len(runtimes) == 1 else FoldModel(runtimes)), files


def read_frames(files):
    """The clip's frames as mex-live's frame-folder source reads them (colour; grey images as three channels)."""
    import cv2

    from mex.composite import DataError

    for f in files:
        image = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{f}: cannot be read as an image")
        yield image


def play_clip(clip, runtime, fps: float, flow: str, tracker: str):
    """The clip, onset to offset, through mex-live --segmented's pipeline: (its events, the pipeline's failure)."""
    from realtime.cli import make_pipeline
    from realtime.sinks import ListSink
    from realtime.sources import ArraySource

    events = ListSink()
    source = ArraySource(read_frames(clip.frames), fps, name=f"{clip.subject}/{clip.clip}",
                         total_frames=len(clip.frames))
    pipe = make_pipeline(source, runtime, flow, tracker, segmented=True, event_sinks=[events])
    pipe.run()
    return events.events, pipe.failure


def clip_row(clip, model: str, held_out: str, events, failure, composite_probs: np.ndarray) -> dict:
    row = {"dataset": clip.dataset, "subject": clip.subject, "clip": clip.clip, "emotion": clip.emotion,
           "label": clip.label, "model": model, "held_out": held_out, "frames": len(clip.frames),
           "apex_sheet": clip.frames.index(clip.apex), "apex_live": "", "live_pred": -1,
           **{f"live_p_{c}": "" for c in CLASSES}, "composite_pred": int(np.argmax(composite_probs)),
           **{f"composite_p_{c}": round(float(p), 6) for c, p in zip(CLASSES, composite_probs)}, "error": ""}
    if failure is not None:
        row["error"] = str(failure)
    elif not events:
        row["error"] = "no event (no face found, or fewer than two face frames)"
    else:
        event = events[-1]  # ClipSpotter gives one candidate per clip
        row.update(apex_live=event.apex_frame, live_pred=CLASSES.index(event.label),
                   **{f"live_p_{c}": round(float(event.probs[c]), 6) for c in CLASSES})
    return row


def scores(rows: list[dict]) -> dict:
    """Both sides' UF1 / UAR / accuracy on the same clips, their agreement, and the live apex against the sheet's."""
    from train.metrics import uf1_uar

    y = np.array([int(r["label"]) for r in rows])
    out = {"clips": len(rows)}
    for side in ("live", "composite"):
        pred = np.array([int(r[f"{side}_pred"]) for r in rows])
        out[side] = {**uf1_uar(y, pred), "accuracy": float((pred == y).mean())}
    live, comp = (np.array([int(r[f"{s}_pred"]) for r in rows]) for s in ("live", "composite"))
    out["no_label"] = int((live < 0).sum())
    out["agreement"] = float((live == comp).mean())
    errors = np.array([abs(int(r["apex_live"]) - int(r["apex_sheet"])) for r in rows if r["apex_live"] != ""])
    out["apex_error_median"] = float(np.median(errors)) if len(errors) else None
    out["apex_within_10"] = float((errors <= 10).mean()) if len(errors) else None
    return out


def read_rows(out: Path) -> dict[str, list[dict]]:
    """dataset -> its rows, from every live-loso-<dataset>.csv in `out` (DATASETS order)."""
    found = {}
    for name in DATASETS:
        path = out / f"live-loso-{name}.csv"
        if path.is_file():
            with path.open(newline="") as f:
                found[name] = list(csv.DictReader(f))
    return found


def summary(out: Path) -> dict:
    per = {name: scores(rows) for name, rows in read_rows(out).items() if rows}
    if len(per) > 1:
        per["all"] = scores([r for rows in read_rows(out).values() for r in rows])
    return per


def markdown(per: dict, env: dict, runs: dict) -> str:
    lines = [f"### Live LOSO: raw clips through mex-live --segmented against the composite images "
             f"({env['machine']}, {env['cpu']})", "",
             "| dataset | clips | side | UF1 | UAR | accuracy | no label |", "|---|---|---|---|---|---|---|"]
    for name, s in per.items():
        for side, what in (("composite", "composite images"), ("live", "live path")):
            v = s[side]
            lines.append(f"| {name} | {s['clips']} | {what} | {v['uf1']:.3f} | {v['uar']:.3f} | {v['accuracy']:.3f} "
                         f"| {s['no_label'] if side == 'live' else ''} |")
    lines += ["", "| dataset | same label on both sides | live apex: median error (frames) | within 10 frames |",
              "|---|---|---|---|"]
    for name, s in per.items():
        med = "-" if s["apex_error_median"] is None else f"{s['apex_error_median']:g}"
        within = "-" if s["apex_within_10"] is None else f"{s['apex_within_10']:.3f}"
        lines.append(f"| {name} | {s['agreement']:.3f} | {med} | {within} |")
    lines += ["", *(f"- {name}: `{r['command']}` (run {r['run']}, {r['seconds']:.0f} s)" for name, r in runs.items()),
              ""]
    return "\n".join(lines)


def clips_to_play(args):
    """(the run folder, its seeds per fold, the clips paired with their composite images, the composite set,
    what was left out). ValueError / DataError for bad input."""
    from mex.composite import DataError, load_flow_folder
    from train.datasets import read_dataset
    from train.runs import read_run

    run = Path(args.run)
    if not (run / "run.json").is_file():
        raise ValueError(f"--run {run}: no run.json; give a `mex-train loso --keep-models` folder")
    pinned = read_run(run / "run.json")
    if "folds" not in pinned:
        raise ValueError(f"--run {run}: not a LOSO run (its run.json has no folds)")
    data = load_flow_folder(args.data or pinned["data"])
    reading = read_dataset(args.dataset, args.root, args.frames)
    index = {k: i for i, k in enumerate(zip(data.dataset, data.subject, data.clip))}
    paired, unpaired = [], []
    for clip in reading.clips:
        i = index.get((clip.dataset, clip.subject, clip.clip))
        if i is None:
            unpaired.append(clip)
            continue
        if int(data.y[i]) != clip.label:
            raise DataError(f"{clip.source}: {clip.subject}/{clip.clip} is {clip.emotion!r} = {CLASSES[clip.label]}, "
                            f"{data.root} labels it {CLASSES[int(data.y[i])]}")
        paired.append((clip, i))
    if not paired:
        raise DataError(f"{args.root}: none of the {len(reading.clips)} {args.dataset} clips is in {data.root}")
    paired.sort(key=lambda pair: pair[0].subject)  # by subject, sheet order within a subject
    return run, pinned["profile"]["recipe"]["seeds"], paired[:args.limit], data, unpaired


def run(args) -> int:
    import shlex
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mex.composite import DataError
    from realtime.native_logs import quiet

    console = Console(stderr=True)
    if args.limit is not None and args.limit < 1:
        console.print("mex-bench live-loso: --limit must be at least 1")
        return 2
    if args.fps is not None and not 1 <= args.fps <= 1000:
        console.print(f"mex-bench live-loso: --fps {args.fps:g}: a frame rate is between 1 and 1000")
        return 2
    try:
        run_dir, seeds, paired, data, unpaired = clips_to_play(args)
        # every fold model checked before anything is played (ArtifactError is a ValueError)
        subjects = dict.fromkeys(clip.subject for clip, _ in paired)
        models = {subject: load_fold_model(run_dir, subject, seeds) for subject in subjects}
    except (ValueError, DataError) as e:
        console.print(f"mex-bench live-loso: {e}", highlight=False, soft_wrap=True)
        return 2
    fps = args.fps or FPS[args.dataset]
    out = results_dir(args.out)
    table = out / f"live-loso-{args.dataset}.csv"
    console.print(f"live-loso {args.dataset}: {len(paired)} clips of {len(subjects)} subjects "
                  f"at {fps:g} fps, fold models of {run_dir}; {len(unpaired)} clips of the database are not in "
                  f"{data.root} and are not played", highlight=False, soft_wrap=True)
    start = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with table.open("w", newline="") as f, quiet(), Progress(*columns, console=console) as progress:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        task = progress.add_task(f"live-loso {args.dataset}", total=len(paired), info="")
        right = 0
        for n, (clip, i) in enumerate(paired, start=1):
            runtime, files = models[clip.subject]
            events, failure = play_clip(clip, runtime, fps, args.flow, args.tracker)
            composite = runtime.probs(data.x[i:i + 1].astype(np.float32))[0]
            row = clip_row(clip, files, clip.subject, events, failure, composite)
            writer.writerow(row)
            f.flush()
            right += row["live_pred"] == clip.label
            progress.update(task, advance=1, info=f"live accuracy so far {right / n:.3f}")
    seconds = time.perf_counter() - start
    json_path = out / "live-loso.json"
    previous = json.loads(json_path.read_text()).get("runs", {}) if json_path.is_file() else {}
    runs = {**previous, args.dataset: {
        "command": shlex.join(["mex-bench", "live-loso", *sys.argv[sys.argv.index("live-loso") + 1:]])
        if "live-loso" in sys.argv else "", "run": str(run_dir), "seconds": round(seconds, 1), "fps": fps,
        "clips": len(paired), "not_in_data": len(unpaired), "environment": environment()}}
    per = summary(out)
    write_json(json_path, {"benchmark": "live-loso", "runs": runs, "scores": per})
    md = markdown(per, runs[args.dataset]["environment"], runs)
    (out / "live-loso.md").write_text(md)
    print(md)
    console.print(f"wrote {table}, {out}/live-loso.md, live-loso.json ({seconds:.0f} s)")
    return 0
