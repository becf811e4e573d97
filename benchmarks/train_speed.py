"""mex-bench train: how long LOSO training takes when the folds are stacked, against one fold at a time.

Times real training steps (forward, backward, AdamW) of a profile's model on random 3x28x28
batches: all folds x seeds stacked with vmap versus a single model, on the same device in the
same run; then extrapolates each to the profile's whole schedule (68 folds x epochs x steps).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mex.models import build_model, num_params
from mex.outputs import write_text
from train.batched import Members, autocast, optimizer
from train.recipes import PROFILES, resolve

from .common import environment, results_dir, write_json

FOLDS, CLIPS = 68, 442


def add_arguments(p) -> None:
    p.add_argument("--profiles", default="cpu-quick,ours,paper",
                   help="comma-separated profile names (train/recipes.py)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after 2 warm-up steps)")
    p.add_argument("--precisions", default="auto",
                   help="comma-separated fp32,bf16 (forward-pass precision); auto = fp32 on the CPU, fp32,bf16 on CUDA")


def _time_steps(step, n: int, device) -> float:
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def measure(profile_name: str, device: torch.device, steps: int, precision: str = "fp32") -> dict:
    """One training step as train/loop.py takes it (forward under `precision`, fp32 loss, AdamW)."""
    prof = resolve(profile_name)
    r = prof.recipe
    make = lambda: build_model(prof.model, **prof.model_config)  # noqa: E731
    members_n = FOLDS * r.seeds
    stacked = Members(make, members_n, 0, device)
    opt = optimizer(stacked.params.values(), r, device)
    x = torch.rand(members_n, r.batch_size, 3, 28, 28, device=device)
    y = torch.randint(0, 3, (members_n, r.batch_size), device=device)

    def stacked_step():
        with autocast(device, precision):
            logits = stacked.forward(stacked.params, x, train=True)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                                 reduction="sum") / r.batch_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    single = make().to(device).train()
    opt1 = optimizer(single.parameters(), r, device)

    def single_step():
        with autocast(device, precision):
            logits = single(x[0])
        loss = torch.nn.functional.cross_entropy(logits.float(), y[0])
        opt1.zero_grad(set_to_none=True)
        loss.backward()
        opt1.step()

    t_stacked = _time_steps(stacked_step, steps, device)
    t_single = _time_steps(single_step, steps, device)
    steps_per_epoch = -(-(CLIPS - 1) // r.batch_size)  # the largest training set: 441 clips
    schedule_steps = r.epochs * steps_per_epoch
    return {
        "profile": profile_name,
        "precision": precision,
        "model": prof.model,
        "params": num_params(single),
        "models_stacked": members_n,
        "batch_size": r.batch_size,
        "epochs": r.epochs,
        "step_ms_stacked": t_stacked * 1e3,
        "step_ms_one_model": t_single * 1e3,
        "schedule_s_stacked": t_stacked * schedule_steps,
        "schedule_s_one_after_another": t_single * schedule_steps * members_n,
        "speedup": t_single * members_n / t_stacked,
    }


def run(args) -> int:
    from train.loop import pick_device

    device = pick_device(args.device)
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise SystemExit(f"--profiles: unknown profile(s) {', '.join(unknown)}; known: {', '.join(PROFILES)}")
    precisions = (["fp32", "bf16"] if device.type == "cuda" else ["fp32"]) if args.precisions == "auto" \
        else [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad:
        raise SystemExit(f"--precisions: unknown {', '.join(bad)}; use fp32 and/or bf16")
    console = Console()
    rows = []
    for name in names:
        for precision in precisions:
            console.print(f"timing {name} ({precision}) on {device} ...")
            rows.append(measure(name, device, args.steps, precision))
    env = environment()
    table = Table(title=f"LOSO training speed on {env['machine']} ({device})")
    for col in ("profile", "precision", "params", "models", "step stacked", "step 1 model", "schedule stacked",
                "one after another", "speed-up"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["profile"],
            r["precision"],
            f"{r['params']:,}",
            str(r["models_stacked"]),
            f"{r['step_ms_stacked']:.1f} ms",
            f"{r['step_ms_one_model']:.1f} ms",
            _hms(r["schedule_s_stacked"]),
            _hms(r["schedule_s_one_after_another"]),
            f"{r['speedup']:.1f}x",
        )
    console.print(table)
    out = results_dir(args.out)
    write_json(out / "train_speed.json", {"environment": env, "device": str(device), "results": rows})
    md = [
        f"# mex-bench train on {env['machine']} ({device})",
        "",
        f"{env['when']}; python {env['python']}; {env['versions']}",
        "",
        "Schedule times are extrapolated from timed steps: epochs x ceil(441 / batch) steps.",
        "",
        "| profile | precision | params | models stacked | step, stacked | step, one model | whole schedule, stacked | "
        "one fold after another | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['profile']} | {r['precision']} | {r['params']:,} | {r['models_stacked']} | "
            f"{r['step_ms_stacked']:.1f} ms | {r['step_ms_one_model']:.1f} ms "
            f"| {_hms(r['schedule_s_stacked'])} | {_hms(r['schedule_s_one_after_another'])} | {r['speedup']:.1f}x |"
        )
    write_text(out / "train_speed.md", "\n".join(md) + "\n", flag="--out")
    console.print(f"wrote {out}/train_speed.json, train_speed.md")
    return 0


def _hms(s: float) -> str:
    s = float(np.round(s))
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"
