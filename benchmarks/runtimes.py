"""mex-bench runtimes: batch-1 latency and batch-256 throughput of every inference runtime present.

All runtimes run the same model through the live interface (`Runtime.probs`: input checks, inference,
softmax, result on the host), so the numbers are what mex-live pays. Runtimes that cannot run here are
listed with the reason. Model: --model, else the shipped mex/assets/default.onnx, else a freshly
initialised default-config DA-CrossViT (speed does not depend on the weights; the output says which).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mex.outputs import write_text

from benchmarks.common import environment, results_dir, write_json

TARGETS_MS = {"onnxruntime-cpu": 0.5, "torch-cuda-graph": 0.3}  # issue 4: batch-1 latency targets (p50)
TARGET_MACHINES = {"onnxruntime-cpu": "the 2-core CPU machine", "torch-cuda-graph": "one H100"}


def add_arguments(p) -> None:
    p.add_argument("--model", metavar="PATH",
                   help="a .onnx artifact or a .pt checkpoint (default: shipped model, else fresh DA-CrossViT)")
    p.add_argument("--iters", type=int, default=3000, help="timed batch-1 calls per runtime (default 3000)")
    p.add_argument("--warmup", type=int, default=300, help="untimed batch-1 calls first (default 300)")
    p.add_argument("--batch", type=int, default=256, help="throughput batch size (default 256)")
    p.add_argument("--batch-iters", type=int, default=30, help="timed throughput calls per runtime (default 30)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for ONNX Runtime and PyTorch CPU (default 1)")


def prepare_model(model: str | None, workdir: Path) -> tuple[Path, Path, str]:
    """(onnx path, checkpoint path, description): both forms of one model for the runtimes that need each."""
    import torch

    from export.onnx_export import export_onnx, save_onnx
    from mex.artifact import artifact_metadata
    from mex.checkpoint import load_checkpoint, save_checkpoint
    from mex.models import build_model, num_params
    from realtime.runtimes import DEFAULT_MODEL, OnnxRuntime

    source = Path(model) if model else (DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None)
    if source is not None and source.suffix == ".onnx":
        info = OnnxRuntime(source).info
        # ONNX weights are folded and renamed by the exporter; the torch runtimes get the same architecture,
        # fresh weights
        net = build_model(info["model"], **info["config"])
        checkpoint = workdir / "same-architecture.pt"
        save_checkpoint(checkpoint, info["model"], net)
        what = (f"{source} ({info['model']}, {num_params(net):,} parameters; "
                "torch runtimes: same architecture, fresh weights)")
        return source, checkpoint, what
    if source is None:
        torch.manual_seed(0)
        net, name, checkpoint = build_model("dacrossvit"), "dacrossvit", workdir / "fresh.pt"
        save_checkpoint(checkpoint, name, net)
        what = (f"freshly initialised default-config DA-CrossViT ({num_params(net):,} parameters; "
                "no shipped model found)")
    else:
        checkpoint = source
        net, ckpt = load_checkpoint(checkpoint)
        name = ckpt["model"]
        what = f"{checkpoint} ({name}, {num_params(net):,} parameters)"
    onnx_path = save_onnx(export_onnx(net, artifact_metadata(name, net.cfg.to_dict(), {})), workdir / "model.onnx")
    return onnx_path, checkpoint, what


def runtime_factories(onnx_path: Path, checkpoint: Path, workdir: Path, threads: int) -> list[tuple[str, object]]:
    """(name, factory or skip reason) for every runtime in the issue's list, in order."""
    import torch

    from realtime.runtimes import OnnxRuntime, TensorRTRuntime, TorchRuntime

    cuda = torch.cuda.is_available()
    no_cuda = "no CUDA GPU (torch.cuda.is_available() is False)"
    try:
        import tensorrt  # noqa: F401

        trt_missing = None if cuda else no_cuda
    except ImportError:
        trt_missing = "TensorRT is not installed (NVIDIA's index only)"

    def tensorrt(precision: str):
        from export.tensorrt import build_engine

        meta = dict(OnnxRuntime(onnx_path).session.get_modelmeta().custom_metadata_map)
        path = workdir / f"model-{precision}.engine"
        build_engine(onnx_path, path, meta, precision=precision, log=print)
        return TensorRTRuntime(path)

    return [
        ("onnxruntime-cpu", lambda: OnnxRuntime(onnx_path, threads=threads)),
        ("torch-cpu", lambda: TorchRuntime(checkpoint, device="cpu")),
        ("torch-cuda", (lambda: TorchRuntime(checkpoint, device="cuda", cuda_graph=False)) if cuda else no_cuda),
        ("torch-cuda-graph", (lambda: TorchRuntime(checkpoint, device="cuda", cuda_graph=True)) if cuda else no_cuda),
        ("tensorrt-fp32", trt_missing or (lambda: tensorrt("fp32"))),
        ("tensorrt-fp16", trt_missing or (lambda: tensorrt("fp16"))),
    ]


def measure(runtime, args, rng: np.random.Generator) -> dict:
    one = rng.random((1, 3, 28, 28), dtype=np.float32)
    many = rng.random((args.batch, 3, 28, 28), dtype=np.float32)
    for _ in range(args.warmup):
        runtime.probs(one)
    times = np.empty(args.iters)
    for i in range(args.iters):
        t0 = time.perf_counter()
        runtime.probs(one)
        times[i] = time.perf_counter() - t0
    times *= 1e3
    for _ in range(3):
        runtime.probs(many)
    t0 = time.perf_counter()
    for _ in range(args.batch_iters):
        runtime.probs(many)
    elapsed = time.perf_counter() - t0
    p50, p95, p99 = (float(v) for v in np.percentile(times, [50, 95, 99]))
    return {
        "batch1_ms": {"p50": round(p50, 4), "p95": round(p95, 4), "p99": round(p99, 4),
                      "mean": round(float(times.mean()), 4)},
        f"batch{args.batch}_images_per_s": round(args.batch * args.batch_iters / elapsed, 1),
        f"batch{args.batch}_ms": round(elapsed / args.batch_iters * 1e3, 3),
    }


def measure_all(args, workdir: Path, console) -> tuple[str, list[dict], list[dict]]:
    """(model description, measured rows, skipped runtimes with the reason)."""
    onnx_path, checkpoint, model = prepare_model(args.model, workdir)
    console.print(f"model: {model}")
    rows, skipped = [], []
    for name, factory in runtime_factories(onnx_path, checkpoint, workdir, args.threads):
        if isinstance(factory, str):
            skipped.append({"runtime": name, "reason": factory})
            continue
        try:
            runtime = factory()
        except Exception as e:  # a runtime that fails to start is reported, the others still run
            skipped.append({"runtime": name, "reason": f"failed to start: {type(e).__name__}: {e}"})
            continue
        console.print(f"measuring {runtime.name} ...")
        rows.append({"runtime": runtime.name, **measure(runtime, args, np.random.default_rng(0))})
    return model, rows, skipped


def run(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console()
    env = environment()
    load_before = os.getloadavg()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # torch-cpu gets the same thread budget as ONNX Runtime
    try:
        with tempfile.TemporaryDirectory(prefix="mex-bench-runtimes-") as tmp:
            model, rows, skipped = measure_all(args, Path(tmp), console)
    finally:
        torch.set_num_threads(threads_before)

    targets = []
    for name, limit in TARGETS_MS.items():
        row = next((r for r in rows if r["runtime"] == name), None)
        targets.append({"runtime": name, "batch1_p50_ms_max": limit, "on": TARGET_MACHINES[name],
                        "measured_p50_ms": row and row["batch1_ms"]["p50"],
                        "met": None if row is None else row["batch1_ms"]["p50"] <= limit})
    payload = {
        "environment": env,
        "load_average_1_5_15min": {"before": [round(v, 2) for v in load_before],
                                   "after": [round(v, 2) for v in os.getloadavg()]},
        "model": model,
        "settings": {"iters": args.iters, "warmup": args.warmup, "batch": args.batch, "batch_iters": args.batch_iters,
                     "threads": args.threads,
                     "measured": "Runtime.probs(): input checks + inference + softmax, host to host"},
        "runtimes": rows,
        "skipped": skipped,
        "targets": targets,
    }

    throughput_key = f"batch{args.batch}_images_per_s"
    table = Table(title=f"runtimes on {env['machine']} (threads {args.threads}, load avg {load_before[0]:.1f})")
    for col in ("runtime", "b1 p50 ms", "b1 p95 ms", "b1 p99 ms", f"b{args.batch} ms", f"b{args.batch} img/s"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for r in rows:
        b1 = r["batch1_ms"]
        table.add_row(r["runtime"], f"{b1['p50']:.3f}", f"{b1['p95']:.3f}", f"{b1['p99']:.3f}",
                      f"{r[f'batch{args.batch}_ms']:.1f}", f"{r[throughput_key]:,.0f}")
    console.print(table)
    for s in skipped:
        console.print(f"skipped {s['runtime']}: {s['reason']}")
    for t in targets:
        verdict = "not measured here" if t["met"] is None else ("met" if t["met"] else "NOT met")
        console.print(f"target {t['runtime']} batch-1 p50 ≤ {t['batch1_p50_ms_max']} ms on {t['on']}: {verdict}")

    out = results_dir(args.out)
    write_json(out / "runtimes.json", payload)
    write_text(out / "runtimes.md", markdown(payload, args.batch), flag="--out")
    console.print(f"results: {out / 'runtimes.json'}, {out / 'runtimes.md'}")
    return 0


def markdown(payload: dict, batch: int) -> str:
    env = payload["environment"]
    lines = [
        f"# mex-bench runtimes on {env['machine']}",
        "",
        f"{env['when']}, {env['cpu_count']} CPUs ({env['cpu']}){', GPU ' + env['gpu'] if 'gpu' in env else ''}, "
        f"Python {env['python']}, {', '.join(f'{k} {v}' for k, v in env['versions'].items())}.",
        f"Load average before/after (1, 5, 15 min): {payload['load_average_1_5_15min']['before']} / "
        f"{payload['load_average_1_5_15min']['after']}.",
        f"Model: {payload['model']}.",
        f"Settings: {payload['settings']}.",
        "",
        f"| runtime | batch-1 p50 ms | p95 ms | p99 ms | batch-{batch} ms | batch-{batch} images/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["runtimes"]:
        b1 = r["batch1_ms"]
        lines.append(f"| {r['runtime']} | {b1['p50']:.3f} | {b1['p95']:.3f} | {b1['p99']:.3f} | "
                     f"{r[f'batch{batch}_ms']:.1f} | {r[f'batch{batch}_images_per_s']:,.0f} |")
    lines += ["", "Skipped:"] + ([f"- {s['runtime']}: {s['reason']}" for s in payload["skipped"]] or ["- none"])
    lines += ["", "Targets (batch-1 p50):"]
    for t in payload["targets"]:
        verdict = ("not measured here" if t["met"] is None
                   else f"{t['measured_p50_ms']} ms: " + ("met" if t["met"] else "NOT met"))
        lines.append(f"- {t['runtime']} ≤ {t['batch1_p50_ms_max']} ms on {t['on']}: {verdict}")
    return "\n".join(lines) + "\n"
