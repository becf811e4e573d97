"""mex-bench flow-recipes: what a cheaper TV-L1 would cost in feature fidelity, on the CPU.

On a CPU, OpenCV's TV-L1 with its default parameters on the live crops takes far longer than issue
5's 50 ms from apex confirmed to label (benchmarks/results/cpu2-x86_64/flow.md). The solver's work can be cut (fewer
pyramid levels, warps or iterations, a looser stopping rule, smaller crops), but the model is trained
on the composite set, made with OpenCV's default TV-L1, so any cut must keep the features close to it. This
benchmark measures both sides for a fixed list of recipes, on the synthetic face pairs with known
motion (mex.features.synthetic, 0.5-2 px at 128 px): the median batch-1 time of the OpenCV solve
(cv2.setNumThreads(1), padding included), the mean end-point error against the true motion (as
`mex-bench flow` measures it: inside a margin of 1/8 of the side), and the
correlation of the encoded 3x28x28 features with the default recipe's (per channel over all pairs,
and the lowest per pair). It decides nothing: mex-live keeps the default recipe.
"""
from __future__ import annotations

import os
import time

import numpy as np

from mex.outputs import write_text

from .common import environment, results_dir, write_json
from .flow import interior_epe

# (name, crop px, TV-L1 parameters that differ from OpenCV's defaults)
RECIPES = [
    ("default (OpenCV)", 128, {}),
    ("inner 15", 128, dict(inner_iterations=15)),
    ("warps 3, outer 3", 128, dict(warps=3, outer_iterations=3)),
    ("scales 3, warps 2, outer 2, inner 15", 128, dict(nscales=3, warps=2, outer_iterations=2, inner_iterations=15)),
    ("scales 3, warps 1, outer 3, inner 10", 128, dict(nscales=3, warps=1, outer_iterations=3, inner_iterations=10)),
    ("epsilon 0.05", 128, dict(epsilon=0.05)),
    ("96 px crops", 96, {}),
    ("64 px crops", 64, {}),
]
FIDELITY = 0.98  # issue 3's feature-correlation bar between backends, used here as the bar for a recipe


def add_arguments(p) -> None:
    p.add_argument("--pairs", type=int, default=12, help="synthetic pairs (default 12)")
    p.add_argument("--repeats", type=int, default=3, help="timed solves per pair (default 3; the median is kept)")
    p.add_argument("--seed", type=int, default=3)


def _measure(pairs, size: int, changes: dict, repeats: int) -> tuple[np.ndarray, float, float]:
    """(features (N, 3, 28, 28), median ms per pair, mean EPE vs truth in px at 128 px scale)."""
    import cv2

    from mex.features import TVL1Params, crop_flow, flow_to_features
    from mex.features.backends import OpenCVFlow

    backend = OpenCVFlow(TVL1Params(**changes))
    feats, times, epe = [], [], []
    for p in pairs:
        onset, apex, truth = p.onset, p.apex, p.flow
        if size != onset.shape[0]:
            onset = cv2.resize(onset, (size, size), interpolation=cv2.INTER_AREA)
            apex = cv2.resize(apex, (size, size), interpolation=cv2.INTER_AREA)
            scale = size / p.onset.shape[0]
            truth = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) * scale for c in truth])
        else:
            scale = 1.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            u, v = crop_flow(onset[None].astype(np.float32), apex[None].astype(np.float32), backend)
            times.append(time.perf_counter() - t0)
        feats.append(flow_to_features(u, v)[0])
        epe.append(interior_epe(np.stack([u[0], v[0]]), truth, size // 8) / scale)
    return np.stack(feats), 1000.0 * float(np.median(times)), float(np.mean(epe))


def run(args) -> int:
    import cv2
    from rich.console import Console
    from rich.table import Table

    from mex.features.synthetic import synthetic_pairs

    cv2.setNumThreads(1)  # one core, as the live recognizer thread gets on a busy machine
    env = environment()
    env["load_average_1min"] = os.getloadavg()[0]
    pairs = synthetic_pairs(args.pairs, 128, seed=args.seed)
    rows, reference = [], None
    console = Console()
    for name, size, changes in RECIPES:
        console.print(f"  {name} ...")
        feats, ms, epe = _measure(pairs, size, changes, args.repeats)
        if reference is None:
            reference = feats
        corr = [float(np.corrcoef(feats[:, c].ravel(), reference[:, c].ravel())[0, 1]) for c in range(3)]
        per_pair = min(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(feats, reference))
        rows.append({"recipe": name, "crop_px": size, "params": changes, "ms_per_pair": ms, "epe_truth_px": epe,
                     "corr_u": corr[0], "corr_v": corr[1], "corr_strain": corr[2], "corr_min_pair": per_pair,
                     "faithful": min(corr + [per_pair]) >= FIDELITY})
    table = Table(title=f"TV-L1 recipes on {env['machine']} (one thread, load {env['load_average_1min']:.1f})")
    for col in ("recipe", "crop", "ms/pair", "EPE px", "corr u / v / strain", "min pair", f">= {FIDELITY}"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["recipe"], str(r["crop_px"]), f"{r['ms_per_pair']:.0f}", f"{r['epe_truth_px']:.3f}",
                      f"{r['corr_u']:.3f} / {r['corr_v']:.3f} / {r['corr_strain']:.3f}", f"{r['corr_min_pair']:.3f}",
                      "yes" if r["faithful"] else "no")
    console.print(table)
    out = results_dir(args.out)
    write_json(out / "flow-recipes.json", {"benchmark": "flow-recipes", "environment": env,
                                           "settings": {"pairs": args.pairs, "repeats": args.repeats,
                                                        "seed": args.seed},
                                           "fidelity_bar": FIDELITY, "results": rows})
    md = [f"# mex-bench flow-recipes on {env['machine']}", "",
          f"{env['when']}; OpenCV TV-L1 on one thread (cv2.setNumThreads(1)); 1-minute load average "
          f"{env['load_average_1min']:.1f} at the start; {args.pairs} synthetic face pairs (0.5-2 px smooth motion at "
          f"128 px, noise 1.5 grey levels), {args.repeats} timed solves each. Feature correlation is against the "
          "default recipe's 3x28x28 features; EPE is against the true motion inside a margin of 1/8 of the side, in "
          "128 px pixels (as in flow.md).", "",
          "| recipe | crop px | ms per pair (median) | EPE vs truth px | feature corr u / v / strain | lowest pair | "
          f"all >= {FIDELITY} |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['recipe']} | {r['crop_px']} | {r['ms_per_pair']:.0f} | {r['epe_truth_px']:.3f} | "
                  f"{r['corr_u']:.3f} / {r['corr_v']:.3f} / {r['corr_strain']:.3f} | {r['corr_min_pair']:.3f} | "
                  f"{'yes' if r['faithful'] else 'no'} |")
    md += ["", "mex-live keeps the default recipe: the composite set, the model's training data, was made with it.", ""]
    write_text(out / "flow-recipes.md", "\n".join(md), flag="--out")
    console.print(f"wrote {out}/flow-recipes.json and flow-recipes.md")
    return 0
