"""benchmarks.long_video: CAS(ME)^2 / SAMM Long Videos readers on tiny trees in the distributed layouts,
the MEGC scoring of micro and macro intervals, and `mex-bench spotting --dataset` end to end."""
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from benchmarks.cli import main as bench_main
from benchmarks.long_video import Video, long_intervals, pooled, read_long, score_video, spot_video
from mex.composite import DataError

openpyxl = pytest.importorskip("openpyxl")


def write_frames(folder: Path, name, images) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, image in enumerate(images, start=1):
        assert cv2.imwrite(str(folder / name(n)), image)
    return n


def blank(n: int):
    return (np.full((16, 16, 3), 128, np.uint8) for _ in range(n))


def write_xlsx(path: Path, sheets: list[list[list]]) -> None:
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for k, rows in enumerate(sheets):
        ws = wb.create_sheet(f"Sheet{k + 1}")
        for r in rows:
            ws.append(r)
    wb.save(path)


# CAS(ME)^2: coding rows without a header (subject number, video_movement, onset, apex, offset, AU, emotion,
# type, self-report); worksheet 2 maps subject numbers to folder numbers, worksheet 3 video names to codes
CASME_NAMING = [[["s15", 15, 1], ["s16", 16, 2]], [["0101", "disgust1"], ["0401", "anger1"]]]
CASME_VIDEOS = {"s15/15_0101disgustingteeth": 40, "s15/15_0401girlcrashing": 30, "s16/16_0101disgustingteeth": 20}
CASME_ROWS = [
    [1, "disgust1_1", 5, 7, 9, "4", "negative", "micro-expression", "disgust"],
    [1, "disgust1_2", 12, 20, 30, "12", "positive", "macro-expression", "happy"],
    [1, "anger1_1", 3, 4, 0, "4", "negative", "macro-expression", "anger"],  # offset 0: ends at the apex
    [2, "disgust1_1", 15, 18, 25, "4", "negative", "micro-expression", "disgust"],  # past the last frame (20)
]


def make_casme2_long(root: Path, rows=CASME_ROWS, videos=None) -> Path:
    for name, n in (videos or {k: blank(v) for k, v in CASME_VIDEOS.items()}).items():
        write_frames(root / "rawpic" / name, lambda i: f"img{i}.jpg", n)
    write_xlsx(root / "CAS(ME)^2code_final.xlsx", [rows, *CASME_NAMING])
    return root


SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset", "Duration", "Type",
               "Action Units", "Notes"]
SAMM_ROWS = [
    [6, "006_1_1", 1, 10, 14, 20, 11, "Micro - 1/2", "R14", ""],
    [6, "006_1_2", 1, 30, -1, 90, 61, "Macro", "12", ""],  # apex -1: the middle frame (60)
    [7, "007_3_1", 3, 5, 8, 12, 8, "Micro - 1/2", "1+2", ""],
    [7, "007_3_2", 3, 150, 152, 155, 6, "Macro", "4", ""],  # past the last frame (120)
]


def make_samm_lv(root: Path, rows=SAMM_ROWS) -> Path:
    for name, n in {"006_1": 100, "007_3": 120}.items():
        write_frames(root / "SAMM_longvideos" / name, lambda i, v=name: f"{v}_{i:04d}.jpg", blank(n))
    title = [["SAMM Long Videos"], [], ["Moi Hoon Yap et al."]] + [[]] * 6  # 9 rows above the header
    write_xlsx(root / "SAMM_LongVideos_V3_Release.xlsx", [[*title, SAMM_HEADER, *rows]])
    return root


# -- readers ----------------------------------------------------------------------------------------
def test_casme2_long_reader_maps_names_to_folders_and_frames_to_indices(tmp_path):
    reading = read_long("casme2-long", make_casme2_long(tmp_path))
    assert reading.fps == 30.0
    videos = {v.name: v for v in reading.videos}
    assert list(videos) == list(CASME_VIDEOS)  # every folder is a video, annotated or not
    teeth = videos["s15/15_0101disgustingteeth"]
    assert len(teeth.files) == 40 and teeth.files[9].name == "img10.jpg"  # natural order
    assert [(m.onset, m.apex, m.offset, m.kind) for m in teeth.movements] == [(4, 6, 8, "micro"), (11, 19, 29, "macro")]
    (crash,) = videos["s15/15_0401girlcrashing"].movements
    assert (crash.onset, crash.apex, crash.offset, crash.kind) == (2, 3, None, "macro")
    assert videos["s16/16_0101disgustingteeth"].movements == []
    (left,) = reading.left_out
    assert left["video"] == "s16/16_0101disgustingteeth" and "frame 25" in left["reason"] and "row 4" in left["source"]


def test_samm_lv_reader_finds_the_header_below_the_title(tmp_path):
    reading = read_long("samm-lv", make_samm_lv(tmp_path))
    assert reading.fps == 200.0
    videos = {v.name: v for v in reading.videos}
    assert [(m.onset, m.apex, m.offset, m.kind) for m in videos["006_1"].movements] == [(9, 13, 19, "micro"),
                                                                                       (29, 59, 89, "macro")]
    assert [(m.onset, m.kind) for m in videos["007_3"].movements] == [(4, "micro")]
    assert [d["source"].endswith("row 14") for d in reading.left_out] == [True]


def test_bad_trees_name_the_missing_thing(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        read_long("casme2-long", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"CAS\(ME\)\^2code_final.xlsx: annotation sheet is missing"):
        read_long("casme2-long", tmp_path / "empty")
    root = make_casme2_long(tmp_path / "c", rows=[[2, "anger1_1", 3, 4, 5, "", "", "micro-expression", ""]])
    with pytest.raises(DataError, match=r"row 1: needs one video folder .*s16/<N>_0401<title>; found none"):
        read_long("casme2-long", root)
    root = make_casme2_long(tmp_path / "d", rows=[[3, "anger1_1", 3, 4, 5, "", "", "micro-expression", ""]])
    with pytest.raises(DataError, match="row 1: subject 3 is not in the naming worksheet 2"):
        read_long("casme2-long", root)
    root = make_samm_lv(tmp_path / "s", rows=[[8, "008_2_1", 1, 5, 6, 7, 3, "Micro - 1/2", "", ""]])
    with pytest.raises(DataError, match=r"row 11: video folder .*SAMM_longvideos/008_2 is missing"):
        read_long("samm-lv", root)
    root = make_samm_lv(tmp_path / "t", rows=[[6, "006_1_1", 1, 5, 6, 7, 3, "Subtle", "", ""]])
    with pytest.raises(DataError, match="type 'Subtle' is neither micro nor macro"):
        read_long("samm-lv", root)
    (root / "SAMM_longvideos" / "006_1").rename(root / "elsewhere")
    for f in (root / "SAMM_longvideos").iterdir():
        for g in f.iterdir():
            g.unlink()
    with pytest.raises(DataError, match="007_3: video folder without frame images"):
        read_long("samm-lv", root)
    (root / "SAMM_longvideos" / "007_3" / "007_3_0001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="007_3_0001.jpg cannot be read as an image"):
        read_long("samm-lv", root)


# -- the MEGC rule ----------------------------------------------------------------------------------
def video_with(movements) -> Video:
    from benchmarks.long_video import Movement

    return Video("v", Path("v"), [Path(f"img{i}.jpg") for i in range(1, 301)],
                 [Movement(on, ap, off, kind, "") for on, ap, off, kind in movements])


def micro(on, ap, off):
    return {"onset": on, "apex": ap, "offset": off}


def test_iou_of_exactly_half_is_a_hit_and_each_annotation_is_matched_once():
    v = video_with([(0, 5, 9, "micro"), (100, 105, 109, "micro")])
    s = score_video(v, {"micro": [micro(0, 2, 4), micro(100, 102, 103)], "macro": []}, fps=30)["micro"]
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)  # (0, 4) vs (0, 9): IoU 5/10 = 0.5, a hit; (100, 103): 0.4, not
    s = score_video(v, {"micro": [micro(0, 5, 9), micro(1, 5, 9), micro(0, 5, 8)], "macro": []}, fps=30)["micro"]
    assert (s.tp, s.fp, s.fn) == (1, 2, 1)  # three good intervals on one annotation: one hit, two false positives


def test_micro_and_macro_are_scored_apart():
    v = video_with([(10, 15, 20, "micro"), (50, 70, 110, "macro"), (200, 210, None, "macro")])
    spotted = {"micro": [micro(50, 70, 110)],  # exactly the macro interval: a micro false positive
               "macro": [{"onset": 10, "apex": None, "offset": 20}, {"onset": 200, "apex": None, "offset": 211}]}
    s = score_video(v, spotted, fps=30)
    assert (s["micro"].tp, s["micro"].fp, s["micro"].fn) == (0, 1, 1)
    # (200, 211) vs (200, 210): the uncoded end is the apex; the micro annotation (10, 20) is no macro hit
    assert (s["macro"].tp, s["macro"].fp, s["macro"].fn) == (1, 1, 1)
    assert s["macro"].apex_errors == []  # spotted macro intervals carry no apex
    assert s["micro"].seconds == 10.0


def test_overall_f1_is_from_counts_summed_over_videos():
    a = video_with([(10, 15, 20, "micro")])
    b = video_with([(10, 15, 20, "micro"), (40, 45, 50, "micro"), (70, 75, 80, "micro")])
    rows = [{"score": score_video(a, {"micro": [micro(10, 15, 20)], "macro": []}, 30)},
            {"score": score_video(b, {"micro": [], "macro": [{"onset": 0, "apex": None, "offset": 99}]}, 30)}]
    total = pooled(rows)
    assert (total["micro"].tp, total["micro"].fp, total["micro"].fn) == (1, 0, 3)
    assert total["micro"].f1 == pytest.approx(2 / 5)  # not the mean of the per-video F1s (1 and 0)
    assert (total["macro"].tp, total["macro"].fp, total["all"].fp, total["all"].fn) == (0, 1, 1, 3)


# -- the macro path, against the spotter's rejections ----------------------------------------------
class RejectingSpotter:
    """A stand-in with the spotter's interface: rejects one long movement and one blink, spots nothing."""

    def __init__(self):
        self.pushed, self.pending = 0, []

    def push(self, ff):
        self.pushed += 1
        if self.pushed == 12:
            self.pending += [SimpleNamespace(onset_index=2, offset_index=11, reason="long"),
                             SimpleNamespace(onset_index=4, offset_index=6, reason="blink")]
        return []

    def flush(self):
        self.pending.append(SimpleNamespace(onset_index=13, offset_index=15, reason="long"))
        return []

    def take_rejections(self):
        out, self.pending = self.pending, []
        return out


def test_long_rejections_are_the_macro_intervals(tmp_path):
    write_frames(tmp_path / "v", lambda i: f"img{i}.jpg", blank(16))
    video = Video.of("v", tmp_path / "v", 30.0)
    spotter = RejectingSpotter()
    res = spot_video(video, 30.0, spotter=spotter)
    assert spotter.pushed == 16
    assert res["spotted"] == {"micro": [], "macro": [{"onset": 2, "apex": None, "offset": 11},
                                                     {"onset": 13, "apex": None, "offset": 15}]}
    assert long_intervals(spotter) == []  # taken once
    assert res["faceless_frames"] == 16


# -- end to end -------------------------------------------------------------------------------------
def test_cli_scores_the_spotter_on_a_generated_casme2_long_tree(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mediapipe")
    from realtime.synth import ClipSpec, PlantedEvent, render, truth

    events = [PlantedEvent("brow_raise", 1.4, 0.25, 2.5), PlantedEvent("lip_corner_pull", 2.4, 0.3, 2.5),
              PlantedEvent("brow_raise", 3.3, 1.2, 4.0)]  # the last one lasts 1.2 s: a macro-expression
    spec = ClipSpec(fps=30, seconds=5.0, size=(320, 240), face_px=100, events=events, seed=3)
    gt = truth(spec)["events"]
    root = make_casme2_long(tmp_path / "raw", rows=[
        [1, f"disgust1_{k + 1}", e["onset"] + 1, e["apex"] + 1, e["offset"] + 1, "", "", f"{kind}-expression", ""]
        for k, (e, kind) in enumerate(zip(gt, ("micro", "micro", "macro")))],
        videos={"s15/15_0101disgustingteeth": render(spec)})
    out = tmp_path / "out"
    assert bench_main(["spotting", "--dataset", "casme2-long", "--root", str(root), "--out", str(out)]) == 0
    payload = json.loads((out / "spotting-casme2-long.json").read_text())
    (video,) = payload["videos"]
    assert video["frames"] == 150 and video["faceless_frames"] == 0
    assert payload["overall"]["micro"]["tp"] == 2 and payload["overall"]["micro"]["fn"] == 0
    macro = payload["overall"]["macro"]
    assert macro["tp"] == 1 and macro["fn"] == 0  # the 1.2 s movement, followed to its end
    md = (out / "spotting-casme2-long.md").read_text()
    assert "| micro | 2 |" in md and "0.0082" in md and "not measured here" in md


def test_cli_refuses_bad_roots_with_the_path(tmp_path, capsys):
    assert bench_main(["spotting", "--dataset", "samm-lv", "--root", str(tmp_path / "none")]) == 2
    assert f"--root {tmp_path / 'none'}: no such folder" in capsys.readouterr().err
    assert bench_main(["spotting", "--dataset", "samm-lv", "--root", str(tmp_path)]) == 2
    assert "SAMM_LongVideos_V3_Release.xlsx: annotation sheet is missing" in capsys.readouterr().err
    assert bench_main(["spotting", "--root", str(tmp_path)]) == 2
    assert "--dataset and --root go together" in capsys.readouterr().err
    assert bench_main(["spotting", "--dataset", "samm-lv", "--root", str(tmp_path), "--quick"]) == 2
    assert "--quick and --only are for the generated clips" in capsys.readouterr().err
