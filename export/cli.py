"""mex-export --checkpoint CKPT [--format onnx|engine] [--out PATH] [--calibration calibration.json]

ONNX: exported, checked, metadata inside, parity against PyTorch on the composite images.
engine: the ONNX above, then a TensorRT engine + JSON sidecar, parity against ONNX Runtime.
Outputs sit next to the checkpoint by default (runs/x/best.pt -> runs/x/best.onnx, best.engine),
each with PATH.parity.json; an existing model is replaced only with --force, and a model that fails
parity is never written. Exit status: 0 written, 1 failed, 2 an output that cannot be written. The
calibrated temperature mex-live divides the logits by comes from --calibration (written by mex-train
calibrate); without it T = 1.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import onnx
from rich.console import Console

from mex.artifact import artifact_metadata
from mex.checkpoint import CheckpointError, load_checkpoint
from mex import version_line
from mex.composite import DataError, load_flow_folder
from mex.outputs import OutputError, Outputs, finish, new_temporary, write_error

from . import parity
from .errors import ExportError
from .onnx_export import DEFAULT_OPSET, MIN_OPSET, export_onnx, graph_summary, torch_logits
from .tensorrt import DEFAULT_CACHE, BatchProfile, cuda_device_name, require_tensorrt, sidecar_path

SUFFIX = {"onnx": ".onnx", "engine": ".engine"}
OUT_SUFFIXES = {"onnx": (".onnx",), "engine": (".engine", ".plan")}  # what mex-live's load_runtime recognises
DEFAULT_DATA = "data/megc2019-composite-flow"
REPO_DATA = Path(__file__).resolve().parents[1] / DEFAULT_DATA  # when run from outside the repo


def batch_profile(text: str) -> BatchProfile:
    try:
        return BatchProfile.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def calibration_file(text: str) -> dict:
    """calibration.json of mex-train calibrate -> the artifact's mex.calibration entry."""
    path = Path(text)
    try:
        report = json.loads(path.read_text())
        temperature = float(report["temperature"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{path}: not a calibration.json of mex-train calibrate "
                                         f"({type(e).__name__}: {e})") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise argparse.ArgumentTypeError(f"{path}: temperature {temperature} is not a positive number")
    return {"temperature": temperature, "fitted_on": str(report.get("fitted_on", path))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mex-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_line("mex-export"))
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint written by mex-train fit (.pt)")
    p.add_argument("--format", default="onnx", choices=sorted(SUFFIX), help="onnx (default) or a TensorRT engine")
    p.add_argument("--out", metavar="PATH", help="output file (default: CKPT with the format's suffix)")
    p.add_argument("--calibration", type=calibration_file, metavar="FILE",
                   help="calibration.json of mex-train calibrate: its temperature goes into the artifact "
                        "(default: none, T = 1)")
    p.add_argument("--force", action="store_true", help="replace an existing output file (never the checkpoint)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help=f"parity images in the composite format (default {DEFAULT_DATA})")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset, >= {MIN_OPSET} (default {DEFAULT_OPSET['onnx']} for onnx, "
                        f"{DEFAULT_OPSET['engine']} for engine)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="engine precision (default fp32)")
    p.add_argument("--batch", type=batch_profile, default=BatchProfile(), metavar="MIN,OPT,MAX",
                   help="engine batch optimization profile (default 1,1,256)")
    p.add_argument("--workspace", type=float, default=1.0, metavar="GIB",
                   help="TensorRT builder workspace (default 1 GiB)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                   help=f"engine cache (default {DEFAULT_CACHE})")
    args = p.parse_args(argv)
    if args.opset is None:
        args.opset = DEFAULT_OPSET[args.format]
    if args.opset < MIN_OPSET:
        p.error(f"--opset {args.opset}: must be >= {MIN_OPSET} (LayerNormalization as one op)")
    if args.out and Path(args.out).suffix.lower() not in OUT_SUFFIXES[args.format]:
        p.error(f"--out {args.out}: a --format {args.format} file must end in {' or '.join(OUT_SUFFIXES[args.format])}")
    if args.workspace <= 0:
        p.error(f"--workspace {args.workspace}: must be positive")
    return args


def resolve_data(data: str | None) -> Path:
    if data is not None:
        return Path(data)
    return Path(DEFAULT_DATA) if Path(DEFAULT_DATA).is_dir() else REPO_DATA


def read_checkpoint(path: Path):
    try:
        return load_checkpoint(path)
    except RuntimeError as e:  # load_state_dict: weights saved by a different version of the model code
        raise ExportError(f"{path}: weights do not fit this code's model "
                          f"({str(e).strip().splitlines()[-1].strip()})") from None


def provenance(checkpoint: Path, args: argparse.Namespace) -> dict:
    """Which checkpoint and tool versions made this artifact (mex-live ignores it; people read it)."""
    import torch

    return {"checkpoint": checkpoint.name, "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
            "torch": torch.__version__, "opset": args.opset}


def report_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".parity.json")


def check_outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(the output, the ONNX file written on the way) checked before any work (mex.outputs): never the
    checkpoint or the parity data under any name, an existing model only with --force (its parity report
    and sidecar go with it)."""
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.with_suffix(SUFFIX[args.format])
    onnx_path = out if args.format == "onnx" else out.with_suffix(".onnx")
    outputs = Outputs([checkpoint, resolve_data(args.data)], force=args.force)
    for artifact in dict.fromkeys([onnx_path, out]):
        outputs.file("--out", artifact)
        outputs.file("--out", report_path(artifact), replaceable=True)
    if args.format == "engine":
        outputs.file("--out", sidecar_path(out), replaceable=True)
    return out, onnx_path


def export(args: argparse.Namespace, console: Console, out: Path, onnx_path: Path) -> bool:
    """Write the artifact(s) (checked by check_outputs) and parity report(s); True when parity passed."""
    if args.format == "engine":  # fail before the slow ONNX export, not after it
        require_tensorrt()
        cuda_device_name()
    checkpoint = Path(args.checkpoint)
    model, info = read_checkpoint(checkpoint)
    images = load_flow_folder(resolve_data(args.data))
    metadata = artifact_metadata(info["model"], info["config"], info.get("meta", {}), args.calibration)
    metadata["mex.export"] = json.dumps(provenance(checkpoint, args))

    console.print(f"exporting {checkpoint} ({info['model']}) -> {onnx_path}")
    console.print(f"metadata: encoding {metadata['mex.encoding_version']}, classes {metadata['mex.classes']}, "
                  f"training keys {sorted(info.get('meta', {}))}, "
                  f"calibration {metadata.get('mex.calibration', 'none (T = 1)')}")
    proto = export_onnx(model, metadata, opset=args.opset)
    summary = graph_summary(proto)
    # checked under a temporary name and put in place only when it passes: a model that does not compute
    # what was trained (NaN weights, a broken op) never replaces one, nor is left to be loaded
    tmp = new_temporary(onnx_path, "--out")
    try:
        onnx.save(proto, tmp)
        console.print(f"ONNX opset {summary['opset']}, {summary['nodes']} nodes "
                      f"({summary['ops'].get('LayerNormalization', 0)} LayerNormalization), input {summary['input']}")
        report = parity.compare(torch_logits(model, images.x), parity.onnxruntime_logits(tmp, images.x),
                                reference_name="pytorch", candidate_name="onnxruntime",
                                tolerance=parity.ONNX_TOLERANCE)
        report.update(artifact=str(onnx_path), data=str(images.root), graph=summary)
        parity.print_report(report, console)
        console.print(f"parity report: {parity.write_report(report_path(onnx_path), report)}")
        if report["passed"]:
            finish(tmp, onnx_path, "--out")
    except OSError as e:
        raise write_error("--out", onnx_path, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    if not report["passed"]:
        return False
    if args.format == "onnx":
        return True
    return export_engine(args, onnx_path, out, metadata, images.x, console)


def export_engine(args, onnx_path: Path, engine_path: Path, metadata: dict, x, console: Console) -> bool:
    from .tensorrt import build_engine, engine_logits

    build = build_engine(onnx_path, engine_path, metadata, precision=args.precision, profile=args.batch,
                         workspace_gib=args.workspace, cache_dir=args.cache, log=console.print)
    fp16 = args.precision == "fp16"
    report = parity.compare(parity.onnxruntime_logits(onnx_path, x), engine_logits(engine_path, x, args.batch.max),
                            reference_name="onnxruntime", candidate_name=f"tensorrt-{args.precision}",
                            tolerance=None if fp16 else parity.FP32_ENGINE_TOLERANCE,
                            min_agreement=parity.FP16_MIN_AGREEMENT if fp16 else None)
    report.update(artifact=str(engine_path), tensorrt=build)
    parity.print_report(report, console)
    console.print(f"parity report: {parity.write_report(report_path(engine_path), report)}")
    if not report["passed"]:
        engine_path.unlink(missing_ok=True)
    return report["passed"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    try:
        out, onnx_path = check_outputs(args)
    except OutputError as e:
        print(f"mex-export: error: {e}", file=sys.stderr)
        return 2
    try:
        passed = export(args, console, out, onnx_path)
    except (CheckpointError, DataError, ExportError, OutputError) as e:
        print(f"mex-export: error: {e}", file=sys.stderr)
        return 1
    if not passed:
        print("mex-export: error: parity check failed (report above, and its .parity.json): the exported model was "
              "not written, nothing to ship", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
