"""mex-bench spotting --dataset casme2-long|samm-lv --root RAW: the online spotter on the long videos of
CAS(ME)^2 and SAMM Long Videos, scored with the MEGC rule.

Every video folder of the database runs at the database's frame rate through FaceTracker + Spotter,
as the live pipeline runs them. The spotter's candidates are its micro-expression intervals; the
movements it rejects as longer than a micro-expression (`Spotter.take_rejections()`, reason "long")
are its macro-expression intervals. Each kind is scored against the annotated intervals of that kind
(realtime.metrics: a hit at IoU >= 0.5, each annotated interval matched at most once), per video and
pooled over all videos (F1 from the summed TP, FP, FN, as MEGC scores a database); "all" pools both kinds.

Layouts (RAW is what --root names; the databases are licensed, the repository never ships them):

- casme2-long: RAW/CAS(ME)^2code_final.xlsx (any single *code_final*.xlsx); frames
  RAW/rawpic/s15/15_0101disgustingteeth/img1.jpg (30 fps). The coding sheet (first worksheet, no
  header) holds per row: subject number, video name + "_" + movement number (disgust1_1), onset,
  apex, offset, action units, emotion, "micro-expression" | "macro-expression". Two naming worksheets
  map the sheet's names to folders: the second holds per row (.., folder number 15, subject number 1),
  the third (video code 0101, video name disgust1); the folder is rawpic/s15/<N>_0101<title>/.
- samm-lv: RAW/SAMM_LongVideos_V3_Release.xlsx (any single SAMM_LongVideos*.xlsx or .csv): title rows,
  then a header with Subject, Filename, Onset, Apex, Offset, Type ("Micro - 1/2" | "Macro"); frames
  RAW/SAMM_longvideos/006_1/006_1_0001.jpg (200 fps); Filename 006_1_2 is movement 2 of video 006_1.

Frame numbers in the sheets are the numbers in the file names (img1.jpg, 006_1_0001.jpg). An offset
of 0 or none means the end was not coded: the interval ends at the apex (realtime.metrics.span), as
the MEGC scripts read it; an apex of 0, -1 or none is the middle of onset..offset. An annotation whose
frames are not all in its video's folder, or ends before it starts, is left out and listed in the
results; every other problem in the data is a DataError naming the file, row or folder.
"""
from __future__ import annotations

import functools
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mex.composite import DataError
from mex.outputs import write_text
from train.datasets import sheet_rows

FPS = {"casme2-long": 30.0, "samm-lv": 200.0}
TITLES = {"casme2-long": "CAS(ME)^2 long videos", "samm-lv": "SAMM Long Videos"}

# Published F1 on the same databases and rule (IoU >= 0.5), printed beside ours; not measured here.
PUBLISHED = {
    "casme2-long": [
        {"method": "MEGC2020 baseline, MDMD (He et al., arXiv:1912.11985)", "micro": 0.0082, "macro": 0.1196,
         "all": 0.0376},
        {"method": "best reported micro F1, about (Zhao et al., Rethinking Optical Flow Methods for Micro-Expression "
                   "Spotting, ACM MM 2022; their repository reports 0.2522)",
         "micro": 0.25, "macro": None, "all": None},
    ],
    "samm-lv": [
        {"method": "MEGC2020 baseline, MDMD (He et al., arXiv:1912.11985)", "micro": 0.0364, "macro": 0.0629,
         "all": 0.0445},
    ],
}
KINDS = ("micro", "macro")


@dataclass
class Movement:
    """One annotated interval, as 0-based indices into its video's frame files."""

    onset: int
    apex: int
    offset: int | None  # None: the end was not coded (the interval ends at the apex)
    kind: str  # "micro" | "macro"
    source: str  # "<sheet>, row N"

    def to_truth(self) -> dict:
        return {"onset": self.onset, "apex": self.apex, "offset": self.offset}


@dataclass
class Video:
    name: str  # s15/15_0101disgustingteeth, 006_1
    folder: Path
    files: list[Path]  # frame images in natural order
    movements: list[Movement] = field(default_factory=list)

    @classmethod
    def of(cls, name: str, folder: Path, fps: float) -> "Video":
        return cls(name, folder, frame_files(folder, fps))

    @functools.cached_property
    def numbers(self) -> dict[int, int]:
        """Frame number in a file name (img12.jpg, 006_1_0012.jpg: 12) -> position in `files`."""
        return {int(m.group(1)): i for i, f in enumerate(self.files) if (m := re.search(r"(\d+)$", f.stem))}


@dataclass
class LongReading:
    dataset: str
    fps: float
    sheet: Path
    videos: list[Video]
    left_out: list[dict]  # annotations not scored: {"source", "video", "reason"}


# -- sheets -----------------------------------------------------------------------------------------
def find_sheet(root: Path, pattern: str, example: str) -> Path:
    found = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(("~$", "."))
                   and re.fullmatch(pattern, p.name, re.IGNORECASE))
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"{root}: several annotation sheets ({', '.join(p.name for p in found)}); keep one")
    raise DataError(f"{root / example}: annotation sheet is missing (looked for {pattern!r} in {root})")


def number(value, where: str, column: str) -> int | None:
    """A frame-number cell as an int; None for an empty cell, "/" or "-"."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "/", "-")):
        return None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        return value
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    elif isinstance(value, str) and re.fullmatch(r"-?\d+(\.0+)?", value.strip()):
        return int(float(value))
    raise DataError(f"{where}: {column} {value!r} is not a frame number")


def kind_of(value, where: str) -> str:
    word = str(value or "").lower()
    for kind in KINDS:
        if kind in word:
            return kind
    raise DataError(f"{where}: type {value!r} is neither micro nor macro")


# -- frames -----------------------------------------------------------------------------------------
def frame_files(folder: Path, fps: float) -> list[Path]:
    """The folder's frame images in the order the spotter will see them (FrameFolderSource's: img2 before img10)."""
    from realtime.sources import IMAGE_SUFFIXES, FrameFolderSource, SourceError

    if not any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir()):
        raise DataError(f"{folder}: video folder without frame images ({', '.join(IMAGE_SUFFIXES)})")
    try:
        return FrameFolderSource(folder, fps).files
    except SourceError as e:  # a first frame that is no image
        raise DataError(str(e)) from None


def place(video: Video, onset: int | None, apex: int | None, offset: int | None, kind: str, where: str,
          left_out: list[dict]) -> None:
    """Add an annotation (frame numbers as in the file names) to `video` as file indices, or list it
    in `left_out` with the reason."""
    if onset is None:
        raise DataError(f"{where}: onset is empty")
    offset = offset or None  # 0: the end was not coded
    if apex is None or apex <= 0:
        if offset is None:
            raise DataError(f"{where}: neither apex nor offset is coded")
        apex = onset + (offset - onset) // 2
    at = video.numbers
    reason = None
    if offset is not None and offset < onset:
        reason = f"offset {offset} before onset {onset}"
    else:
        missing = [n for n in (onset, apex, offset) if n is not None and n not in at]
        if missing:
            reason = f"frame {missing[0]} is not in {video.folder} (its files are numbered {min(at)}..{max(at)})"
    if reason:
        left_out.append({"source": where, "video": video.name, "kind": kind, "reason": reason})
        return
    video.movements.append(Movement(at[onset], at[apex], None if offset is None else at[offset], kind, where))


def video_folders(frames_root: Path, depth: int, layout: str) -> list[Path]:
    if not frames_root.is_dir():
        raise DataError(f"{frames_root}: frame folder is missing (layout: {layout})")
    folders = [frames_root]
    for _ in range(depth):
        folders = sorted(d for f in folders for d in f.iterdir() if d.is_dir())
    if not folders:
        raise DataError(f"{frames_root}: no video folders (layout: {layout})")
    return folders


# -- the two databases ------------------------------------------------------------------------------
def read_casme2_long(root: Path) -> LongReading:
    """CAS(ME)^2: *code_final*.xlsx (coding sheet + two naming sheets) and rawpic/sNN/<video>/imgN.jpg."""
    layout = "RAW/rawpic/s15/15_0101disgustingteeth/img1.jpg"
    sheet = find_sheet(root, r".*code_final.*\.xlsx", "CAS(ME)^2code_final.xlsx")
    frames_root = root / "rawpic"
    videos = {f"{f.parent.name}/{f.name}": Video.of(f"{f.parent.name}/{f.name}", f, FPS["casme2-long"])
              for f in video_folders(frames_root, 2, layout)}
    folder_number = {}  # subject number in the coding sheet -> folder number (1 -> 15: rawpic/s15)
    for cells in sheet_rows(sheet, 1):
        cells = list(cells) + [None] * 3
        try:
            folder, subject = number(cells[1], "", ""), number(cells[2], "", "")
        except DataError:
            continue  # a title or header row
        if folder is not None and subject is not None:
            folder_number[subject] = folder
    video_code = {}  # video name in the coding sheet -> code in the folder name (disgust1 -> 0101)
    for cells in sheet_rows(sheet, 2):
        cells = list(cells) + [None] * 2
        code, name = str(cells[0] or "").strip(), str(cells[1] or "").strip().lower()
        if re.fullmatch(r"\d+(\.0+)?", code) and name:
            video_code[name] = f"{int(float(code)):04d}"
    if not folder_number or not video_code:
        raise DataError(f"{sheet}: naming worksheets 2 (folder number, subject number) and 3 (video code, "
                        f"video name) hold no rows")
    left_out: list[dict] = []
    for r, cells in enumerate(sheet_rows(sheet, 0), start=1):
        cells = list(cells) + [None] * 8
        if all(c is None or str(c).strip() == "" for c in cells):
            continue
        where = f"{sheet}, row {r}"
        if r == 1 and not isinstance(cells[2], (int, float)):
            continue  # a header row above the coding
        subject = number(cells[0], where, "subject")
        name = str(cells[1] or "").strip().lower().split("_")[0]
        if subject not in folder_number:
            raise DataError(f"{where}: subject {cells[0]!r} is not in the naming worksheet 2 of {sheet.name}")
        if name not in video_code:
            raise DataError(f"{where}: video {cells[1]!r} is not in the naming worksheet 3 of {sheet.name}")
        n, code = folder_number[subject], video_code[name]
        mine = [v for v in videos.values()
                if v.folder.parent.name == f"s{n}" and re.match(rf"\d+_{code}(?!\d)", v.folder.name)]
        if len(mine) != 1:
            found = "none" if not mine else ", ".join(v.folder.name for v in mine)
            raise DataError(f"{where}: needs one video folder {frames_root}/s{n}/<N>_{code}<title>; found {found}")
        place(mine[0], number(cells[2], where, "onset"), number(cells[3], where, "apex"),
              number(cells[4], where, "offset"), kind_of(cells[7], where), where, left_out)
    return LongReading("casme2-long", FPS["casme2-long"], sheet, list(videos.values()), left_out)


SAMM_COLUMNS = {"filename": ("filename",), "onset": ("onset", "onsetframe"), "apex": ("apex", "apexframe"),
                "offset": ("offset", "offsetframe"), "type": ("type",)}


def read_samm_lv(root: Path) -> LongReading:
    """SAMM Long Videos: SAMM_LongVideos*.xlsx (title rows, then the header) and SAMM_longvideos/006_1/*.jpg."""
    layout = "RAW/SAMM_longvideos/006_1/006_1_0001.jpg"
    sheet = find_sheet(root, r"SAMM_LongVideos.*\.(xlsx|csv)", "SAMM_LongVideos_V3_Release.xlsx")
    videos = {f.name: Video.of(f.name, f, FPS["samm-lv"])
              for f in video_folders(root / "SAMM_longvideos", 1, layout)}
    rows = sheet_rows(sheet, 0)
    norm = [[re.sub(r"[^a-z]", "", str(c or "").lower()) for c in cells] for cells in rows]
    at = next((i for i, names in enumerate(norm[:40]) if "subject" in names and "filename" in names), None)
    if at is None:
        raise DataError(f"{sheet}: no header row with 'Subject' and 'Filename' in the first 40 rows")
    col = {}
    for key, aliases in SAMM_COLUMNS.items():
        col[key] = next((norm[at].index(a) for a in aliases if a in norm[at]), None)
        if col[key] is None:
            raise DataError(f"{sheet}, row {at + 1} (header): no column {'/'.join(aliases)}")
    left_out: list[dict] = []
    for r in range(at + 1, len(rows)):
        cells = list(rows[r]) + [None] * len(norm[at])
        if all(c is None or str(c).strip() == "" for c in cells):
            continue
        where = f"{sheet}, row {r + 1}"
        name = "_".join(str(cells[col["filename"]] or "").strip().split("_")[:2])
        if name not in videos:
            raise DataError(f"{where}: video folder {root / 'SAMM_longvideos' / name} is missing "
                            f"(Filename {cells[col['filename']]!r})")
        place(videos[name], *(number(cells[col[k]], where, k) for k in ("onset", "apex", "offset")),
              kind_of(cells[col["type"]], where), where, left_out)
    return LongReading("samm-lv", FPS["samm-lv"], sheet, list(videos.values()), left_out)


READERS = {"casme2-long": read_casme2_long, "samm-lv": read_samm_lv}


def read_long(dataset: str, root: str | Path) -> LongReading:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--root {root}: no such folder")
    return READERS[dataset](root)


# -- spotting and scoring ---------------------------------------------------------------------------
def long_intervals(spotter) -> list[dict]:
    """The movements the spotter rejected as too long for a micro-expression since the last call:
    its macro-expression intervals (no apex)."""
    return [{"onset": r.onset_index, "apex": None, "offset": r.offset_index}
            for r in spotter.take_rejections() if r.reason == "long"]


def spot_video(video: Video, fps: float, mesh_every: int = 4, progress=None, spotter=None) -> dict:
    """Tracker + spotter over one video's frames: micro intervals (the candidates) and macro ones."""
    from realtime.sources import FrameFolderSource
    from realtime.spotting import Spotter
    from realtime.tracking import FaceTracker

    spotter = spotter or Spotter(fps)
    found = {"micro": [], "macro": []}
    faceless = 0

    def add(candidates) -> None:
        found["micro"] += [{"onset": c.onset.frame.index, "apex": c.apex.frame.index, "offset": c.offset_index}
                           for c in candidates]
        found["macro"] += long_intervals(spotter)

    with FaceTracker(mesh_every=mesh_every) as tracker:
        for frame in FrameFolderSource(video.folder, fps).frames():
            ff = tracker.track(frame)
            # the spotter reads only the crop; the frames it keeps must not hold full images (SAMM: 2040x1088)
            frame.image, ff.patch = None, None
            faceless += ff.crop is None
            add(spotter.push(ff))
            if progress:
                progress()
    add(spotter.flush())
    return {"spotted": found, "faceless_frames": faceless}


def score_video(video: Video, spotted: dict, fps: float) -> dict:
    """Per kind, the SpotScore of the spotted intervals against the annotated ones of that kind."""
    from realtime.metrics import score

    seconds = len(video.files) / fps
    return {kind: score(spotted[kind], [m.to_truth() for m in video.movements if m.kind == kind], seconds)
            for kind in KINDS}


def pooled(rows: list[dict]) -> dict:
    """Per kind and for both together ("all"), the counts summed over videos and the ratios of the sums."""
    from realtime.metrics import SpotScore

    out = {kind: sum((r["score"][kind] for r in rows), SpotScore()) for kind in KINDS}
    out["all"] = out["micro"] + out["macro"]
    return out


# -- the command ------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--dataset", choices=tuple(READERS), default=None,
                        help="score on a long-video database instead of generated clips (needs --root)")
    parser.add_argument("--root", default=None,
                        help="the database as distributed: casme2-long: CAS(ME)^2code_final.xlsx + rawpic/; "
                             "samm-lv: SAMM_LongVideos_V3_Release.xlsx + SAMM_longvideos/")
    parser.add_argument("--videos", type=int, default=None, help="only the first N videos (sorted by folder)")


def run(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from benchmarks.common import environment, results_dir, write_json
    from realtime.native_logs import quiet
    from realtime.spotting import SpotterConfig

    if not args.dataset or not args.root:
        print("mex-bench spotting: --dataset and --root go together (the database and its folder)", file=sys.stderr)
        return 2
    if args.quick or args.only:
        print("mex-bench spotting: --quick and --only are for the generated clips, not --dataset (use --videos N)",
              file=sys.stderr)
        return 2
    if args.videos is not None and args.videos < 1:
        print(f"mex-bench spotting: --videos {args.videos}: give at least 1", file=sys.stderr)
        return 2
    try:
        reading = read_long(args.dataset, args.root)
    except DataError as e:
        print(f"mex-bench spotting: {e}", file=sys.stderr)
        return 2
    videos = reading.videos[:args.videos]
    console = Console()
    t0 = time.perf_counter()
    rows = []
    with quiet(), Progress(console=console) as bar:  # mediapipe's start-up lines, once per video, kept off stderr
        task = bar.add_task(f"{TITLES[args.dataset]}: tracking, spotting", total=sum(len(v.files) for v in videos))
        for video in videos:
            res = spot_video(video, reading.fps, args.mesh_every, progress=lambda: bar.advance(task))
            rows.append({"video": video.name, "frames": len(video.files), "faceless_frames": res["faceless_frames"],
                         "truth": {k: [asdict(m) for m in video.movements if m.kind == k] for k in KINDS},
                         "spotted": res["spotted"], "score": score_video(video, res["spotted"], reading.fps)})
    wall = time.perf_counter() - t0
    overall = pooled(rows)
    for kind, s in overall.items():
        console.print(f"{kind}: TP {s.tp} FP {s.fp} FN {s.fn}, precision {s.precision:.3f}, recall {s.recall:.3f}, "
                      f"F1 {s.f1:.4f}")
    env = environment()
    payload = {"benchmark": "spotting-long", "dataset": args.dataset, "root": str(Path(args.root).resolve()),
               "sheet": str(reading.sheet), "fps": reading.fps, "environment": env, "config": asdict(SpotterConfig()),
               "tracker": {"mesh_every": args.mesh_every}, "wall_s": round(wall, 1),
               "videos_run": len(videos), "videos_in_database": len(reading.videos),
               "overall": {k: s.to_json() for k, s in overall.items()},
               "videos": [{**r, "score": {k: s.to_json() for k, s in r["score"].items()}} for r in rows],
               "left_out": reading.left_out, "published": PUBLISHED[args.dataset]}
    out = results_dir(args.out)
    stem = f"spotting-{args.dataset}"
    write_json(out / f"{stem}.json", payload)
    write_text(out / f"{stem}.md", markdown(payload, overall), flag="--out")
    console.print(f"wrote {out / (stem + '.json')} and {stem}.md ({wall:.0f} s)")
    return 0


def markdown(payload: dict, overall: dict) -> str:
    env, dataset = payload["environment"], payload["dataset"]
    lines = [
        f"# Spotting on {TITLES[dataset]}",
        "",
        f"`mex-bench spotting --dataset {dataset}`: machine `{env['machine']}` ({env['cpu_count']} CPUs, "
        f"{env['cpu']}), {env['when']}, {payload['wall_s']:.0f} s; {payload['videos_run']} of "
        f"{payload['videos_in_database']} videos at {payload['fps']:g} fps. MEGC rule: a spotted interval is a "
        "hit when its IoU with an annotated one of its kind is ≥ 0.5, each annotated one matched at most "
        "once; F1 from the counts summed over the videos. Micro: the spotter's candidates; macro: the "
        "movements it rejected as too long for a micro-expression; all: both together.",
        "",
        "## Ours",
        "",
        "| | TP | FP | FN | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, s in overall.items():
        lines.append(f"| {kind} | {s.tp} | {s.fp} | {s.fn} | {s.precision:.3f} | {s.recall:.3f} | **{s.f1:.4f}** |")
    lines += ["", "## Published (their numbers on the whole database, not measured here)", "",
              "| method | micro F1 | macro F1 | all F1 |", "|---|---|---|---|"]
    fmt = lambda v: "–" if v is None else f"{v:g}"  # noqa: E731
    for p in payload["published"]:
        lines.append(f"| {p['method']} | {fmt(p['micro'])} | {fmt(p['macro'])} | {fmt(p['all'])} |")
    lines += ["", "## Per video", "",
              "| video | frames | no face | micro TP/FP/FN | micro F1 | macro TP/FP/FN | macro F1 |",
              "|---|---|---|---|---|---|---|"]
    for v in payload["videos"]:
        mi, ma = v["score"]["micro"], v["score"]["macro"]
        lines.append(f"| {v['video']} | {v['frames']} | {v['faceless_frames']} | {mi['tp']}/{mi['fp']}/{mi['fn']} | "
                     f"{mi['f1']:.3f} | {ma['tp']}/{ma['fp']}/{ma['fn']} | {ma['f1']:.3f} |")
    if payload["left_out"]:
        lines += ["", f"## Annotations left out ({len(payload['left_out'])})", ""]
        lines += [f"- {d['source']} ({d['video']}, {d['kind']}): {d['reason']}" for d in payload["left_out"]]
    return "\n".join(lines) + "\n"
