"""mex-bench live-gap --frames DIR: the apex rule and the pooled label of `mex-live --segmented`
(realtime/apex.py) on real clips encoded frame by frame (`casme2-frames`: per clip the encoding of
(onset, frame t) for every second frame, the Farneback flow onset -> t at 48 x 48, and the coding
sheet's apex).

Per clip: the rule's apex from the flow fields (what the live path computes from its crops), its
error against the sheet's apex, and the model's label at the annotated apex, at the rule's apex, and
pooled (mean probability of `realtime.apex.POOL_FRAMES` frames over +-`POOL_HALF_S` around the rule's
apex). Reported per split: the first half of the subjects (sorted) is where the rule and the pooling
were chosen ("tune"), the rest is held apart ("check"). Also: how often a frame's label is the
annotated apex's, by its distance from that apex; the largest Farneback motion as an apex (the naive
rule); and other pool sizes and widths around the rule's apex.
Writes live-gap-frames.json, live-gap-frames.md and live-gap-frames.csv (per clip) to --out.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from .common import environment, results_dir, write_json

FPS = 200.0  # CASME II
DISTANCES = ((0, 0), (1, 10), (11, 20), (21, 40), (41, 10**6))  # |t - apex_t| bins, frames
# the rule less one step: its apex error says what the step is worth
VARIANTS = {"naive": "the largest mean Farneback motion", "no_drift": "without the drift step",
            "no_similarity": "without removing the similarity", "peak": "the profile's peak, not its plateau's middle"}
POOLS = ((1, 0.0), (3, 0.03), (3, 0.07), (3, 0.1), (5, 0.03), (5, 0.07), (5, 0.1), (7, 0.07))  # (frames, half s)


def read_frames(root: Path) -> list[dict]:
    """Every clip of a casme2-frames folder (read as realtime.replay reads it): the index row's fields and
    its npz arrays (t, x, flow as u, v in units of the crop's width)."""
    from realtime.replay import ReplayError, clip_path, load_fields, read_index

    index = root / "index.csv"
    try:
        rows = read_index(root)
    except (ReplayError, OSError) as e:
        raise ValueError(str(e)) from e
    clips = []
    for n, r in enumerate(rows, start=2):
        try:
            h, w = int(r["crop_h"]), int(r["crop_w"])
            fields = load_fields(clip_path(root, r))
        except (KeyError, ValueError) as e:  # ReplayError is a ValueError
            raise ValueError(f"{index} row {n} ({r['name']}): {e}") from e
        if r["apex_t"] not in fields.t:
            raise ValueError(f"{index} row {n} ({r['name']}): t does not hold the apex_t {r['apex_t']}")
        flow = fields.flow
        flow[:, 1] *= h / w  # both in units of the crop's width
        clips.append({"name": r["name"], "subject": r["subject"], "emotion": r.get("emotion", ""), "label": r["label"],
                      "apex_t": r["apex_t"], "t": fields.t, "x": fields.x, "flow": flow,
                      "motion": _mean_motion(flow, w)})
    if not clips:
        raise ValueError(f"{index}: no clips")
    return clips


def _mean_motion(flow: np.ndarray, w: int) -> np.ndarray:
    return np.hypot(flow[:, 0], flow[:, 1]).mean((1, 2)) * w


def label_of(p: np.ndarray) -> int:
    return int(np.argmax(p))


def clip_result(c: dict, probs: np.ndarray, split: str) -> dict:
    """One clip: apexes (rule, naive), labels (annotated apex, rule's apex, pooled around it)."""
    from realtime.apex import POOL_FRAMES, POOL_HALF_S, apex_profile, flow_apex, plateau_middle, pool_indices

    t = c["t"]
    annotated = int(np.flatnonzero(t == c["apex_t"])[0])
    rule = flow_apex(c["flow"], t, FPS)
    pooled = probs[pool_indices(t, rule, FPS, POOL_FRAMES, POOL_HALF_S)].mean(0)
    naive = 1 + int(np.argmax(c["motion"][1:]))
    steps = {"naive": naive,  # the frame of largest mean Farneback motion
             "no_drift": plateau_middle(apex_profile(c["flow"], t, FPS, drift=False)),
             "no_similarity": plateau_middle(apex_profile(c["flow"], t, FPS, similarity=False)),
             "peak": 1 + int(np.argmax(apex_profile(c["flow"], t, FPS)[1:]))}
    return {"name": c["name"], "subject": c["subject"], "split": split, "emotion": c["emotion"], "label": c["label"],
            "apex_t": c["apex_t"], "rule_t": int(t[rule]), "error": int(t[rule] - c["apex_t"]),
            **{f"{k}_t": int(t[i]) for k, i in steps.items()}, "label_annotated": label_of(probs[annotated]),
            "label_rule": label_of(probs[rule]), "label_pooled": label_of(pooled),
            "pooled": [round(float(v), 6) for v in pooled]}


def _errors(errors: list[int]) -> dict:
    e = np.abs(errors)
    return {"median": float(np.median(e)), "within_10": float(np.mean(e <= 10))}


def summary(rows: list[dict]) -> dict:
    err = np.abs([r["error"] for r in rows])
    labelled = [r for r in rows if r["label"] is not None]

    def agree(key):
        return float(np.mean([r[key] == r["label_annotated"] for r in rows]))

    def accuracy(key):
        return float(np.mean([r[key] == r["label"] for r in labelled])) if labelled else None

    return {"clips": len(rows), "labelled": len(labelled),
            "apex_error": {"median": float(np.median(err)), "within_10": float(np.mean(err <= 10)),
                           "median_signed": float(np.median([r["error"] for r in rows]))},
            "without": {k: _errors([r[f"{k}_t"] - r["apex_t"] for r in rows]) for k in VARIANTS},
            "agreement": {k: agree(f"label_{k}") for k in ("annotated", "rule", "pooled")},
            "accuracy": {k: accuracy(f"label_{k}") for k in ("annotated", "rule", "pooled")}}


def by_distance(clips: list[dict], probs: list[np.ndarray]) -> list[dict]:
    """How often a frame's label is the annotated apex's, by |t - apex_t| (frames before and after)."""
    out = []
    for lo, hi in DISTANCES:
        for side in ("before", "after") if lo else ("at",):
            same = []
            for c, p in zip(clips, probs):
                want = label_of(p[np.flatnonzero(c["t"] == c["apex_t"])[0]])
                d = c["t"] - c["apex_t"]
                near = (c["t"] > 0) & (np.abs(d) >= lo) & (np.abs(d) <= hi) & ((d < 0) if side == "before" else
                                                                                 (d > 0) if side == "after" else True)
                same += [label_of(q) == want for q in p[near]]
            out.append({"from": lo, "to": hi, "side": side, "frames": len(same),
                        "agreement": float(np.mean(same)) if same else None})
    return out


def pools(clips: list[dict], probs: list[np.ndarray], rows: list[dict]) -> list[dict]:
    """Agreement and accuracy of other pool sizes and widths around the rule's apex, per split."""
    from realtime.apex import pool_indices

    out = []
    for k, half in POOLS:
        for split in ("tune", "check"):
            mine = [(c, p, r) for c, p, r in zip(clips, probs, rows) if r["split"] == split]
            agree, right = [], []
            for c, p, r in mine:
                rule = int(np.flatnonzero(c["t"] == r["rule_t"])[0])
                lab = label_of(p[pool_indices(c["t"], rule, FPS, k, half)].mean(0))
                agree.append(lab == r["label_annotated"])
                if r["label"] is not None:
                    right.append(lab == r["label"])
            out.append({"frames": k, "half_s": half, "split": split,
                        "agreement": float(np.mean(agree)) if agree else None,
                        "accuracy": float(np.mean(right)) if right else None})
    return out


def _f(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(payload: dict) -> str:
    from realtime.apex import POOL_FRAMES, POOL_HALF_S

    env = payload["environment"]
    lines = [f"### Apex rule and pooled label on real clips encoded frame by frame ({env['machine']}, "
             f"{env['cpu']}; {payload['seconds']:.0f} s)", "",
             *([f"`{payload['command']}`", ""] if payload["command"] else []),
             f"Model `{payload['model']}`; `{payload['frames']}`. The rule (realtime/apex.py) and the pooling "
             f"({POOL_FRAMES} frames over ±{POOL_HALF_S * 1000:.0f} ms, mean probability) were chosen on the tune "
             f"subjects ({', '.join(payload['subjects']['tune'])}); the check subjects were held apart.", "",
             "| subjects | clips | apex error median (frames, 200 fps) | within 10 frames | same label as "
             "the annotated apex: rule's apex / pooled | accuracy (labelled clips): annotated apex / rule's apex "
             "/ pooled |",
             "|---|---|---|---|---|---|"]
    for split, s in payload["summary"].items():
        e, a, acc = s["apex_error"], s["agreement"], s["accuracy"]
        lines.append(f"| {split} | {s['clips']} ({s['labelled']} labelled) | {e['median']:.0f} (signed "
                     f"{e['median_signed']:+.0f}) | {e['within_10']:.3f} | {a['rule']:.3f} / {a['pooled']:.3f} | "
                     f"{_f(acc['annotated'])} / {_f(acc['rule'])} / {_f(acc['pooled'])} |")
    splits = list(payload["summary"])
    lines += ["", "The rule less one step (apex error median, share within 10 frames):", "",
              "| apex | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    lines.append("| the rule | " + " | ".join(f"{payload['summary'][k]['apex_error']['median']:.0f}, "
                                             f"{payload['summary'][k]['apex_error']['within_10']:.3f}"
                                             for k in splits) + " |")
    for v, what in VARIANTS.items():
        lines.append(f"| {what} | " + " | ".join(f"{payload['summary'][k]['without'][v]['median']:.0f}, "
                                                  f"{payload['summary'][k]['without'][v]['within_10']:.3f}"
                                                  for k in splits) + " |")
    lines += ["", "How the label moves with the frame (all clips): share of frames whose label is the annotated "
              "apex's, by distance from it", "", "| frames from the annotated apex | before | after |", "|---|---|---|"]
    d = payload["by_distance"]
    lines.append(f"| 0 | {_f(d[0]['agreement'])} ({d[0]['frames']} frames) | |")
    for before, after in zip(d[1::2], d[2::2]):
        span = f"{before['from']}-{before['to']}" if before["to"] < 10**6 else f"over {before['from'] - 1}"
        lines.append(f"| {span} | {_f(before['agreement'])} ({before['frames']}) | {_f(after['agreement'])} "
                     f"({after['frames']}) |")
    lines += ["", "Pooling around the rule's apex (mean probability of k frames spread over ± the half-width): "
              "same label as the annotated apex / accuracy", "", "| k | ± ms | tune | check |", "|---|---|---|---|"]
    p = payload["pools"]
    for tune, check in zip(p[::2], p[1::2]):
        lines.append(f"| {tune['frames']} | {tune['half_s'] * 1000:.0f} | {_f(tune['agreement'])} / "
                     f"{_f(tune['accuracy'])} | {_f(check['agreement'])} / {_f(check['accuracy'])} |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    import shlex
    import sys

    from rich.console import Console
    from rich.progress import Progress

    from realtime.runtimes import DEFAULT_MODEL, ArtifactError, load_runtime

    console = Console(stderr=True)
    start = time.perf_counter()
    model = args.model or str(DEFAULT_MODEL.relative_to(Path.cwd()) if DEFAULT_MODEL.is_relative_to(Path.cwd())
                              else DEFAULT_MODEL)
    try:
        clips = read_frames(Path(args.frames))
        runtime = load_runtime(model, kind="onnxruntime")
    except (ValueError, ArtifactError) as e:
        console.print(f"mex-bench live-gap --frames: {e}")
        return 2
    subjects = sorted({c["subject"] for c in clips})
    tune = set(subjects[:(len(subjects) + 1) // 2])
    rows, probs = [], []
    with Progress(console=console) as bar:
        task = bar.add_task("clips: apex rule, labels", total=len(clips))
        for c in clips:
            p = np.asarray(runtime.probs(c["x"].astype(np.float32) / 255.0), np.float64)
            probs.append(p)
            rows.append(clip_result(c, p, "tune" if c["subject"] in tune else "check"))
            bar.advance(task)
    splits = {"tune": [r for r in rows if r["split"] == "tune"], "check": [r for r in rows if r["split"] == "check"],
              "all": rows}
    payload = {
        "benchmark": "live-gap --frames",
        "command": shlex.join(["mex-bench", "live-gap", *sys.argv[sys.argv.index("live-gap") + 1:]])
        if "live-gap" in sys.argv else "",
        "environment": environment(),
        "frames": str(args.frames), "model": model,
        "subjects": {"tune": sorted(tune), "check": sorted(set(subjects) - tune)},
        "seconds": round(time.perf_counter() - start, 1),
        "summary": {k: summary(v) for k, v in splits.items() if v},
        "by_distance": by_distance(clips, probs),
        "pools": pools(clips, probs, rows),
        "clips": rows,
    }
    out = results_dir(args.out)
    write_json(out / "live-gap-frames.json", payload)
    md = markdown(payload)
    (out / "live-gap-frames.md").write_text(md)
    fields = [k for k in rows[0] if k != "pooled"] + [f"pooled_{i}" for i in range(len(rows[0]["pooled"]))]
    with (out / "live-gap-frames.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow([r[k] if r[k] is not None else "" for k in fields[:-len(r["pooled"])]] + r["pooled"])
    print(md)
    console.print(f"wrote {out}/live-gap-frames.md, live-gap-frames.json, live-gap-frames.csv")
    return 0
