"""train.datasets: CASME II / SAMM / SMIC-HS readers on tiny trees in the distributed layouts, prepare
(real encode on 40x40 crops, merge, cache) and one DataError per kind of bad data.

Frames are crops of mex/assets/faces/astronaut.jpg; the apex frame is the onset crop moved by a
pixel or two, so the flow is a real motion. Tests that only check reading or errors patch encode.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
openpyxl = pytest.importorskip("openpyxl")

import mex.features  # noqa: E402
from mex.composite import DataError, load_flow_folder  # noqa: E402
from train import datasets  # noqa: E402
from conftest import needs_opencv_tvl1  # noqa: E402  (prepare's --flow cpu)

FACE = Path(__file__).resolve().parents[1] / "mex" / "assets" / "faces" / "astronaut.jpg"
SIZE = 40  # square crops of one size go to encode as they are: fast TV-L1


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    image = cv2.imread(str(FACE), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def write_clip(folder: Path, name, face, first: int, last: int, apex: int, seed: int, size=(SIZE, SIZE)) -> None:
    """Frames first..last; frames from the apex on are the onset crop shifted by (dy, dx) = (1, 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    y0, x0 = 60 + 17 * seed, 180 + 11 * seed
    for n in range(first, last + 1):
        dy, dx = (1, 2) if n >= apex else (0, 0)
        assert cv2.imwrite(str(folder / name(n)), face[y0 + dy:y0 + dy + h, x0 + dx:x0 + dx + w])


def write_xlsx(path: Path, rows: list[list]) -> None:
    wb = openpyxl.Workbook()
    for r in rows:
        wb.active.append(r)
    wb.save(path)


CASME_HEADER = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units", "Estimated Emotion"]
CASME_ROWS = [  # Subject as the coding sheet spells it ("01")
    ["01", "EP02_01f", 46, 48, 50, "12", "happiness"],
    ["01", "EP03_02f", 10, 12, 14, "4", "disgust"],
    ["01", "EP04_01f", 20, 22, 24, "1+2", "others"],  # excluded (paper §4.1)
    ["02", "EP01_11f", 5, "/", 9, "1+2", "surprise"],  # apex "/": middle frame (7)
    ["02", "EP19_05f", 30, 32, 34, "14", "repression"],
]


def make_casme2(root: Path, face, rows=CASME_ROWS) -> Path:
    for k, (sub, clip, onset, apex, offset, _, _) in enumerate(rows):
        apex_n = apex if isinstance(apex, int) else (onset + offset) // 2
        write_clip(root / "Cropped" / f"sub{sub}" / clip, lambda n: f"reg_img{n}.jpg", face, onset, offset, apex_n, k)
    write_xlsx(root / "CASME2-coding-20140508.xlsx", [CASME_HEADER, *rows])
    return root


SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
               "Type", "Action Units", "Notes", "Estimated Emotion"]
SAMM_ROWS = [
    [6, "006_1_2", 1, 5562, 5564, 5566, 5, "Micro - 1/2", "R14", "", "Contempt"],
    [6, "006_1_5", 1, 1000, 1002, 1003, 4, "Micro - 1/2", "12", "", "Happiness"],
    [7, "007_3_1", 3, 200, 202, 204, 5, "Micro - 1/2", "1+2", "", "Surprise"],
    [7, "007_5_2", 5, 300, 302, 304, 5, "Micro - 1/2", "4", "", "Other"],  # excluded
]
SAMM_TITLE = 13  # rows of title block above the header, as in SAMM_Micro_FACS_Codes_v2.xlsx


def make_samm(root: Path, face, rows=SAMM_ROWS, header=SAMM_HEADER) -> Path:
    for k, (sub, clip, _, onset, apex, offset, *_rest) in enumerate(rows):
        write_clip(root / f"{sub:03d}" / clip, lambda n, s=sub: f"{s:03d}_{n:05d}.jpg", face,
                   onset, offset, apex, k + 5)
    title = [["SAMM Micro-Expression Database: FACS codes"], [], ["Moi Hoon Yap et al."]] + [[]] * (SAMM_TITLE - 3)
    write_xlsx(root / "SAMM_Micro_FACS_Codes_v2.xlsx", [*title, header, *rows])
    return root


SMIC_ROWS = [  # (subject, filename, onset, apex, offset, emotion folder)
    (1, "s1_ne_01", 100, 102, 104, "negative"),
    (1, "s1_po_01", 200, 202, 204, "positive"),
    (2, "s2_sur_01", 300, 303, 305, "surprise"),
    (2, "s2_ne_02", 400, 401, 403, "negative"),
]


def make_smic(root: Path, face, rows=SMIC_ROWS, apex_column=True) -> Path:
    for k, (sub, clip, onset, apex, offset, emotion) in enumerate(rows):
        write_clip(root / "HS" / f"s{sub}" / "micro" / emotion / clip, lambda n: f"image{n:06d}.bmp", face,
                   onset, offset, apex, k + 10)
    header = (["Subject", "Filename", "OnsetF", "ApexF", "OffsetF"] if apex_column
              else ["Subject", "Filename", "OnsetF", "OffsetF"])
    with (root / "SMIC-HS-E_annotation.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for sub, clip, onset, apex, offset, _ in rows:
            writer.writerow([sub, clip, onset, apex, offset] if apex_column else [sub, clip, onset, offset])
    return root


@pytest.fixture
def count_encode(monkeypatch):
    """Count calls to mex.features.encode, still encoding for real."""
    calls = []
    real = mex.features.encode

    def counting(onset, apex, flow="auto"):
        calls.append((onset.shape, apex.shape))
        return real(onset, apex, flow)

    monkeypatch.setattr(mex.features, "encode", counting)
    return calls


@pytest.fixture
def fake_encode(monkeypatch):
    """A fast stand-in for tests about reading and errors: records the crops it is given."""
    calls = []

    def fake(onset, apex, flow="auto"):
        calls.append((onset.shape, apex.shape))
        return np.full((3, 28, 28), 0.5, dtype=np.float32)

    monkeypatch.setattr(mex.features, "encode", fake)
    return calls


# ----------------------------------------------------------------------------------------- readers
def test_casme2_reader(tmp_path, face):
    reading = datasets.read_casme2(make_casme2(tmp_path, face))
    assert [(c.subject, c.clip, c.emotion, c.label) for c in reading] == [
        ("casme2_sub01", "EP02_01f", "happiness", 1), ("casme2_sub01", "EP03_02f", "disgust", 0),
        ("casme2_sub02", "EP01_11f", "surprise", 2), ("casme2_sub02", "EP19_05f", "repression", 0)]
    assert [(w, e) for _, w, e in reading.excluded] == [("sub01/EP04_01f", "others")]
    middle = {c.clip: c for c in reading}["EP01_11f"]
    assert middle.apex_rule == "middle" and middle.apex.name == "reg_img7.jpg" and middle.onset.name == "reg_img5.jpg"
    assert any("excluded 1 clips" in line and "others 1" in line for line in reading.summary_lines())
    assert any("middle frame" in line and "EP01_11f" in line for line in reading.summary_lines())


def test_casme2_accepts_img_frames_and_reports_unlisted_folders(tmp_path, face):
    rows = CASME_ROWS[:2]
    make_casme2(tmp_path, face, rows)
    for p in (tmp_path / "Cropped" / "sub01" / "EP02_01f").iterdir():
        p.rename(p.with_name(p.name.removeprefix("reg_")))
    (tmp_path / "Cropped" / "sub01" / "EP99_01").mkdir()
    reading = datasets.read_casme2(tmp_path)
    assert reading.clips[0].onset.name == "img46.jpg"
    assert reading.unlisted == [tmp_path / "Cropped" / "sub01" / "EP99_01"]
    assert any("EP99_01" in line for line in reading.summary_lines())


def test_samm_reader(tmp_path, face):
    reading = datasets.read_samm(make_samm(tmp_path, face))
    assert [(c.subject, c.clip, c.label) for c in reading] == [
        ("samm_006", "006_1_2", 0), ("samm_006", "006_1_5", 1), ("samm_007", "007_3_1", 2)]
    assert reading.clips[0].onset.name == "006_05562.jpg" and reading.clips[0].apex.name == "006_05564.jpg"
    assert f"row {SAMM_TITLE + 2}" in reading.clips[0].source
    assert [e for _, _, e in reading.excluded] == ["other"]


def test_smic_reader_names_clips_as_the_composite_set(tmp_path, face):
    reading = datasets.read_smic(make_smic(tmp_path, face))
    assert [(c.subject, c.clip, c.emotion, c.label) for c in reading] == [
        ("smic_s01", "s01_ne_01", "negative", 0), ("smic_s01", "s01_po_01", "positive", 1),
        ("smic_s02", "s02_sur_01", "surprise", 2), ("smic_s02", "s02_ne_02", "negative", 0)]
    assert reading.clips[2].apex.name == "image000303.bmp"


def test_smic_without_apex_column_uses_the_middle_frame(tmp_path, face):
    reading = datasets.read_smic(make_smic(tmp_path, face, apex_column=False))
    assert all(c.apex_rule == "middle" for c in reading)
    assert [c.apex.name for c in reading] == ["image000102.bmp", "image000202.bmp", "image000302.bmp",
                                              "image000401.bmp"]


# ----------------------------------------------------------------------------------------- prepare
@needs_opencv_tvl1
def test_prepare_three_datasets_merge_and_cache(tmp_path, face, count_encode):
    out = tmp_path / "out"
    roots = {"casme2": make_casme2(tmp_path / "casme2", face), "samm": make_samm(tmp_path / "samm", face),
             "smic": make_smic(tmp_path / "smic", face)}
    for name in ("smic", "casme2", "samm"):  # any order: rows come out grouped casme2, samm, smic
        report = datasets.prepare(name, roots[name], out, flow="cpu")
        assert report.computed == len(report.reading.clips) and report.cached == 0
    assert len(count_encode) == 4 + 3 + 4
    assert all(shape == (SIZE, SIZE, 3) for pair in count_encode for shape in pair)

    data = load_flow_folder(out)
    assert len(data) == 11
    assert data.dataset == ["casme2"] * 4 + ["samm"] * 3 + ["smic"] * 4
    assert data.subjects == ["casme2_sub01", "casme2_sub02", "samm_006", "samm_007", "smic_s01", "smic_s02"]
    assert data.y.tolist() == [1, 0, 2, 0, 0, 1, 2, 0, 1, 2, 0]
    assert data.clip[0] == "EP02_01f" and data.clip[-1] == "s02_ne_02"
    assert (out / "flow" / "smic_s01_s01_ne_01.png").is_file()
    assert (out / "flow" / "casme2_sub01_EP02_01f.png").is_file()
    with (out / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0] == {"dataset": "casme2", "subject": "casme2_sub01", "clip": "EP02_01f", "label": "1",
                       "emotion": "positive", "file": "flow/casme2_sub01_EP02_01f.png"}
    for image in data.x:  # real motion: every channel spans a range
        assert (image.reshape(3, -1).max(1) - image.reshape(3, -1).min(1) > 0.3).all()

    # Second run: nothing re-encoded, same table.
    count_encode.clear()
    before = (out / "labels.csv").read_text()
    for name in ("casme2", "samm", "smic"):
        report = datasets.prepare(name, roots[name], out, flow="cpu")
        assert report.computed == 0 and report.cached == len(report.reading.clips) and report.backend is None
    assert count_encode == [] and (out / "labels.csv").read_text() == before

    # A changed source frame re-encodes that clip only.
    onset = roots["samm"] / "007" / "007_3_1" / "007_00200.jpg"
    st = onset.stat()
    os.utime(onset, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    report = datasets.prepare("samm", roots["samm"], out, flow="cpu")
    assert (report.computed, report.cached) == (1, 2) and len(count_encode) == 1
    assert len(load_flow_folder(out)) == 11


def test_prepare_replaces_its_own_rows_and_recomputes_a_deleted_png(tmp_path, face, fake_encode):
    out = tmp_path / "out"
    root = make_casme2(tmp_path / "casme2", face)
    datasets.prepare("casme2", root, out)
    (out / "flow" / "casme2_sub02_EP19_05f.png").unlink()
    report = datasets.prepare("casme2", root, out)
    assert (report.computed, report.cached) == (1, 3)
    assert len(load_flow_folder(out)) == 4  # replaced, not appended twice
    report = datasets.prepare("casme2", root, out, force=True)
    assert report.computed == 4


def test_prepare_resizes_crops_that_are_not_square(tmp_path, face, fake_encode):
    rows = [["01", "EP02_01f", 46, 48, 50, "12", "happiness"]]
    root = tmp_path / "c"
    write_clip(root / "Cropped" / "sub01" / "EP02_01f", lambda n: f"reg_img{n}.jpg", face, 46, 50, 48, 0, size=(60, 48))
    write_xlsx(root / "CASME2-coding-20140508.xlsx", [CASME_HEADER, *rows])
    datasets.prepare("casme2", root, tmp_path / "out")
    size = mex.features.CROP_SIZE
    assert fake_encode == [((size, size, 3), (size, size, 3))]
    fake_encode.clear()
    datasets.prepare("casme2", root, tmp_path / "out2", crop=(4, 6, 36, 36))  # a square box: as it is
    assert fake_encode == [((36, 36, 3), (36, 36, 3))]


@needs_opencv_tvl1
def test_prepare_cli_arguments(tmp_path, face, fake_encode):
    import argparse

    parser = argparse.ArgumentParser()
    datasets.add_prepare_arguments(parser)
    root = make_smic(tmp_path / "smic", face)
    args = parser.parse_args(["--dataset", "smic", "--root", str(root), "--out", str(tmp_path / "out"),
                              "--flow", "cpu"])
    assert datasets.prepare_command(args) == 0
    assert len(load_flow_folder(tmp_path / "out")) == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "smic", "--root", "r", "--out", "o", "--crop", "1,2,3"])


# ----------------------------------------------------------------------------------------- bad data
def _casme_case(tmp_path, face, case):
    """A CASME II tree broken one way; returns (root, text the error must contain)."""
    root = tmp_path / "casme2"
    sheet = root / "CASME2-coding-20140508.xlsx"
    if case == "missing spreadsheet":
        make_casme2(root, face)
        sheet.unlink()
        return root, "CASME2-coding-20140508.xlsx"
    if case == "missing column":
        make_casme2(root, face)
        write_xlsx(sheet, [[c for c in CASME_HEADER if c != "Estimated Emotion"], *[r[:-1] for r in CASME_ROWS]])
        return root, "row 1 (header): missing column"
    if case == "missing frame":
        make_casme2(root, face)
        (root / "Cropped" / "sub02" / "EP19_05f" / "reg_img32.jpg").unlink()
        return root, "reg_img32.jpg: apex frame 32 of " + f"{sheet}, row 6"
    if case == "unreadable frame":
        make_casme2(root, face)
        (root / "Cropped" / "sub01" / "EP03_02f" / "reg_img10.jpg").write_bytes(b"not a jpeg")
        return root, f"reg_img10.jpg: unreadable frame of {sheet}, row 3"
    if case == "unknown emotion":
        make_casme2(root, face, [*CASME_ROWS[:3], ["02", "EP01_11f", 5, 7, 9, "1", "joy"]])
        return root, f"{sheet}, row 5: unknown emotion 'joy'"
    if case == "duplicate clip":
        make_casme2(root, face)
        write_xlsx(sheet, [CASME_HEADER, *CASME_ROWS, CASME_ROWS[1]])
        return root, f"{sheet}, row 7: duplicate clip sub01/EP03_02f (first at {sheet}, row 3)"
    if case == "empty subject":
        make_casme2(root, face)
        (root / "Cropped" / "sub03").mkdir()
        return root, f"{root / 'Cropped' / 'sub03'}: subject folder has no clip folders"
    if case == "bad frame number":
        make_casme2(root, face)
        write_xlsx(sheet, [CASME_HEADER, *CASME_ROWS[:1], ["01", "EP03_02f", "ten", 12, 14, "4", "disgust"]])
        return root, f"{sheet}, row 3: onset frame 'ten' is not a frame number"
    if case == "unreadable spreadsheet":
        make_casme2(root, face)
        sheet.write_bytes(b"PK\x03\x04 truncated")
        return root, f"{sheet}: unreadable spreadsheet"
    if case == "apex before onset":
        make_casme2(root, face)
        write_xlsx(sheet, [CASME_HEADER, ["01", "EP03_02f", 12, 10, 14, "4", "disgust"]])
        return root, f"{sheet}, row 2: apex frame 10 is not after onset frame 12"
    if case == "missing clip folder":
        make_casme2(root, face)
        write_xlsx(sheet, [CASME_HEADER, *CASME_ROWS, ["02", "EP07_01", 1, 2, 3, "4", "disgust"]])
        return root, f"EP07_01: clip folder of {sheet}, row 7 is missing"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing spreadsheet", "missing column", "missing frame", "unreadable frame",
                                  "unknown emotion", "duplicate clip", "empty subject", "bad frame number",
                                  "missing clip folder", "unreadable spreadsheet", "apex before onset"])
def test_casme2_bad_data_is_an_error_naming_file_and_row(tmp_path, face, fake_encode, case):
    root, expected = _casme_case(tmp_path, face, case)
    with pytest.raises(DataError) as err:
        datasets.prepare("casme2", root, tmp_path / "out")
    assert expected in str(err.value)
    assert not (tmp_path / "out" / "labels.csv").exists()  # nothing half-written


def test_samm_bad_data(tmp_path, face, fake_encode):
    root = make_samm(tmp_path / "samm", face, header=[h for h in SAMM_HEADER if h != "Apex Frame"])
    with pytest.raises(DataError, match=rf"row {SAMM_TITLE + 1} \(header\): missing column\(s\) apexframe"):
        datasets.read_samm(root)
    root = make_samm(tmp_path / "samm2", face,
                     rows=[*SAMM_ROWS, [7, "007_3_1", 3, 200, 202, 204, 5, "", "", "", "Fear"]])
    with pytest.raises(DataError, match=rf"row {SAMM_TITLE + 6}: duplicate clip 007/007_3_1"):
        datasets.read_samm(root)
    root = make_samm(tmp_path / "samm3", face)
    (root / "008").mkdir()
    with pytest.raises(DataError, match="008: subject folder has no clip folders"):
        datasets.read_samm(root)


def test_smic_bad_data(tmp_path, face, fake_encode):
    root = make_smic(tmp_path / "a", face)
    write_clip(root / "HS" / "s2" / "micro" / "positive" / "s2_po_09", lambda n: f"image{n:06d}.bmp", face, 1, 3, 2, 0)
    with pytest.raises(DataError, match=r"s2_po_09: no row in the annotation sheet"):
        datasets.read_smic(root)
    root = make_smic(tmp_path / "b", face)
    (root / "SMIC-HS-E_annotation.csv").unlink()
    with pytest.raises(DataError, match="SMIC-HS annotation spreadsheet is missing"):
        datasets.read_smic(root)
    root = make_smic(tmp_path / "c", face, rows=[*SMIC_ROWS[:3], (2, "s2_ne_02", 400, 401, 403, "angry")])
    with pytest.raises(DataError, match=r"s2_ne_02 \(.*row 5\): unknown emotion 'angry'"):
        datasets.read_smic(root)
    root = make_smic(tmp_path / "d", face)
    (root / "HS" / "s1" / "micro" / "negative" / "s1_ne_01" / "image000102.bmp").unlink()
    with pytest.raises(DataError, match=r"image000102.bmp: apex frame 102 of .*row 2 is missing"):
        datasets.read_smic(root)


def test_prepare_select_keeps_the_listed_clips(tmp_path, face, fake_encode):
    root = make_casme2(tmp_path / "casme2", face)
    select = tmp_path / "select.csv"
    header = "dataset,subject,clip,label,emotion,file\n"
    select.write_text(header + "casme2,casme2_sub01,EP03_02f,0,negative,flow/x.png\n"
                               "casme2,casme2_sub02,EP19_05f,0,negative,flow/y.png\n"
                               "samm,samm_006,006_1_2,0,negative,flow/z.png\n")
    report = datasets.prepare("casme2", root, tmp_path / "out", select=select)
    assert [c.clip for c in report.reading.clips] == ["EP03_02f", "EP19_05f"]
    assert [c.clip for c in report.reading.unselected] == ["EP02_01f", "EP01_11f"]
    assert load_flow_folder(tmp_path / "out").clip == ["EP03_02f", "EP19_05f"]

    select.write_text(header + "casme2,casme2_sub01,EP03_02f,1,positive,flow/x.png\n")
    with pytest.raises(DataError,
                       match=r"select.csv, row 2: label 1 for casme2_sub01/EP03_02f, but .*row 3 gives 'disgust'"):
        datasets.prepare("casme2", root, tmp_path / "out2", select=select)
    select.write_text(header + "casme2,casme2_sub01,EP04_01f,0,negative,flow/x.png\n")
    with pytest.raises(DataError,
                       match=r"select.csv, row 2: casme2_sub01/EP04_01f is excluded here \(emotion 'others'\)"):
        datasets.prepare("casme2", root, tmp_path / "out2", select=select)


def test_prepare_does_not_replace_rows_it_did_not_write(tmp_path, face, fake_encode):
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.csv").write_text("dataset,subject,clip,label,emotion,file\n"
                                    "casme2,casme2_sub01,EP02_01f,1,positive,flow/casme2_sub01_EP02_01f.png\n")
    with pytest.raises(DataError,
                       match=r"labels.csv, row 2: casme2 clip casme2_sub01/EP02_01f was not made by prepare"):
        datasets.prepare("casme2", make_casme2(tmp_path / "casme2", face), out)
    assert fake_encode == []
