"""The checkpoint file: a trained model plus what it was trained on.

Written by `mex-train fit`, read by `mex-export`. Everything needed to rebuild the model is inside
(family name and config), together with the classes and the feature-encoding version.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .labels import CLASSES, ENCODING_VERSION
from .models import build_model
from .outputs import temporary_path

FORMAT = "mex-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or incompatible; the message names the file."""


def save_checkpoint(path: str | Path, model_name: str, model: nn.Module, meta: dict | None = None) -> None:
    blob = {
        "format": FORMAT,
        "model": model_name,
        "config": model.cfg.to_dict(),
        "classes": list(CLASSES),
        "encoding_version": ENCODING_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    with temporary_path(path, "--out") as tmp:  # a killed writer never leaves half a checkpoint
        torch.save(blob, tmp)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, the whole checkpoint dict minus weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        # torch's own message for a file it will not unpickle advises weights_only=False, which would run
        # code from the file: never pass that on
        why = "damaged, or not plain tensors" if "weights_only" in str(e) else str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {why})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mex checkpoint (expected format {FORMAT})")
    missing = [k for k in ("model", "config", "classes", "encoding_version", "state_dict") if k not in blob]
    if missing:
        raise CheckpointError(f"{path}: mex checkpoint without {', '.join(missing)} (damaged or hand-edited)")
    if blob["encoding_version"] != ENCODING_VERSION:
        raise CheckpointError(
            f"{path}: trained on feature encoding {blob['encoding_version']}, this code makes {ENCODING_VERSION}"
        )
    if list(blob["classes"]) != list(CLASSES):
        raise CheckpointError(f"{path}: classes {blob['classes']} differ from {list(CLASSES)}")
    model = build_model(blob["model"], **blob["config"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    info = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, info
