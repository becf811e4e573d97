"""mex-bench live-gap: what the recognizer loses when it sees the live encoder's images.

The model is trained on the composite set's images, but live it sees what `mex.features.encode`
makes. `data/casme2-live-encoded` holds 138 CASME II clips of the composite set encoded that way.
Under LOSO over the composite set, each fold model scores its held-out subject on both: the
composite images and the live encodings of the same clips (a clip's live encoding is scored only by
the fold model that held out its subject). Reported on the 138 clips: UF1 / UAR / accuracy on each,
the gap, how often the two predictions of a clip agree; and the composite LOSO Full UF1 / UAR over all
442 clips (robustness must not cost composite accuracy).

Two learners:
- `--floor`: the class-balanced logistic regression of `mex-bench floor` (L-BFGS, fixed `--C`), fitted
  per fold on the training clips, plus `--copies` augmented copies of them drawn with the profile's
  augmentation (flip, shift, rotation, zoom, blur, span; no mixup or smoothing: there is no training
  loop) when it has any, the penalty scaled so that identical copies would change nothing; and the
  training subjects' live clips when the recipe's `live_clips` is on. Seconds to minutes on a CPU.
- otherwise the trainer (`train/loso.py`, all folds at once) with `--profile`, asked to predict the
  live clips as well.
Writes to --out: predictions.csv (composite, every clip), predictions-live.csv (the live clips), the
trainer's run files when it trained, live-gap.json and live-gap.md, both re-made from the two
predictions files alone.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .common import environment, write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "megc2019-composite-flow"
DEFAULT_LIVE = ROOT / "data" / "casme2-live-encoded"


def add_arguments(p) -> None:
    p.add_argument("--data", default=str(DEFAULT_DATA), metavar="DIR", help="composite-format folder trained on (LOSO)")
    p.add_argument("--live", default=str(DEFAULT_LIVE), metavar="DIR",
                   help="the same clips encoded by mex.features.encode (composite format; subjects and clips as in "
                        "--data)")
    p.add_argument("--floor", action="store_true", help="the class-balanced logistic regression instead of the trainer")
    p.add_argument("--C", type=float, default=0.1, help="--floor: inverse L2 penalty (default 0.1)")
    p.add_argument("--copies", type=int, default=8,
                   help="--floor: augmented copies of the training clips, if the recipe augments")
    p.add_argument("--profile", default="ours",
                   help="train/recipes.py profile (its recipe's augmentation and live_clips for --floor)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe or model field (as mex-train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the profile's epochs (quick checks)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16")
    p.add_argument("--model", metavar="ONNX",
                   help="train nothing: how an exported model (e.g. mex/assets/default.onnx) labels the live clips' "
                        "composite images and their live encodings (accuracy, agreement); writes live-gap-model.md to "
                        "--out. With --frames: the model scored (default the shipped one)")
    p.add_argument("--frames", metavar="DIR",
                   help="train nothing: the --segmented apex rule and pooled label on clips encoded frame by frame "
                        "(the casme2-frames layout: index.csv, clips/NAME.npz); see benchmarks/live_gap_frames.py")
    p.add_argument("--table", nargs="+", metavar="RUN",
                   help="train nothing: re-score these live-gap folders from their predictions files and write "
                        "live-gap-table.md to --out (per run, and mean ± std per learner)")


def live_index(data, live) -> np.ndarray:
    """Index in `data` of each live clip (same dataset, subject and clip, same label)."""
    key = {k: i for i, k in enumerate(zip(data.dataset, data.subject, data.clip))}
    idx = []
    for k, y in zip(zip(live.dataset, live.subject, live.clip), live.y):
        if k not in key:
            raise ValueError(f"{live.root}: clip {'/'.join(k)} is not in {data.root}")
        if data.y[key[k]] != y:
            raise ValueError(f"{live.root}: clip {'/'.join(k)} has label {y}, {data.root} has {data.y[key[k]]}")
        idx.append(key[k])
    return np.array(idx)


def augments(recipe) -> bool:
    """Whether `train.batched.augment` changes images under this recipe (the floor's copies need it to)."""
    return (recipe.flip or recipe.shift_px > 0 or recipe.rotate_deg > 0 or recipe.zoom > 0 or recipe.blur > 0
            or recipe.span_min != 1 or recipe.span_max != 1)


def floor_probs(data, live, recipe, C: float, copies: int, seed: int, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """LOSO class-balanced logistic regression: (composite probs (N, 3), live probs (M, 3)), each clip by
    the fold that held out its subject."""
    import torch

    from mex.labels import INPUT_SHAPE, NUM_CLASSES
    from train.batched import augment
    from train.loso import fold_index, loso_folds, training_clips

    from .floor import fit_logreg, predict_proba

    size = int(np.prod(INPUT_SHAPE))
    subjects, fold_of = loso_folds(data)
    train_set, train_fold = training_clips(data, recipe, live)
    live_fold = fold_index(live, subjects, "live")
    copies = copies if augments(recipe) else 0
    gen = torch.Generator().manual_seed(seed)

    def flat(x):
        return x.reshape(len(x), size).astype(np.float64)

    p_data, p_live = np.zeros((len(data), NUM_CLASSES)), np.zeros((len(live), NUM_CLASSES))
    task = progress.add_task("LOSO folds (floor)", total=len(subjects), info="") if progress else None
    for f in range(len(subjects)):
        fit = train_fold != f
        x, y = train_set.x[fit], train_set.y[fit]
        xs = [x] + [augment(torch.from_numpy(x), recipe, gen).numpy() for _ in range(copies)]
        # C / (copies + 1): the mean loss over the copies with the same penalty (identical copies change nothing)
        w = fit_logreg(flat(np.concatenate(xs)), np.tile(y, copies + 1), C / (copies + 1), True, NUM_CLASSES)
        p_data[fold_of == f] = predict_proba(flat(data.x[fold_of == f]), w)
        p_live[live_fold == f] = predict_proba(flat(live.x[live_fold == f]), w)
        if progress:
            progress.advance(task)
    return p_data, p_live


def gap_scores(rows: list[dict], live_rows: list[dict]) -> dict:
    """The report's numbers from the two predictions files alone: on the live clips, composite vs live
    UF1 / UAR / accuracy, the gap, per-clip agreement; the composite LOSO over every clip."""
    from train.metrics import score_rows
    from train.metrics import uf1_uar

    by_clip = {(r["dataset"], r["subject"], r["clip"]): r for r in rows}
    missing = [r["clip"] for r in live_rows if (r["dataset"], r["subject"], r["clip"]) not in by_clip]
    if missing:
        raise ValueError(f"live clips without a composite prediction: {', '.join(missing[:5])}")
    paired = [by_clip[(r["dataset"], r["subject"], r["clip"])] for r in live_rows]
    y = np.array([r["label"] for r in live_rows])

    def scores(rs):
        pred = np.array([r["pred"] for r in rs])
        return {**uf1_uar(y, pred), "accuracy": float((pred == y).mean())}

    composite, live = scores(paired), scores(live_rows)
    return {
        "clips": len(live_rows),
        "composite": composite,
        "live": live,
        "gap": {k: composite[k] - live[k] for k in composite},
        "agreement": float(np.mean([a["pred"] == b["pred"] for a, b in zip(paired, live_rows)])),
        "composite_loso": {"clips": len(rows), **score_rows(rows)["pooled"]["full"]},
    }


def gap_markdown(payload: dict) -> str:
    env, g = payload["environment"], payload["scores"]
    c, lv, gap, full = g["composite"], g["live"], g["gap"], g["composite_loso"]
    lines = [
        f"### Live-encoder gap: {payload['learner']} ({env['machine']}, {env['cpu']}; {payload['seconds']:.0f} s)",
        "",
        *([f"`{payload['command']}`", ""] if payload["command"] else []),
        f"| {g['clips']} CASME II clips, LOSO | UF1 | UAR | accuracy |",
        "|---|---|---|---|",
        f"| composite images | {c['uf1']:.3f} | {c['uar']:.3f} | {c['accuracy']:.3f} |",
        f"| live encodings (mex.features.encode) | {lv['uf1']:.3f} | {lv['uar']:.3f} | {lv['accuracy']:.3f} |",
        f"| gap (composite - live) | {gap['uf1']:+.3f} | {gap['uar']:+.3f} | {gap['accuracy']:+.3f} |",
        "",
        f"Same prediction on both encodings: {g['agreement']:.3f} of the clips. Composite LOSO over all "
        f"{full['clips']} clips: Full UF1 / UAR {full['uf1']:.3f} / {full['uar']:.3f}.",
        "",
    ]
    return "\n".join(lines)


def model_fidelity(model: str, data_dir: str, live_dir: str, out: Path) -> str:
    """An exported model on the live clips, both encodings: accuracy on each and how often they agree.
    For a model trained on these clips this measures fidelity to its training images, not generalisation."""
    from mex.composite import load_flow_folder
    from realtime.runtimes import load_runtime

    data, live = load_flow_folder(data_dir), load_flow_folder(live_dir)
    runtime = load_runtime(model, kind="onnxruntime")
    composite = runtime.probs(data.x[live_index(data, live)].astype(np.float32)).argmax(1)
    encoded = runtime.probs(live.x.astype(np.float32)).argmax(1)
    md = ("| model | clips | accuracy, composite images | accuracy, live encodings | same label "
          "|\n|---|---|---|---|---|\n"
          f"| `{model}` | {len(live)} | {(composite == live.y).mean():.3f} | {(encoded == live.y).mean():.3f} | "
          f"{(composite == encoded).mean():.3f} |\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "live-gap-model.md").write_text(md)
    return md


def table(runs: list[str], out: Path) -> str:
    """Markdown over live-gap folders, re-scored from their two predictions files: a row per run, then the
    mean ± std (over runs, sample std) of each learner's runs."""
    import json
    import shlex
    import sys

    from train.predictions import read_predictions

    rows = []
    for run_dir in map(Path, runs):
        try:
            meta = json.loads((run_dir / "live-gap.json").read_text())
            g = gap_scores(read_predictions(run_dir / "predictions.csv"),
                           read_predictions(run_dir / "predictions-live.csv"))
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"mex-bench live-gap --table: {run_dir}: {e}")
        rows.append((meta["learner"], run_dir.name, g))

    def cells(gs: list[dict]) -> str:
        def fmt(vals):
            v = np.array(vals)
            return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")
        return " | ".join(fmt([pick(g) for g in gs]) for pick in (
            lambda g: g["composite"]["uf1"], lambda g: g["live"]["uf1"], lambda g: g["gap"]["uf1"],
            lambda g: g["gap"]["uar"], lambda g: g["agreement"], lambda g: g["composite_loso"]["uf1"],
            lambda g: g["composite_loso"]["uar"]))

    lines = [f"`{shlex.join(['mex-bench', 'live-gap', *sys.argv[sys.argv.index('live-gap') + 1:]])}`"
             if "live-gap" in sys.argv else "", "",
             "| learner | run(s) | composite UF1 (138 clips) | live UF1 | gap UF1 | gap UAR | same prediction | "
             "Full UF1 (442) | Full UAR |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {learner} | {name} | {cells([g])} |" for learner, name, g in rows]
    for learner in dict.fromkeys(r[0].split(", seed")[0] for r in rows):
        group = [g for name, _, g in rows if name.split(", seed")[0] == learner]
        lines.append(f"| **{learner}** | mean ± std of {len(group)} | {cells(group)} |")
    md = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "live-gap-table.md").write_text(md)
    return md


def run(args) -> int:
    import shlex
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mex.composite import DataError, load_flow_folder
    from train.cli import _parse_sets
    from train.loop import pick_device
    from train.loso import run_loso
    from train.predictions import prediction_row, read_predictions, write_csv
    from train.recipes import resolve

    if args.frames:
        from .live_gap_frames import run as run_frames

        return run_frames(args)
    if args.out is None:
        raise SystemExit("mex-bench live-gap: --out is required (a folder of its own; nothing goes to "
                         "benchmarks/results/ unasked)")
    if args.table:
        print(table(args.table, Path(args.out)))
        return 0
    if args.model:
        print(model_fidelity(args.model, args.data, args.live, Path(args.out)))
        return 0
    try:
        recipe_sets, model_sets = _parse_sets(args.set)
        profile = resolve(args.profile, epochs=args.epochs, **recipe_sets)
        profile.model_config.update(model_sets)
        data, live = load_flow_folder(args.data), load_flow_folder(args.live)
        live_index(data, live)
        if args.C <= 0 or args.copies < 0:
            raise ValueError(f"--C must be > 0 and --copies >= 0, got {args.C}, {args.copies}")
    except (ValueError, DataError) as e:
        raise SystemExit(f"mex-bench live-gap: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    start = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as progress:
        if args.floor:
            p_data, p_live = floor_probs(data, live, profile.recipe, args.C, args.copies, args.seed, progress)
            write_csv(out / "predictions.csv", [prediction_row(data, i, p_data[i]) for i in range(len(data))])
            write_csv(out / "predictions-live.csv", [prediction_row(live, i, p_live[i]) for i in range(len(live))])
            learner = f"class-balanced logistic regression, C = {args.C:g}, recipe of {args.profile!r}"
        else:
            try:
                run_loso(data, profile, out, pick_device(args.device), seed=args.seed, progress=progress,
                         precision=args.precision,
                         live=live, predict_also={"live": live})
            except ValueError as e:  # RunMismatch, a bad device or precision
                raise SystemExit(f"mex-bench live-gap: {e}")
            learner = f"profile {args.profile!r} ({profile.model}), seed {args.seed}, {profile.recipe.epochs} epochs"
    seconds = time.perf_counter() - start
    payload = {
        "benchmark": "live-gap",
        "learner": learner,
        "command": shlex.join(["mex-bench", "live-gap",
                               *sys.argv[sys.argv.index("live-gap") + 1:]]) if "live-gap" in sys.argv else "",
        "environment": environment(),
        "data": str(args.data),
        "live": str(args.live),
        "floor": {"C": args.C, "copies": args.copies if augments(profile.recipe) else 0} if args.floor else None,
        "profile": profile.to_dict(),
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "scores": gap_scores(read_predictions(out / "predictions.csv"), read_predictions(out / "predictions-live.csv")),
    }
    write_json(out / "live-gap.json", payload)
    markdown = gap_markdown(payload)
    (out / "live-gap.md").write_text(markdown)
    print(markdown)
    console.print(f"wrote {out}/live-gap.md, live-gap.json, predictions.csv, predictions-live.csv ({seconds:.0f} s)")
    return 0
