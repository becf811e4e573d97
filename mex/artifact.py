"""The contract between mex-export and mex-live: metadata stored inside an exported model.

An exported artifact (an .onnx file, or a TensorRT .engine with a JSON sidecar) is the only thing
that passes from `export` to `realtime`. Export writes `artifact_metadata(...)`; live use calls
`check_metadata(...)` and refuses anything that would make its features or labels mean something else.
"""
from __future__ import annotations

import json
import math

from .labels import CLASSES, ENCODING_VERSION, INPUT_SHAPE

FORMAT = "mex-artifact-v1"
INPUT_NAME = "flow"  # (batch, 3, 28, 28) float32 in [0, 1]
OUTPUT_NAME = "logits"  # (batch, num_classes)
# an event whose calibrated top probability is under this is marked uncertain: LOSO predictions under it are
# right about half the time (mex/assets/MODEL_CARD.md, "Uncertain events")
UNCERTAIN_BELOW = 0.6


class ArtifactError(ValueError):
    """An exported model is unreadable or does not match this code; the message names the file."""


def artifact_metadata(model_name: str, config: dict, training: dict,
                      calibration: dict | None = None) -> dict[str, str]:
    """String key/values (ONNX metadata_props allow only strings). `calibration`: {"temperature": T, ...} as
    `mex-train calibrate` writes it; live use divides the logits by T before the softmax (none: T = 1)."""
    meta = {
        "mex.format": FORMAT,
        "mex.model": model_name,
        "mex.config": json.dumps(config),
        "mex.classes": json.dumps(list(CLASSES)),
        "mex.encoding_version": ENCODING_VERSION,
        "mex.input_shape": json.dumps(list(INPUT_SHAPE)),
        "mex.training": json.dumps(training),
    }
    if calibration is not None:
        meta["mex.calibration"] = json.dumps(calibration)
    return meta


def check_metadata(meta: dict[str, str], source: str) -> dict:
    """Parsed metadata, or ArtifactError naming `source` and the first field that does not match."""
    if meta.get("mex.format") != FORMAT:
        raise ArtifactError(f"{source}: not a mex model "
                            f"(metadata mex.format={meta.get('mex.format')!r}, expected {FORMAT!r})")
    if meta.get("mex.encoding_version") != ENCODING_VERSION:
        raise ArtifactError(
            f"{source}: made for feature encoding {meta.get('mex.encoding_version')!r}, "
            f"this mex-live computes {ENCODING_VERSION!r}"
        )
    try:
        classes = json.loads(meta["mex.classes"])
        shape = json.loads(meta["mex.input_shape"])
        parsed = {
            "model": meta["mex.model"],
            "config": json.loads(meta["mex.config"]),
            "training": json.loads(meta.get("mex.training", "{}")),
            "calibration": json.loads(meta.get("mex.calibration", '{"temperature": 1.0}')),
        }
    except (KeyError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{source}: metadata is incomplete or malformed ({e})") from None
    if classes != list(CLASSES):
        raise ArtifactError(f"{source}: classes {classes} differ from {list(CLASSES)}")
    if shape != list(INPUT_SHAPE):
        raise ArtifactError(f"{source}: input shape {shape} differs from {list(INPUT_SHAPE)}")
    t = parsed["calibration"].get("temperature") if isinstance(parsed["calibration"], dict) else None
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ArtifactError(f"{source}: metadata mex.calibration needs a positive temperature, got {t!r}")
    return {**parsed, "classes": classes, "input_shape": shape}
