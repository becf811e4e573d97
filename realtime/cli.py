"""mex-live: real-time micro-expression recognition from a camera, a video file or frame folder, or the demo clip.

  mex-live --demo --display none               generated clip with planted micro-expressions; summary
  mex-live --video clip.mp4 --events ev.jsonl  as fast as possible, deterministic events
  mex-live --video CASME2/sub01/EP02_01f --fps 200 --display none   a folder of frames (img1.jpg, img2.jpg, ...)
  mex-live --video CASME2/sub01/EP02_01f --fps 200 --segmented      ... as one pre-segmented clip: one label
  mex-live --camera 0 --display window         webcam with the OpenCV window overlay

Exit status: 0 finished (or stopped by Ctrl-C / q), 1 failed while running, 2 bad input
(unreadable file, bad camera index, missing or mismatched model, unwritable output).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from mex import version_line
from mex.artifact import UNCERTAIN_BELOW
from mex.features.backends import BACKENDS as FLOW_BACKENDS

from .runtimes import RUNTIMES

EXIT_OK, EXIT_RUNTIME, EXIT_INPUT = 0, 1, 2
DISPLAYS = ("auto", "window", "terminal", "none")


class CliError(Exception):
    """A user-facing error: the message names the flag or the file."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mex-live", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_line("mex-live"))
    src = p.add_argument_group("source (exactly one)")
    g = src.add_mutually_exclusive_group(required=True)
    g.add_argument("--camera", type=int, metavar="N", help="OpenCV camera index")
    g.add_argument("--video", metavar="PATH",
                   help="a video file, or a folder of numbered frame images with --fps (as fast as possible; "
                        "--realtime for its own pace), or a live stream (rtsp://, http://, /dev/video0)")
    g.add_argument("--batch", metavar="PATH",
                   help="every video file and folder of frames under PATH, one after another, headless: events "
                        "and a summary.csv row per input in --out DIR (a rerun skips the inputs done)")
    g.add_argument("--demo", action="store_true",
                   help="generated clip from the shipped face photo, micro-expressions planted at known frames")
    src.add_argument("--width", type=int, help="camera capture width")
    src.add_argument("--height", type=int, help="camera capture height")
    src.add_argument("--fps", type=float, help="camera capture rate; the rate of a --video folder of frames; a video "
                     "file's true rate where its container states a wrong one")
    src.add_argument("--realtime", action="store_true", help="play a file (or the demo) at its own frame rate")
    src.add_argument("--segmented", action="store_true",
                     help="the --video is one pre-segmented clip (a database clip, onset to offset): onset = first "
                          "frame, apex = the middle of the peak of the face's own motion (flow from the onset, "
                          "head and drift removed), label pooled over frames around it, one event at the end")
    src.add_argument("--seed", type=int, default=0, help="demo clip seed (default 0)")
    m = p.add_argument_group("recognition")
    m.add_argument("--model", metavar="PATH",
                   help="exported model (.onnx, or .engine for TensorRT); default: the shipped mex/assets/default.onnx")
    m.add_argument("--runtime", default="auto", choices=["auto", *RUNTIMES],
                   help="inference runtime (default auto: by the --model suffix)")
    m.add_argument("--flow", default="auto", choices=["auto", *FLOW_BACKENDS],
                   help="optical-flow backend (default auto)")
    m.add_argument("--tracker", default="auto", choices=["auto", "mediapipe", "haar"],
                   help="face tracker (default auto: mediapipe face mesh, else the Haar cascade)")
    m.add_argument("--max-faces", type=int, default=1, metavar="N",
                   help="follow up to N faces, each with its own id, spotter and events (default 1: the largest "
                        "face). The work per frame grows with the faces; when a camera outpaces it, the display "
                        "gives way first, then encoding ahead, then whole frames (every face misses the same "
                        "frame); no face is dropped for another, no candidate is dropped")
    o = p.add_argument_group("output")
    o.add_argument("--record", metavar="OUT.mp4", help="write the annotated video")
    o.add_argument("--events", metavar="OUT.jsonl", help="write one JSON object per detected micro-expression")
    o.add_argument("--rejections", metavar="OUT.jsonl",
                   help="write one JSON object per movement the spotter saw and did not report, with the reason "
                        "(blink, gaze, speech, head, long) and the measurements it rests on")
    o.add_argument("--out", metavar="DIR", help="--batch: the folder for the events files and summary.csv")
    o.add_argument("--summary", metavar="OUT.json", help="write the run's summary as JSON (frames, drops, faces, "
                   "events, stage latencies, warnings)")
    o.add_argument("--verbose", action="store_true", help="also show mediapipe's and TensorFlow Lite's own log lines")
    o.add_argument("--force", action="store_true",
                   help="let --events / --rejections / --record / --summary replace an existing file (never an input)")
    o.add_argument("--display", default="auto", choices=DISPLAYS,
                   help="what shows the run: window (the OpenCV window overlay, where a display is usable; else as "
                        "auto), terminal (the rich overlay), none (one line per event, then the summary); "
                        "default auto: terminal when stdout is a terminal, else none")
    o.add_argument("--queue-size", type=int, default=8, help="frames buffered between stages (default 8)")
    o.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    return p


# --------------------------------------------------------------------------------------- building
def check_outputs(args) -> None:
    """--events, --rejections, --record and --summary, checked before anything runs (mex.outputs.Outputs):
    never an input (any name of it) or each other, an existing file only with --force, in a folder that
    takes a new file: a mistyped output must not cost the user a recording, nor a finished run its summary."""
    from mex.outputs import Outputs

    from .runtimes import DEFAULT_MODEL

    model = args.model if args.model is not None else DEFAULT_MODEL  # the shipped model is an input too
    outputs = Outputs([None if is_stream(args.video) else args.video, model], force=args.force)
    for flag, path in (("--events", args.events), ("--rejections", args.rejections), ("--record", args.record),
                       ("--summary", args.summary)):
        if path is not None:
            outputs.file(flag, path)


def load_runtime_for(args):
    from mex.artifact import ArtifactError

    from .runtimes import load_runtime

    if args.model is not None:
        model = Path(args.model)
        if model.is_dir():
            raise CliError(f"--model {args.model}: is a folder; give the exported model file (.onnx or .engine)")
        if not model.is_file():
            raise CliError(f"--model {args.model}: file does not exist")
        if not os.access(model, os.R_OK):
            raise CliError(f"--model {args.model}: permission denied (this user may not read it)")
    try:
        return load_runtime(args.model, kind=args.runtime)
    except ArtifactError as e:
        raise CliError(f"--model: {e}") from None
    except FileNotFoundError as e:
        raise CliError(f"--model: {e}" + ("" if args.model else " (or pass --model PATH)")) from None
    except (ImportError, RuntimeError, ValueError, OSError) as e:
        raise CliError(f"--runtime {args.runtime}: cannot load the model ({type(e).__name__}: {e})") from None


def is_stream(video: str | None) -> bool:
    """A --video that is a live stream rather than a file: a URL (rtsp://, http://...) or a capture device."""
    return video is not None and (re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", video) is not None
                                  or video.startswith("/dev/video"))


def open_source(args):
    from .sources import CameraSource, DemoSource, SourceError, recording

    try:
        if args.demo:
            return DemoSource(seed=args.seed, realtime=args.realtime)
        if is_stream(args.video):
            return CameraSource(args.video, args.width, args.height, args.fps, flag="--video")
        if args.video is not None:
            return recording(args.video, args.fps, args.realtime)
        return CameraSource(args.camera, args.width, args.height, args.fps)
    except SourceError as e:
        raise CliError(str(e)) from None


def warm_up(runtime, flow: str) -> None:
    """One encode + inference on blank crops: validates --flow, and the first event is not slowed
    by lazy initialisation."""
    import numpy as np

    from mex import features

    # textured crops (a flat one would skip the flow solver and warm nothing)
    onset = np.random.default_rng(0).integers(0, 256, (features.CROP_SIZE, features.CROP_SIZE), dtype=np.uint8)
    apex = np.roll(onset, 1, axis=0)
    try:
        x = np.asarray(features.encode(onset, apex, flow=flow), np.float32)[None]
    except (ValueError, RuntimeError, ImportError) as e:
        raise CliError(f"--flow {flow}: {e}") from None
    for probe in (x, np.zeros_like(x), np.full_like(x, 0.5)):
        p = np.asarray(runtime.probs(probe), np.float64)
        if not (np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0, atol=1e-3) and (p >= 0).all()):
            raise CliError(f"--model {runtime.path}: its outputs are not probabilities "
                           f"(got {np.array2string(p[0], precision=3)}): NaN or broken weights; re-export it")


def make_pipeline(source, runtime, flow: str = "auto", tracker_backend: str = "auto", segmented: bool = False,
                  event_sinks=(), frame_sinks=(), config=None, rejection_sinks=(), max_faces: int = 1):
    """The live pipeline on `source`; it owns the source from here on (its run closes it)."""
    from functools import partial

    from .pipeline import Pipeline
    from .recognizer import Recognizer
    from .spotting import ClipSpotter, Spotter
    from .tracking import FaceTracker

    tracker = FaceTracker(backend=tracker_backend, max_faces=max_faces)
    make_spotter = partial(ClipSpotter if segmented else Spotter, source.fps)
    return Pipeline(source, tracker, make_spotter, Recognizer(runtime, flow=flow), event_sinks, frame_sinks, config,
                    rejection_sinks)


# --------------------------------------------------------------------------------------- demo truth
def planted_events(truth: dict) -> list[dict]:
    """The planted movements of a realtime.synth truth dict as [{onset, apex, offset, kind, usual}], `usual`
    being the class the movement most often gets in the databases (synth.USUAL_CLASS)."""
    from .synth import USUAL_CLASS

    return [{"onset": int(e["onset"]), "apex": int(e["apex"]), "offset": int(e["offset"]), "kind": e["kind"],
             "usual": USUAL_CLASS.get(e["kind"])} for e in truth.get("events", [])]


def match_events(found, planted, iou_min: float = 0.5):
    """The MEGC rule of realtime.metrics (IoU >= 0.5, one-to-one, best IoU first) on events against
    planted movements. Returns (true positives, list of (planted, found) pairs)."""
    from .metrics import match, span

    pairs = match([span(f.onset_frame, f.apex_frame, f.offset_frame) for f in found],
                  [span(p["onset"], p["apex"], p["offset"]) for p in planted], iou_min)
    return len(pairs), [(planted[j], found[i]) for i, j in pairs]


def shortfalls(summary: dict, source, max_frames: int | None, segmented: bool = False) -> list[str]:
    """What a run that ended normally did not do although it should have: a file that ended before its
    container's frame count (truncated or damaged), a source in which no face was ever found, a
    --segmented clip too short to give its label."""
    out = []
    total, read = source.total_frames, summary["frames_read"]
    cut_short = summary["interrupted"] or summary["aborted"] or (max_frames is not None and read >= max_frames)
    if total and read < total and not cut_short and not source.live:
        out.append(f"{source.name}: {read} of the {total} frames its container announces could be read "
                   f"(truncated or damaged file?): the run covers the first {read}")
    if read and summary["face_frames"] == 0:
        out.append(f"{source.name}: no face was found in any of the {read} frames: nothing could be spotted")
    elif segmented and summary["face_frames"] == 1:
        out.append(f"{source.name}: --segmented: only 1 frame with a face; a label needs at least 2 (the onset "
                   "and a later apex)")
    return out


def write_summary(path: str, summary: dict, source, warnings: list[str]) -> None:
    """The run's summary as one JSON object (non-finite numbers as null), written whole or not at all."""
    import json

    from mex.outputs import write_text

    from .sinks import json_safe

    payload = {"input": {"name": source.name, "width": source.width, "height": source.height, "fps": source.fps,
                          "total_frames": source.total_frames}, **summary, "warnings": warnings}
    write_text(path, json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n", flag="--summary")


def print_summary(out, summary: dict, source, events) -> None:
    w = out.write
    w("\n")
    w(f"mex-live summary  {source.name}  ({source.width}x{source.height} @ {source.fps:g} fps)\n")
    w(f"  frames      {summary['frames_processed']} processed / {summary['frames_read']} read, "
      f"{summary['dropped_frames']} dropped, {summary['face_frames']} with a face\n")
    w(f"  speed       {summary['fps']:.1f} fps over {summary['wall_s']:.2f} s (whole pipeline)\n")
    st = summary["stages_ms"]
    parts = [f"{k} {st[k]['p50']:.1f}/{st[k]['p95']:.1f}"
             for k in ("capture", "track", "spot", "encode", "infer") if k in st]
    if parts:
        w(f"  stages ms   p50/p95: {', '.join(parts)}\n")
    if "confirm" in st:
        w(f"  latency     apex confirmed -> label p95 {st['confirm']['p95']:.1f} ms; "
          f"apex captured -> label p95 {st['latency']['p95']:.1f} ms\n")
    if summary.get("speculated"):
        w(f"  ahead       {summary['speculated']} onset/peak pairs encoded before confirmation; "
          f"{summary['speculation_used']} of {summary['candidates']} candidates found theirs ready\n")
    skipped = summary.get("skipped_candidates", 0)
    uncertain = summary["uncertain_events"]
    w(f"  events      {summary['events']} found ({summary['candidates']} candidates"
      + (f", {skipped} could not be encoded" if skipped else "") + ")"
      + f", {uncertain} uncertain (top probability < {UNCERTAIN_BELOW}: the model cannot tell)\n")
    if len(summary["faces"]) > 1:
        w(f"  faces       {len(summary['faces'])}: "
          + ", ".join(f"#{f['face_id']} {f['events']} events in {f['frames']} frames" for f in summary["faces"]) + "\n")
    if summary.get("rejected"):
        w(f"  not micro   {', '.join(f'{n} {k}' for k, n in summary['rejected'].items())} "
          "(movements seen and not reported; --rejections writes each with its reason)\n")
    if source.truth is not None:
        # a run cut short (--max-frames, Ctrl-C) is scored on the planted events it got to see
        planted = [p for p in planted_events(source.truth) if p["offset"] < summary["frames_read"]]
        tp, pairs = match_events(list(events), planted)
        usual = sum(p["usual"] == f.label for p, f in pairs)
        w(f"  demo        {tp} of {len(planted)} planted micro-expressions found (IoU >= 0.5), "
          f"{len(events) - tp} other detections; {usual} of {tp} labelled as the databases usually label "
          f"that movement\n")
        for p in planted:
            hit = next((f for q, f in pairs if q is p), None)
            got = (f"found {hit.onset_frame}-{hit.apex_frame}-{hit.offset_frame} {hit.label}"
                   + (" (uncertain)" if hit.uncertain else "") if hit else "missed")
            w(f"              planted {p['onset']}-{p['apex']}-{p['offset']} {p['kind']} "
              f"(usually {p['usual']}): {got}\n")
        w("              (a planted movement is one facial action on a photo, not an acted emotion: the label is\n"
          "              the class the model finds closest; brow raises are usually coded surprise, brow lowering,\n"
          "              eyelid tightening and lip-corner depression negative, lip-corner pulls positive)\n")
    if summary["reconnects"]:
        w(f"  camera      {summary['reconnects']} reconnects, {summary['read_failures']} failed reads, "
          f"{summary['lost_frames']} frames lost while reconnecting (at the source's rate)\n")
    if summary["interrupted"]:
        w("  stopped     by the user (events so far are written)\n")
    out.flush()


# --------------------------------------------------------------------------------------- display
def display_choice(asked: str) -> str:
    """--display resolved to window, terminal or none. A window needs a usable display: this OpenCV is a
    Qt build, and cv2.imshow without one kills the process, so it is checked first (overlay.display_usable)."""
    fallback = "terminal" if sys.stdout.isatty() else "none"
    if asked == "auto":
        return fallback
    if asked == "window":
        from .overlay import display_usable

        ok, why = display_usable()
        if not ok:
            instead = "using the terminal overlay" if fallback == "terminal" else "printing one line per event"
            print(f"mex-live: window overlay not available: {why}; {instead}", file=sys.stderr)
            return fallback
    return asked


class Screen:
    """What the user sees while the pipeline runs (the window or the terminal overlay, or plain lines),
    driven from the main thread by `pipeline.run(on_tick=screen)`. With plain lines it also says on
    stderr when the source reconnects; with any, what is left to finish after Ctrl-C."""

    def __init__(self, choice: str, source, runtime):
        self.source = source
        self.window = self.terminal = None
        if choice == "window":
            from .overlay import WindowOverlay

            self.window = WindowOverlay(f"mex-live: {source.name}")
            print("mex-live: window overlay: on (q or Esc stops)", file=sys.stderr)
        elif choice == "terminal":
            from .overlay import TerminalOverlay

            self.terminal = TerminalOverlay(title=f"mex-live  {source.name}  runtime {runtime.name}")
        self._source_state = source.state
        self._told_stopping = False

    def __enter__(self) -> Screen:
        if self.terminal is not None:
            self.terminal.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.terminal is not None:
            self.terminal.close()
        if self.window is not None:
            self.window.close()

    def __call__(self, pipe) -> None:
        if pipe.interrupts and pipe.running and not self._told_stopping:
            self._told_stopping = True
            frames, candidates = pipe.backlog()
            print(f"mex-live: stopping: finishing {frames} queued frames and {candidates} candidates "
                  "(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)
        if self.terminal is None:
            self._note_source_state()
        if self.window is not None:
            try:
                self.window.update(pipe)
            except Exception as e:  # noqa: BLE001 - a window that fails mid-run must not end the run
                print(f"mex-live: window overlay closed ({type(e).__name__}: {e}); continuing", file=sys.stderr)
                self.window = None
        if self.terminal is not None:
            self.terminal.update(pipe, force=not pipe.running)  # the last state is always drawn

    def _note_source_state(self) -> None:
        """A camera unplugged and back."""
        state, before = self.source.state, self._source_state
        if state != before and {state, before} <= {"reconnecting", "ok"}:
            why = f"{self.source.outage}; " if self.source.outage else ""
            how = f" ({why}retrying with backoff)" if state == "reconnecting" else " (resumed)"
            print(f"mex-live: {self.source.name}: {state}{how}", file=sys.stderr, flush=True)
        self._source_state = state


# --------------------------------------------------------------------------------------- main
def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mex.outputs import OutputError

    from .native_logs import quiet

    try:
        with quiet(not args.verbose):
            return _run(args)
    except (CliError, OutputError) as e:
        print(f"mex-live: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("mex-live: interrupted before the pipeline started", file=sys.stderr)
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - a bug: say so, with the traceback, and fail
        import traceback

        traceback.print_exc()
        print(f"mex-live: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        if argv is None:  # mex-live as the program: the work is done, and a Ctrl-C while the interpreter
            # unloads its libraries (a second or two) must not turn a finished run into exit status 130
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    signal.signal(sig, signal.SIG_IGN)
                except ValueError:  # not the main thread
                    pass


def check_shared_flags(args) -> None:
    """The flags every kind of run shares, --batch included."""
    if args.camera is None and not is_stream(args.video) and (args.width is not None or args.height is not None):
        raise CliError("--width/--height set a camera's capture size; a file or the demo is read at its own size")
    if args.demo and args.fps is not None:
        raise CliError("--fps sets a camera's rate, a frame folder's, or a file's true rate; the demo has its own")
    if args.fps is not None and not 1 <= args.fps <= 1000:
        raise CliError(f"--fps {args.fps:g}: a frame rate is between 1 and 1000")
    if args.max_frames is not None and args.max_frames < 1:
        raise CliError(f"--max-frames {args.max_frames}: at least 1")
    if args.queue_size < 1:
        raise CliError("--queue-size must be at least 1")
    if not 1 <= args.max_faces <= 16:
        raise CliError(f"--max-faces {args.max_faces}: between 1 and 16")
    if args.segmented and args.max_faces > 1:
        raise CliError("--segmented reads one pre-segmented clip of one face; it takes no --max-faces")


def check_single_input(args) -> None:
    """The flags of a run on one input (not --batch)."""
    if args.out is not None:
        raise CliError("--out goes with --batch; a single input writes --events, --rejections, --record, --summary")
    if args.camera is not None and args.camera < 0:
        raise CliError(f"--camera {args.camera}: a camera index is 0 or more")
    if args.camera is not None and args.realtime:
        print("mex-live: note: --realtime paces a file; a camera is always real time", file=sys.stderr)
    if args.segmented and args.video is None:
        raise CliError("--segmented needs --video (a file or a folder of frames holding one clip)")
    if args.segmented and is_stream(args.video):
        raise CliError(f"--segmented needs a recorded clip; --video {args.video} is a live stream")
    if args.video is not None and not is_stream(args.video) and not Path(args.video).exists():
        raise CliError(f"--video {args.video}: no such file or folder")
    check_outputs(args)


def _batch(args) -> int:
    from rich.console import Console

    from mex.outputs import OutputError

    from .batch import plan, run_batch

    if args.out is None:
        raise CliError("--batch needs --out DIR (events files and summary.csv)")
    if not Path(args.batch).exists():
        raise CliError(f"--batch {args.batch}: no such file or folder")
    if any(v is not None for v in (args.events, args.rejections, args.record, args.summary)):
        raise CliError("--batch writes one events file per input and summary.csv into --out; "
                       "--events, --rejections, --record and --summary are for a single input")
    console = Console(stderr=False)
    try:
        inputs, out, rows = plan(args, console)
    except ValueError as e:
        raise CliError(str(e)) from None
    runtime = load_runtime_for(args)
    warm_up(runtime, args.flow)
    try:
        failed = run_batch(args, runtime, console, inputs, out, rows)
    except OutputError as e:  # summary.csv could not be written mid-way (the previous table is kept)
        print(f"mex-live: error: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_RUNTIME if failed else EXIT_OK


def open_sinks(args, source, display: str):
    """(the demo's events, event sinks, frame sinks, rejection sinks) for the demo, --events, --record,
    --rejections and --display."""
    from .sinks import EventLog, ListSink, PrintSink, VideoRecorder

    keep = ListSink()  # every event, for the demo's comparison with the planted ones (a short clip)
    event_sinks, frame_sinks, rejection_sinks = [keep] if source.truth is not None else [], [], []
    try:
        if args.events:
            event_sinks.append(EventLog(args.events))
        if args.rejections:
            rejection_sinks.append(EventLog(args.rejections, flag="--rejections"))
        if args.record:
            frame_sinks.append(VideoRecorder(args.record, source.fps))
    except BaseException:
        for sink in [*event_sinks, *rejection_sinks]:
            sink.close()
        raise
    if display != "terminal":
        event_sinks.append(PrintSink(sys.stdout))
    return keep, event_sinks, frame_sinks, rejection_sinks


def _run(args) -> int:
    from .pipeline import PipelineConfig

    check_shared_flags(args)
    try:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    except ValueError:  # not the main thread (tests calling main() from a thread)
        pass
    if args.batch is not None:
        return _batch(args)
    check_single_input(args)

    t0 = time.monotonic()
    source = open_source(args)  # first: a bad file or camera index is reported at once
    try:
        runtime = load_runtime_for(args)
        warm_up(runtime, args.flow)
        display = display_choice(args.display)
        keep, event_sinks, frame_sinks, rejection_sinks = open_sinks(args, source, display)
        config = PipelineConfig(queue_size=args.queue_size, display=display != "none", max_frames=args.max_frames)
        try:
            pipe = make_pipeline(source, runtime, args.flow, args.tracker, args.segmented, event_sinks, frame_sinks,
                                 config, rejection_sinks, max_faces=args.max_faces)
        except BaseException as e:
            for sink in [*event_sinks, *frame_sinks, *rejection_sinks]:
                sink.close()  # not handed to a pipeline: no half-made files left behind
            if isinstance(e, (ImportError, RuntimeError, ValueError)):
                raise CliError(f"--tracker {args.tracker}: cannot start the face tracker "
                               f"({type(e).__name__}: {e})") from None
            raise
    except BaseException:
        source.close()  # not handed to a pipeline yet
        raise
    screen = Screen(display, source, runtime)
    if screen.terminal is None:
        print(f"mex-live: {source.describe()}, runtime {runtime.name}, flow {args.flow}, "
              f"ready in {time.monotonic() - t0:.1f} s", flush=True)
    with screen:
        summary = pipe.run(on_tick=screen)
    with late_signals_ignored():
        return report(args, pipe, summary, keep)


@contextmanager
def late_signals_ignored():
    """The run is over and what it found is being written: a Ctrl-C (or SIGTERM) now would only cut the
    summary short and change the exit status, so it is ignored until the block ends."""
    held = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            held[sig] = signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)


def report(args, pipe, summary: dict, keep) -> int:
    """The summary on stdout (and --summary), warnings, the error; the exit status."""
    from mex.outputs import OutputError

    from .sources import SourceError

    print_summary(sys.stdout, summary, pipe.source, keep.events)
    notes = shortfalls(summary, pipe.source, args.max_frames, args.segmented)
    for note in notes:
        print(f"  warning     {note}")
        print(f"mex-live: warning: {note}", file=sys.stderr)
    status = EXIT_OK
    if args.summary:
        try:
            write_summary(args.summary, summary, pipe.source, notes)
            print(f"  summary     {args.summary}")
        except OutputError as e:
            print(f"mex-live: error: {e} (the summary above is all there is)", file=sys.stderr)
            status = EXIT_RUNTIME
    for name, path in (("events log", args.events), ("rejections", args.rejections), ("recording", args.record)):
        if path and Path(path).is_file():  # a recording that could not be finished was removed
            print(f"  {name:<11s} {path}")
    if pipe.failure is None:
        return status
    for failure in [pipe.failure, *pipe.later_failures]:
        if isinstance(failure.error, (SourceError, OutputError)):  # bad input, a full disk: no traceback
            print(f"mex-live: error: {failure.error}", file=sys.stderr)
        else:
            print(f"mex-live: error: {failure}\n{failure.traceback}", file=sys.stderr)
    return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
