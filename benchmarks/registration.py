"""mex-bench registration: does registering the apex onto the onset keep real facial motion?

Real CASME II motion (`casme2-frames`: the Farneback field onset -> annotated apex of each composite
clip) is replayed on a shipped photo (realtime/replay.py), with the head still (as in the databases'
clips) and with a webcam's head sway. The onset and apex frames go through the tracker, and their
recognition crops are cut three ways (realtime/framing.py `pair_crops`):

- `auto` (the live path): registered only where the fitted head motion reaches MIN_HEAD_PX;
- `always`: registered whatever the fit;
- `off`: both cut with the onset's framing, never registered.

Per way: how often the shipped model labels the pair as it labels the clip's own encoding at the
annotated apex (made from the database's crops: what the model should see), and the sheet's label;
and the fitted head motion (px of the 224 px crop) that `auto` compares with MIN_HEAD_PX. A still head
should keep its motion (`auto` as good as `off`); a swaying head should lose its sway (`auto` as good as
`always`). Writes registration.json and registration.md.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import BadInput, environment, results_dir, write_json

WAYS = ("auto", "always", "off")
HEADS = {"still": 0.0, "sway": 1.0}  # replay sway (realtime.synth's head_motion)


def add_arguments(parser) -> None:
    parser.add_argument("--frames", required=True, metavar="DIR", help="a casme2-frames folder (index.csv, clips/)")
    parser.add_argument("--split", default="all", choices=("tune", "check", "all"),
                        help="subjects: tune = the first 10 in sorted order, check = the others (default all)")
    parser.add_argument("--clips", type=int, default=None, help="at most this many composite clips, spread evenly")
    parser.add_argument("--heads", default="still,sway", help="head conditions: still and/or sway (default both)")
    parser.add_argument("--model", default=None, help="model (default: the shipped one)")


def pair_features(spec, registration_ways) -> tuple[dict, float]:
    """The onset and annotated-apex frames of one replay through a tracker of its own: features per way,
    and the fitted head motion in crop px."""
    from mex.features import encode_batch
    from realtime import framing, replay
    from realtime.packets import Frame
    from realtime.tracking import FaceTracker

    gt = replay.truth(spec)
    faces = {}
    with FaceTracker(mesh_every=1) as tracker:
        for i, image in enumerate(replay.render(spec)):
            if i in (gt["onset"], gt["apex"]):
                faces[i] = tracker.track(Frame(i, 0.0, i / spec.fps, image))
            if i >= gt["apex"]:
                break
    onset, apex = faces[gt["onset"]], faces[gt["apex"]]
    if onset.patch is None or apex.patch is None:
        return {}, float("nan")
    crops = {w: framing.pair_crops(onset.patch, apex.patch, w) for w in registration_ways}
    on, off = crops["off"]
    motion = framing.head_motion_px(framing.register(on, off, onset.patch.to_crop), on.shape[0])
    x = encode_batch([a for a, _ in crops.values()], [b for _, b in crops.values()])
    return dict(zip(crops, np.asarray(x, np.float32))), motion


def run(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from mex.labels import CLASSES
    from realtime import replay
    from realtime.runtimes import load_runtime

    console = Console()
    heads = [h.strip() for h in str(args.heads).split(",")]
    if not heads or any(h not in HEADS for h in heads):
        raise BadInput(f"--heads {args.heads!r}: choose from {', '.join(HEADS)}")
    try:
        rows = [r for r in replay.split_rows(replay.read_index(args.frames), args.split) if r["label"] is not None]
    except replay.ReplayError as e:
        raise BadInput(f"--frames {args.frames}: {e}") from None
    if args.clips is not None and args.clips < len(rows):
        rows = [rows[int(k)] for k in np.linspace(0, len(rows) - 1, args.clips).round()]
    if not rows:
        raise BadInput(f"--frames {args.frames}: no composite clips in split {args.split!r}")
    runtime = load_runtime(args.model, kind="onnxruntime")
    out = results_dir(args.out)
    clips, t0 = [], time.perf_counter()
    with Progress(console=console) as bar:
        task = bar.add_task("replays: render, track, cut, encode", total=len(rows) * len(heads))
        for head in heads:
            for k, row in enumerate(rows):
                spec = replay.ReplaySpec(replay.clip_path(args.frames, row), row, photo=replay.PHOTOS[k % 2],
                                         sway=HEADS[head], seed=k)
                feats, motion = pair_features(spec, WAYS)
                if feats:
                    ref = replay.apex_encoding(replay.load_fields(spec.clip), row["apex_t"])
                    probs = runtime.probs(np.stack([ref, *feats.values()]))
                    labels = [CLASSES[int(np.argmax(p))] for p in probs]
                    clips.append({"name": row["name"], "head": head, "photo": spec.photo,
                                  "sheet": CLASSES[row["label"]], "apex_label": labels[0],
                                  "head_motion_px": round(motion, 3),
                                  "labels": dict(zip(feats, labels[1:]))})
                bar.advance(task)
    summary = summarise(clips, heads)
    env, wall = environment(), time.perf_counter() - t0
    write_json(out / "registration.json", {"benchmark": "registration", "environment": env, "wall_s": round(wall, 1),
                                           "split": args.split, "summary": summary, "clips": clips})
    md = markdown(summary, env, wall, args)
    from mex.outputs import write_text

    write_text(out / "registration.md", md)
    console.print(md)
    console.print(f"wrote {out / 'registration.json'} and registration.md ({wall:.0f} s)")
    return 0


def share(flags) -> float:
    return round(float(np.mean(list(flags))), 3)


def summarise(clips: list[dict], heads: list[str]) -> dict:
    from realtime.framing import MIN_HEAD_PX

    out = {}
    for head in heads:
        group = [c for c in clips if c["head"] == head]
        if not group:
            continue
        motion = np.array([c["head_motion_px"] for c in group])
        out[head] = {
            "clips": len(group),
            "head_motion_px": {q: round(float(np.percentile(motion, p)), 3) for q, p in (("p10", 10), ("p50", 50),
                                                                                     ("p90", 90))},
            "registered_by_auto": round(float((motion >= MIN_HEAD_PX).mean()), 3),
            "ways": {w: {"as_apex_encoding": share(c["labels"][w] == c["apex_label"] for c in group),
                         "as_sheet": share(c["labels"][w] == c["sheet"] for c in group)} for w in WAYS},
            "apex_encoding_as_sheet": share(c["apex_label"] == c["sheet"] for c in group),
        }
    return out


def markdown(summary: dict, env: dict, wall: float, args) -> str:
    from realtime.framing import MIN_HEAD_PX

    lines = [
        "# Registration on real facial motion (replayed CASME II clips)",
        "",
        f"Machine `{env['machine']}` ({env['cpu_count']} CPUs, {env['cpu']}), {env['when']}, {wall:.0f} s. "
        f"`mex-bench registration --frames DIR --split {args.split}"
        + (f" --clips {args.clips}" if args.clips else "") + f" --heads {args.heads}`. "
        "The onset and annotated-apex frames of each composite clip's replay (the two photos alternating) through "
        "the tracker; the pair cut three ways; the shipped model's label against its label on the clip's own "
        f"encoding at the annotated apex, and against the sheet. `auto` registers when the fitted head motion "
        f"reaches {MIN_HEAD_PX:g} px of the 224 px crop.",
        "",
        "| head | clips | fitted head motion p10 / p50 / p90 (px) | registered by auto | way | label as the apex "
        "encoding's | label as the sheet's |",
        "|---|---|---|---|---|---|---|",
    ]
    for head, s in summary.items():
        m = s["head_motion_px"]
        for k, (w, v) in enumerate(s["ways"].items()):
            first = f"{head} | {s['clips']} | {m['p10']:.2f} / {m['p50']:.2f} / {m['p90']:.2f} | " \
                    f"{s['registered_by_auto']:.2f}" if k == 0 else " | | | "
            lines.append(f"| {first} | {w} | {v['as_apex_encoding']:.3f} | {v['as_sheet']:.3f} |")
    lines += ["", "The apex encoding itself is labelled as the sheet: "
              + ", ".join(f"{h} {s['apex_encoding_as_sheet']:.3f}" for h, s in summary.items()) + "."]
    return "\n".join(lines) + "\n"
