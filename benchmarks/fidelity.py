"""mex-bench fidelity: does the live path feed the model what an ideal crop of the same movement would?

Generated clips (realtime.synth) of every movement kind with head sway, sensor noise and JPEG, at 30
and 200 fps, go through the live path: FaceTracker, then the online Spotter (the whole clip) or the
ClipSpotter (`--segmented`: the frames from just before the onset to the offset), once with the head
swaying (a webcam) and once with it still (the databases' clips). For each candidate
that matches the planted movement (IoU >= 0.5), its (onset, apex) features are compared with the
features of the SAME two frames of the same clip rendered without head motion, noise or compression
and cut at the ideal crop (one transform from the still face's landmarks, no registration needed).
The comparison isolates framing and registration: spotting's own frame errors are in `mex-bench
spotting`. Three ways to cut the live crops are compared:

- `live`: both crops with the onset's framing, the apex registered onto the onset where the head moved
  (realtime/framing.py `pair_crops`, registration "auto");
- `always registered`: the same, registered whatever the head did;
- `not registered`: both crops with the onset's framing, no registration;
- `own framing`: each crop with its own frame's framing, no registration;
- `eye crop`: the spotting crop (eye-aligned similarity, smoothed landmarks) reused as the
  recognition crop.

Per way, head condition and movement kind: the mean Pearson correlation of each channel (u, v,
strain) over the 28 x 28 grid with the ideal features, and how often the shipped model gives the
ideal features' label. Writes fidelity.json and fidelity.md to the results folder.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from mex.outputs import write_text

from benchmarks.common import environment, results_dir, write_json

WAYS = {"live": "auto", "always registered": "always", "not registered": "off", "own framing": "own",
        "eye crop": None}  # way -> pair_crops registration (None: the spotting crops)
HEADS = {"sway": 1.0, "still": 0.0}  # head_motion of the generated clip
CHANNELS = ("u", "v", "strain")


def add_arguments(parser) -> None:
    parser.add_argument("--clips", type=int, default=2, help="clips per movement kind, fps and mode (default 2)")
    parser.add_argument("--fps", default="30,200", help="comma-separated frame rates (default 30,200)")
    parser.add_argument("--seed", type=int, default=300, help="first clip seed")
    parser.add_argument("--model", default=None, help="model for label agreement (default: the shipped one)")
    parser.add_argument("--heads", default="sway,still",
                        help="head conditions: sway (a webcam's, about ±8 px) and/or still (default both)")


def clip_spec(kind: str, fps: float, seed: int, head_motion: float = 1.0):
    """One planted movement of `kind` after the spotter's warm-up second, with a webcam's sway, noise and JPEG."""
    from realtime.synth import ClipSpec, PlantedEvent

    rng = np.random.default_rng(seed)
    event = PlantedEvent(kind, onset_s=float(rng.uniform(1.3, 1.6)), duration_s=float(rng.uniform(0.2, 0.33)),
                         amplitude_px=float(rng.uniform(1.5, 3.0)), apex_frac=float(rng.uniform(0.35, 0.65)),
                         side=str(rng.choice(["both", "both", "left", "right"])))
    return ClipSpec(fps=fps, seconds=2.4, events=[event], head_motion=head_motion, noise=1.5, jpeg_quality=85,
                    seed=seed)


def ideal_spec(spec):
    return replace(spec, head_motion=0.0, head_moves=0, noise=0.0, jpeg_quality=None)


def live_candidates(spec, segmented: bool):
    """FaceTracker + (Clip)Spotter over the clip, as mex-live runs them: the candidates, the truth event."""
    from realtime.packets import Frame
    from realtime.spotting import ClipSpotter, Spotter
    from realtime.synth import render, truth
    from realtime.tracking import FaceTracker

    gt = truth(spec)["events"][0]
    first = max(0, gt["onset"] - 2) if segmented else 0
    last = gt["offset"] if segmented else None
    spotter = (ClipSpotter if segmented else Spotter)(spec.fps)
    found = []
    with FaceTracker() as tracker:
        for i, image in enumerate(render(spec)):
            if last is not None and i > last:
                break
            if i < first:
                continue
            found += spotter.push(tracker.track(Frame(i, 0.0, i / spec.fps, image)))
    found += spotter.flush()
    return found, gt


def ideal_crops(spec, onset: int, apex: int):
    """The two frames of the still, clean rendering, cut with one transform from the onset's landmarks."""
    from realtime.framing import cut_patch, pair_crops
    from realtime.packets import Frame
    from realtime.synth import render
    from realtime.tracking import FaceTracker

    frames = {}
    for i, image in enumerate(render(ideal_spec(spec))):
        if i in (onset, apex):
            frames[i] = image
        if i >= max(onset, apex):
            break
    with FaceTracker(mesh_every=1) as tracker:
        on = tracker.track(Frame(onset, 0.0, 0.0, frames[onset]))
    return pair_crops(on.patch, cut_patch(frames[apex], on.patch.to_crop), registration="off")


def correlations(a: np.ndarray, b: np.ndarray) -> list[float]:
    out = []
    for k in range(3):
        x, y = a[k].ravel(), b[k].ravel()
        out.append(float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 0.0)
    return out


def run(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from mex.features import encode
    from mex.labels import CLASSES
    from realtime.runtimes import load_runtime
    from realtime.framing import pair_crops
    from realtime.metrics import iou
    from realtime.synth import KINDS

    console = Console()
    runtime = load_runtime(args.model, kind="onnxruntime")
    rates = [float(f) for f in str(args.fps).split(",")]
    heads = [h.strip() for h in str(args.heads).split(",")]
    if not heads or any(h not in HEADS for h in heads):
        console.print(f"[red]--heads {args.heads!r}: choose from {', '.join(HEADS)}")
        return 2
    jobs = [(head, fps, mode, kind, args.seed + 100 * j + k) for head in heads
            for j, (fps, mode) in enumerate((f, m) for f in rates for m in ("online", "segmented"))
            for kind in KINDS for k in range(args.clips)]
    rows: list[dict] = []
    t0 = time.perf_counter()
    with Progress(console=console) as bar:
        task = bar.add_task("clips: render, track, spot, encode", total=len(jobs))
        for head, fps, mode, kind, seed in jobs:
            spec = clip_spec(kind, fps, seed, HEADS[head])
            found, gt = live_candidates(spec, mode == "segmented")
            hits = [c for c in found if iou((c.onset.frame.index, c.offset_index or c.apex.frame.index),
                                                     (gt["onset"], gt["offset"])) >= 0.5]
            row = {"head": head, "fps": fps, "mode": mode, "kind": kind, "seed": seed, "truth": gt, "found": len(found),
                   "matched": bool(hits)}
            if hits:
                c = hits[0]
                ideal = encode(*ideal_crops(spec, c.onset.frame.index, c.apex.frame.index))
                live = {w: encode(*(pair_crops(c.onset.patch, c.apex.patch, registration=r) if r is not None
                                    else (c.onset.crop, c.apex.crop))) for w, r in WAYS.items()}
                probs = runtime.probs(np.stack([ideal, *live.values()]))
                labels = [CLASSES[int(np.argmax(p))] for p in probs]
                row.update(onset=c.onset.frame.index, apex=c.apex.frame.index, ideal_label=labels[0],
                           ways={w: {"corr": correlations(x, ideal), "label": lab}
                                 for (w, x), lab in zip(live.items(), labels[1:])})
            rows.append(row)
            bar.advance(task)
    wall = time.perf_counter() - t0
    summary = summarise(rows, rates, heads)
    env = environment()
    out = results_dir(args.out)
    write_json(out / "fidelity.json", {"benchmark": "fidelity", "environment": env, "wall_s": round(wall, 1),
                                       "clips_per_kind": args.clips, "summary": summary, "clips": rows})
    md = markdown(summary, env, wall, args)
    write_text(out / "fidelity.md", md, flag="--out")
    console.print(md)
    console.print(f"wrote {out / 'fidelity.json'} and fidelity.md ({wall:.0f} s)")
    return 0


def summarise(rows: list[dict], rates: list[float], heads: list[str]) -> list[dict]:
    from realtime.synth import KINDS

    groups = [(f"{head} head, {fps:g} fps {mode}",
               [r for r in rows if (r["head"], r["fps"], r["mode"]) == (head, fps, mode)])
              for head in heads for fps in rates for mode in ("online", "segmented")]
    groups += [(f"{head} head, {kind}", [r for r in rows if (r["head"], r["kind"]) == (head, kind)])
               for head in heads for kind in KINDS]
    groups += [(f"{head} head, all", [r for r in rows if r["head"] == head]) for head in heads]
    out = []
    for name, group in groups:
        matched = [r for r in group if r["matched"]]
        entry = {"group": name, "clips": len(group), "matched": len(matched), "ways": {}}
        for w in WAYS:
            if matched:
                corr = np.array([r["ways"][w]["corr"] for r in matched])
                agree = sum(r["ways"][w]["label"] == r["ideal_label"] for r in matched)
                entry["ways"][w] = {"corr": [round(float(c), 3) for c in corr.mean(0)],
                                    "corr_min": [round(float(c), 3) for c in corr.min(0)],
                                    "label_agreement": round(agree / len(matched), 3)}
        out.append(entry)
    return out


def markdown(summary: list[dict], env: dict, wall: float, args) -> str:
    from realtime.synth import KINDS

    lines = [
        "# Live-path fidelity on generated clips",
        "",
        f"Machine `{env['machine']}` ({env['cpu_count']} CPUs, {env['cpu']}), {env['when']}, {wall:.0f} s. "
        f"`mex-bench fidelity --clips {args.clips} --fps {args.fps} --seed {args.seed} --heads {args.heads}`: "
        f"{args.clips} clip(s) per movement kind ({len(KINDS)} kinds), frame rate, mode and head condition (sway "
        "about ±8 px, ±2°, ±2 %, or a still head), with noise and JPEG. "
        "Each matched candidate's features against the ideal features of the same two frames (still head, clean, "
        "one transform): mean (min) correlation per channel, and the share of candidates the shipped model "
        "labels as it labels the ideal features.",
        "",
        "| group | clips | matched | way of cutting the crops | corr u | corr v | corr strain | label agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        for w in WAYS:
            if w not in e["ways"]:
                continue
            s = e["ways"][w]
            corr = [f"{m:.3f} ({lo:.2f})" for m, lo in zip(s["corr"], s["corr_min"])]
            first = w == next(iter(WAYS))
            head = f"**{e['group']}** | {e['clips']} | {e['matched']}" if first else " | | "
            lines.append(f"| {head} | {w} | {' | '.join(corr)} | {s['label_agreement']:.3f} |")
    return "\n".join(lines) + "\n"
