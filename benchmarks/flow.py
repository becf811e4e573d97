"""mex-bench flow: every optical-flow backend side by side at the live crop size, speed and parity.

All numbers go through the one feature path (mex.features.encode_batch / crop_flow), so they include
the edge padding (128 px crops are solved at 144 px) and the 28x28 encoding.

Per backend, in one run on one machine:
- latency: one pair (batch 1), median of `--repeats` calls to encode_batch, in ms;
- throughput: one call with a batch of `--batch` pairs (GPU backends) or `--cpu-batch` pairs (CPU
  backends), pairs per second;
- parity on `--pairs` synthetic face pairs with known motion (mex.features.synthetic): mean EPE
  against the truth and against OpenCV's CPU TV-L1 (interior, 1/8 of the side in from each edge), the
  backend's EPE as a ratio of OpenCV's (issue 3 target <= 1.10), and the lowest and mean correlation
  of its encoded 3x28x28 features with the CPU path's (target >= 0.98).

Backend labels: cpu, numba, opencv-cuda, torch (on CUDA with Triton: one Triton launch per pyramid level
and warp, the whole solve replayed as a CUDA graph), torch-nograph (the same kernels without the
graph), torch-eager (the eager torch loop on CUDA), torch-cpu (the torch solver on the CPU). The
torch variants on CUDA report the inner iterations of the last batch (per pair for the Triton path).

Issue 3 speed targets (one H100, 128x128): one pair <= 2 ms; batches of 256 >= 5,000 pairs/s.
"""
from __future__ import annotations

import os
import time

import numpy as np

from mex.outputs import write_text

from .common import environment, results_dir, write_json

TARGET_LATENCY_MS = 2.0
TARGET_PAIRS_PER_S = 5000.0
TARGET_EPE_RATIO = 1.10
TARGET_CORRELATION = 0.98


def add_arguments(p) -> None:
    from mex.features import CROP_SIZE

    p.add_argument("--size", type=int, default=CROP_SIZE, help=f"crop side in px (default {CROP_SIZE}, the live crop)")
    p.add_argument("--pairs", type=int, default=8, help="synthetic pairs for the parity numbers (default 8)")
    p.add_argument("--batch", type=int, default=256, help="throughput batch for GPU backends (default 256)")
    p.add_argument("--cpu-batch", type=int, default=16, help="throughput batch for CPU backends (default 16)")
    p.add_argument("--repeats", type=int, default=5, help="batch-1 calls for the latency median (default 5)")
    p.add_argument("--backends", default=None,
                   help="comma-separated: cpu, numba, opencv-cuda, torch, torch-nograph, torch-eager, torch-cpu "
                        "(default: all available here; the torch-* variants are only run when named)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch CPU threads for torch-cpu (default 1: the solve is many tiny ops, where OpenMP's "
                        "fork/join costs more than the threads save)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-reference", metavar="NPZ",
                   help="also save the synthetic pairs, their true flow and OpenCV's CPU flow to this file")
    p.add_argument("--reference", metavar="NPZ",
                   help="take pairs, truth and OpenCV's flow from a --save-reference file instead: parity "
                        "against OpenCV on a machine without opencv-contrib (the GPU machine)")


def _backend(label: str):
    """A backend label -> FlowBackend. torch-cpu forces the torch solver onto the CPU; torch-nograph
    and torch-eager are the CUDA solver without the CUDA graph and without the Triton kernel."""
    from mex.features import get_backend
    from mex.features.backends import TorchFlow

    variants = {"torch-cpu": lambda: TorchFlow("cpu"),
                "torch-nograph": lambda: TorchFlow("cuda", cuda_graph=False),
                "torch-eager": lambda: TorchFlow("cuda", fused=False)}
    return variants[label]() if label in variants else get_backend(label)


def _default_labels() -> list[str]:
    from mex.features import available_backends

    labels = available_backends()
    # "torch" is the CUDA solver where there is CUDA; on the CPU it is listed as what it is.
    return ["torch-cpu" if (b == "torch" and not _has_cuda()) else b for b in labels]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def interior_epe(flow: np.ndarray, truth: np.ndarray, margin: int) -> float:
    """Mean end-point error of a (2, H, W) flow against the truth, `margin` px in from every edge."""
    return float(np.sqrt(((flow - truth) ** 2).sum(0))[margin:-margin, margin:-margin].mean())


def _measure(label: str, args, onset, apex, truth, reference, reference_features) -> dict:
    import torch

    from mex.features import crop_flow, encode_batch, flow_to_features

    backend = _backend(label)
    on_gpu = backend.device.startswith("cuda")
    margin = args.size // 8

    t0 = time.perf_counter()
    u, v = crop_flow(onset, apex, backend)
    first_call_s = time.perf_counter() - t0
    flows = np.stack([u, v], axis=1)
    features = flow_to_features(u, v)
    row = {
        "backend": label,
        "device": backend.device,
        "epe_truth_px": float(np.mean([interior_epe(f, t, margin) for f, t in zip(flows, truth)])),
        "first_call_s": first_call_s,
    }
    if reference is not None:
        row["epe_vs_opencv_px"] = float(np.mean([interior_epe(f, r, margin) for f, r in zip(flows, reference)]))
        row["epe_ratio_vs_opencv"] = row["epe_truth_px"] / np.mean([interior_epe(r, t, margin)
                                                                    for r, t in zip(reference, truth)])
        corr = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(features, reference_features)]
        row["feature_corr_min"], row["feature_corr_mean"] = min(corr), float(np.mean(corr))

    one_onset, one_apex = [onset[0].astype(np.uint8)], [apex[0].astype(np.uint8)]
    encode_batch(one_onset, one_apex, backend)  # warm-up (CUDA context, kernels, resize matrices)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        encode_batch(one_onset, one_apex, backend)  # returns numpy: the GPU work has finished
        times.append(time.perf_counter() - t0)
    row["latency_ms_p50"] = 1000.0 * float(np.median(times))

    batch = args.batch if on_gpu else args.cpu_batch
    reps = -(-batch // len(onset))
    batch_onset = list(np.tile(onset, (reps, 1, 1))[:batch].astype(np.uint8))
    batch_apex = list(np.tile(apex, (reps, 1, 1))[:batch].astype(np.uint8))
    if on_gpu:
        encode_batch(batch_onset, batch_apex, backend)  # warm-up at this batch size
    t0 = time.perf_counter()
    encode_batch(batch_onset, batch_apex, backend)
    row["batch"] = batch
    row["pairs_per_s"] = batch / (time.perf_counter() - t0)
    solver = getattr(backend, "solver", None)
    if label == "numba":
        row["inner_iterations_last_pair"] = solver.inner_iterations_run
    elif solver is not None:
        row["fused_triton_level"] = solver.fused
        row["cuda_graph"] = bool(backend.cuda_graph and not backend._graph_failed)
        if solver.fused:  # per pair, all levels and warps (the batch runs as long as its slowest pair)
            per_pair = solver.iterations_per_pair.cpu().numpy()
            row["inner_iterations_per_pair_max"] = int(per_pair.max())
            row["inner_iterations_per_pair_mean"] = float(per_pair.mean())
        else:
            row["inner_iterations_last_batch"] = solver.inner_iterations_run
    if label == "torch-cpu":
        row["torch_threads"] = torch.get_num_threads()
    return row


def _load_reference(args):
    """(onset, apex, truth, OpenCV flow) from a --save-reference file; its size and seed replace the flags'."""
    try:
        ref = np.load(args.reference)
        onset, apex, truth, flow = (ref[k] for k in ("onset", "apex", "truth", "opencv_flow"))
        args.size, args.seed = int(ref["size"]), int(ref["seed"])
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"--reference {args.reference}: not a file written by --save-reference ({e})") from None
    args.pairs = len(onset)
    return onset.astype(np.float32), apex.astype(np.float32), truth, flow


def _markdown(env: dict, args, rows: list[dict]) -> str:
    lines = [
        f"# mex-bench flow on {env['machine']} ({env.get('gpu', env['cpu'])}, {env['cpu_count']} CPUs)",
        "",
        f"{env['when']}; load average {env['load_average_1min']:.1f} at the start; crops {args.size}x{args.size} "
        f"(solved at {args.size + 16} px with the edge padding); "
        f"parity on {args.pairs} synthetic face pairs (0.5-2 px smooth motion, noise 1.5 grey levels).",
        "",
        "| backend | device | batch-1 latency ms | batch | pairs/s | EPE vs truth px | EPE / OpenCV's | "
        "EPE vs OpenCV px | feature corr min / mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        corr = f"{r['feature_corr_min']:.4f} / {r['feature_corr_mean']:.4f}" if "feature_corr_min" in r else "n/a"
        ratio = f"{r['epe_ratio_vs_opencv']:.3f}" if "epe_ratio_vs_opencv" in r else "n/a"
        vs = f"{r['epe_vs_opencv_px']:.4f}" if "epe_vs_opencv_px" in r else "n/a"
        lines.append(f"| {r['backend']} | {r['device']} | {r['latency_ms_p50']:.2f} | {r['batch']} | "
                     f"{r['pairs_per_s']:.1f} | {r['epe_truth_px']:.4f} | {ratio} | {vs} | {corr} |")
    lines += ["", f"Targets (issue 3, one H100): batch-1 <= {TARGET_LATENCY_MS} ms, batch 256 >= "
              f"{TARGET_PAIRS_PER_S:.0f} pairs/s; parity: EPE / OpenCV's <= {TARGET_EPE_RATIO}, "
              f"feature correlation >= {TARGET_CORRELATION}.", ""]
    return "\n".join(lines)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    import torch

    from mex.features import crop_flow, flow_to_features
    from mex.features.synthetic import synthetic_pairs

    torch.set_num_threads(args.torch_threads) if not _has_cuda() else None
    env = environment()
    # the machine may be shared: the 1-minute load average before the run says how far to trust timings
    env["load_average_1min"] = os.getloadavg()[0]
    labels = args.backends.split(",") if args.backends else _default_labels()
    reference = reference_features = None
    if args.reference:
        onset, apex, truth, reference = _load_reference(args)
        reference_features = flow_to_features(reference[:, 0], reference[:, 1])
        env["reference"] = args.reference
    else:
        pairs = synthetic_pairs(args.pairs, args.size, seed=args.seed)
        onset = np.stack([p.onset for p in pairs]).astype(np.float32)
        apex = np.stack([p.apex for p in pairs]).astype(np.float32)
        truth = np.stack([p.flow for p in pairs])
        if "cpu" in labels or args.save_reference:
            u, v = crop_flow(onset, apex, _backend("cpu"))
            reference, reference_features = np.stack([u, v], axis=1), flow_to_features(u, v)
        if args.save_reference:
            import cv2

            np.savez_compressed(args.save_reference, onset=onset.astype(np.uint8), apex=apex.astype(np.uint8),
                                truth=truth, opencv_flow=reference, size=args.size, seed=args.seed,
                                opencv=cv2.__version__)
            print(f"wrote {args.save_reference}")

    rows = [_measure(label, args, onset, apex, truth, reference, reference_features) for label in labels]

    table = Table(title=f"mex-bench flow on {env['machine']} ({args.size}x{args.size} crops)")
    for col in ("backend", "device", "batch-1 ms", "batch", "pairs/s", "EPE truth px", "EPE/OpenCV",
                "EPE vs OpenCV px", "feat corr min"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["backend"], r["device"], f"{r['latency_ms_p50']:.2f}", str(r["batch"]),
                      f"{r['pairs_per_s']:.1f}", f"{r['epe_truth_px']:.4f}",
                      f"{r.get('epe_ratio_vs_opencv', float('nan')):.3f}",
                      f"{r.get('epe_vs_opencv_px', float('nan')):.4f}",
                      f"{r.get('feature_corr_min', float('nan')):.4f}")
    Console(width=160).print(table)

    out = results_dir(args.out)
    payload = {
        "benchmark": "flow",
        "environment": env,
        "settings": {k: getattr(args, k) for k in ("size", "pairs", "batch", "cpu_batch", "repeats", "seed",
                                                    "torch_threads")},
        "targets": {"latency_ms": TARGET_LATENCY_MS, "pairs_per_s_batch_256": TARGET_PAIRS_PER_S,
                    "epe_ratio_vs_opencv": TARGET_EPE_RATIO, "feature_correlation": TARGET_CORRELATION,
                    "note": "speed targets are for one H100; parity targets hold on any machine"},
        "results": rows,
    }
    write_json(out / "flow.json", payload)
    write_text(out / "flow.md", _markdown(env, args, rows), flag="--out")
    print(f"wrote {out / 'flow.json'} and {out / 'flow.md'}")
    parity_ok = all(r.get("epe_ratio_vs_opencv", 0) <= TARGET_EPE_RATIO and
                    r.get("feature_corr_min", 1) >= TARGET_CORRELATION for r in rows)
    return 0 if parity_ok else 1
