"""ONNX -> serialized TensorRT engine through the TensorRT Python API, with an engine cache.

Written against TensorRT's documented Python API (8.6 and 10.x: Builder, OnnxParser,
IBuilderConfig, optimization profiles, build_serialized_network, execute_async_v3). TensorRT is
imported only inside these functions: everything else in mex-export runs without it.

Never run with TensorRT (docs/results.md, "What has run where"). The parts that run without it
(profile parsing, cache keys, sidecar, the ONNX side of the parity check) are tested.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mex.artifact import INPUT_NAME, OUTPUT_NAME
from mex.labels import INPUT_SHAPE
from mex.outputs import temporary_path, write_bytes, write_text

from .errors import ExportError

DEFAULT_CACHE = Path.home() / ".cache" / "mex" / "tensorrt"


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile's batch sizes; TensorRT tunes kernels for `opt`."""

    min: int = 1
    opt: int = 1  # live inference is batch 1
    max: int = 256

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """'MIN,OPT,MAX', e.g. '1,1,256'; ValueError says what is wrong."""
        parts = text.split(",")
        try:
            lo, opt, hi = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"{text!r}: expected MIN,OPT,MAX as three integers, e.g. 1,1,256") from None
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"{text!r}: need 1 <= MIN <= OPT <= MAX")
        return cls(lo, opt, hi)

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple((b, *INPUT_SHAPE) for b in (self.min, self.opt, self.max))


def require_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise ExportError(
            "TensorRT is not installed: --format engine needs the `tensorrt` Python package (NVIDIA's index) "
            "and an NVIDIA GPU; --format onnx works without it"
        ) from None
    return tensorrt


def cuda_device_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise ExportError("--format engine needs a CUDA GPU; torch sees none")
    return torch.cuda.get_device_name(0)


def cache_key(onnx_bytes: bytes, gpu: str, trt_version: str, precision: str, profile: BatchProfile,
              workspace_gib: float) -> str:
    """An engine is only valid for the GPU model and TensorRT version that built it."""
    recipe = {
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "gpu": gpu,
        "tensorrt": trt_version,
        "precision": precision,
        "profile": asdict(profile),
        "workspace_gib": workspace_gib,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, key: str, gpu: str, trt_version: str) -> Path:
    slug = gpu.lower().replace("nvidia ", "").replace(" ", "-")
    return Path(cache_dir) / f"{slug}-trt{trt_version}-{key}.engine"


def sidecar_path(engine_path: str | Path) -> Path:
    """model.engine -> model.engine.json: where mex-live reads the metadata of an engine."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path: Path, metadata: dict[str, str], build: dict) -> Path:
    """The ONNX metadata_props unchanged, plus mex.tensorrt: how and where the engine was built."""
    return write_text(sidecar_path(engine_path), json.dumps({**metadata, "mex.tensorrt": json.dumps(build)}, indent=2)
                      + "\n", flag="--out")


def build_engine(onnx_path: Path, engine_path: Path, metadata: dict[str, str], precision: str = "fp32",
                 profile: BatchProfile = BatchProfile(), workspace_gib: float = 1.0,
                 cache_dir: Path = DEFAULT_CACHE, log=print) -> dict:
    """Serialize an engine for `onnx_path` to `engine_path` (+ sidecar); reuse the cache when the key matches."""
    trt = require_tensorrt()
    gpu = cuda_device_name()
    onnx_bytes = Path(onnx_path).read_bytes()
    key = cache_key(onnx_bytes, gpu, trt.__version__, precision, profile, workspace_gib)
    cached = cache_path(cache_dir, key, gpu, trt.__version__)
    build = {"version": trt.__version__, "gpu": gpu, "precision": precision, "profile": asdict(profile),
             "workspace_gib": workspace_gib, "cache_key": key, "cache_hit": cached.is_file()}
    if cached.is_file():
        log(f"engine cache hit: {cached}")
    else:
        log(f"building TensorRT {trt.__version__} {precision} engine for {gpu} (batch "
            f"{profile.min}/{profile.opt}/{profile.max})")
        blob = _build_serialized(trt, onnx_bytes, precision, profile, workspace_gib)
        write_bytes(cached, blob, flag="--cache")
    with temporary_path(engine_path, "--out") as tmp:
        shutil.copyfile(cached, tmp)
    write_sidecar(engine_path, metadata, build)
    return build


def _build_serialized(trt, onnx_bytes: bytes, precision: str, profile: BatchProfile, workspace_gib: float) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch (the flag is gone); 8.x needs it set
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    needs_flag = explicit is not None and int(trt.__version__.split(".")[0]) < 10
    network = builder.create_network(1 << int(explicit) if needs_flag else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    # TF32 is on by default on Ampere and later; fp32 here means full fp32 so parity means something
    config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        # TensorRT's own advice: LayerNorm in fp16 can overflow its variance; keep the normalization layers fp32
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
    shapes = builder.create_optimization_profile()
    shapes.set_shape(INPUT_NAME, *profile.shapes())
    config.add_optimization_profile(shapes)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ExportError("TensorRT failed to build the engine (its log above says why)")
    return bytes(blob)


def engine_logits(engine_path: Path, x: np.ndarray, max_batch: int) -> np.ndarray:
    """Run a serialized engine on `x` in chunks of at most `max_batch`: the candidate side of the TensorRT parity check.

    export may not import realtime, so this is a minimal runner of its own (torch CUDA tensors as buffers).
    """
    import torch

    trt = require_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise ExportError(f"{engine_path}: TensorRT could not deserialize the engine")
    context = engine.create_execution_context()
    out_dtype = torch.float16 if engine.get_tensor_dtype(OUTPUT_NAME) == trt.float16 else torch.float32
    stream = torch.cuda.Stream()
    chunks = []
    with torch.cuda.stream(stream):
        for i in range(0, len(x), max_batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + max_batch], np.float32)).cuda()
            yb = torch.empty((len(xb), engine.get_tensor_shape(OUTPUT_NAME)[-1]), dtype=out_dtype, device="cuda")
            context.set_input_shape(INPUT_NAME, tuple(xb.shape))
            context.set_tensor_address(INPUT_NAME, xb.data_ptr())
            context.set_tensor_address(OUTPUT_NAME, yb.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise ExportError(f"{engine_path}: TensorRT execution failed")
            chunks.append(yb.float())
    stream.synchronize()
    return torch.cat(chunks).cpu().numpy()
