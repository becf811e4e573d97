"""What every benchmark records: the machine and the versions, and where results go."""
from __future__ import annotations

import json
import os
import platform
import socket
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from mex.outputs import Outputs, write_text

RESULTS = Path(__file__).resolve().parent / "results"  # committed reference results: written only when named
SCRATCH = Path("runs") / "bench"  # where a benchmark writes when --out is not given (ignored by git)


def machine_name() -> str:
    """A short stable name for the results folder: cpu<N>-<arch>, or the GPU's name when there is one."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0).lower().replace("nvidia ", "").replace(" ", "-")
    except ImportError:
        pass
    return f"cpu{os.cpu_count()}-{platform.machine()}"


def environment() -> dict:
    versions = {}
    for dist in ("torch", "numpy", "scipy", "onnxruntime", "onnx", "opencv-contrib-python", "opencv-python-headless",
                 "mediapipe"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    env = {
        "machine": machine_name(),
        "host": socket.gethostname(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torch

        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return env


class BadInput(Exception):
    """A benchmark's input (--clip, --model...) is missing or unusable; the message names the flag (exit 2)."""


def results_dir(out: str | None) -> Path:
    """--out, else runs/bench/<machine>, checked and made (mex.outputs: OutputError when it cannot take files):
    a quick run never replaces the committed reference results (benchmarks/results/<machine>/, updated by
    naming that folder as --out)."""
    return Outputs().folder("--out", Path(out) if out else SCRATCH / machine_name())


def write_json(path: Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n", flag="--out")
