"""mex-train: LOSO evaluation, final fit, and the paper's tables and figures from saved predictions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mex import version_line
from mex.outputs import OutputError, Outputs, write_text

from .datasets import add_prepare_arguments, prepare_command
from .recipes import MODEL_FAMILIES, PRECISIONS, PROFILES

REPO = Path(__file__).resolve().parents[1]
# the repository's data, wherever the command runs from
COMPOSITE = str(REPO / "data" / "megc2019-composite-flow")
LIVE = str(REPO / "data" / "casme2-live-encoded")

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=COMPOSITE,
                   help="composite-format folder (labels.csv + PNGs; default the repository's "
                   "data/megc2019-composite-flow)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--profile", default="ours", choices=sorted(PROFILES), help="model + recipe (train/recipes.py)")
    p.add_argument("--model", choices=MODEL_FAMILIES, help="model family (default: the profile's)")
    p.add_argument("--epochs", type=int, help="override the profile's epochs")
    p.add_argument("--seeds", type=int, help="models per fold whose probabilities are averaged")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="forward-pass precision; auto = bf16 on a CUDA GPU, fp32 on the CPU")
    p.add_argument("--save-every", type=float, default=30.0, metavar="SECONDS",
                   help="how often the resumable state is written")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field (e.g. --set mixup=0) or a model field (e.g. --set model.drop=0.2)",
    )


def _parse_sets(items: list[str]) -> tuple[dict, dict]:
    from dataclasses import fields

    from .recipes import Recipe

    known = {f.name: f.type for f in fields(Recipe)}
    recipe, model = {}, {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key.startswith("model."):
            model[key[6:]] = tuple(value) if isinstance(value, list) else value
        elif key in known:
            recipe[key] = value
        else:
            raise ValueError(f"--set {item!r}: unknown recipe field {key!r}; known: {', '.join(known)} or "
                             "model.<field>")
    return recipe, model


def _profile(args, extra_sets: list[str] = ()):
    from .recipes import resolve

    recipe_sets, model_sets = _parse_sets([*args.set, *extra_sets])
    prof = resolve(args.profile, args.model, args.epochs, args.seeds, **recipe_sets)
    if model_sets:
        from mex.models import build_model

        prof.model_config.update(model_sets)
        build_model(prof.model, **prof.model_config)  # fail now, naming the field, not after data loading
    return prof


def _add_live(p: argparse.ArgumentParser) -> None:
    p.add_argument("--live", default=LIVE, metavar="DIR",
                   help="live-encoded clips (composite format) trained on when the recipe's live_clips is on")


def _live(args, prof):
    """The --live folder, read only when the recipe trains on it."""
    from mex.composite import load_flow_folder

    return load_flow_folder(args.live) if prof.recipe.live_clips else None


def cmd_loso(args) -> int:

    from mex.composite import load_flow_folder

    from .loop import pick_device
    from .loso import run_loso
    from .report import write_reports

    prof = _profile(args)
    device = pick_device(args.device)
    data = load_flow_folder(args.data)
    out = Path(args.out)
    console.print(
        f"LOSO: {len(data)} clips, {len(data.subjects)} folds x {prof.recipe.seeds} seed(s) batched on {device}; "
        f"{prof.model} {prof.model_config}; {prof.recipe.epochs} epochs"
    )
    with _progress() as progress:
        results = run_loso(
            data, prof, out, device, seed=args.seed, eval_every=args.eval_every, progress=progress,
            save_every_s=args.save_every,
            precision=args.precision, live=_live(args, prof), keep_models=args.keep_models,
        )
    write_reports(out)
    p = results["pooled"]
    console.print(
        "pooled UF1/UAR  "
        + "  ".join(f"{k}: {v['uf1']:.4f}/{v['uar']:.4f}" for k, v in p.items())
        + f"  ({results['wall_s']} s)"
    )
    console.print(f"wrote {out}/predictions.csv, results.json, curve.csv, report.md, confusion.png, curve.png"
                  + (f", folds/ ({len(data.subjects)} fold models)" if args.keep_models else ""))
    return 0


def cmd_fit(args) -> int:
    from mex.composite import load_flow_folder

    from .fit import fit_all
    from .loop import pick_device

    prof = _profile(args)
    data = load_flow_folder(args.data)
    with _progress() as progress:
        path = fit_all(
            data, prof, Path(args.out), pick_device(args.device), args.seed, progress, loso_dir=args.loso,
            save_every_s=args.save_every,
            precision=args.precision, live=_live(args, prof),
        )
    console.print(f"wrote {path}")
    return 0


def cmd_select(args) -> int:
    import re

    from mex.composite import load_flow_folder

    from .loop import pick_device
    from .report import write_reports
    from .select import run_select

    candidates = [("profile", _profile(args))]
    for item in args.try_:
        candidates.append((item, _profile(args, re.split(r",(?=[\w.]+=)", item))))
    if len(candidates) < 2:
        raise ValueError("--try: give at least one candidate besides the profile (e.g. --try label_smoothing=0)")
    live = [name for name, prof in candidates if prof.recipe.live_clips]
    if live:  # the inner folds would train without them: refuse rather than select on something else
        raise ValueError(f"mex-train select does not train on live clips (live_clips is on in: {', '.join(live)}); "
                         "compare such profiles with mex-bench live-gap or mex-train loso")
    device = pick_device(args.device)
    data = load_flow_folder(args.data)
    out = Path(args.out)
    console.print(f"nested selection among {len(candidates)} candidates ({', '.join(n for n, _ in candidates)}), seed "
                  f"{args.seed}")
    with _progress() as progress:
        results = run_select(data, candidates, out, device, args.seed, args.holdout, args.repeats,
                             [Path(d) for d in args.reuse], progress, args.save_every, args.precision)
    write_reports(out)
    chosen = ", ".join(f"{n}: {c['chosen_folds']}" for n, c in results["candidates"].items())
    full = results["pooled"]["full"]
    console.print(f"folds per candidate: {chosen}\nnested-selection pooled Full UF1/UAR "
                  f"{full['uf1']:.4f}/{full['uar']:.4f}"
                  f"\nchosen on all subjects (the recipe to fit): {results['choice_for_fit']}")
    console.print(f"wrote {out}/choices.csv, choices.png, predictions.csv, results.json, report.md, confusion.png")
    return 0


def cmd_study(args) -> int:
    from mex.composite import load_flow_folder

    from .loop import pick_device
    from .studies import run_study

    data = load_flow_folder(args.data)
    with _progress() as progress:
        table = run_study(args.study, args.profile, data, Path(args.out), pick_device(args.device), args.seeds,
                          args.epochs, progress,
                           args.precision, args.only)
    print(table.read_text())
    return 0


def cmd_report(args) -> int:
    from .report import write_reports

    for d in args.runs:
        write_reports(Path(d))
        console.print(f"{d}: report.md and its figures")
    return 0


def cmd_table(args) -> int:
    from .report import ablation_table

    out = Path(args.out) if args.out else None
    text = ablation_table([Path(d) for d in args.runs], args.title, figure=out.with_suffix(".png") if out else None)
    if out:
        write_text(out, text, flag="--out")
    print(text)
    return 0


def cmd_calibrate(args) -> int:
    from .calibration import calibrate

    out = Path(args.out)
    result = calibrate([Path(r) for r in args.run], out)
    for r in result["runs"]:
        for key in ("loso", "live"):
            if key in r:
                j = r[key]
                u = j["uncertain"]
                under = "-" if u["accuracy_under"] is None else f"{u['accuracy_under']:.3f}"
                console.print(f"{r['run']} {key}: ECE {j['ece_before']:.3f} -> {j['ece_after']:.3f}, "
                              f"NLL {j['nll_before']:.3f} -> {j['nll_after']:.3f} (nested T median "
                              f"{r['nested_temperature']['median']:.3f}); top < {u['below']}: "
                              f"{u['share']:.1%} of rows, accuracy {under}")
    console.print(f"temperature to ship: {result['temperature']:.4f} ({result['fitted_on']})")
    console.print(f"wrote {out}/calibration.json, reliability.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mex-train", description=__doc__)
    parser.add_argument("--version", action="version", version=version_line("mex-train"))
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("loso", help="leave-one-subject-out: all folds trained at once, pooled UF1/UAR")
    _add_common(p)
    _add_live(p)
    p.add_argument("--eval-every", type=int, default=10, help="epochs between points of the UF1/UAR curve")
    p.add_argument("--keep-models", action="store_true",
                   help="also write every fold's final weights to OUT/folds/<subject>.pt (mex checkpoints; "
                        "<subject>-seed<k>.pt with several seeds), for mex-bench live-loso")
    p.set_defaults(func=cmd_loso)
    p = sub.add_parser("fit", help="train on all clips with the profile's recipe; writes a checkpoint")
    _add_common(p)
    _add_live(p)
    p.add_argument("--loso", help="a LOSO run folder of the same profile, whose numbers go into the model card")
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("select",
                       help="nested selection: each fold picks a candidate recipe on held-out training subjects")
    _add_common(p)
    p.add_argument("--try", dest="try_", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="a candidate: the profile with these changes (same keys as --set); repeat for more")
    p.add_argument("--holdout", type=int, default=8, help="subjects per inner validation group")
    p.add_argument("--repeats", type=int, default=2, help="random deals of the subjects into groups")
    p.add_argument("--reuse", nargs="*", default=[], metavar="RUN",
                   help="finished LOSO runs to use as a candidate's outer run when their run.json matches")
    p.set_defaults(func=cmd_select)
    p = sub.add_parser("study", help="a comparison table: fusion (Table 4), patches (Table 3) or ablation")
    p.add_argument("study", choices=["fusion", "patches", "ablation"])
    p.add_argument("--data", default=COMPOSITE)
    p.add_argument("--out", required=True)
    p.add_argument("--profile", default="ours", choices=sorted(PROFILES))
    p.add_argument("--seeds", type=int, default=3, help="runs per configuration (seeds 0..N-1) for mean ± std")
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--only", type=lambda s: [n for n in s.split(",") if n], metavar="NAME[,NAME]",
                   help="train only these configurations; the table still lists every finished one in --out")
    p.set_defaults(func=cmd_study)
    p = sub.add_parser("prepare", help="raw CASME II / SAMM / SMIC-HS frames -> a composite-format folder (cached)")
    add_prepare_arguments(p)
    p.set_defaults(func=prepare_command)
    p = sub.add_parser("report", help="(re)make report.md and plots of LOSO runs from their predictions.csv")
    p.add_argument("runs", nargs="+")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("table",
                       help="one markdown table comparing LOSO runs (ablations, patch counts, seeds, ensemble sizes)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--title", default="LOSO runs")
    p.add_argument("--out", help="write the table here (markdown) and the paired differences beside it (.png)")
    p.set_defaults(func=cmd_table)
    p = sub.add_parser("calibrate", help="temperature scaling fitted on LOSO predictions (nested per subject), "
                       "ECE / NLL before and after, reliability plot")
    p.add_argument("--run", action="append", required=True, metavar="RUN",
                   help="a LOSO run folder (its predictions.csv; predictions-live.csv too when there); repeat for "
                        "more seeds: the first run's temperature on all its rows is the one to ship")
    p.add_argument("--out", required=True, help="output folder (calibration.json, reliability.png)")
    p.set_defaults(func=cmd_calibrate)
    args = parser.parse_args(argv)
    try:  # before any work: a run must not end unable to write its results
        if args.cmd in ("loso", "fit", "select", "study"):
            Outputs([args.data]).folder("--out", args.out, make=False)  # made by the run, once its flags hold
        elif args.cmd == "calibrate":
            Outputs([Path(run) / "predictions.csv" for run in args.run]).folder("--out", args.out)
        elif args.cmd == "table" and args.out:
            read = [Path(run) / name for run in args.runs for name in ("run.json", "results.json", "predictions.csv")]
            Outputs(read, force=True).file("--out", args.out)  # a table may sit in a run's folder, not over its files
    except OutputError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        return 2
    try:
        return args.func(args)
    except OutputError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted: rerun the same command to continue from the last saved epoch")
        return 130
    # DataError, RunMismatch, CheckpointError are ValueErrors; StateNotSaved an OSError
    except (ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")  # escaped: paths and torch messages hold [brackets]
        return 2


if __name__ == "__main__":
    sys.exit(main())
