"""mex-bench encoding: our feature function against the composite set's images, clip by clip.

The model is trained on the composite set (data/megc2019-composite-flow), which was made by someone
else's pipeline; mex-live feeds it what `mex.features.encode` makes. This benchmark measures how close
the two are on the same clips. It needs the raw onset/apex frames, which are not in the repository
(the databases are licensed): `mex-train prepare` encodes them through mex.features into a
composite-format folder (docs/datasets.md), and this benchmark matches that folder's clips to the
composite set's by (dataset, subject, clip) and reports
- per channel (u, v, strain), the Pearson correlation of the two 28x28 images of each clip;
- how often the shipped model (fitted on the composite images) gives the same class for both
  encodings of a clip, and how often each encoding's class is the clip's label.
The composite set's README reports, for two clips re-encoded by its authors with OpenCV's default
TV-L1: u 0.73-0.85, v 0.81-0.92, strain 0.35-0.62.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mex.outputs import write_text

from .common import environment, results_dir, write_json

CHANNELS = ("u", "v", "strain")


def add_arguments(p) -> None:
    p.add_argument("--prepared", required=True, metavar="DIR", help="a folder written by mex-train prepare")
    p.add_argument("--composite", default=str(Path(__file__).resolve().parents[1] / "data" / "megc2019-composite-flow"),
                   metavar="DIR", help="the reference encoding (default: the shipped composite set)")
    p.add_argument("--model", default=None, help="exported model for the agreement numbers (default: the shipped one)")


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images; nan when either is constant (no signal to correlate)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def compare(prepared, composite, runtime) -> list[dict]:
    """One row per clip present in both FlowSets: correlations per channel, both predictions, the label."""
    where = {(d, s, c): i for i, (d, s, c) in enumerate(zip(composite.dataset, composite.subject, composite.clip))}
    pairs = [(i, where[key]) for i, key in enumerate(zip(prepared.dataset, prepared.subject, prepared.clip))
             if key in where]
    if not pairs:
        return []
    ours = prepared.x[[i for i, _ in pairs]]
    theirs = composite.x[[j for _, j in pairs]]
    pred_ours = runtime.probs(ours).argmax(1)
    pred_theirs = runtime.probs(theirs).argmax(1)
    rows = []
    for k, (i, j) in enumerate(pairs):
        row = {"dataset": prepared.dataset[i], "subject": prepared.subject[i], "clip": prepared.clip[i],
               "label": int(composite.y[j]), "pred_ours": int(pred_ours[k]), "pred_composite": int(pred_theirs[k])}
        row.update({f"corr_{name}": _correlation(ours[k, c], theirs[k, c]) for c, name in enumerate(CHANNELS)})
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per dataset and over all: clip count, median (and quartiles) of each channel's correlation,
    model agreement between the encodings, and each encoding's share of clips classified as labelled."""
    out = []
    for name in ["all", *sorted({r["dataset"] for r in rows})]:
        sel = [r for r in rows if name == "all" or r["dataset"] == name]
        s = {"set": name, "clips": len(sel)}
        for ch in CHANNELS:
            v = np.array([r[f"corr_{ch}"] for r in sel], dtype=np.float64)
            v = v[np.isfinite(v)]
            s[f"{ch}_median"], s[f"{ch}_q1"], s[f"{ch}_q3"] = (
                (float(np.median(v)), float(np.percentile(v, 25)), float(np.percentile(v, 75)))
                if len(v) else (None,) * 3)
        s["same_class"] = float(np.mean([r["pred_ours"] == r["pred_composite"] for r in sel]))
        s["label_rate_ours"] = float(np.mean([r["pred_ours"] == r["label"] for r in sel]))
        s["label_rate_composite"] = float(np.mean([r["pred_composite"] == r["label"] for r in sel]))
        out.append(s)
    return out


def _markdown(env: dict, args, n_prepared: int, summary: list[dict], model: str) -> str:
    def cell(s, ch):
        return ("–" if s[f"{ch}_median"] is None
                else f"{s[f'{ch}_median']:.3f} ({s[f'{ch}_q1']:.2f}–{s[f'{ch}_q3']:.2f})")

    lines = [
        f"# mex-bench encoding on {env['machine']}",
        "",
        f"{env['when']}. Prepared folder `{args.prepared}` ({n_prepared} clips) against `{args.composite}`, "
        f"matched by (dataset, subject, clip); model {model} (fitted on the composite images).",
        "",
        "| set | clips | corr u: median (IQR) | corr v | corr strain | same class, both encodings | "
        "classified as labelled: ours / composite |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(f"| {s['set']} | {s['clips']} | {cell(s, 'u')} | {cell(s, 'v')} | {cell(s, 'strain')} | "
                     f"{s['same_class']:.1%} | {s['label_rate_ours']:.1%} / {s['label_rate_composite']:.1%} |")
    lines += ["", "For scale: the composite set's README reports u 0.73-0.85, v 0.81-0.92, strain 0.35-0.62 for two "
              "clips re-encoded by its authors with OpenCV's default TV-L1.", ""]
    return "\n".join(lines)


def run(args) -> int:
    from mex.composite import DataError, load_flow_folder
    from realtime.runtimes import load_runtime

    try:
        prepared = load_flow_folder(args.prepared)
        composite = load_flow_folder(args.composite)
    except DataError as e:
        raise SystemExit(f"mex-bench encoding: {e}") from None
    runtime = load_runtime(args.model)
    rows = compare(prepared, composite, runtime)
    if not rows:
        raise SystemExit(f"mex-bench encoding: none of the {len(prepared)} clips of --prepared {args.prepared} is in "
                         f"--composite {args.composite} (clips are matched by dataset, subject and clip name)")
    summary = summarise(rows)
    env = environment()
    model = str(args.model or "the shipped mex/assets/default.onnx")
    out = results_dir(args.out)
    write_json(out / "encoding.json", {"benchmark": "encoding", "environment": env, "prepared": str(args.prepared),
                                       "composite": str(args.composite), "model": model, "summary": summary,
                                       "clips": rows})
    md = _markdown(env, args, len(prepared), summary, model)
    write_text(out / "encoding.md", md, flag="--out")
    print(md)
    print(f"results in {out}/encoding.json (.md); {len(prepared) - len(rows)} prepared clips had no composite match")
    return 0
