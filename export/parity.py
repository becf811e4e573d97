"""Parity between two engines on the same images: logits difference and argmax agreement.

ONNX is checked against PyTorch (max abs difference <= 1e-4); a TensorRT engine against ONNX
Runtime (fp16: argmax agreement >= 99.5 %). The report is printed and stored as JSON beside the artifact.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mex.artifact import INPUT_NAME, OUTPUT_NAME
from mex.outputs import write_text

ONNX_TOLERANCE = 1e-4  # ONNX Runtime vs PyTorch, max abs logit difference
FP32_ENGINE_TOLERANCE = 1e-3  # TensorRT fp32 (TF32 off) vs ONNX Runtime: kernel choice reorders sums
FP16_MIN_AGREEMENT = 0.995  # TensorRT fp16 vs ONNX Runtime, share of identical argmax


def onnxruntime_logits(model: str | Path | bytes, x: np.ndarray) -> np.ndarray:
    """Logits from ONNX Runtime CPU: the reference side of the TensorRT check, the tested side of the ONNX check."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def compare(reference: np.ndarray, candidate: np.ndarray, *, reference_name: str, candidate_name: str,
            tolerance: float | None = None, min_agreement: float | None = None) -> dict:
    """Report dict; `passed` applies whichever of tolerance / min_agreement is given."""
    if reference.shape != candidate.shape:
        raise ValueError(f"parity: {candidate_name} gave shape {candidate.shape}, {reference_name} {reference.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agreement = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    max_abs = float(diff.max())
    passed = (tolerance is None or max_abs <= tolerance) and (min_agreement is None or agreement >= min_agreement)
    return {
        "reference": reference_name,
        "candidate": candidate_name,
        "images": int(reference.shape[0]),
        "max_abs_diff": max_abs,
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": agreement,
        "tolerance": tolerance,
        "min_agreement": min_agreement,
        "passed": bool(passed),
    }


def print_report(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"parity: {report['candidate']} vs {report['reference']} on {report['images']} images")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("required", justify="right")
    tol, agree = report["tolerance"], report["min_agreement"]
    table.add_row("max |Δ logit|", f"{report['max_abs_diff']:.2e}", "-" if tol is None else f"≤ {tol:.0e}")
    table.add_row("mean |Δ logit|", f"{report['mean_abs_diff']:.2e}", "-")
    table.add_row("argmax agreement", f"{report['argmax_agreement']:.2%}", "-" if agree is None else f"≥ {agree:.1%}")
    console.print(table)
    console.print("[green]parity passed[/]" if report["passed"] else "[red]parity FAILED[/]")


def write_report(path: Path, report: dict) -> Path:
    return write_text(path, json.dumps(report, indent=2) + "\n", flag="--out")
