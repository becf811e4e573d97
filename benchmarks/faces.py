"""mex-bench latency --faces 1,2,4: the whole live pipeline (`mex-live --max-faces N` on a file, as fast as
possible, nothing dropped) on generated clips with N faces side by side, each with its own planted
micro-expressions and blinks (realtime.synth MultiClipSpec, 960x540 at 30 fps). Per face count: pipeline
fps, tracking and spotting ms per frame (all faces), apex confirmed -> label p95, and spotting scored per
face with the MEGC rule (IoU >= 0.5, one-to-one): each tracker id is taken as the planted face most of its
matched events belong to, and an event counts only against its own face's planted ones (an event given to
the wrong face is a false positive and leaves a miss). Writes latency-faces.json and .md.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from mex.outputs import write_text

from .common import environment, results_dir, write_json

PHOTOS = (("astronaut.jpg", False), ("grace_hopper.jpg", False), ("astronaut.jpg", True), ("grace_hopper.jpg", True))
PLACES = {1: ((0.5, 0.5),), 2: ((0.28, 0.5), (0.72, 0.5)), 4: ((0.28, 0.27), (0.72, 0.27), (0.28, 0.74), (0.72, 0.74))}


def clip_spec(faces: int, seconds: float, seed: int):
    from realtime.synth import ClipSpec, MultiClipSpec, PlacedFace

    if faces not in PLACES:
        raise SystemExit(f"--faces: counts of {sorted(PLACES)} faces, not {faces}")
    px = 100.0 if faces <= 2 else 80.0
    return MultiClipSpec([PlacedFace(ClipSpec(photo=photo, mirror=mirror, face_px=px, events=max(1, int(seconds / 3.5)),
                                              duration_s=(0.2, 1 / 3), amplitude_px=(2.0, 3.0),
                                              blinks=max(0, int(seconds / 8)), head_motion=0.3, seed=seed + 7 * k),
                                     ((0.0, x, y),))
                          for k, ((photo, mirror), (x, y)) in enumerate(zip(PHOTOS, PLACES[faces]))],
                         fps=30.0, seconds=seconds, size=(960, 540), seed=seed)


def score(events, planted: list[dict]) -> dict:
    """Per-face MEGC scoring of events (with face_id) against planted events (with face)."""
    from realtime.metrics import match, span

    spans = [span(e.onset_frame, e.apex_frame, e.offset_frame) for e in events]
    truth = [span(p["onset"], p["apex"], p["offset"]) for p in planted]
    votes: dict[int, Counter] = {}
    for i, j in match(spans, truth, 0.5):
        votes.setdefault(events[i].face_id, Counter())[planted[j]["face"]] += 1
    face_of = {fid: c.most_common(1)[0][0] for fid, c in votes.items()}
    tp = 0
    for face in {p["face"] for p in planted}:
        mine = [k for k, e in enumerate(events) if face_of.get(e.face_id) == face]
        theirs = [j for j, p in enumerate(planted) if p["face"] == face]
        tp += len(match([spans[k] for k in mine], [truth[j] for j in theirs], 0.5))
    f1 = 2 * tp / (len(events) + len(planted)) if events or planted else 1.0
    return {"planted": len(planted), "found": len(events), "true_positives": tp, "f1": round(f1, 3),
            "ids": len({e.face_id for e in events})}


def run(args) -> int:
    from realtime import synth
    from realtime.cli import make_pipeline, warm_up
    from realtime.pipeline import PipelineConfig
    from realtime.runtimes import load_runtime
    from realtime.sinks import ListSink
    from realtime.sources import VideoSource

    counts = [int(c) for c in args.faces.split(",")]
    env = environment()
    out = results_dir(args.out)
    runtime = load_runtime(args.model, kind=args.runtime)
    warm_up(runtime, args.flow)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mex-bench-faces-") as tmp:
        for n in counts:
            path = Path(tmp) / f"faces{n}.mp4"
            truth = synth.write_clip(path, clip_spec(n, args.seconds, args.seed))
            keep = ListSink()
            pipe = make_pipeline(VideoSource(path), runtime, args.flow, args.tracker, event_sinks=[keep],
                                 config=PipelineConfig(queue_size=args.queue_size), max_faces=n)
            summary = pipe.run()
            if summary["error"]:
                print(f"pipeline failed with {n} faces: {summary['error']}")
                return 1
            st = summary["stages_ms"]
            row = {"faces": n, "frames": summary["frames_processed"], "fps": round(summary["fps"], 1),
                   "track_ms_p50_p95": [round(st["track"]["p50"], 2), round(st["track"]["p95"], 2)],
                   "spot_ms_p50_p95": [round(st["spot"]["p50"], 2), round(st["spot"]["p95"], 2)],
                   "confirm_to_label_p95_ms": round(st["confirm"]["p95"], 1) if "confirm" in st else None,
                   "per_face": summary["faces"], **score(keep.events, truth["events"])}
            rows.append(row)
            print(f"{n} faces: {row['fps']} fps, confirm p95 {row['confirm_to_label_p95_ms']} ms, "
                  f"F1 {row['f1']} ({row['true_positives']} of {row['planted']}, {row['found']} found)", flush=True)
    result = {"benchmark": "latency-faces", "environment": env, "runtime": runtime.name, "flow": args.flow,
              "tracker": args.tracker, "seconds": args.seconds, "seed": args.seed, "rows": rows, "note": args.note}
    write_json(out / "latency-faces.json", result)
    md = _markdown(result)
    write_text(out / "latency-faces.md", md, flag="--out")
    print(md)
    return 0


def _markdown(r: dict) -> str:
    env = r["environment"]
    lines = [f"# mex-bench latency --faces ({env['machine']})", "",
             f"{env['when']} on {env['host']}: {env['cpu']} x{env['cpu_count']}; runtime {r['runtime']}, "
             f"flow {r['flow']}, tracker {r['tracker']}; {r['seconds']:g} s clips, 960x540 @ 30 fps, faces side by "
             "side (file, as fast as possible, nothing dropped).", "",
             "| faces | fps | track ms p50 / p95 | spot ms p50 / p95 | confirm -> label p95 ms "
             "| spotting F1 (per face) | found / planted | ids |", "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['faces']} | {x['fps']} | {x['track_ms_p50_p95'][0]} / {x['track_ms_p50_p95'][1]} | "
                     f"{x['spot_ms_p50_p95'][0]} / {x['spot_ms_p50_p95'][1]} | {x['confirm_to_label_p95_ms']} | "
                     f"{x['f1']} ({x['true_positives']} TP) | {x['found']} / {x['planted']} | {x['ids']} |")
    if r.get("note"):
        lines += ["", r["note"]]
    return "\n".join(lines) + "\n"
