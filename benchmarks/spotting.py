"""mex-bench spotting: the online spotter on generated clips, scored with the MEGC metric, and the
pre-segmented clip spotter's apex error.

Online: each condition renders a few clips with realtime.synth (in memory, seeded), runs FaceTracker +
Spotter on every frame as the live pipeline would, and scores the spotted intervals against the
planted ones (IoU >= 0.5). Neutral conditions plant nothing but head motion and blinks: every
interval spotted there is a false alarm.
Segmented: database-like clips (`synth.database_spec`: onset to offset, a held peak, blinks, drift),
each kind at 100 and 200 fps, through FaceTracker + ClipSpotter (`mex-live --segmented`); the found
apex against the planted one (the hold's middle frame) and against the hold.
Distractors: per kind (realtime.synth.DISTRACTORS: partial blinks, blink bursts, gaze shifts, speech,
head turns and nods, flicker), a neutral clip full of it at 30, 100 and 200 fps (false alarms per
minute, and why the spotter rejected what it saw), and event clips among all of them (F1, apex error);
a dim, low-contrast face at 30 fps as well.
Writes spotting.json and spotting.md to the results folder (`--only` runs one part).
`--dataset casme2-long|samm-lv --root RAW` scores the same spotter on a long-video database instead
(benchmarks/long_video.py).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from mex.outputs import write_text

from benchmarks import long_video
from benchmarks.common import environment, results_dir, write_json

# A clip with head motion, blinks and compression, as a webcam would give; events drawn per clip.
MOVING = dict(head_motion=1.0, head_moves=2, blinks=4, jpeg_quality=80)


@dataclass
class Condition:
    name: str
    photo: str
    fps: float
    seconds: float
    clips: int
    events: int  # planted per clip (0: a neutral condition, scored by false alarms)
    extra: dict
    headline: bool = True  # counted in the "all" rows (the sub-pixel condition is reported apart)
    distractor: str | None = None  # the distractor kind a "distractors" condition is about ("all": mixed)

    def specs(self, seed0: int):
        from realtime.synth import ClipSpec

        for k in range(self.clips):
            yield ClipSpec(photo=self.photo, fps=self.fps, seconds=self.seconds, events=self.events,
                           seed=seed0 + k, **self.extra)


def conditions(quick: bool) -> list[Condition]:
    n = 1 if quick else 3
    neutral = dict(head_motion=1.0, head_moves=6, blinks=15, jpeg_quality=80)
    fast = dict(MOVING, blinks=2, head_moves=1)  # 10 s clips: fewer distractors fit
    return [
        Condition("astronaut 30 fps still", "astronaut.jpg", 30, 20, n, 6, {}),
        Condition("astronaut 30 fps moving", "astronaut.jpg", 30, 20, n, 6, MOVING),
        Condition("camera 30 fps moving", "camera.png", 30, 20, n, 6, MOVING),
        Condition("astronaut 100 fps moving", "astronaut.jpg", 100, 10, max(1, n - 1), 4, fast),
        Condition("astronaut 200 fps moving", "astronaut.jpg", 200, 10, max(1, n - 1), 4, fast),
        Condition("astronaut 30 fps small (0.5-1 px)", "astronaut.jpg", 30, 20, n, 6,
                  dict(MOVING, amplitude_px=(0.5, 1.0)), headline=False),
        Condition("neutral astronaut 30 fps", "astronaut.jpg", 30, 30 if quick else 60, 1, 0, neutral),
        Condition("neutral camera 30 fps", "camera.png", 30, 30 if quick else 60, 1, 0, neutral),
    ]


# one distractor of each kind per this many seconds of a neutral clip (a partial blink every 3.75 s:
# 16 a minute, a webcam user's blink rate)
DISTRACTOR_EVERY_S = {"partial_blinks": 3.75, "blink_bursts": 6.0, "gaze_shifts": 4.0, "speech": 6.0,
                      "head_turns": 5.0, "flicker": 6.0}
DISTRACTOR_SECONDS = {30.0: 60.0, 100.0: 20.0, 200.0: 10.0}  # clip length per fps (frames cost the same)


def distractor_conditions(quick: bool) -> list[Condition]:
    """Per fps: a neutral clip per distractor kind, and events among all kinds (at half the density);
    at 30 fps also a dim, low-contrast face (contrast 0.5) with partial blinks, and with events."""
    conds = []
    webcam = dict(head_motion=1.0, jpeg_quality=80)
    for fps, seconds in DISTRACTOR_SECONDS.items():
        seconds = seconds / 2 if quick else seconds
        every = {k: max(1, int(seconds / e)) for k, e in DISTRACTOR_EVERY_S.items()}
        for kind, count in every.items():
            conds.append(Condition(f"{kind} {fps:g} fps", "astronaut.jpg", fps, seconds, 1, 0,
                                   dict(webcam, **{kind: count}), headline=False, distractor=kind))
        mixed = {k: max(1, n // 2) for k, n in every.items()}
        conds.append(Condition(f"events among all {fps:g} fps", "astronaut.jpg", fps, seconds, 1,
                               max(2, int(seconds / 3.3)), dict(webcam, **mixed), headline=False, distractor="all"))
        if fps == 30.0:
            dim = dict(webcam, contrast=0.5)
            conds.append(Condition(f"partial_blinks low contrast {fps:g} fps", "astronaut.jpg", fps, seconds, 1, 0,
                                   dict(dim, partial_blinks=every["partial_blinks"]), headline=False,
                                   distractor="partial_blinks (contrast 0.5)"))
            conds.append(Condition(f"events among all low contrast {fps:g} fps", "astronaut.jpg", fps, seconds, 1,
                                   max(2, int(seconds / 3.3)), dict(dim, **mixed), headline=False,
                                   distractor="all (contrast 0.5)"))
    return conds


def spot_clip(spec, config=None, progress=None, mesh_every: int = 4) -> dict:
    """Run tracker + spotter over one generated clip; the truth, what was spotted and the per-frame costs."""
    from realtime.metrics import score
    from realtime.packets import Frame
    from realtime.spotting import Spotter
    from realtime.synth import render, truth
    from realtime.tracking import FaceTracker

    gt = truth(spec)
    tracker, spotter = FaceTracker(mesh_every=mesh_every), Spotter(spec.fps, config)
    found, rejected, track_ms, spot_ms, spot_cpu_ms, faceless = [], [], [], [], [], 0
    for i, image in enumerate(render(spec)):
        frame = Frame(index=i, t_capture=time.monotonic(), t_video=i / spec.fps, image=image)
        ff = tracker.track(frame)
        faceless += ff.crop is None
        cpu0 = time.thread_time()  # CPU time: what the spotter costs, whatever else shares the cores
        found += spotter.push(ff)
        spot_cpu_ms.append((time.thread_time() - cpu0) * 1e3)
        rejected += spotter.take_rejections()
        track_ms.append(frame.stage_ms["track"])
        spot_ms.append(frame.stage_ms["spot"])
        if progress:
            progress()
    found += spotter.flush()
    rejected += spotter.take_rejections()
    tracker.close()
    spotted = [{"onset": c.onset.frame.index, "apex": c.apex.frame.index, "offset": c.offset_index,
                "region": c.region} for c in found]
    return {"truth": gt, "spotted": spotted, "rejected": [r.to_json() for r in rejected], "faceless_frames": faceless,
            "score": score(spotted, gt["events"], gt["frames"] / spec.fps),
            "track_ms": float(np.mean(track_ms)), "spot_ms": float(np.median(spot_ms)),
            "spot_cpu_ms": float(np.median(spot_cpu_ms))}


def segmented_clip(spec, spotter=None, mesh_every: int = 4) -> dict:
    """Run tracker + ClipSpotter (or `spotter`, a class with its interface) over one database-like clip:
    the planted event and the apex found."""
    from realtime.packets import Frame
    from realtime.spotting import ClipSpotter
    from realtime.synth import render, truth
    from realtime.tracking import FaceTracker

    clip_spotter = (spotter or ClipSpotter)(spec.fps)
    with FaceTracker(mesh_every=mesh_every) as tracker:
        for i, image in enumerate(render(spec)):
            clip_spotter.push(tracker.track(
                Frame(index=i, t_capture=time.monotonic(), t_video=i / spec.fps, image=image)))
    found = clip_spotter.flush()
    event = truth(spec)["events"][0]
    apex = found[0].apex.frame.index if found else None
    lo, hi = event["apex_span"]
    return {"event": event, "apex": apex,
            "error": None if apex is None else abs(apex - event["apex"]),
            "error_hold": None if apex is None else max(0, lo - apex, apex - hi)}


def segmented_specs(quick: bool, seed: int):
    """Per fps (100, 200), `n` database-like clips of each kind, seeded."""
    from realtime.synth import KINDS, database_spec

    n = 1 if quick else 6
    for fps in (100.0, 200.0):
        for k, kind in enumerate(KINDS):
            for j in range(n):
                yield database_spec(kind, fps, seed=seed + 1000 * k + 100 * int(fps) + j)


def error_stats(errors: list[int], fps: float) -> dict:
    """Median, 90th percentile and max of apex errors in frames, and the same in ms."""
    if not errors:
        return {"frames": None, "ms": None}
    e = np.array(errors, np.float64)
    frames = {"median": float(np.median(e)), "p90": float(np.percentile(e, 90)), "max": float(e.max())}
    return {"frames": frames, "ms": {k: round(1000 * v / fps, 1) for k, v in frames.items()}}


def run_segmented(args, console) -> tuple[list[dict], list[dict]]:
    from rich.progress import Progress

    specs = list(segmented_specs(args.quick, args.seed))
    clips = []
    with Progress(console=console) as bar:
        task = bar.add_task("segmented clips: tracking, choosing the apex", total=len(specs))
        for spec in specs:
            res = segmented_clip(spec, mesh_every=args.mesh_every)
            clips.append({"fps": spec.fps, "seed": spec.seed, "frames": round(spec.seconds * spec.fps), **res})
            bar.advance(task)
    rows = []
    for fps in sorted({c["fps"] for c in clips}):
        mine = [c for c in clips if c["fps"] == fps]
        found = [c for c in mine if c["apex"] is not None]
        rows.append({"fps": fps, "clips": len(mine), "found": len(found),
                     "frames_median": float(np.median([c["frames"] for c in mine])),
                     "error_apex": error_stats([c["error"] for c in found], fps),
                     "error_hold": error_stats([c["error_hold"] for c in found], fps)})
    return rows, clips


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="one clip per condition, shorter neutral clips; one segmented clip per kind and fps")
    parser.add_argument("--only", choices=("online", "distractors", "segmented"), default=None,
                        help="run one part: the online spotter's conditions, its distractors, "
                             "or the segmented apex error")
    parser.add_argument("--seed", type=int, default=100, help="first clip seed")
    parser.add_argument("--mesh-every", type=int, default=4, help="tracker: face mesh on every Nth frame")
    long_video.add_arguments(parser)


def run(args) -> int:
    if args.dataset or args.root:
        return long_video.run(args)
    from rich.console import Console

    from realtime.spotting import SpotterConfig

    console = Console()
    t0 = time.perf_counter()
    rows, clips = run_online(args, console, conditions(args.quick)) if args.only in (None, "online") else ([], [])
    dis_rows, dis_clips = ([], []) if args.only not in (None, "distractors") else \
        run_online(args, console, distractor_conditions(args.quick), seed0=args.seed + 50_000)
    seg_rows, seg_clips = run_segmented(args, console) if args.only in (None, "segmented") else ([], [])
    wall = time.perf_counter() - t0
    for r in seg_rows:
        a, h = r["error_apex"]["frames"], r["error_hold"]["frames"]
        if a is None:
            console.print(f"segmented {r['fps']:g} fps, {r['clips']} clips: no apex found")
            continue
        console.print(f"segmented {r['fps']:g} fps, {r['clips']} clips: apex error median/p90/max "
                      f"{a['median']:g}/{a['p90']:g}/{a['max']:g} frames, to the hold "
                      f"{h['median']:g}/{h['p90']:g}/{h['max']:g}")
    env = environment()
    out = results_dir(args.out)
    payload = {"benchmark": "spotting", "environment": env, "config": asdict(SpotterConfig()),
               "tracker": {"mesh_every": args.mesh_every}, "wall_s": round(wall, 1), "quick": bool(args.quick),
               "only": args.only, "conditions": rows, "clips": clips, "distractors": dis_rows,
               "distractor_clips": dis_clips, "segmented": seg_rows, "segmented_clips": seg_clips}
    write_json(out / "spotting.json", payload)
    write_text(out / "spotting.md", markdown(rows, env, wall, seg_rows, dis_rows), flag="--out")
    console.print(f"wrote {out / 'spotting.json'} and spotting.md ({wall:.0f} s)")
    return 0


def run_online(args, console, conds: list[Condition], seed0: int | None = None) -> tuple[list[dict], list[dict]]:
    from collections import Counter

    from rich.progress import Progress
    from rich.table import Table

    from realtime.metrics import SpotScore

    seed0 = args.seed if seed0 is None else seed0
    total = sum(round(c.fps * c.seconds) * c.clips for c in conds)
    rows, clips = [], []
    totals = {"all planted (1-3 px)": SpotScore(), "all neutral": SpotScore()}
    with Progress(console=console) as bar:
        task = bar.add_task("rendering, tracking, spotting", total=total)
        for ci, cond in enumerate(conds):
            summed, spot_ms, spot_cpu_ms, track_ms, reasons, planted = SpotScore(), [], [], [], Counter(), 0
            for spec in cond.specs(seed0 + 1000 * ci):
                res = spot_clip(spec, progress=lambda: bar.advance(task), mesh_every=args.mesh_every)
                summed = summed + res["score"]
                spot_ms.append(res["spot_ms"])
                spot_cpu_ms.append(res["spot_cpu_ms"])
                track_ms.append(res["track_ms"])
                reasons.update(r["rejected"] for r in res["rejected"])
                planted += len(res["truth"]["distractors"])
                clips.append({"condition": cond.name, "spec": res["truth"]["spec"], "truth": res["truth"]["events"],
                              "distractors": res["truth"]["distractors"], "spotted": res["spotted"],
                              "rejected": res["rejected"], "faceless_frames": res["faceless_frames"],
                              "score": res["score"].to_json()})
            if cond.headline:
                key = "all neutral" if cond.events == 0 else "all planted (1-3 px)"
                totals[key] = totals[key] + summed
            apex_ms = None if summed.apex_error_max is None else round(1000 * summed.apex_error_max / cond.fps, 1)
            rows.append({"condition": cond.name, "fps": cond.fps, "clips": cond.clips, "neutral": cond.events == 0,
                         "distractor": cond.distractor, "distractors_planted": planted,
                         "rejected": dict(sorted(reasons.items())),
                         **summed.to_json(), "clip_seconds": cond.seconds, "apex_error_max_ms": apex_ms,
                         "track_ms_mean": round(float(np.mean(track_ms)), 3),
                         "spot_ms_median": round(float(np.median(spot_ms)), 3),
                         "spot_cpu_ms_median": round(float(np.median(spot_cpu_ms)), 3)})
    for name, summed in totals.items():
        if summed.seconds == 0:  # no headline condition in this list
            continue
        rows.append({"condition": name, "fps": None, "clips": None, "neutral": name == "all neutral",
                     **summed.to_json(), "clip_seconds": None, "apex_error_max_ms": None,
                     "track_ms_mean": None, "spot_ms_median": None, "spot_cpu_ms_median": None})

    table = Table(title="Online spotting on generated clips (MEGC: IoU >= 0.5)")
    cols = ("condition", "TP", "FP", "FN", "precision", "recall", "F1", "apex err (mean/max)", "FA/min", "spot CPU ms")
    for col in cols:
        table.add_column(col, justify="left" if col == "condition" else "right")
    for r in rows:
        apex = "-" if r["apex_error_mean"] is None else f"{r['apex_error_mean']:.2f}/{r['apex_error_max']}"
        f1 = "-" if r["neutral"] else f"{r['f1']:.3f}"
        table.add_row(r["condition"], str(r["tp"]), str(r["fp"]), str(r["fn"]), f"{r['precision']:.3f}",
                      "-" if r["neutral"] else f"{r['recall']:.3f}", f1, apex, f"{r['false_alarms_per_min']:.2f}",
                      "" if r["spot_cpu_ms_median"] is None else f"{r['spot_cpu_ms_median']:.3f}")
    console.print(table)
    return rows, clips


def markdown(rows: list[dict], env: dict, wall: float, seg_rows: list[dict], dis_rows: list[dict]) -> str:
    lines = [
        "# Spotting on generated clips",
        "",
        f"Machine `{env['machine']}` ({env['cpu_count']} CPUs, {env['cpu']}), {env['when']}, {wall:.0f} s."]
    if rows:
        lines += online_markdown(rows)
    if dis_rows:
        lines += distractor_markdown(dis_rows)
    if seg_rows:
        lines += segmented_markdown(seg_rows)
    return "\n".join(lines) + "\n"


def distractor_markdown(rows: list[dict]) -> list[str]:
    """Per distractor kind, false alarms per minute at each fps; events among all kinds, F1 at each fps."""
    fps_list = sorted({r["fps"] for r in rows})
    head = " | ".join(f"{f:g} fps" for f in fps_list)
    lines = [
        "",
        "## Distractors",
        "",
        "Neutral clips full of one distractor kind (`realtime.synth.DISTRACTORS`), with head sway and JPEG 80: "
        "everything spotted is a false alarm. Cells: false alarms per minute (distractors planted). "
        "Rejected as: the spotter's reasons for what it saw and did not report (`Rejection.reason`), all fps.",
        "",
        f"| distractor | {head} | rejected as |",
        "|---|" + "---|" * len(fps_list) + "---|",
    ]
    by = {(r["distractor"], r["fps"]): r for r in rows}
    kinds = list(dict.fromkeys(r["distractor"] for r in rows if r["neutral"]))
    for kind in kinds:
        cells = []
        for f in fps_list:
            r = by.get((kind, f))
            cells.append("–" if r is None else f"{r['false_alarms_per_min']:.2f} ({r['distractors_planted']})")
        reasons = {}
        for f in fps_list:
            for k, v in by.get((kind, f), {}).get("rejected", {}).items():
                reasons[k] = reasons.get(k, 0) + v
        lines.append(f"| {kind} | {' | '.join(cells)} | {', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))} |")
    lines += [
        "",
        "Event clips among all distractor kinds (half the density): F1 (TP/FP/FN), apex error mean / max in frames.",
        "",
        f"| events among | {head} |",
        "|---|" + "---|" * len(fps_list),
    ]
    for kind in dict.fromkeys(r["distractor"] for r in rows if not r["neutral"]):
        cells = []
        for f in fps_list:
            r = by.get((kind, f))
            if r is None:
                cells.append("–")
                continue
            apex = "–" if r["apex_error_mean"] is None else f"{r['apex_error_mean']:.2f} / {r['apex_error_max']}"
            cells.append(f"{r['f1']:.3f} ({r['tp']}/{r['fp']}/{r['fn']}), apex {apex}")
        lines.append(f"| {kind} | {' | '.join(cells)} |")
    cpu = [r["spot_cpu_ms_median"] for r in rows]
    lines += ["", f"Spotter CPU time per frame, median over conditions: {float(np.median(cpu)):.3f} ms "
                  f"(largest condition median {max(cpu):.3f} ms)."]
    return lines


def segmented_markdown(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "## Pre-segmented clips (`--segmented`): apex error",
        "",
        "Database-like clips (`realtime.synth.database_spec`): onset to offset, the movement held at its peak "
        "0.04-0.15 s, a full or partial blink, slow sway, a turn in depth and side light growing through "
        "the clip; each of the five kinds at each fps. Error: frames (ms) from the found apex to the planted "
        "one (the hold's middle frame) and to the hold (0 inside it).",
        "",
        "| fps | clips | median length (frames) | apex found | to the apex: median / p90 / max | "
        "to the hold: median / p90 / max |",
        "|---|---|---|---|---|---|",
    ]
    def fmt(e):
        if e["frames"] is None:
            return "–"
        return " / ".join(f"{e['frames'][k]:g} ({e['ms'][k]:g} ms)" for k in ("median", "p90", "max"))

    for r in rows:
        lines.append(f"| {r['fps']:g} | {r['clips']} | {r['frames_median']:g} | {r['found']} | "
                     f"{fmt(r['error_apex'])} | {fmt(r['error_hold'])} |")
    return lines


def online_markdown(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "`mex-bench spotting`; MEGC metric: a spotted interval is a hit when its IoU with a planted one is ≥ 0.5. "
        "Neutral clips plant only head motion and blinks: everything spotted there is a false alarm. "
        "Spot CPU ms is the spotter's median CPU time per frame (thread time: robust to other jobs sharing the "
        "cores; the tracker not included); track ms is the tracker's mean wall time per frame (face mesh on "
        "every 4th frame; inflated when the cores are shared).",
        "",
        "| condition | clips × s | TP | FP | FN | precision | recall | F1 | apex error mean/max (frames) "
        "| false alarms/min | spot CPU ms | track ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        total = r["clips"] is None
        apex = "–" if r["apex_error_mean"] is None else f"{r['apex_error_mean']:.2f} / {r['apex_error_max']}"
        if r["apex_error_max_ms"] is not None:
            apex += f" ({r['apex_error_max_ms']:g} ms)"
        dash = r["neutral"]
        clips_s = f"{r['seconds'] / 60:.1f} min" if total else f"{r['clips']} × {r['clip_seconds']:g} s"
        costs = "| | |" if total else f"| {r['spot_cpu_ms_median']:.3f} | {r['track_ms_mean']:.1f} |"
        name = f"**{r['condition']}**" if total else r["condition"]
        lines.append(f"| {name} | {clips_s} | {r['tp']} | {r['fp']} | {r['fn']} | "
                     f"{r['precision']:.3f} | {'–' if dash else format(r['recall'], '.3f')} | "
                     f"{'–' if dash else format(r['f1'], '.3f')} | {apex} | {r['false_alarms_per_min']:.2f} {costs}")
    return lines
