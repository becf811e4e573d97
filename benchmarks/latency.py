"""mex-bench latency: the whole live pipeline on a generated 640x480 30 fps clip.

Measured in one run, on one machine:
- decode-only time of the clip (OpenCV, the same VideoSource the pipeline reads with), before and
  after the pipeline run (mean of the two);
- whole-pipeline throughput in offline mode (file source: blocking queues, nothing dropped):
  capture/decode -> tracking and alignment -> spotting -> features + inference;
- per-stage p50/p95/p99 (ms) from the stamps each packet carries, and apex confirmed -> label emitted;
- the events found against the planted ones (IoU >= 0.5);
- the CPU time of the whole process over the run (all threads), against the most CPU work the
  machine's cores can do within 2x the decode-only time: above that budget the 2x target cannot be
  met by any scheduling of the same work.

`--realtime` plays the clip at its own frame rate, as a camera delivers frames (writes
latency-realtime.*): the recognizer then encodes features ahead (prefetch) while the spotter waits to
confirm an apex (realtime/recognizer.py), which is what a webcam user gets; throughput targets do not
apply (the clip sets the pace), confirm -> label does.

`--frames N` longer than the clip loops the file and samples the process RSS once a second
(memory-flatness run; writes latency-memory.*).

`--recognizer-only N` times the last stage alone: N candidates (onset/apex crops from
mex.features.synthetic, 0.5-2 px motion) through the pipeline's Recognizer one at a time, each
stamped "apex confirmed" just before it is handed over, so confirm -> label is features + inference
with nothing queued ahead and no other stage competing. It needs no face tracker (the GPU machine has
no mediapipe) and writes latency-recognizer-<flow backend>.*.

Targets (issue 5 §7, CPU, 2 cores): >= 200 fps, pipeline time <= 2x decode-only, confirm p95 <= 50 ms.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from mex.features.backends import BACKENDS as FLOW_BACKENDS
from mex.outputs import write_text

from .common import BadInput, environment, results_dir, write_json

TARGET_FPS = 200.0
TARGET_DECODE_RATIO = 2.0
TARGET_CONFIRM_P95_CPU = 50.0
TARGET_CONFIRM_P95_GPU = 5.0


def add_arguments(p) -> None:
    p.add_argument("--seconds", type=float, default=20.0,
                   help="length of the generated clip (default 20 s = 600 frames)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames to push through (default: the clip once); more than the clip loops it and samples RSS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="exported model (default: the shipped one)")
    p.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "tensorrt", "torch"])
    p.add_argument("--flow", default="auto", choices=["auto", *FLOW_BACKENDS])
    p.add_argument("--tracker", default="auto", choices=["auto", "mediapipe", "haar"])
    p.add_argument("--queue-size", type=int, default=8)
    p.add_argument("--clip", default=None, help="use this video instead of generating one")
    p.add_argument("--note", default=None, help="a line added to the report (e.g. how the run was made)")
    p.add_argument("--realtime", action="store_true",
                   help="play the clip at its own frame rate (camera-like; speculative features on); "
                        "writes latency-realtime.*")
    p.add_argument("--faces", default=None, metavar="1,2,4",
                   help="per face count: N faces side by side, mex-live --max-faces N: fps, confirm -> label p95, "
                        "spotting F1 per face (benchmarks/faces.py; writes latency-faces.*)")
    p.add_argument("--recognizer-only", type=int, default=0, metavar="N",
                   help="time only apex confirmed -> label on N synthetic candidates (no clip, no tracker)")


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _decode_only(path: Path, frames: int | None) -> tuple[float, int]:
    from realtime.sources import VideoSource

    src = VideoSource(path, loop_frames=frames)
    t0 = time.perf_counter()
    n = 0
    for _ in src.frames():
        n += 1
    return time.perf_counter() - t0, n


def _make_clip(tmp: Path, seconds: float, seed: int) -> tuple[Path, dict]:
    from realtime import synth

    spec = synth.ClipSpec(photo="astronaut.jpg", fps=30.0, seconds=seconds, size=(640, 480),
                          events=max(1, int(seconds / 3.5)), duration_s=(0.2, 1 / 3), amplitude_px=(2.0, 3.0),
                          blinks=max(0, int(seconds / 8)), head_motion=0.5, head_moves=max(0, int(seconds / 15)),
                          seed=seed)
    path = tmp / "latency.mp4"
    truth = synth.write_clip(path, spec)
    return path, truth


def _plot(path: Path, summary: dict, rss: list[tuple[float, int, float]] | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in ("capture", "wait", "track", "spot", "frame", "encode", "infer", "confirm", "latency")
              if s in summary["stages_ms"]]
    ncols = 2 if rss else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 4.2), squeeze=False)
    ax = axes[0, 0]
    xs = range(len(stages))
    for key, off, color in (("p50", -0.25, "#4c72b0"), ("p95", 0.0, "#dd8452"), ("p99", 0.25, "#c44e52")):
        ax.bar([x + off for x in xs], [summary["stages_ms"][s][key] for s in stages],
               width=0.25, label=key, color=color)
    ax.set_xticks(list(xs), stages, rotation=30)
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.axhline(TARGET_CONFIRM_P95_CPU, color="gray", ls="--", lw=0.8)
    ax.text(len(stages) - 0.5, TARGET_CONFIRM_P95_CPU * 1.08, "50 ms", ha="right", fontsize=8, color="gray")
    ax.legend()
    ax.set_title("per-stage latency (ms)")
    if rss:
        ax = axes[0, 1]
        ax.plot([r[1] for r in rss], [r[2] for r in rss])
        ax.set_xlabel("frames processed")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title("memory over the run")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recognizer_only(args) -> int:
    """Confirm -> label of the Recognizer alone (features + inference), one candidate at a time."""
    import numpy as np

    from mex.features import CROP_SIZE, get_backend
    from mex.features.synthetic import synthetic_pairs
    from realtime.cli import warm_up
    from realtime.framing import cut_patch
    from realtime.channels import RingStats
    from realtime.packets import Candidate, FaceFrame, Frame
    from realtime.recognizer import Recognizer
    from realtime.runtimes import load_runtime

    env = environment()
    load_before = os.getloadavg()
    runtime = load_runtime(args.model, kind=args.runtime)
    warm_up(runtime, args.flow)
    flow = get_backend(args.flow)
    recognizer = Recognizer(runtime, flow=args.flow)
    pairs = synthetic_pairs(min(args.recognizer_only, 16), CROP_SIZE, seed=args.seed)
    blank = np.zeros((1, 1, 3), np.uint8)
    stages = RingStats()  # the pipeline's own bookkeeping: the Recognizer adds encode and infer
    for k in range(args.recognizer_only):
        pair = pairs[k % len(pairs)]
        # the synthetic crops stand for whole frames that are already framed (identity framing)
        onset = FaceFrame(Frame(2 * k, time.monotonic(), 0.0, blank), "face", crop=pair.onset,
                          patch=cut_patch(pair.onset, np.eye(2, 3)))
        apex = FaceFrame(Frame(2 * k + 1, time.monotonic(), 0.0, blank), "face", crop=pair.apex,
                         patch=cut_patch(pair.apex, np.eye(2, 3)))
        cand = Candidate(onset, apex, None, None, np.zeros(1, np.float32), t_apex_confirmed=time.monotonic())
        (event,) = recognizer([cand], stages)
        stages.add("confirm", event.confirm_ms)
    summary = {k: {m: round(v, 3) for m, v in d.items()} for k, d in stages.summary().items()}
    stats = summary["confirm"]
    on_gpu = flow.device.startswith("cuda")
    limit = TARGET_CONFIRM_P95_GPU if on_gpu else TARGET_CONFIRM_P95_CPU
    result = {
        "benchmark": "latency --recognizer-only", "environment": env, "runtime": runtime.name,
        "flow": repr(flow), "candidates": stats["n"], "crop_px": CROP_SIZE,
        "load_avg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "confirm_to_label_ms": stats, "stages_ms": summary, "target_p95_ms": limit, "target_met": stats["p95"] <= limit,
    }
    out = results_dir(args.out)
    stem = f"latency-recognizer-{flow.name}"  # one file per flow backend, so CPU backends can be compared
    write_json(out / f"{stem}.json", result)
    md = "\n".join([
        f"# mex-bench latency --recognizer-only ({env['machine']})", "",
        f"{env['when']}: {env['cpu']} x{env['cpu_count']}" + (f", GPU {env['gpu']}" if "gpu" in env else "")
        + f"; load average before/after {result['load_avg_before_after']}.", "",
        f"{stats['n']} synthetic candidates ({CROP_SIZE} px crops, registered) "
        "through the live Recognizer one at a time; "
        f"flow {result['flow']}, runtime {result['runtime']}.", "",
        "| ms | p50 | p95 | p99 |", "|---|---|---|---|",
        *(f"| {name} | {summary[stage]['p50']} | {summary[stage]['p95']} | {summary[stage]['p99']} |"
          for stage, name in (("encode", "features (encode)"), ("infer", "inference (infer)"),
                              ("confirm", "apex confirmed -> label"))),
        "", f"Target: apex confirmed -> label p95 <= {limit:g} ms ({'GPU' if on_gpu else 'CPU'} flow): "
        f"{'met' if result['target_met'] else 'NOT met'}.", ""])
    write_text(out / f"{stem}.md", md, flag="--out")
    print(md)
    return 0


def check_inputs(args) -> None:
    """--clip and --model read before anything is generated or measured (BadInput names the flag)."""
    from realtime.cli import CliError, load_runtime_for
    from realtime.sources import SourceError, VideoSource

    try:
        if args.clip is not None:
            VideoSource(args.clip, flag="--clip").close()
        if args.model is not None:
            load_runtime_for(args)
    except (CliError, SourceError) as e:
        raise BadInput(str(e)) from None


def run(args) -> int:
    check_inputs(args)
    if args.recognizer_only:
        return recognizer_only(args)
    if args.faces:
        from . import faces

        return faces.run(args)
    env = environment()
    load_before = os.getloadavg()
    out = results_dir(args.out)
    with tempfile.TemporaryDirectory(prefix="mex-bench-latency-") as tmp:
        clip, truth, frames, info = _clip(args, Path(tmp))
        measured = _measure(args, clip, frames)
    if measured["summary"]["error"]:
        print(f"pipeline failed: {measured['summary']['error']}")
        return 1
    result = _result(args, env, load_before, info, truth, frames, measured)
    memory_mode = frames is not None
    stem = "latency-memory" if memory_mode else "latency-realtime" if args.realtime else "latency"
    write_json(out / f"{stem}.json", result)
    title = (f"mex-bench latency, {env['machine']} ({env['cpu_count']} cpu), {result['runtime']}, "
             f"{result['frames']} frames: {result['pipeline_fps']:.0f} fps")
    _plot(out / f"{stem}.png", measured["summary"], measured["rss"] if memory_mode else None, title)
    md = _markdown(result)
    write_text(out / f"{stem}.md", md, flag="--out")
    print(md)
    print(f"results in {out}/{stem}.json (.md, .png)")
    return 0


def _clip(args, tmp: Path) -> tuple[Path, dict | None, int | None, dict]:
    """The clip to run (--clip, or a generated one in tmp with its truth), for a --frames run longer
    than the clip (memory mode) how many frames to loop it to, and the clip's frames, fps and size."""
    from realtime.sources import VideoSource

    t0 = time.perf_counter()
    clip, truth = (Path(args.clip), None) if args.clip else _make_clip(tmp, args.seconds, args.seed)
    t_gen = time.perf_counter() - t0
    probe = VideoSource(clip)
    n, fps, w, h = probe.total_frames, probe.fps, probe.width, probe.height
    probe.close()
    frames = args.frames if args.frames and args.frames > (n or 0) else None
    if frames is not None and args.realtime:
        raise SystemExit("--realtime and a --frames run (memory mode) do not combine: pick one")
    print(f"clip {clip.name}: {n} frames {w}x{h} @ {fps:g} fps (made in {t_gen:.1f} s)"
          + (f"; looping to {frames} frames" if frames else ""), flush=True)
    info = {"frames": n, "fps": fps, "width": w, "height": h, "generated": truth is not None}
    return clip, truth, frames, info


def _measure(args, clip: Path, frames: int | None) -> dict:
    """The pipeline over the clip, with decode-only runs before and after it; in memory mode the RSS
    sampled once a second."""
    from realtime.cli import make_pipeline, warm_up
    from realtime.pipeline import PipelineConfig
    from realtime.runtimes import load_runtime
    from realtime.sinks import ListSink
    from realtime.sources import VideoSource

    memory_mode = frames is not None
    runtime = load_runtime(args.model, kind=args.runtime)
    warm_up(runtime, args.flow)
    dec_before, n_dec = _decode_only(clip, frames)
    print(f"decode only: {n_dec} frames in {dec_before:.2f} s ({n_dec / dec_before:.0f} fps)", flush=True)
    source = VideoSource(clip, loop_frames=frames, realtime=args.realtime)
    keep = ListSink()
    pipe = make_pipeline(source, runtime, args.flow, args.tracker, event_sinks=[keep],
                         config=PipelineConfig(queue_size=args.queue_size))
    rss: list[tuple[float, int, float]] = []
    stop = threading.Event()

    def sample():
        t_start = time.monotonic()
        while not stop.is_set():
            rss.append((time.monotonic() - t_start, pipe.frames_processed, _rss_mb()))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True) if memory_mode else None
    if sampler:
        sampler.start()
    last = [time.monotonic()]

    def tick(p):
        if memory_mode and time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            print(f"  {p.frames_processed} frames, {p.fps():.0f} fps, RSS {_rss_mb():.0f} MiB", flush=True)

    cpu0 = time.process_time()  # every thread of this process: tracker, spotter, recognizer, mediapipe's own
    summary = pipe.run(on_tick=tick)
    cpu_s = time.process_time() - cpu0
    stop.set()
    if sampler:
        sampler.join()
    rss_after = _rss_mb()
    dec_after, _ = _decode_only(clip, frames)
    return {"runtime": runtime, "summary": summary, "events": keep.events, "cpu_s": cpu_s, "rss": rss,
            "rss_after": rss_after, "decode_runs_s": (dec_before, dec_after)}


def _result(args, env: dict, load_before, clip: dict, truth: dict | None, frames: int | None, m: dict) -> dict:
    """What latency.json holds: the run's speed, stage times, events and the targets met."""
    from realtime.cli import match_events, planted_events

    summary, runtime = m["summary"], m["runtime"]
    dec_before, dec_after = m["decode_runs_s"]
    decode_s = (dec_before + dec_after) / 2
    n = summary["frames_processed"]
    st = summary["stages_ms"]
    confirm_p95 = st.get("confirm", {}).get("p95")
    result = {
        "benchmark": "latency",
        "environment": env,
        "clip": clip,
        "runtime": runtime.name,
        "runtime_info": runtime.info,
        "flow": args.flow,
        "tracker": args.tracker,
        "frames": n,
        "load_avg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "dropped_frames": summary["dropped_frames"],
        "decode_only_s": round(decode_s, 4),
        "decode_only_fps": round(n / decode_s, 1) if decode_s else None,
        "decode_only_runs_s": [round(dec_before, 4), round(dec_after, 4)],
        "pipeline_s": round(summary["wall_s"], 4),
        "pipeline_fps": round(summary["fps"], 1),
        "pipeline_over_decode": round(summary["wall_s"] / decode_s, 3) if decode_s else None,
        # The 2x-decode target as work: in 2x the decode-only time the machine's cores can do at most
        # 2 x decode_s x cores of CPU work; a pipeline that needs more cannot meet it by scheduling.
        "pipeline_cpu_s": round(m["cpu_s"], 3),
        "cpu_budget_2x_decode_s": round(TARGET_DECODE_RATIO * decode_s * env["cpu_count"], 3),
        "stage_wall_s": {k: round(st[k]["mean"] * st[k]["n"] / 1e3, 3)
                         for k in ("track", "spot", "speculate", "encode", "infer") if k in st},
        "stages_ms": {k: {m: round(v, 4) if isinstance(v, float) else v for m, v in d.items()} for k, d in st.items()},
        "confirm_to_label_p95_ms": None if confirm_p95 is None else round(confirm_p95, 3),
        "events": summary["events"],
        "candidates": summary["candidates"],
        "realtime": args.realtime,
        "speculated": summary["speculated"],
        "speculation_used": summary["speculation_used"],
        "note": args.note,
    }
    memory_mode = frames is not None
    if truth is not None and not memory_mode:  # the truth covers one pass of the clip
        planted = planted_events(truth)
        tp, _ = match_events(m["events"], planted)
        result["spotting"] = {"planted": len(planted), "found": len(m["events"]), "true_positives": tp}
    limit_confirm = TARGET_CONFIRM_P95_GPU if "gpu" in env else TARGET_CONFIRM_P95_CPU
    result["targets"] = {} if args.realtime else {  # at the clip's pace throughput is the clip's
        "fps>=200": result["pipeline_fps"] >= TARGET_FPS,
        "pipeline<=2x_decode": (result["pipeline_over_decode"] or 99) <= TARGET_DECODE_RATIO,
    }
    result["targets"][f"confirm_p95<={limit_confirm:g}ms"] = confirm_p95 is not None and confirm_p95 <= limit_confirm
    if memory_mode:
        result["memory"] = memory_summary(m["rss"], n, m["rss_after"])
    return result


def memory_summary(rss: list, n: int, rss_after: float | None = None) -> dict:
    """RSS at 10 %, 50 % and the end of the run (while it runs), growth over the second half; at most
    ~200 samples kept for the plot."""
    def at(frac):
        return min(rss, key=lambda r: abs(r[1] - frac * n))[2]

    step = max(1, len(rss) // 200)
    kept = rss[::step] + ([rss[-1]] if (len(rss) - 1) % step else [])
    return {
        "samples": [[round(t, 2), int(f), round(m, 1)] for t, f, m in kept],
        "rss_10pct_mb": round(at(0.1), 1),
        "rss_50pct_mb": round(at(0.5), 1),
        "rss_end_mb": round(rss[-1][2], 1),
        "rss_max_mb": round(max(r[2] for r in rss), 1),
        "growth_second_half_mb": round(rss[-1][2] - at(0.5), 1),
        "rss_after_shutdown_mb": None if rss_after is None else round(rss_after, 1),
    }


def _markdown(r: dict) -> str:
    env = r["environment"]
    lines = [
        f"# mex-bench latency ({env['machine']})",
        "",
        f"{env['when']} on {env['host']}: {env['cpu']} x{env['cpu_count']}"
        + (f", GPU {env['gpu']}" if "gpu" in env else "") + f"; python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
        f"Clip: {r['clip']['frames']} frames {r['clip']['width']}x{r['clip']['height']} @ {r['clip']['fps']:g} fps "
        f"({'generated' if r['clip']['generated'] else 'given'}); "
        f"runtime {r['runtime']}, flow {r['flow']}, tracker {r['tracker']}; "
        + (f"real-time mode (the file at its own {r['clip']['fps']:g} fps, as a camera delivers frames; features "
           f"computed speculatively while an apex awaits confirmation: {r['speculated']} pairs computed ahead, "
           f"{r['speculation_used']} candidates found theirs). " if r.get("realtime") else
           f"offline mode (file source, nothing dropped: {r['dropped_frames']} dropped). ")
        + f"1-minute load average before/after: {r['load_avg_before_after'][0]} / {r['load_avg_before_after'][1]} "
        f"on {env['cpu_count']} cores (other work on the machine slows every number here).",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| whole pipeline | {r['pipeline_fps']:.1f} fps ({r['frames']} frames in {r['pipeline_s']:.2f} s) | "
        f"{'(the clip sets the pace)' if r.get('realtime') else '>= 200 fps'} |",
        f"| decode only (same run) | {r['decode_only_fps']:.1f} fps ({r['decode_only_s']:.2f} s) | |",
        f"| pipeline / decode-only time | {r['pipeline_over_decode']:.2f}x | {'' if r.get('realtime') else '<= 2x'} |",
        f"| apex confirmed -> label, p95 | {r['confirm_to_label_p95_ms']} ms | <= 50 ms CPU, <= 5 ms GPU flow |",
        f"| CPU time of the pipeline process | {r['pipeline_cpu_s']:.2f} s (wall time in stages: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["stage_wall_s"].items()) + ") | "
        + ("" if r.get("realtime") else f"at most {r['cpu_budget_2x_decode_s']:.2f} s fit in 2x decode on "
           f"{env['cpu_count']} cores |"),
        "",
        "Targets met: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["targets"].items()),
        "",
        "| stage (ms) | n | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for k, d in r["stages_ms"].items():
        lines.append(f"| {k} | {d['n']} | {d['p50']:.2f} | {d['p95']:.2f} | {d['p99']:.2f} | {d['max']:.2f} |")
    lines += [
        "",
        "Stages: capture = decode of one frame; wait = captured -> tracking starts (queueing); track = face "
        "tracking and alignment; spot = spotter push; frame = captured -> spotted; speculate = features of an "
        "open interval's onset and peak so far, computed ahead (real-time mode); encode = features "
        "(mex.features.encode, per candidate; near zero when computed ahead); infer = inference per candidate; "
        "confirm = apex confirmed -> label emitted; latency = apex frame captured -> label emitted "
        "(includes the frames the spotter must wait for after the apex; in offline mode those arrive "
        "faster than real time).",
    ]
    if r.get("note"):
        lines += ["", f"Note: {r['note']}"]
    if "spotting" in r:
        s = r["spotting"]
        lines += ["", f"Spotting on this clip: {s['true_positives']} of {s['planted']} planted found (IoU >= 0.5), "
                      f"{s['found']} events in all."]
    if "memory" in r:
        m = r["memory"]
        lines += ["", f"Memory over {r['frames']} frames (RSS sampled once a second while running): "
                      f"{m['rss_10pct_mb']} MiB at 10 %, {m['rss_50pct_mb']} MiB at 50 %, {m['rss_end_mb']} MiB at "
                      f"the end (max {m['rss_max_mb']}); growth over the second half {m['growth_second_half_mb']} MiB."]
    return "\n".join(lines) + "\n"
