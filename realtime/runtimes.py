"""Inference runtimes for mex-live: ONNX Runtime CPU (the default), TensorRT, PyTorch.

Every runtime answers `probs(batch)`: float32 (n, 3, 28, 28) in [0, 1] -> (n, num_classes) softmax
probabilities of the logits divided by the artifact's calibrated temperature (metadata mex.calibration; T = 1
without it), and carries `.name` and `.info` (the artifact's parsed mex metadata). A runtime is
made only from an artifact whose metadata passes mex.artifact.check_metadata: a model made for
another feature encoding, input shape or class list is refused, as is a corrupt or truncated file,
with an ArtifactError naming the file. This module imports mex only, never the export app.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

import mex
from mex.artifact import INPUT_NAME, OUTPUT_NAME, ArtifactError, artifact_metadata, check_metadata
from mex.labels import INPUT_SHAPE

DEFAULT_MODEL = Path(mex.__file__).resolve().parent / "assets" / "default.onnx"
RUNTIMES = ("onnxruntime", "tensorrt", "torch")
RUNTIME_OF_SUFFIX = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
                     ".pt": "torch", ".pth": "torch"}


class Runtime:
    """The interface; subclasses set name, info, path and implement logits()."""

    name: str
    info: dict
    path: Path

    def probs(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)  # no copy when it already is
        if batch.ndim != 4 or batch.shape[1:] != INPUT_SHAPE or batch.shape[0] == 0:
            raise ValueError(f"{self.name}: expected a batch of shape (n, {', '.join(map(str, INPUT_SHAPE))}), "
                             f"got {batch.shape}")
        logits = self.logits(batch)
        temperature = self.info["calibration"]["temperature"]
        return softmax(logits if temperature == 1 else logits / temperature)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.path})"


def softmax(logits: np.ndarray) -> np.ndarray:
    if len(logits) == 1:
        # batch 1, the live case: plain Python floats on the one short row beat five numpy calls
        # (same values to 3e-8)
        row = logits[0].tolist()
        top = max(row)
        e = [math.exp(v - top) for v in row]
        total = sum(e)
        return np.array([[v / total for v in e]], dtype=np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def require_file(path: Path) -> None:
    if not path.is_file():
        hint = (f"export one with `mex-export --checkpoint CKPT --out {DEFAULT_MODEL}`" if path == DEFAULT_MODEL
                else "check the path")
        raise FileNotFoundError(f"{path}: no such model file; {hint}")


class OnnxRuntime(Runtime):
    """ONNX Runtime on the CPU. One intra-op thread by default: at batch 1 a thread pool costs more
    than it saves, and the live pipeline's other stages need the remaining cores."""

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.path = path = Path(path)
        require_file(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings are about its own fusions
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types for truncated or foreign files
            raise ArtifactError(f"{path}: not a readable ONNX model, truncated or corrupt "
                                f"({type(e).__name__}: {first_line(e)})") from None
        self.info = check_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
        check_graph_io(path, [(i.name, i.shape) for i in self.session.get_inputs()],
                       [o.name for o in self.session.get_outputs()])
        self.threads = threads
        self.name = "onnxruntime-cpu"

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


def check_graph_io(path: Path, inputs: list[tuple[str, list]], outputs: list[str]) -> None:
    """The graph itself, not only its metadata, must take (batch, 3, 28, 28) 'flow' and give 'logits'."""
    if (len(inputs) != 1 or inputs[0][0] != INPUT_NAME or len(inputs[0][1]) != 4
            or tuple(inputs[0][1][1:]) != INPUT_SHAPE):
        raise ArtifactError(f"{path}: graph inputs {inputs}, expected one {INPUT_NAME!r} "
                            f"of shape (batch, {', '.join(map(str, INPUT_SHAPE))})")
    if OUTPUT_NAME not in outputs:
        raise ArtifactError(f"{path}: graph outputs {outputs} lack {OUTPUT_NAME!r}")


def first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class TensorRTRuntime(Runtime):
    """TensorRT running a serialized engine + its JSON sidecar (PATH.json, written by mex-export --format engine).

    Written against TensorRT's documented Python API (10.x) and not yet run (docs/results.md, "What has
    run where"). Buffers are torch CUDA tensors, kept per batch size so the live loop allocates nothing.
    """

    def __init__(self, path: str | Path):
        self.path = path = Path(path)
        require_file(path)
        sidecar = path.with_name(path.name + ".json")
        if not sidecar.is_file():
            raise ArtifactError(f"{path}: metadata sidecar {sidecar.name} is missing; "
                                "mex-export --format engine writes both")
        try:
            meta = json.loads(sidecar.read_text())
            build = json.loads(meta["mex.tensorrt"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{sidecar}: unreadable engine sidecar ({type(e).__name__}: {e})") from None
        self.info = {**check_metadata(meta, str(sidecar)), "tensorrt": build}
        try:
            import tensorrt as trt
            import torch
        except ImportError as e:
            raise ImportError(f"{path}: the tensorrt runtime needs TensorRT and torch with CUDA ({e})") from None
        if not torch.cuda.is_available():
            raise RuntimeError(f"{path}: a TensorRT engine needs a CUDA GPU; torch sees none")
        gpu = torch.cuda.get_device_name(0)
        if (build.get("version"), build.get("gpu")) != (trt.__version__, gpu):
            raise ArtifactError(f"{path}: built with TensorRT {build.get('version')} for {build.get('gpu')}, "
                                f"this machine has TensorRT {trt.__version__} on {gpu}; "
                                "rebuild it with mex-export --format engine")
        self.torch, self.trt = torch, trt
        self.trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept alive with the engine it made
        self.engine = self.trt_runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{path}: TensorRT could not deserialize the engine (truncated or corrupt)")
        self.context = self.engine.create_execution_context()
        self.max_batch = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0]
        self.num_classes = len(self.info["classes"])
        self.stream = torch.cuda.Stream()
        self.buffers: dict[int, tuple] = {}  # batch size -> (pinned host in, device in, device out, pinned host out)
        self.name = f"tensorrt-{build.get('precision', '?')}"

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([self._run(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch, n = self.torch, len(batch)
        if n not in self.buffers:
            out_dtype = (torch.float16 if self.engine.get_tensor_dtype(OUTPUT_NAME) == self.trt.float16
                         else torch.float32)
            self.buffers[n] = (torch.empty((n, *INPUT_SHAPE), pin_memory=True),
                               torch.empty((n, *INPUT_SHAPE), device="cuda"),
                               torch.empty((n, self.num_classes), dtype=out_dtype, device="cuda"),
                               torch.empty((n, self.num_classes), dtype=out_dtype, pin_memory=True))
        host_in, dev_in, dev_out, host_out = self.buffers[n]
        host_in.numpy()[:] = batch
        with torch.cuda.stream(self.stream):
            dev_in.copy_(host_in, non_blocking=True)
            self.context.set_input_shape(INPUT_NAME, tuple(dev_in.shape))
            self.context.set_tensor_address(INPUT_NAME, dev_in.data_ptr())
            self.context.set_tensor_address(OUTPUT_NAME, dev_out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.path}: TensorRT execution failed")
            host_out.copy_(dev_out, non_blocking=True)
        self.stream.synchronize()
        return host_out.numpy().astype(np.float32)


class TorchRuntime(Runtime):
    """A mex checkpoint (.pt) run by PyTorch: CUDA when present, else CPU.

    On CUDA with cuda_graph=True each batch size is captured once as a CUDA graph (up to MAX_GRAPHS
    sizes, eager beyond) and replayed: one launch instead of hundreds, which is what batch-1 latency is made of.
    """

    MAX_GRAPHS = 8

    def __init__(self, path: str | Path, device: str | None = None, cuda_graph: bool = True):
        import torch

        from mex.checkpoint import CheckpointError, load_checkpoint

        self.path = path = Path(path)
        require_file(path)
        try:
            model, ckpt = load_checkpoint(path)
        except CheckpointError as e:
            raise ArtifactError(str(e)) from None
        except RuntimeError as e:  # load_state_dict: weights saved by a different version of the model code
            raise ArtifactError(f"{path}: weights do not fit this code's model "
                                f"({str(e).strip().splitlines()[-1].strip()})") from None
        # a checkpoint carries no calibration (mex-export --calibration adds it to the artifact): T = 1
        self.info = check_metadata(artifact_metadata(ckpt["model"], ckpt["config"], ckpt.get("meta", {})), str(path))
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        # batch size -> (graph, pinned host in, static in, static out, pinned host out)
        self.graphs: dict[int, tuple] = {}
        self.name = f"torch-{self.device.type}" + ("-graph" if self.cuda_graph else "")

    def logits(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            if self.device.type == "cpu":
                return self.model(torch.from_numpy(batch)).numpy()
            n = len(batch)
            if self.cuda_graph and (n in self.graphs or len(self.graphs) < self.MAX_GRAPHS):
                return self._replay(batch)
            return self.model(torch.from_numpy(batch).to(self.device)).cpu().numpy()

    def _replay(self, batch: np.ndarray) -> np.ndarray:
        torch, n = self.torch, len(batch)
        if n not in self.graphs:
            self.graphs[n] = self._capture(n)
        graph, host_in, static_in, static_out, host_out = self.graphs[n]
        host_in.numpy()[:] = batch
        static_in.copy_(host_in, non_blocking=True)
        graph.replay()
        host_out.copy_(static_out, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return host_out.numpy().copy()  # the pinned buffer is overwritten by the next call

    def _capture(self, n: int) -> tuple:
        torch = self.torch
        static_in = torch.zeros((n, *INPUT_SHAPE), device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graphs requires
            for _ in range(3):
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.model(static_in)
        host_in = torch.empty((n, *INPUT_SHAPE), pin_memory=True)
        host_out = torch.empty(tuple(static_out.shape), pin_memory=True)
        return graph, host_in, static_in, static_out, host_out


def load_runtime(path: str | Path | None = None, kind: str = "auto", **options) -> Runtime:
    """The runtime that runs the model at `path` (default: the shipped mex/assets/default.onnx).

    kind "auto" picks by suffix: .onnx -> onnxruntime, .engine/.plan -> tensorrt, .pt/.pth -> torch.
    `options` go to the runtime (threads= for onnxruntime; device=, cuda_graph= for torch).
    """
    path = Path(path) if path is not None else DEFAULT_MODEL
    if kind != "auto" and kind not in RUNTIMES:
        raise ValueError(f"unknown runtime {kind!r}; choose auto or one of {', '.join(RUNTIMES)}")
    by_suffix = RUNTIME_OF_SUFFIX.get(path.suffix.lower())
    if by_suffix is None:
        raise ArtifactError(f"{path}: unknown model file type {path.suffix!r}; "
                            f"expected one of {', '.join(RUNTIME_OF_SUFFIX)}")
    if kind != "auto" and kind != by_suffix:
        wanted = [s for s, k in RUNTIME_OF_SUFFIX.items() if k == kind]
        raise ValueError(f"{path}: the {kind} runtime needs a {' or '.join(wanted)} file (this is a {by_suffix} file)")
    runtime_class = {"onnxruntime": OnnxRuntime, "tensorrt": TensorRTRuntime, "torch": TorchRuntime}[by_suffix]
    return runtime_class(path, **options)
