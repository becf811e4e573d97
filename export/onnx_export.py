"""PyTorch -> ONNX with the torch.export-based exporter: dynamic batch, fixed 3x28x28, metadata inside.

Why the torch.export (dynamo) exporter and not the TorchScript one: with torch 2.13 the TorchScript
tracer bakes the sample's batch size into the attention reshapes, so a model traced at batch 2 gives
wrong logits at batch 7 (max abs diff 0.4 measured); the dynamo exporter keeps the batch symbolic,
emits LayerNormalization as one op (opset >= 17) and runs the onnxscript optimizer (constant
folding, dead-code removal, pattern rewrites), which is the graph simplification we need.
"""
from __future__ import annotations

import collections
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from mex.artifact import INPUT_NAME, OUTPUT_NAME
from mex.labels import INPUT_SHAPE
from mex.outputs import temporary_path

from .errors import ExportError

MIN_OPSET = 17  # first opset with LayerNormalization as a single op
# onnx: 20 makes GELU one op (12 nodes instead of 60; ONNX Runtime batch 1 a few % faster);
# engine: 17, the newest opset TensorRT 8.6 parses (TensorRT 10 parses 9..20)
DEFAULT_OPSET = {"onnx": 20, "engine": 17}


def export_onnx(model: nn.Module, metadata: dict[str, str], opset: int = DEFAULT_OPSET["onnx"]) -> onnx.ModelProto:
    """The model as a checked ONNX ModelProto with `metadata` in metadata_props (not yet saved)."""
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: must be >= {MIN_OPSET} so LayerNorm stays one op")
    model = model.eval()
    # batch 2, not 1: torch.export specialises a sample dimension of size 1 into a constant
    sample = torch.rand(2, *INPUT_SHAPE)
    batch = torch.export.Dim("batch", min=1)
    # the exporter logs one warning per torchvision op it cannot register; torchvision is not a dependency
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations; nothing a user can act on
            program = torch.onnx.export(
                model, (sample,), None, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), optimize=True, verbose=False,
            )
    except Exception as e:  # the exporter raises many types; all mean "this model did not export"
        raise ExportError(f"torch.onnx.export failed ({type(e).__name__}: {e})") from None
    proto = program.model_proto
    proto.producer_name = "mex-export"
    onnx.helper.set_model_props(proto, metadata)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported graph fails the ONNX checker: {e}") from None
    return proto


def save_onnx(proto: onnx.ModelProto, path: str | Path, flag: str = "--out") -> Path:
    """Written whole under a temporary name, then renamed: mex-live never sees half a model."""
    with temporary_path(path, flag) as tmp:
        onnx.save(proto, tmp)
    return Path(path)


def graph_summary(proto: onnx.ModelProto) -> dict:
    """What a reader checks at a glance: opset, node count, op histogram, input shape."""
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return {
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "nodes": len(proto.graph.node),
        "ops": dict(ops.most_common()),
        "input": {"name": proto.graph.input[0].name, "shape": dims},
        "output": proto.graph.output[0].name,
    }


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(x)).numpy()
