"""mex-bench replay: the live path on real micro-expressions replayed on the shipped face photos.

Each real CASME II clip of a casme2-frames folder (`--frames`) is replayed by realtime/replay.py: its
measured motion (the dense Farneback field onset -> frame) laid onto a public-domain photo, 640 x 480 at
200 fps, 1 s of the still onset face first, then the clip from onset to offset, then a tail:
`hold` (the face stays where the clip ends, 1 s) or `return` (a 40-frame fade back, then 1 s still).
Every replay goes through the same pipeline as `mex-live --video ... --fps 200` (online spotter,
recognizer, a file source: nothing dropped); `--segmented` also runs the onset..offset part alone
through `mex-live --segmented`'s path.

Per tail: found (MEGC rule: an event with IoU >= 0.5 with the sheet's onset..offset), found at
IoU >= 0.3, other events per minute of replay, why the misses were missed (the spotter's rejection
of the interval that overlaps the truth most, an event with IoU < 0.5, or "not seen"), the apex error
of the found events against the sheet's apex, and on composite clips (3-class label set) whether the
found event's label is the one the shipped model gives the clip's own encoding at its annotated apex
(`x` at t == apex_t, from the database's crops) and the sheet's label.

Split by subject so that tuning and checking use different people: `tune` = the clips of the first 10
subjects in sorted order, `check` = those of the other subjects. `--clips N` takes N clips spread evenly
over the split (sorted by name). Photos alternate over the clips (realtime.replay.PHOTOS).
Writes replay.json and replay.md to --out.
"""
from __future__ import annotations

import itertools
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mex.features.backends import BACKENDS as FLOW_BACKENDS

from .common import environment, results_dir, write_json

NEAR_FRAMES = 10  # an apex this close to the sheet's counts as "within"


def add_arguments(parser) -> None:
    parser.add_argument("--frames", required=True, help="a casme2-frames folder (index.csv + clips/NAME.npz)")
    parser.add_argument("--split", choices=("tune", "check", "all"), default="tune",
                        help="tune: the clips of the first 10 subjects (sorted); check: the other subjects'; "
                             "all (default tune)")
    parser.add_argument("--clips", type=int, default=None, help="N clips spread evenly over the split (default all)")
    parser.add_argument("--tails", default="hold,return",
                        help="comma-separated tails: hold (the face stays where the clip ends), return (faded back)")
    parser.add_argument("--segmented", action="store_true",
                        help="also run each clip's onset..offset alone through the --segmented path")
    parser.add_argument("--sway", type=float, default=0.0, help="head sway as realtime.synth's head_motion (0 still)")
    parser.add_argument("--model", default=None, help="exported model (default: the shipped one)")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "tensorrt", "torch"])
    parser.add_argument("--flow", default="auto", choices=["auto", *FLOW_BACKENDS])
    parser.add_argument("--tracker", default="auto", choices=["auto", "mediapipe", "haar"])


def pick(rows: list[dict], n: int | None) -> list[dict]:
    """n rows spread evenly over `rows` (sorted by name), or all."""
    rows = sorted(rows, key=lambda r: r["name"])
    if n is None or n >= len(rows):
        return rows
    return [rows[int(k)] for k in np.round(np.linspace(0, len(rows) - 1, n))]


def replay_specs(root: str | Path, split: str, clips: int | None, tails: list[str], sway: float = 0.0):
    """The replays of a run: per picked clip (photos alternating), one ReplaySpec per tail."""
    from realtime import replay

    rows = pick(replay.split_rows(replay.read_index(root), split), clips)
    return [replay.ReplaySpec(replay.clip_path(root, r), r, photo=replay.PHOTOS[k % len(replay.PHOTOS)], tail=tail,
                              sway=sway, seed=k)
            for k, r in enumerate(rows) for tail in tails]


class RejectionList:
    """A rejection sink keeping the spotter's Rejection records as JSON."""

    def __init__(self):
        self.records: list[dict] = []

    def on_rejection(self, rejection) -> None:
        self.records.append(rejection.to_json())

    def close(self) -> None:
        pass


def run_live(frames, n: int, fps: float, runtime, args, segmented: bool = False,
             progress=None) -> tuple[list[dict], list[dict]]:
    """Frames through realtime.cli.make_pipeline as `mex-live --video ... --fps FPS [--segmented]`:
    the events and the spotter's rejections, as their JSON records."""
    from realtime.cli import make_pipeline
    from realtime.sinks import ListSink
    from realtime.sources import ArraySource

    def counted():
        for image in frames:
            yield image
            if progress:
                progress()

    events, rejected = ListSink(), RejectionList()
    pipe = make_pipeline(ArraySource(counted(), fps, name="replay", total_frames=n), runtime, args.flow,
                         args.tracker, segmented, event_sinks=[events], rejection_sinks=[rejected])
    summary = pipe.run()
    if summary["error"]:
        raise RuntimeError(f"pipeline failed: {summary['error']}")
    return [e.to_json() for e in events.events], rejected.records


def score_replay(truth: dict, events: list[dict], rejections: list[dict], model_label: str | None = None) -> dict:
    """One online replay: the event matched to the truth (MEGC rule), the others, why a miss was missed,
    the apex error and the label against the model's on the annotated apex (`model_label`) and the sheet's."""
    from mex.labels import CLASSES
    from realtime.metrics import iou, match, span

    true = (truth["onset"], truth["offset"])
    spans = [span(e["onset_frame"], e["apex_frame"], e["offset_frame"]) for e in events]
    hit, near = match(spans, [true], 0.5), match(spans, [true], 0.3)
    found = events[hit[0][0]] if hit else None
    missed_as = None
    if found is None:
        best_event = max((iou(s, true) for s in spans), default=0.0)
        overlaps = [(iou((r["onset_frame"], r["offset_frame"]), true), r["rejected"]) for r in rejections]
        overlaps = [o for o in overlaps if o[0] > 0]
        if best_event > 0:
            missed_as = "event IoU < 0.5"
        elif overlaps:
            missed_as = max(overlaps)[1]
        else:
            missed_as = "not seen"
    sheet = None if truth["label"] is None else CLASSES[truth["label"]]
    return {**truth, "events": events, "rejections": rejections, "found": found is not None, "found_iou03": bool(near),
            "other_events": len(events) - len(hit), "missed_as": missed_as,
            "apex_error": None if found is None else abs(found["apex_frame"] - truth["apex"]),
            "label_found": None if found is None else found["label"], "label_model": model_label,
            "label_sheet": sheet}


def score_segmented(truth: dict, events: list[dict], model_label: str | None = None) -> dict:
    """One onset..offset clip through the --segmented path (frames counted from the onset)."""
    from mex.labels import CLASSES

    apex = events[0]["apex_frame"] if events else None
    return {"name": truth["name"], "subject": truth["subject"], "apex": truth["apex"] - truth["onset"],
            "found": bool(events), "apex_found": apex,
            "apex_error": None if apex is None else abs(apex - (truth["apex"] - truth["onset"])),
            "label_found": events[0]["label"] if events else None, "label_model": model_label,
            "label_sheet": None if truth["label"] is None else CLASSES[truth["label"]]}


def _apex_and_labels(rows: list[dict]) -> dict:
    errors = [r["apex_error"] for r in rows if r["apex_error"] is not None]
    labelled = [r for r in rows if r["label_found"] is not None and r["label_sheet"] is not None]
    return {"apex_error_median": float(np.median(errors)) if errors else None,
            "apex_within": round(float(np.mean([e <= NEAR_FRAMES for e in errors])), 4) if errors else None,
            "labelled": len(labelled),
            "label_as_model": sum(r["label_found"] == r["label_model"] for r in labelled),
            "label_as_sheet": sum(r["label_found"] == r["label_sheet"] for r in labelled)}


def summarise(rows: list[dict]) -> dict:
    """Per tail over its online replays."""
    seconds = sum(r["frames"] / r["fps"] for r in rows)
    other = sum(r["other_events"] for r in rows)
    return {"replays": len(rows), "found": sum(r["found"] for r in rows),
            "found_iou03": sum(r["found_iou03"] for r in rows), "other_events": other,
            "other_per_min": round(60.0 * other / seconds, 3) if seconds else 0.0, "seconds": round(seconds, 1),
            "missed_as": dict(Counter(r["missed_as"] for r in rows if r["missed_as"]).most_common()),
            **_apex_and_labels(rows)}


def run(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from mex.labels import CLASSES
    from realtime import replay
    from realtime.cli import CliError, warm_up
    from realtime.native_logs import quiet
    from realtime.runtimes import load_runtime
    from realtime.spotting import SpotterConfig

    tails = [t.strip() for t in args.tails.split(",") if t.strip()]
    bad = [t for t in tails if t not in replay.TAILS]
    if bad or not tails:
        print(f"mex-bench replay: --tails {args.tails}: give one or more of {', '.join(replay.TAILS)}", file=sys.stderr)
        return 2
    if args.clips is not None and args.clips < 1:
        print(f"mex-bench replay: --clips {args.clips}: give at least 1", file=sys.stderr)
        return 2
    try:
        specs = replay_specs(args.frames, args.split, args.clips, tails, args.sway)
        fields = {s.row["name"]: replay.load_fields(s.clip) for s in specs}
    except replay.ReplayError as e:
        print(f"mex-bench replay: {e}", file=sys.stderr)
        return 2
    if not specs:
        print(f"mex-bench replay: no clips in split {args.split!r} of {args.frames}", file=sys.stderr)
        return 2
    runtime = load_runtime(args.model, kind=args.runtime)
    try:
        warm_up(runtime, args.flow)
    except CliError as e:
        print(f"mex-bench replay: {e}", file=sys.stderr)
        return 2
    model_label = {}  # composite clips: what the model says on the clip's own encoding at its annotated apex
    for s in specs:
        if s.row["label"] is not None and s.row["name"] not in model_label:
            try:
                x = replay.apex_encoding(fields[s.row["name"]], s.row["apex_t"])
            except replay.ReplayError as e:
                print(f"mex-bench replay: {s.clip}: {e}", file=sys.stderr)
                return 2
            model_label[s.row["name"]] = CLASSES[int(np.argmax(runtime.probs(x[None])[0]))]

    firsts = [s for s in specs if s.tail == tails[0]]  # one per clip, for the segmented runs
    truths = [replay.truth(s) for s in specs]
    total = sum(t["frames"] for t in truths)
    if args.segmented:
        total += sum(t["offset"] - t["onset"] + 1 for t in truths if t["tail"] == tails[0])
    console = Console()
    t0 = time.perf_counter()
    online, segmented = [], []
    with quiet(), Progress(console=console) as bar:
        task = bar.add_task(f"{len(specs)} replays ({args.split}): rendering, tracking, spotting", total=total)
        step = lambda: bar.advance(task)  # noqa: E731
        for spec, truth in zip(specs, truths):
            events, rejections = run_live(replay.render(spec, fields[spec.row["name"]]), truth["frames"], spec.fps,
                                          runtime, args, progress=step)
            online.append(score_replay(truth, events, rejections, model_label.get(spec.row["name"])))
        if args.segmented:
            for spec in firsts:
                truth = replay.truth(spec)
                part = itertools.islice(replay.render(spec, fields[spec.row["name"]]), truth["onset"],
                                        truth["offset"] + 1)
                events, _ = run_live(part, truth["offset"] - truth["onset"] + 1, spec.fps, runtime, args,
                                     segmented=True, progress=step)
                segmented.append(score_segmented(truth, events, model_label.get(spec.row["name"])))
    wall = time.perf_counter() - t0
    per_tail = {t: summarise([r for r in online if r["tail"] == t]) for t in tails}
    seg = {"clips": len(segmented), "found": sum(r["found"] for r in segmented), **_apex_and_labels(segmented)} \
        if args.segmented else None
    env = environment()
    payload = {"benchmark": "replay", "environment": env, "frames": str(Path(args.frames).resolve()),
               "split": args.split, "clips": len(firsts), "subjects": sorted({s.row["subject"] for s in firsts}),
               "tails": tails, "sway": args.sway, "runtime": runtime.name, "flow": args.flow, "tracker": args.tracker,
               "config": asdict(SpotterConfig()), "wall_s": round(wall, 1), "per_tail": per_tail, "segmented": seg,
               "replays": online, "segmented_clips": segmented}
    out = results_dir(args.out)
    write_json(out / "replay.json", payload)
    md = markdown(payload)
    (out / "replay.md").write_text(md)
    console.print(md)
    console.print(f"wrote {out / 'replay.json'} and replay.md ({wall:.0f} s)")
    return 0


def _fmt(v, spec: str = "g") -> str:
    return "–" if v is None else format(v, spec)


def markdown(p: dict) -> str:
    env = p["environment"]
    lines = [
        "# Real micro-expressions replayed on the shipped photos",
        "",
        f"`mex-bench replay --split {p['split']}`: machine `{env['machine']}` ({env['cpu_count']} CPUs, "
        f"{env['cpu']}), {env['when']}, {p['wall_s']:.0f} s; {p['clips']} CASME II clips of "
        f"{len(p['subjects'])} subjects, 640 x 480 at 200 fps, head sway {p['sway']:g}; runtime {p['runtime']}. "
        "Found: an event with IoU >= 0.5 with the sheet's onset..offset (MEGC); apex error against the "
        f"sheet's apex, frames at 200 fps (within: <= {NEAR_FRAMES}); label: found events of composite clips whose "
        "label is the model's on the clip's own encoding at its annotated apex, and the sheet's.",
        "",
        "| tail | replays | found | found (IoU >= 0.3) | other events / min | apex error median | within 10 "
        "| label as model | label as sheet | misses |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tail, s in p["per_tail"].items():
        misses = ", ".join(f"{k} {v}" for k, v in s["missed_as"].items()) or "–"
        lines.append(f"| {tail} | {s['replays']} | {s['found']} | {s['found_iou03']} | {s['other_per_min']:.2f} | "
                     f"{_fmt(s['apex_error_median'])} | {_fmt(s['apex_within'], '.2f')} | "
                     f"{s['label_as_model']} / {s['labelled']} | {s['label_as_sheet']} / {s['labelled']} | {misses} |")
    if p["segmented"]:
        s = p["segmented"]
        lines += ["", "`--segmented` (onset..offset alone): "
                  f"{s['found']} of {s['clips']} with an apex; apex error median {_fmt(s['apex_error_median'])}, "
                  f"within 10: {_fmt(s['apex_within'], '.2f')}; label as model {s['label_as_model']} / "
                  f"{s['labelled']}, as sheet {s['label_as_sheet']} / {s['labelled']}."]
    return "\n".join(lines) + "\n"
