"""mex-bench BENCHMARK: speed, latency and accuracy benchmarks; results go to --out, else runs/bench/<machine>/
(the committed reference results in benchmarks/results/<machine>/ change only when named as --out)."""
from __future__ import annotations

import argparse
import importlib
import sys

from mex import version_line

# Each benchmark is a module here with `add_arguments(parser)` and `run(args)`.
# subcommand -> module under benchmarks/ (imported only when chosen, so one missing extra breaks one benchmark)
BENCHMARKS = {
    "train": ("benchmarks.train_speed", "LOSO training speed: all folds batched vs one fold"),
    "flow": ("benchmarks.flow", "optical-flow backends side by side: speed and parity"),
    "flow-recipes": ("benchmarks.flow_recipes", "cheaper TV-L1 settings on the CPU: speed against feature fidelity"),
    "runtimes": ("benchmarks.runtimes",
                 "inference runtimes (ONNX Runtime, PyTorch, TensorRT engines): batch-1 latency, batch-256 throughput"),
    "spotting": ("benchmarks.spotting", "onset/apex spotting on generated clips: MEGC F1, false alarms"),
    "replay": ("benchmarks.replay",
               "online spotting on real CASME II micro-expressions replayed on the shipped photos: found, apex, label"),
    "registration": ("benchmarks.registration",
                     "real CASME II motion replayed, still and swaying head: does registration keep the face's motion"),
    "fidelity": ("benchmarks.fidelity",
                 "live crops against ideal crops of the same generated movement: feature correlation, label agreement"),
    "latency": ("benchmarks.latency", "whole live pipeline on a generated clip: fps, per-stage latency"),
    "floor": ("benchmarks.floor",
              "logistic regression on the raw feature pixels under LOSO: fixed and nested-chosen penalties"),
    "stack": ("benchmarks.stack",
              "the deep model's and the floor's probabilities mixed, the weight chosen per LOSO fold on inner models"),
    "live-gap": ("benchmarks.live_gap",
                 "LOSO scored on the composite images and on mex.features.encode's encodings of the same clips"),
    "encoding": ("benchmarks.encoding",
                 "mex.features on raw clips (mex-train prepare) against the composite set's images"),
    "live-loso": ("benchmarks.live_loso",
                  "raw database clips through mex-live --segmented with their LOSO fold's model, beside the same "
                  "models on the composite images"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mex-bench", description=__doc__)
    parser.add_argument("--version", action="version", version=version_line("mex-bench"))
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, (module, help_) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(module=module)
        p.add_argument("--out", default=None, help="results folder (default runs/bench/<machine>; committed reference "
                       "results: --out benchmarks/results/<machine>)")
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(missing=f"benchmark {name!r} is not available in this build ({module} missing)")
    args = parser.parse_args(argv)
    if getattr(args, "missing", None):
        print(args.missing, file=sys.stderr)
        return 2
    from mex.outputs import OutputError

    from .common import BadInput, results_dir

    try:
        results_dir(args.out)  # before the work: a run must not end unable to write its results
    except OutputError as e:
        print(f"mex-bench: error: {e}", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args.module).run(args) or 0)
    except BadInput as e:
        print(f"mex-bench: error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"mex-bench: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
