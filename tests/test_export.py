"""mex-export: ONNX export of a random-init DA-CrossViT, parity on the real composite images, CLI errors,
and the TensorRT parts that run without TensorRT (the rest skips with the reason)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export import parity
from export.cli import main
from export.onnx_export import MIN_OPSET, torch_logits
from export.tensorrt import BatchProfile, cache_key, sidecar_path, write_sidecar
from mex.artifact import artifact_metadata, check_metadata
from mex.checkpoint import load_checkpoint, save_checkpoint
from mex.composite import load_flow_folder
from mex.models import build_model

from conftest import RUN_WHERE

DATA = Path(__file__).resolve().parents[1] / "data" / "megc2019-composite-flow"
TRAINING = {"data": "megc2019-composite-flow", "loso": {"uf1": 0.704, "uar": 0.707}, "epochs": 400}
CALIBRATION = {"temperature": 1.5, "fitted_on": "runs/loso/predictions.csv, all 442 out-of-fold rows"}


@pytest.fixture(scope="module")
def composite():
    return load_flow_folder(DATA)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One CLI export for the whole module (the exporter takes ~10 s): checkpoint, onnx path, model."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    checkpoint = root / "best.pt"
    save_checkpoint(checkpoint, "dacrossvit", build_model("dacrossvit"), meta=TRAINING)
    calibration = root / "calibration.json"  # as mex-train calibrate writes it, less its per-run reports
    calibration.write_text(json.dumps({**CALIBRATION, "bins": 15, "runs": []}))
    assert main(["--checkpoint", str(checkpoint), "--data", str(DATA), "--calibration", str(calibration)]) == 0
    model, _ = load_checkpoint(checkpoint)
    return checkpoint, checkpoint.with_suffix(".onnx"), model


def test_default_output_sits_next_to_checkpoint(exported):
    checkpoint, onnx_path, _ = exported
    assert onnx_path == checkpoint.parent / "best.onnx" and onnx_path.is_file()
    assert (checkpoint.parent / "best.onnx.parity.json").is_file()


def test_graph_passes_checker_with_single_op_layernorm_and_dynamic_batch(exported):
    _, onnx_path, model = exported
    proto = onnx.load(onnx_path)
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= MIN_OPSET
    layernorms = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert sum(n.op_type == "LayerNormalization" for n in proto.graph.node) == layernorms
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "flow" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 28, 28]
    assert [o.name for o in proto.graph.output] == ["logits"]


def test_metadata_round_trips(exported):
    checkpoint, onnx_path, model = exported
    meta = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    expected = artifact_metadata("dacrossvit", model.cfg.to_dict(), TRAINING, CALIBRATION)
    assert {k: v for k, v in meta.items() if k != "mex.export"} == expected
    info = check_metadata(meta, str(onnx_path))
    assert info["training"] == TRAINING and info["model"] == "dacrossvit" and info["calibration"] == CALIBRATION
    assert info["config"] == json.loads(json.dumps(model.cfg.to_dict()))
    assert json.loads(meta["mex.export"])["checkpoint"] == checkpoint.name


def test_parity_on_composite_images_is_stored_and_within_1e4(exported, composite):
    _, onnx_path, model = exported
    report = json.loads(onnx_path.with_name("best.onnx.parity.json").read_text())
    assert report["passed"] and report["images"] == len(composite) == 442
    assert report["max_abs_diff"] <= 1e-4 and report["argmax_agreement"] == 1.0
    # recomputed here, not only trusted from the report
    diff = np.abs(parity.onnxruntime_logits(onnx_path, composite.x) - torch_logits(model, composite.x)).max()
    assert diff <= 1e-4


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(exported, composite, batch):
    _, onnx_path, model = exported
    x = composite.x[:batch]
    got = parity.onnxruntime_logits(onnx_path, x)
    assert got.shape == (batch, 3)
    assert np.abs(got - torch_logits(model, x)).max() <= 1e-4


def test_live_runtime_loads_the_export_and_agrees_with_pytorch(exported, composite):
    from realtime.runtimes import load_runtime, softmax

    checkpoint, onnx_path, _ = exported
    x = composite.x[:16]
    # the checkpoint has no calibration (T = 1); the export's logits are divided by its temperature
    reference = softmax(load_runtime(checkpoint, device="cpu").logits(x) / CALIBRATION["temperature"])
    assert np.abs(load_runtime(onnx_path).probs(x) - reference).max() <= 1e-5


# ---------------------------------------------------------------------------------------------- CLI errors
def run_cli(argv, capsys):
    """(exit code, stderr) whether main returns or argparse exits."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_missing_checkpoint(tmp_path, capsys):
    code, err = run_cli(["--checkpoint", str(tmp_path / "nope.pt")], capsys)
    assert code != 0 and "nope.pt" in err and "does not exist" in err


def test_truncated_checkpoint(tmp_path, capsys):
    full = tmp_path / "full.pt"
    save_checkpoint(full, "ststnet", build_model("ststnet"))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    code, err = run_cli(["--checkpoint", str(cut)], capsys)
    assert code != 0 and "cut.pt" in err and "not a readable checkpoint" in err


def test_checkpoint_from_other_model_code(tmp_path, capsys):
    path = tmp_path / "old.pt"
    save_checkpoint(path, "ststnet", build_model("ststnet"))
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["fc.weight"] = torch.zeros(3, 7)  # as if the model code had changed since
    torch.save(blob, path)
    code, err = run_cli(["--checkpoint", str(path)], capsys)
    assert code == 1 and "old.pt" in err and "do not fit" in err


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--format", "tflite"], "--format"),
        (["--format", "engine", "--batch", "8,4,1"], "--batch"),
        (["--format", "engine", "--batch", "1,x,256"], "--batch"),
        (["--opset", "16"], "--opset"),
        (["--format", "engine", "--out", "model.onnx"], "--out"),
        (["--calibration", "missing.json"], "missing.json"),
    ],
)
def test_bad_flags_exit_nonzero_naming_the_flag(tmp_path, capsys, flags, named):
    code, err = run_cli(["--checkpoint", str(tmp_path / "any.pt"), *flags], capsys)
    assert code == 2 and named in err


@pytest.mark.parametrize("content", ['{"temperature": -1}', '{"bins": 15}', "not json"])
def test_a_calibration_file_without_a_positive_temperature_is_refused_naming_it(tmp_path, capsys, content):
    calibration = tmp_path / "calibration.json"
    calibration.write_text(content)
    code, err = run_cli(["--checkpoint", str(tmp_path / "any.pt"), "--calibration", str(calibration)], capsys)
    assert code == 2 and "--calibration" in err and "calibration.json" in err


def test_engine_without_tensorrt_says_so(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this checks the message when it is not")
    except ImportError:
        pass
    code, err = run_cli(["--checkpoint", str(tmp_path / "any.pt"), "--format", "engine"], capsys)
    assert code == 1 and "TensorRT is not installed" in err


# ----------------------------------------------------------------- TensorRT: what runs without TensorRT
def test_batch_profile_parsing():
    assert BatchProfile.parse("1,8,256") == BatchProfile(1, 8, 256)
    assert BatchProfile().shapes() == ((1, 3, 28, 28), (1, 3, 28, 28), (256, 3, 28, 28))
    for bad in ("0,1,2", "4,2,8", "1,2", "a,b,c"):
        with pytest.raises(ValueError, match="MIN"):
            BatchProfile.parse(bad)


def test_engine_cache_key_changes_with_gpu_version_precision_and_model():
    base = dict(onnx_bytes=b"model", gpu="NVIDIA H100", trt_version="10.9.0", precision="fp16",
                profile=BatchProfile(), workspace_gib=1.0)
    key = cache_key(**base)
    assert key == cache_key(**base)
    for change in (dict(onnx_bytes=b"other"), dict(gpu="NVIDIA A100"), dict(trt_version="10.10.0"),
                   dict(precision="fp32"), dict(profile=BatchProfile(1, 1, 64))):
        assert cache_key(**{**base, **change}) != key


def test_engine_sidecar_carries_the_onnx_metadata(tmp_path):
    meta = artifact_metadata("dacrossvit", {}, TRAINING)
    engine = tmp_path / "best.engine"
    write_sidecar(engine, meta, {"version": "10.9.0", "gpu": "NVIDIA H100", "precision": "fp16"})
    stored = json.loads(sidecar_path(engine).read_text())
    assert sidecar_path(engine).name == "best.engine.json"
    assert check_metadata(stored, "sidecar")["training"] == TRAINING
    assert json.loads(stored["mex.tensorrt"])["precision"] == "fp16"


def test_tensorrt_parity_harness_onnx_side(exported, composite):
    """The reference side (ONNX Runtime on the 442 images) and the verdicts the harness gives."""
    _, onnx_path, _ = exported
    reference = parity.onnxruntime_logits(onnx_path, composite.x)
    assert reference.shape == (442, 3)
    as_fp16 = reference.astype(np.float16).astype(np.float32)  # what an fp16 engine's rounding looks like
    ok = parity.compare(reference, as_fp16, reference_name="onnxruntime", candidate_name="tensorrt-fp16",
                        min_agreement=parity.FP16_MIN_AGREEMENT)
    assert ok["passed"] and ok["images"] == 442
    wrong = as_fp16.copy()
    wrong[:3] = 100 * np.eye(3)[(reference[:3].argmax(1) + 1) % 3]  # 3 of 442 disagree: 99.3 % < 99.5 %
    bad = parity.compare(reference, wrong, reference_name="onnxruntime", candidate_name="tensorrt-fp16",
                         min_agreement=parity.FP16_MIN_AGREEMENT)
    assert not bad["passed"] and bad["argmax_agreement"] < parity.FP16_MIN_AGREEMENT


def test_tensorrt_engine_build_and_parity(exported, composite, tmp_path):
    trt = pytest.importorskip("tensorrt", reason=f"TensorRT is not installed (NVIDIA's index only; {RUN_WHERE})")
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA GPU ({RUN_WHERE})")
    from export.tensorrt import build_engine, engine_logits

    _, onnx_path, _ = exported
    meta = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    engine = tmp_path / "best.engine"
    build = build_engine(onnx_path, engine, meta, precision="fp16", cache_dir=tmp_path / "cache", log=lambda *_: None)
    assert build["version"] == trt.__version__ and engine.is_file()
    report = parity.compare(parity.onnxruntime_logits(onnx_path, composite.x), engine_logits(engine, composite.x, 256),
                            reference_name="onnxruntime", candidate_name="tensorrt-fp16",
                            min_agreement=parity.FP16_MIN_AGREEMENT)
    assert report["passed"], report


def test_pixel_head_model_exports_with_parity(composite):
    """The pixel head (a linear map of the input added to the logits) exports and runs in ONNX Runtime."""
    from export.onnx_export import export_onnx
    from export.parity import onnxruntime_logits

    torch.manual_seed(0)
    model = build_model("dacrossvit", dims=(16, 8), heads=(2, 1), pixel_head=True).eval()
    with torch.no_grad():
        model.pixel_head.weight.normal_(std=0.05)
    proto = export_onnx(model, {})
    x = composite.x[:16]
    np.testing.assert_allclose(onnxruntime_logits(proto.SerializeToString(), x), torch_logits(model, x), atol=1e-4)


def nan_checkpoint(path):
    """A checkpoint whose weights start with NaN: PyTorch and ONNX Runtime both give NaN, parity fails."""
    model = build_model("ststnet")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_checkpoint(path, "ststnet", model)
    return path


def test_a_model_that_fails_parity_is_not_left_to_be_loaded(tmp_path, capsys):
    """NaN weights: parity fails, and no .onnx is left behind."""
    path = nan_checkpoint(tmp_path / "nan.pt")
    code, err = run_cli(["--checkpoint", str(path)], capsys)
    assert code == 1 and "parity check failed" in err and "not written" in err
    assert not (tmp_path / "nan.onnx").exists() and (tmp_path / "nan.onnx.parity.json").exists()


def test_damaged_checkpoints_are_named_without_torch_advice(tmp_path, capsys):
    import os

    import torch

    torch.save({"format": "mex-checkpoint-v1", "model": "ststnet"}, tmp_path / "noconfig.pt")
    (tmp_path / "rand.pt").write_bytes(os.urandom(5000))
    for name, needle in (("noconfig.pt", "without config"), ("rand.pt", "not a readable checkpoint")):
        code, err = run_cli(["--checkpoint", str(tmp_path / name)], capsys)
        assert code == 1 and name in err and needle in err and "weights_only" not in err


def test_outputs_are_checked_first_and_replaced_only_with_force(exported, tmp_path, capsys):
    import os

    checkpoint, onnx_path, _ = exported
    before = onnx_path.read_bytes()
    (tmp_path / "notes.onnx").write_text("my notes")
    os.link(checkpoint, tmp_path / "ckpt.onnx")  # another name of the checkpoint
    for argv, needle in [([], "file exists; pass --force"),
                         (["--out", str(tmp_path / "notes.onnx")], "file exists; pass --force"),
                         (["--out", str(tmp_path / "ckpt.onnx"), "--force"], "that is an input of this run"),
                         (["--out", str(tmp_path / "notes.onnx" / "m.onnx")], "notes.onnx is a file, not a folder")]:
        code, err = run_cli(["--checkpoint", str(checkpoint), "--data", str(DATA), *argv], capsys)
        assert code == 2 and needle in err, (argv, err)
    assert onnx_path.read_bytes() == before and (tmp_path / "notes.onnx").read_text() == "my notes"


def test_a_model_that_fails_parity_never_replaces_the_one_there(tmp_path, capsys):
    path = nan_checkpoint(tmp_path / "m.pt")
    (tmp_path / "m.onnx").write_bytes(b"the model in use")
    code, err = run_cli(["--checkpoint", str(path), "--force"], capsys)
    assert code == 1 and "parity check failed" in err
    assert (tmp_path / "m.onnx").read_bytes() == b"the model in use"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.parity.json", "m.pt"]
