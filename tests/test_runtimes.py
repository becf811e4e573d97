"""Live runtimes: probabilities from a freshly exported artifact, and refusal of artifacts that do not
match this code (encoding version, classes, input shape) or are corrupt. STSTNet keeps the export fast;
DA-CrossViT through the same runtimes is covered in test_export.py."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from export.onnx_export import export_onnx, save_onnx
from export.tensorrt import write_sidecar
from mex.artifact import ArtifactError, artifact_metadata
from mex.checkpoint import save_checkpoint
from mex.models import build_model
from realtime.runtimes import DEFAULT_MODEL, OnnxRuntime, TensorRTRuntime, TorchRuntime, load_runtime


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """(checkpoint .pt, exported .onnx) of one random-init model."""
    root = tmp_path_factory.mktemp("runtimes")
    torch.manual_seed(0)
    model = build_model("ststnet")
    checkpoint = root / "model.pt"
    save_checkpoint(checkpoint, "ststnet", model, meta={"loso": {"uf1": 0.5}})
    onnx_path = save_onnx(export_onnx(model, artifact_metadata("ststnet", model.cfg.to_dict(), {"loso": {"uf1": 0.5}})),
                          root / "model.onnx")
    return checkpoint, onnx_path


@pytest.fixture
def batch():
    return np.random.default_rng(0).random((7, 3, 28, 28), dtype=np.float32)


def with_metadata(src, dst, **changes):
    """A copy of an ONNX file with some mex metadata values replaced (None removes the key)."""
    proto = onnx.load(src)
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update(changes)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: v for k, v in meta.items() if v is not None})
    onnx.save(proto, dst)
    return dst


def test_onnxruntime_gives_probabilities_matching_pytorch(artifacts, batch):
    checkpoint, onnx_path = artifacts
    runtime = load_runtime(onnx_path)
    assert isinstance(runtime, OnnxRuntime) and runtime.name == "onnxruntime-cpu"
    assert runtime.info["model"] == "ststnet" and runtime.info["training"] == {"loso": {"uf1": 0.5}}
    reference = load_runtime(checkpoint, device="cpu")
    assert isinstance(reference, TorchRuntime) and reference.name == "torch-cpu"
    for n in (1, 7):
        p = runtime.probs(batch[:n])
        assert p.shape == (n, 3) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
        assert np.abs(p - reference.probs(batch[:n])).max() <= 1e-5


def test_the_artifact_temperature_divides_the_logits(artifacts, batch, tmp_path):
    """mex.calibration's temperature is applied to the logits before the softmax; no entry means T = 1."""
    plain = load_runtime(artifacts[1])
    assert plain.info["calibration"] == {"temperature": 1.0}
    logits = plain.logits(batch).astype(np.float64)
    for t in (0.5, 2.0):
        scaled = load_runtime(with_metadata(artifacts[1], tmp_path / f"t{t}.onnx",
                                            **{"mex.calibration": json.dumps({"temperature": t})}))
        expected = np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True)
        for n in (1, 7):  # batch 1 takes softmax's scalar path
            np.testing.assert_allclose(scaled.probs(batch[:n]), expected[:n], atol=1e-6)
        assert (scaled.probs(batch).argmax(1) == plain.probs(batch).argmax(1)).all()
    for bad in ('{"temperature": 0}', '{"temperature": "warm"}', "[]"):
        with pytest.raises(ArtifactError, match="positive temperature"):
            load_runtime(with_metadata(artifacts[1], tmp_path / "bad.onnx", **{"mex.calibration": bad}))


def test_the_shipped_model_carries_its_calibrated_temperature():
    calibration = load_runtime().info["calibration"]
    assert 0.5 < calibration["temperature"] < 2 and "predictions.csv" in calibration["fitted_on"]


def test_runtime_rejects_a_wrong_batch_shape(artifacts):
    runtime = load_runtime(artifacts[1])
    with pytest.raises(ValueError, match=r"\(n, 3, 28, 28\)"):
        runtime.probs(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mex.encoding_version": "farneback-uv-28-v0"}, "feature encoding 'farneback-uv-28-v0'"),
        ({"mex.classes": json.dumps(["negative", "positive", "surprise", "others"])}, "classes"),
        ({"mex.input_shape": json.dumps([3, 32, 32])}, "input shape"),
        ({"mex.format": None}, "not a mex model"),
        ({"mex.config": "{not json"}, "malformed"),
    ],
)
def test_mismatching_metadata_is_refused_naming_the_file(artifacts, tmp_path, changes, message):
    bad = with_metadata(artifacts[1], tmp_path / "bad.onnx", **changes)
    with pytest.raises(ArtifactError, match=message) as e:
        load_runtime(bad)
    assert str(bad) in str(e.value)


def test_graph_whose_real_input_differs_from_its_metadata_is_refused(tmp_path):
    """Metadata can claim 3x28x28 while the graph takes something else; the graph is checked too."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("ReduceMean", ["flow"], ["logits"], axes=[2, 3], keepdims=0)], "g",
                              [helper.make_tensor_value_info("flow", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.helper.set_model_props(proto, artifact_metadata("ststnet", {}, {}))
    path = tmp_path / "lying.onnx"
    onnx.save(proto, path)
    with pytest.raises(ArtifactError, match=r"lying.onnx: graph inputs .* expected one 'flow'"):
        load_runtime(path)


@pytest.mark.parametrize("cut", [0, 100, 0.5])
def test_truncated_onnx_is_refused_naming_the_file(artifacts, tmp_path, cut):
    data = artifacts[1].read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(ArtifactError, match="truncated or corrupt") as e:
        load_runtime(bad)
    assert str(bad) in str(e.value)


def test_truncated_checkpoint_is_refused(artifacts, tmp_path):
    bad = tmp_path / "cut.pt"
    bad.write_bytes(artifacts[0].read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="cut.pt"):
        load_runtime(bad)


def test_missing_files_and_wrong_kinds(artifacts, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load_runtime(tmp_path / "nope.onnx")
    with pytest.raises(ArtifactError, match="unknown model file type"):
        load_runtime(tmp_path / "model.tflite")
    with pytest.raises(ValueError, match="the torch runtime needs a .pt"):
        load_runtime(artifacts[1], kind="torch")
    with pytest.raises(ValueError, match="unknown runtime"):
        load_runtime(artifacts[1], kind="openvino")


def test_default_model_path():
    assert DEFAULT_MODEL.parts[-3:] == ("mex", "assets", "default.onnx")
    if DEFAULT_MODEL.is_file():
        assert load_runtime().info["classes"] == ["negative", "positive", "surprise"]
    else:
        with pytest.raises(FileNotFoundError, match="mex-export"):
            load_runtime()


# --------------------------------------------------------- TensorRT engine files: sidecar checks run without TensorRT
def test_engine_without_sidecar_is_refused(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    with pytest.raises(ArtifactError, match="sidecar model.engine.json is missing"):
        TensorRTRuntime(engine)


def test_engine_with_corrupt_or_mismatching_sidecar_is_refused(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    engine.with_name("model.engine.json").write_text('{"mex.format": "mex-artifact-v1", ')
    with pytest.raises(ArtifactError, match="unreadable engine sidecar"):
        load_runtime(engine)
    meta = artifact_metadata("ststnet", {}, {})
    write_sidecar(engine, {**meta, "mex.encoding_version": "old-v0"}, {"version": "10.9.0", "gpu": "NVIDIA H100"})
    with pytest.raises(ArtifactError, match="feature encoding 'old-v0'"):
        load_runtime(engine)


def test_tensorrt_runtime_matches_onnxruntime(artifacts, batch, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (NVIDIA's index only): TensorRTRuntime NOT run")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TensorRTRuntime NOT run")
    from export.tensorrt import build_engine

    onnx_path = artifacts[1]
    meta = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    engine_path = tmp_path / "model.engine"
    build_engine(onnx_path, engine_path, meta, precision="fp32", cache_dir=tmp_path / "cache", log=lambda *_: None)
    runtime = load_runtime(engine_path)
    assert runtime.name == "tensorrt-fp32"
    assert np.abs(runtime.probs(batch) - load_runtime(onnx_path).probs(batch)).max() <= 1e-3


def test_engine_file_needs_tensorrt_when_absent(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this checks the message when it is not")
    except ImportError:
        pass
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    write_sidecar(engine, artifact_metadata("ststnet", {}, {}), {"version": "10.9.0", "gpu": "NVIDIA H100"})
    with pytest.raises(ImportError, match="needs TensorRT"):
        load_runtime(engine)


def test_torch_cuda_graph_matches_eager(artifacts, batch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TorchRuntime CUDA eager and CUDA-graph paths NOT run")
    eager = TorchRuntime(artifacts[0], device="cuda", cuda_graph=False)
    graphed = TorchRuntime(artifacts[0], device="cuda", cuda_graph=True)
    assert graphed.name == "torch-cuda-graph"
    for n in (1, 7, 1):  # the second batch-1 call replays the captured graph
        assert np.abs(graphed.probs(batch[:n]) - eager.probs(batch[:n])).max() <= 1e-5


def test_bench_runtimes_measures_what_is_present_and_lists_the_rest(artifacts, tmp_path):
    from benchmarks.cli import main as bench

    assert bench(["runtimes", "--model", str(artifacts[1]), "--iters", "20", "--warmup", "2", "--batch", "8",
                  "--batch-iters", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "runtimes.json").read_text())
    measured = {r["runtime"] for r in result["runtimes"]}
    assert {"onnxruntime-cpu", "torch-cpu"} <= measured
    assert measured | {s["runtime"] for s in result["skipped"]} >= {"torch-cuda", "torch-cuda-graph", "tensorrt-fp16"}
    assert all(s["reason"] for s in result["skipped"]) and (tmp_path / "runtimes.md").is_file()
    assert "same architecture, fresh weights" in result["model"]


def test_bench_recognizer_only_times_confirm_to_label(tmp_path):
    """The stage the GPU target is about, measurable where there is no face tracker."""
    from benchmarks.cli import main as bench

    assert bench(["latency", "--recognizer-only", "3", "--out", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("latency-recognizer-*.json")).read_text())
    stats = result["confirm_to_label_ms"]
    assert result["candidates"] == 3 and 0 < stats["p50"] <= stats["p95"] <= stats["p99"]
    assert result["target_p95_ms"] == (5.0 if "cuda" in result["flow"] else 50.0)
    assert "apex confirmed -> label" in next(tmp_path.glob("latency-recognizer-*.md")).read_text()


def test_bench_encoding_matches_clips_and_scores_the_difference(subset, tmp_path):
    """A 'prepared' folder standing in for mex-train prepare's output: the subset's real images with
    noise added to one channel, plus a clip the composite set does not have."""
    import csv

    from benchmarks.cli import main as bench
    from mex.composite import load_flow_folder, write_png_rgb

    rows = list(csv.DictReader((subset / "labels.csv").open(newline="")))
    data = load_flow_folder(subset)
    rng = np.random.default_rng(0)
    for r, x in zip(rows, data.x):
        noisy = x.copy()
        noisy[2] = np.clip(noisy[2] + rng.normal(0, 0.2, noisy[2].shape), 0, 1)  # strain: the noisy channel
        write_png_rgb(subset / r["file"], noisy)
    extra = dict(rows[0], subject="casme2_sub99", clip="EP99_01", file="flow/casme2_sub99_EP99_01.png")
    write_png_rgb(subset / extra["file"], data.x[0])
    with (subset / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + [extra])

    assert bench(["encoding", "--prepared", str(subset), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "encoding.json").read_text())
    overall = result["summary"][0]
    assert overall["set"] == "all" and overall["clips"] == len(rows)  # the extra clip has no match
    assert overall["u_median"] > 0.99 and overall["v_median"] > 0.99  # untouched channels (8-bit rounding only)
    assert 0.2 < overall["strain_median"] < 0.95
    assert {s["set"] for s in result["summary"]} == {"all", "casme2", "samm", "smic"}
    assert 0 <= overall["same_class"] <= 1 and "corr u" in (tmp_path / "encoding.md").read_text()


def test_bench_encoding_without_common_clips_says_so(tmp_path, capsys):
    from benchmarks.cli import main as bench
    from mex.composite import write_png_rgb

    (tmp_path / "flow").mkdir()
    write_png_rgb(tmp_path / "flow" / "x.png", np.zeros((3, 28, 28), np.float32))
    (tmp_path / "labels.csv").write_text("dataset,subject,clip,label,emotion,file\n"
                                         "casme2,casme2_sub99,EP1,0,negative,flow/x.png\n")
    with pytest.raises(SystemExit, match="none of the 1 clips"):
        bench(["encoding", "--prepared", str(tmp_path), "--out", str(tmp_path / "out")])


def test_bench_latency_realtime_runs_at_the_clip_pace_with_speculation(tmp_path):
    """Camera-like run of the whole pipeline: the clip's own frame rate, features computed ahead."""
    pytest.importorskip("mediapipe")
    from benchmarks.cli import main as bench

    assert bench(["latency", "--realtime", "--seconds", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "latency-realtime.json").read_text())
    assert result["realtime"] is True and result["dropped_frames"] == 0
    assert list(result["targets"]) == ["confirm_p95<=50ms"]  # the clip sets the pace: no throughput targets
    assert result["speculated"] >= result["speculation_used"] >= 0
    assert result["pipeline_s"] >= 0.9 * result["clip"]["frames"] / result["clip"]["fps"]  # paced, not flat out
    assert "real-time mode" in (tmp_path / "latency-realtime.md").read_text()
