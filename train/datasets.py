"""Raw CASME II, SAMM and SMIC-HS as their owners distribute them -> composite-format flow folders.

One reader per database turns its coding spreadsheet and frame folders into clip records (dataset,
composite subject id, clip, emotion word, 3-class label, onset and apex frame paths, the frames from
onset to offset). `prepare` encodes each clip's onset -> apex pair with `mex.features.encode` (the one
feature path, shared with mex-live) and writes `labels.csv` + `flow/<subject>_<clip>.png`, the format
`mex.composite` reads; `mex-bench live-loso` plays each clip's frames through the live pipeline.
docs/datasets.md describes the layouts, the mapping, the exclusions and the cache.

Layouts (ROOT is what `--root` names):

- casme2: ROOT/CASME2-coding-20140508.xlsx (any single CASME2-coding-*.xlsx) with columns Subject,
  Filename, OnsetFrame, ApexFrame, OffsetFrame, Estimated Emotion; frames
  ROOT/Cropped/sub01/EP02_01f/reg_img46.jpg (img46.jpg accepted; reg_img preferred when both exist), or
  another frame folder in that layout (read_casme2's frame_folder: the raw CASME2_RAW_selected/.../img46.jpg).
- samm: ROOT/SAMM_Micro_FACS_Codes_v2.xlsx (any single SAMM*Micro_FACS_Codes*.xlsx): title rows,
  then a header row with Subject, Filename, Onset Frame, Apex Frame, Offset Frame, ..., Estimated
  Emotion; frames ROOT/006/006_1_2/006_05562.jpg (`<subject>_<frame>.jpg`, any zero padding).
- smic: ROOT/HS/s1/micro/<negative|positive|surprise>/s1_ne_01/image<NNNNNN>.bmp (.jpg/.png too);
  the emotion is the folder's. Onset/apex from the one annotation sheet (.xlsx or .csv whose name
  contains "annotation", in ROOT or ROOT/HS; two such files is an error) with Subject, Filename,
  OnsetF, ApexF (optional), OffsetF. Clip names follow the composite set: s1_ne_01 -> s01_ne_01.

Rules (all counted and reported, none silent):

- 3 classes by mex.labels.class_of_emotion (MEGC2019, paper §4.1); the words in EXCLUDED ("others"
  of CASME II, "other" of SAMM, "tense") are left out; any other word is a DataError.
- Missing apex (CASME II writes "/", an empty cell, or a negative number): the middle frame,
  onset + (offset - onset) // 2, with offset the annotated one or else the clip folder's last frame.
- Clip folders that no spreadsheet row names (CASME II, SAMM) are not clips of the coded database:
  reported with their paths. In SMIC, where the folder carries the label, a folder without an
  annotation row is a DataError.
- Every problem in the data (missing or unreadable sheet or frame, missing column, bad number,
  unknown emotion, duplicate clip, a subject folder without clip folders) is a DataError naming
  the file or row.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from mex import features as _features  # called as _features.encode, so tests can patch mex.features.encode
from mex.composite import COLUMNS, DataError
from mex.features.backends import BACKENDS as FLOW_BACKENDS
from mex.labels import CLASSES, DATASETS, EMOTION_TO_CLASS, ENCODING_VERSION, class_of_emotion

__all__ = ["Clip", "Reading", "PrepareReport", "EXCLUDED", "read_casme2", "read_samm", "read_smic", "read_dataset",
           "prepare", "add_prepare_arguments", "prepare_command", "CACHE_MANIFEST"]

# Emotion words MEGC2019 leaves out (paper §4.1: CASME II "others", SAMM "Other"); "tense" is the
# CASME-family word for the same residual class. Compared lower-case.
EXCLUDED: frozenset[str] = frozenset({"others", "other", "tense"})

CACHE_MANIFEST = "prepare-cache.json"
RESIZE_RULE = f"square-same-size-as-is-else-area-to-{_features.CROP_SIZE}-v1"  # part of the cache key
_IMAGE_EXT = r"(?:jpg|jpeg|png|bmp)"

Crop = None | tuple[int, int, int, int] | Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Clip:
    """One labelled onset -> apex pair of a database."""

    dataset: str  # casme2 | samm | smic
    subject: str  # composite id: casme2_sub01, samm_006, smic_s01
    clip: str  # EP02_01f, 006_1_2, s01_ne_01
    emotion: str  # the database's own word, lower-case
    label: int  # index into mex.labels.CLASSES
    onset: Path
    apex: Path
    source: str  # where it was coded: "<sheet>, row N" (messages, manifest)
    apex_rule: str = "annotated"  # or "middle" (apex missing in the sheet)
    # the clip's frame files from the onset to the offset (what `mex-bench live-loso` plays), see _onset_apex
    frames: tuple[Path, ...] = ()

    @property
    def file(self) -> str:
        """Image path relative to the output folder, named as in the composite set."""
        return f"flow/{self.subject}_{self.clip}.png"


@dataclass
class Reading:
    """What a reader found: the clips, and everything it left out, with reasons."""

    dataset: str
    clips: list[Clip] = field(default_factory=list)
    excluded: list[tuple[str, str, str]] = field(default_factory=list)  # (source, clip, emotion word)
    unlisted: list[Path] = field(default_factory=list)  # clip folders no sheet row names
    unselected: list[Clip] = field(default_factory=list)  # left out by prepare(select=...)
    sheet: Path | None = None

    def __iter__(self) -> Iterator[Clip]:
        return iter(self.clips)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def middle_apex(self) -> list[Clip]:
        return [c for c in self.clips if c.apex_rule == "middle"]

    def summary_lines(self) -> list[str]:
        counts = Counter(c.label for c in self.clips)
        per_class = ", ".join(f"{CLASSES[k]} {counts.get(k, 0)}" for k in range(len(CLASSES)))
        lines = [f"{self.dataset}: {len(self.clips)} clips of {len({c.subject for c in self.clips})} subjects "
                 f"({per_class}) from {self.sheet}"]
        if self.excluded:
            words = Counter(w for _, _, w in self.excluded)
            lines.append(f"{self.dataset}: excluded {len(self.excluded)} clips by the MEGC2019 rule: "
                         + ", ".join(f"{w} {n}" for w, n in sorted(words.items())))
        if self.middle_apex:
            lines.append(f"{self.dataset}: apex missing in the sheet for {len(self.middle_apex)} clips, middle frame "
                         "used: " + _some(f"{c.subject}/{c.clip}" for c in self.middle_apex))
        if self.unlisted:
            lines.append(f"{self.dataset}: {len(self.unlisted)} clip folders named by no spreadsheet row, not used: "
                         + _some(str(p) for p in self.unlisted))
        if self.unselected:
            lines.append(f"{self.dataset}: {len(self.unselected)} clips not in the selection, not used: "
                         + _some(f"{c.subject}/{c.clip} ({c.emotion})" for c in self.unselected))
        return lines


def _some(items, limit: int = 12) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# ------------------------------------------------------------------------------------------ sheets
def _norm(name) -> str:
    """Header normalisation: 'Onset Frame', 'OnsetFrame', 'onset_frame' -> 'onsetframe'."""
    return re.sub(r"[^a-z0-9]", "", str(name or "").lower())


_ALIASES = {
    "subject": ("subject",),
    "filename": ("filename",),
    "onset": ("onsetframe", "onsetf", "onset"),
    "apex": ("apexframe", "apexf", "apex"),
    "offset": ("offsetframe", "offsetf", "offset"),
    "emotion": ("estimatedemotion", "emotion"),
}


@dataclass
class _Sheet:
    path: Path
    columns: dict[str, int]  # canonical name -> column index
    rows: list[tuple[int, list]]  # (1-based row number in the file, cells)

    def where(self, row: int) -> str:
        return f"{self.path}, row {row}"

    def get(self, cells: list, key: str):
        i = self.columns.get(key)
        if i is None or i >= len(cells):
            return None
        value = cells[i]
        return value.strip() if isinstance(value, str) else value


def sheet_rows(path: Path, index: int = 0) -> list[list]:
    """The cell values of worksheet `index` of a .xlsx / .xlsm, or of a .csv (one worksheet)."""
    if not path.is_file():
        raise DataError(f"{path}: spreadsheet is missing")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            if index:
                raise DataError(f"{path}: a .csv holds one worksheet; worksheet {index + 1} is needed "
                                "(use the .xlsx)")
            with path.open(newline="", encoding="utf-8-sig") as f:
                return [list(r) for r in csv.reader(f)]
        if suffix in (".xlsx", ".xlsm"):
            try:
                import openpyxl
            except ImportError:
                raise DataError(f"{path}: reading .xlsx needs openpyxl (pip install openpyxl)") from None
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
            try:
                if index >= len(wb.worksheets):
                    raise DataError(f"{path}: has {len(wb.worksheets)} worksheet(s); worksheet {index + 1} "
                                    "is needed")
                return [list(r) for r in wb.worksheets[index].iter_rows(values_only=True)]
            finally:
                wb.close()
    except DataError:
        raise
    except Exception as e:  # zip/xml/decoding errors of a damaged file
        raise DataError(f"{path}: unreadable spreadsheet ({type(e).__name__}: {e})") from None
    raise DataError(f"{path}: unsupported spreadsheet type {suffix!r}; save it as .xlsx or .csv")


def _read_sheet(path: Path, required: Sequence[str], optional: Sequence[str] = (), search_rows: int = 40) -> _Sheet:
    """The first row (within `search_rows`) holding Subject and Filename is the header (SAMM has a
    title block above it); rows after it are data, fully empty rows ignored."""
    raw = sheet_rows(path)
    header_at = None
    for i, cells in enumerate(raw[:search_rows]):
        names = {_norm(c) for c in cells}
        if "subject" in names and "filename" in names:
            header_at = i
            break
    if header_at is None:
        raise DataError(f"{path}: no header row with 'Subject' and 'Filename' in the first {search_rows} rows")
    header = [_norm(c) for c in raw[header_at]]
    columns: dict[str, int] = {}
    for key in (*required, *optional):
        for alias in _ALIASES[key]:
            if alias in header:
                columns[key] = header.index(alias)
                break
    missing = [key for key in required if key not in columns]
    if missing:
        want = ", ".join("/".join(_ALIASES[k]) for k in missing)
        raise DataError(f"{path}, row {header_at + 1} (header): missing column(s) {want}; "
                        f"found {', '.join(str(c) for c in raw[header_at] if c not in (None, ''))}")
    rows = [(i + 1, cells) for i, cells in enumerate(raw) if i > header_at
            and any(c is not None and str(c).strip() != "" for c in cells)]
    if not rows:
        raise DataError(f"{path}: no data rows after the header (row {header_at + 1})")
    return _Sheet(path, columns, rows)


def _find_sheet(folders: Sequence[Path], exact: str, pattern: str, what: str, prefer_exact: bool = True) -> Path:
    """`exact` in one of `folders` (when prefer_exact), else the one file matching `pattern`."""
    for folder in folders if prefer_exact else ():
        if (folder / exact).is_file():
            return folder / exact
    found = sorted({p for folder in folders if folder.is_dir() for p in folder.iterdir()
                    if p.is_file() and re.fullmatch(pattern, p.name,
                                                    re.IGNORECASE) and not p.name.startswith(("~$", "."))})
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(f"{folders[0]}: several {what} sheets ({', '.join(str(p) for p in found)}); keep one")
    raise DataError(f"{folders[0] / exact}: {what} spreadsheet is missing (looked for {exact} and {pattern!r} "
                    f"in {', '.join(str(f) for f in folders)})")


def _frame_number(value, where: str, column: str, allow_absent: bool = False) -> int | None:
    """A frame number cell: int, integral float or digit string. Apex only: '/', '-', empty or a
    negative number mean "not annotated" (None)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "/", "-")):
        if allow_absent:
            return None
        raise DataError(f"{where}: {column} is empty")
    number = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"-?\d+(\.0+)?", value.strip()):
        number = int(float(value))
    if number is None:
        raise DataError(f"{where}: {column} {value!r} is not a frame number")
    if number < 0:
        if allow_absent:
            return None
        raise DataError(f"{where}: {column} {number} is negative")
    return number


def _label(word: str, where: str, dataset: str) -> int | None:
    """3-class index; None for an excluded word; DataError for a word the mapping does not know."""
    if not word:
        raise DataError(f"{where}: empty emotion")
    label = class_of_emotion(word)
    if label is None and word.strip().lower() not in EXCLUDED:
        raise DataError(f"{where}: unknown emotion {word!r} for {dataset}; mapped: "
                        f"{', '.join(sorted(EMOTION_TO_CLASS))}; "
                        f"excluded: {', '.join(sorted(EXCLUDED))} (extend mex.labels.EMOTION_TO_CLASS if it is real)")
    return label


# ------------------------------------------------------------------------------------------ frames
class _Frames:
    """Frame number -> file of one clip folder, from its file names (any zero padding)."""

    def __init__(self, folder: Path, pattern: str, preferred: Callable[[str], int] = lambda name: 0):
        self.folder = folder
        self.by_number: dict[int, Path] = {}
        rank: dict[int, int] = {}
        for p in sorted(folder.iterdir()):
            m = re.fullmatch(pattern, p.name, re.IGNORECASE)
            if not m or not p.is_file():
                continue
            n, r = int(m.group(1)), preferred(p.name)
            if n in self.by_number and rank[n] == r:
                raise DataError(f"{p}: frame {n} is also {self.by_number[n]}; which one is meant is ambiguous")
            if n not in self.by_number or r < rank[n]:
                self.by_number[n], rank[n] = p, r

    def get(self, number: int, where: str, what: str, expected: str) -> Path:
        path = self.by_number.get(number)
        if path is None:
            raise DataError(f"{self.folder / expected}: {what} frame {number} of {where} is missing")
        return path

    @property
    def last(self) -> int | None:
        return max(self.by_number) if self.by_number else None


def _frames_of(cache: dict, folder: Path, pattern: str, where: str, preferred=lambda name: 0) -> _Frames:
    if folder not in cache:
        if not folder.is_dir():
            raise DataError(f"{folder}: clip folder of {where} is missing")
        cache[folder] = _Frames(folder, pattern, preferred)
    return cache[folder]


def _onset_apex(sheet: _Sheet, cells: list, where: str, frames: _Frames, expected: Callable[[int], str]) -> dict:
    """The Clip fields a sheet row gives: onset, apex (and the rule that chose it) and the frames from the
    onset to the offset, the sheet's offset or, where it is missing, 0 or before the apex, the folder's last
    frame (numbers the folder lacks in between are skipped)."""
    onset = _frame_number(sheet.get(cells, "onset"), where, "onset frame")
    apex = _frame_number(sheet.get(cells, "apex"), where, "apex frame", allow_absent=True)
    offset = _frame_number(sheet.get(cells, "offset"), where, "offset frame", allow_absent=True)
    rule = "annotated"
    if apex is None:
        end = frames.last if offset is None or offset == 0 else offset
        if end is None or end < onset:
            raise DataError(f"{where}: apex frame is missing and no offset frame >= onset {onset} to take the "
                            f"middle frame from (folder {frames.folder})")
        apex, rule = onset + (end - onset) // 2, "middle"
    if apex <= onset:  # no onset -> apex motion to encode (the encoding would be all zeros)
        raise DataError(f"{where}: apex frame {apex} is not after onset frame {onset}")
    if offset is None or offset < apex:
        offset = frames.last
    return dict(onset=frames.get(onset, where, "onset", expected(onset)),
                apex=frames.get(apex, where, "apex", expected(apex)), apex_rule=rule,
                frames=tuple(frames.by_number[n] for n in sorted(frames.by_number) if onset <= n <= offset))


def _subject_folders(parent: Path, pattern: str, what: str) -> list[Path]:
    """Subject folders under `parent`; one without any clip folder is a DataError."""
    if not parent.is_dir():
        raise DataError(f"{parent}: {what} folder is missing")
    subjects = sorted(p for p in parent.iterdir() if p.is_dir() and re.fullmatch(pattern, p.name, re.IGNORECASE))
    if not subjects:
        raise DataError(f"{parent}: no subject folders (expected names like {what})")
    for s in subjects:
        if not any(c.is_dir() for c in s.iterdir()):
            raise DataError(f"{s}: subject folder has no clip folders")
    return subjects


def _check_duplicate(seen: dict, key, where: str, name: str) -> None:
    if key in seen:
        raise DataError(f"{where}: duplicate clip {name} (first at {seen[key]})")
    seen[key] = where


def _int_id(value, where: str, column: str, pattern: str = r"(?:sub|s)?0*(\d+)") -> int:
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value).strip()
    m = re.fullmatch(pattern, text, re.IGNORECASE)
    if not m:
        raise DataError(f"{where}: {column} {value!r} is not a subject number")
    return int(m.group(1))


# ------------------------------------------------------------------------------------------ readers
def read_casme2(root: str | Path, frame_folder: str = "Cropped") -> Reading:
    """CASME II: CASME2-coding-20140508.xlsx + Cropped/subNN/<Filename>/reg_img<N>.jpg; `frame_folder` names
    another folder under ROOT in that layout, e.g. the raw frames: CASME2_RAW_selected/subNN/<Filename>/img<N>.jpg.
    """
    root = Path(root)
    sheet = _read_sheet(_find_sheet([root], "CASME2-coding-20140508.xlsx", r"CASME2-coding.*\.(xlsx|csv)",
                                    "CASME II coding"),
                        ["subject", "filename", "onset", "apex", "emotion"], ["offset"])
    cropped = root / frame_folder
    subjects = _subject_folders(cropped, r"sub\d+", "sub01")
    reading = Reading("casme2", sheet=sheet.path)
    seen: dict = {}
    frames: dict = {}
    pattern = rf"(?:reg_)?img(\d+)\.{_IMAGE_EXT}"
    for row, cells in sheet.rows:
        where = sheet.where(row)
        number = _int_id(sheet.get(cells, "subject"), where, "Subject")
        sub = f"sub{number:02d}"
        name = str(sheet.get(cells, "filename") or "")
        if not name:
            raise DataError(f"{where}: empty Filename")
        _check_duplicate(seen, (sub, name), where, f"{sub}/{name}")
        word = str(sheet.get(cells, "emotion") or "")
        label = _label(word, where, "casme2")
        if label is None:
            reading.excluded.append((where, f"{sub}/{name}", word.strip().lower()))
            continue
        fr = _frames_of(frames, cropped / sub / name, pattern, where,
                        lambda n: 0 if n.lower().startswith("reg_") else 1)
        reading.clips.append(Clip("casme2", f"casme2_{sub}", name, word.strip().lower(), label, source=where,
                                  **_onset_apex(sheet, cells, where, fr, lambda n: f"reg_img{n}.jpg")))
    reading.unlisted = [c for s in subjects
                        for c in sorted(s.iterdir()) if c.is_dir() and (s.name.lower(), c.name) not in seen]
    return reading


def read_samm(root: str | Path) -> Reading:
    """SAMM: SAMM_Micro_FACS_Codes_v2.xlsx (title block, then the header) + NNN/<Filename>/NNN_<frame>.jpg."""
    root = Path(root)
    sheet = _read_sheet(_find_sheet([root], "SAMM_Micro_FACS_Codes_v2.xlsx", r"SAMM.*Micro_FACS_Codes.*\.(xlsx|csv)",
                                    "SAMM FACS codes"),
                        ["subject", "filename", "onset", "apex", "emotion"], ["offset"])
    subjects = _subject_folders(root, r"\d{3}", "006")
    reading = Reading("samm", sheet=sheet.path)
    seen: dict = {}
    frames: dict = {}
    for row, cells in sheet.rows:
        where = sheet.where(row)
        sub = "%03d" % _int_id(sheet.get(cells, "subject"), where, "Subject", r"0*(\d+)")
        value = sheet.get(cells, "filename")
        name = str(value if value is not None else "")
        if not name:
            raise DataError(f"{where}: empty Filename")
        if not name.startswith(f"{sub}_"):
            raise DataError(f"{where}: Filename {name!r} does not belong to subject {sub} (expected {sub}_...)")
        _check_duplicate(seen, (sub, name), where, f"{sub}/{name}")
        word = str(sheet.get(cells, "emotion") or "")
        label = _label(word, where, "samm")
        if label is None:
            reading.excluded.append((where, f"{sub}/{name}", word.strip().lower()))
            continue
        fr = _frames_of(frames, root / sub / name, rf"{sub}_(\d+)\.{_IMAGE_EXT}", where)
        reading.clips.append(Clip("samm", f"samm_{sub}", name, word.strip().lower(), label, source=where,
                                  **_onset_apex(sheet, cells, where, fr, lambda n: f"{sub}_{n:05d}.jpg")))
    reading.unlisted = [c for s in subjects for c in sorted(s.iterdir()) if c.is_dir() and (s.name, c.name) not in seen]
    return reading


def _smic_clip(name: str, where: str) -> tuple[int, str]:
    """'s1_ne_01' / 's01_ne_01' -> (1, 's01_ne_01'): the composite set's spelling."""
    m = re.fullmatch(r"s0*(\d+)_(.+)", name.strip(), re.IGNORECASE)
    if not m:
        raise DataError(f"{where}: clip name {name!r} is not s<subject>_<type>_<index>")
    return int(m.group(1)), f"s{int(m.group(1)):02d}_{m.group(2)}"


def read_smic(root: str | Path) -> Reading:
    """SMIC-HS: HS/sN/micro/<emotion>/<clip>/image<N>.bmp + an onset/apex annotation sheet."""
    root = Path(root)
    hs = root / "HS"
    # No preferred name: SMIC-HS-E_annotation.xlsx (no apex) and its _2019 version (with ApexF) both
    # circulate; two candidates is an error asking to keep one.
    sheet = _read_sheet(_find_sheet([root, hs], "SMIC-HS-E_annotation.xlsx", r".*annotation.*\.(xlsx|csv)",
                                    "SMIC-HS annotation",
                                    prefer_exact=False),
                        ["subject", "filename", "onset"], ["apex", "offset", "emotion"])
    subjects = _subject_folders(hs, r"s\d+", "s1")
    reading = Reading("smic", sheet=sheet.path)

    # The folders carry the labels: every clip folder, with its emotion.
    folders: dict[str, tuple[Path, str, str]] = {}  # clip -> (folder, subject id, emotion word)
    for s in subjects:
        number = int(s.name[1:])
        micro = s / "micro"
        clips = [c for e in sorted(micro.iterdir()) if e.is_dir() for c in sorted(e.iterdir()) if c.is_dir()] \
            if micro.is_dir() else []
        if not clips:
            raise DataError(f"{s}: subject folder has no clip folders (expected {micro}/<emotion>/<clip>)")
        for c in clips:
            n, clip = _smic_clip(c.name, str(c))
            if n != number:
                raise DataError(f"{c}: clip of subject {n} inside subject folder {s.name}")
            if clip in folders:
                raise DataError(f"{c}: duplicate clip {clip} (also {folders[clip][0]})")
            folders[clip] = (c, f"smic_s{number:02d}", c.parent.name)

    seen: dict = {}
    frames: dict = {}
    coded: set[str] = set()
    for row, cells in sheet.rows:
        where = sheet.where(row)
        number = _int_id(sheet.get(cells, "subject"), where, "Subject")
        n, clip = _smic_clip(str(sheet.get(cells, "filename") or ""), where)
        if n != number:
            raise DataError(f"{where}: Filename names subject {n} but Subject is {number}")
        _check_duplicate(seen, clip, where, clip)
        if clip not in folders:
            raise DataError(f"{where}: no clip folder {hs}/s{number}/micro/<emotion>/{sheet.get(cells, 'filename')} "
                            f"(clip {clip})")
        folder, subject, word = folders[clip]
        coded.add(clip)
        sheet_word = sheet.get(cells, "emotion")
        if sheet_word and str(sheet_word).strip().lower() != word.lower():
            raise DataError(f"{where}: Emotion {sheet_word!r} disagrees with the folder {folder.parent}")
        label = _label(word, f"{folder} ({where})", "smic")
        if label is None:
            reading.excluded.append((where, f"s{n:02d}/{clip}", word.lower()))
            continue
        fr = _frames_of(frames, folder, rf"image(\d+)\.{_IMAGE_EXT}", where)
        reading.clips.append(Clip("smic", subject, clip, word.lower(), label, source=where,
                                  **_onset_apex(sheet, cells, where, fr, lambda k: f"image{k:06d}.bmp")))
    uncoded = [folders[c][0] for c in folders if c not in coded]
    if uncoded:
        raise DataError(f"{uncoded[0]}: no row in the annotation sheet {sheet.path} (onset/apex unknown)"
                        + (f"; {len(uncoded) - 1} more clip folders without rows" if len(uncoded) > 1 else ""))
    return reading


READERS: dict[str, Callable[[str | Path], Reading]] = {"casme2": read_casme2, "samm": read_samm, "smic": read_smic}


def read_dataset(dataset: str, root: str | Path, frame_folder: str | None = None) -> Reading:
    """`frame_folder`: CASME II's frames from another folder under ROOT (see read_casme2)."""
    if dataset not in READERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(READERS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: {dataset} root folder does not exist")
    if frame_folder is None:
        return READERS[dataset](root)
    if dataset != "casme2":
        raise ValueError(f"a frame folder other than the distributed one is a CASME II option; {dataset} has one "
                         "layout")
    return read_casme2(root, frame_folder)


# ------------------------------------------------------------------------------------------ prepare
@dataclass
class PrepareReport:
    dataset: str
    out: Path
    reading: Reading
    computed: int = 0
    cached: int = 0
    backend: str | None = None  # None when everything came from the cache
    kept_rows: int = 0  # rows of other datasets already in labels.csv
    seconds: float = 0.0

    def lines(self) -> list[str]:
        backend = f" with flow backend {self.backend}" if self.backend else ""
        return [*self.reading.summary_lines(),
                f"{self.dataset}: {self.computed} encoded{backend}, {self.cached} unchanged from the cache, "
                f"in {self.seconds:.1f} s",
                f"{self.out / 'labels.csv'}: {len(self.reading.clips) + self.kept_rows} rows "
                f"({self.kept_rows} of other datasets kept)"]


def _crop_key(crop: Crop) -> str:
    if crop is None:
        return "none"
    if callable(crop):
        return f"callable:{getattr(crop, '__module__', '?')}.{getattr(crop, '__qualname__', repr(crop))}"
    return "box:" + ",".join(str(int(v)) for v in crop)


def _read_frame(path: Path, clip: Clip) -> np.ndarray:
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: unreadable frame of {clip.source} ({e})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"{path}: unreadable frame of {clip.source} (not a decodable image)")
    return image


def _pair(clip: Clip, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
    """Onset and apex as uint8 BGR crops of one size, ready for mex.features.encode.

    crop: None (frames as they are), a box (x, y, w, h) cut from both frames, or a function
    (onset, apex) -> (onset, apex). Then: a square pair of one size goes as it is; otherwise both are
    resized to CROP_SIZE x CROP_SIZE (aspect not kept; cv2 INTER_AREA when shrinking, INTER_LINEAR when
    enlarging), the size of the live pipeline's crops.
    """
    import cv2

    onset, apex = _read_frame(clip.onset, clip), _read_frame(clip.apex, clip)
    if callable(crop):
        onset, apex = crop(onset, apex)
    elif crop is not None:
        x, y, w, h = (int(v) for v in crop)
        for path, image in ((clip.onset, onset), (clip.apex, apex)):
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > image.shape[1] or y + h > image.shape[0]:
                raise DataError(f"{path}: crop box x={x} y={y} w={w} h={h} lies outside the "
                                f"{image.shape[1]}x{image.shape[0]} frame ({clip.source})")
        onset, apex = onset[y:y + h, x:x + w], apex[y:y + h, x:x + w]
    if onset.shape[:2] == apex.shape[:2] and onset.shape[0] == onset.shape[1]:
        return np.ascontiguousarray(onset), np.ascontiguousarray(apex)
    size = _features.CROP_SIZE

    def fit(image):
        shrink = image.shape[0] >= size and image.shape[1] >= size
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    return fit(onset), fit(apex)


def _stat(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _load_manifest(out: Path) -> dict:
    path = out / CACHE_MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged manifest only costs recomputation
    return data.get("clips", {}) if isinstance(data, dict) and data.get("version") == 1 else {}


def _save_manifest(out: Path, clips: dict) -> None:
    tmp = out / f".{CACHE_MANIFEST}.tmp"
    tmp.write_text(json.dumps({"version": 1, "clips": clips}, indent=1, sort_keys=True))
    os.replace(tmp, out / CACHE_MANIFEST)


def _existing_rows(table: Path) -> list[dict]:
    if not table.exists():
        return []
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{table}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)} "
                            "(not a composite-format labels.csv: prepare into another folder)")
        return [{c: row[c] for c in COLUMNS} for row in reader]


def _write_rows(table: Path, rows: list[dict]) -> None:
    tmp = table.with_name(f".{table.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, table)


def _subject_order(subject: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", subject))


def _apply_selection(reading: Reading, select: Path) -> None:
    """Keep only the clips a composite-format labels.csv lists for this dataset (e.g. the MEGC2019
    set's, to rebuild its 442 clips from raw frames). A listed clip the sheet lacks or excludes, or
    whose label differs, is a DataError naming the selection's row."""
    rows = _existing_rows(select)
    if not rows and not select.is_file():
        raise DataError(f"{select}: selection labels.csv is missing")
    wanted = {}
    for line, r in enumerate(rows, start=2):
        if r["dataset"] == reading.dataset:
            wanted[(r["subject"], r["clip"])] = (line, r["label"])
    if not wanted:
        raise DataError(f"{select}: no rows of dataset {reading.dataset!r} to select")
    ours = {(c.subject, c.clip): c for c in reading.clips}
    excluded = {w.replace("/", "_"): e for _, w, e in reading.excluded}
    for (subject, clip), (line, label) in wanted.items():
        c = ours.get((subject, clip))
        where = f"{select}, row {line}"
        if c is None:
            raw = f"{subject.split('_', 1)[1]}_{clip}"
            if raw in excluded:
                raise DataError(f"{where}: {subject}/{clip} is excluded here (emotion {excluded[raw]!r})")
            raise DataError(f"{where}: {subject}/{clip} is not a clip of {reading.sheet}")
        if str(c.label) != label.strip():
            raise DataError(f"{where}: label {label} for {subject}/{clip}, but {c.source} gives {c.emotion!r} "
                            f"= {c.label} ({CLASSES[c.label]})")
    reading.unselected = [c for c in reading.clips if (c.subject, c.clip) not in wanted]
    reading.clips = [c for c in reading.clips if (c.subject, c.clip) in wanted]


class _Encoder:
    """How a clip becomes its image: its frames cut by `crop` (see _pair), then mex.features.encode with
    the flow backend `flow` names, built on first use (a run served from the cache builds none)."""

    def __init__(self, flow, crop: Crop):
        self.flow, self.crop, self.backend = flow, crop, None

    def backend_name(self) -> str | None:
        return None if self.backend is None else getattr(self.backend, "name", str(self.flow))

    def encode(self, clip: Clip) -> np.ndarray:
        onset, apex = _pair(clip, self.crop)
        if self.backend is None:
            try:
                self.backend = _features.get_backend(self.flow) if isinstance(self.flow, str) else self.flow
            except _features.BackendUnavailable as e:
                raise ValueError(f"--flow {self.flow}: {e}") from None
        try:
            return _features.encode(onset, apex, self.backend)
        except ValueError as e:
            raise DataError(f"{clip.onset} / {clip.apex} ({clip.source}): cannot encode: {e}") from None


class _Cache:
    """out/prepare-cache.json for one dataset's run: the entries of the other datasets stay, this
    dataset's are rebuilt as its clips are visited (a clip that left the dataset drops out)."""

    SAVE_EVERY_S = 10.0  # what was encoded survives an error or Ctrl-C, give or take this long

    def __init__(self, out: Path, dataset: str, crop: Crop):
        self.out, self.dataset, self.crop_key = out, dataset, _crop_key(crop)
        self.manifest = _load_manifest(out)
        self.fresh = {k: v for k, v in self.manifest.items() if v.get("dataset") != dataset}
        self.last_save = time.monotonic()

    def check_owned(self, existing: list[dict], table: Path) -> None:
        """Rows of this dataset that prepare did not write (e.g. the shipped composite set) are not ours to replace."""
        for line, r in enumerate(existing, start=2):
            if r["dataset"] == self.dataset and self.manifest.get(r["file"], {}).get("dataset") != self.dataset:
                raise DataError(f"{table}, row {line}: {self.dataset} clip {r['subject']}/{r['clip']} was not made by "
                                f"prepare (no entry in {self.out / CACHE_MANIFEST}); prepare into another folder")

    def key(self, clip: Clip) -> dict:
        """What a clip's PNG was made from: its frames (path, size, mtime), the crop, the encoding."""
        return {"dataset": self.dataset, "onset": _stat(clip.onset), "apex": _stat(clip.apex), "crop": self.crop_key,
                "encoding": ENCODING_VERSION, "resize": RESIZE_RULE}

    def reuse(self, clip: Clip, png: Path, key: dict) -> bool:
        """Keep the clip's entry if its PNG is there and was made from what it would be made from now (`key`)."""
        entry = self.manifest.get(clip.file)
        if (entry is None or not png.is_file() or any(entry.get(k) != v for k, v in key.items())
                or entry.get("png_size") != png.stat().st_size):
            return False
        self.fresh[clip.file] = entry
        return True

    def add(self, clip: Clip, png: Path, key: dict, backend: str) -> None:
        self.fresh[clip.file] = {**key, "png_size": png.stat().st_size, "subject": clip.subject,
                                 "clip": clip.clip, "emotion_word": clip.emotion, "source": clip.source,
                                 "apex_rule": clip.apex_rule, "backend": backend}
        if time.monotonic() - self.last_save > self.SAVE_EVERY_S:
            self.save_partial()

    def save_partial(self) -> None:
        """Entries of this dataset not yet revisited are kept until the run completes."""
        _save_manifest(self.out, {**self.manifest, **self.fresh})
        self.last_save = time.monotonic()

    def save(self) -> None:
        _save_manifest(self.out, self.fresh)


def prepare(dataset: str, root: str | Path, out: str | Path, flow: str = "auto", crop: Crop = None, *,
            force: bool = False, select: str | Path | None = None, console=None) -> PrepareReport:
    """Read `dataset` at `root`, encode every clip's onset -> apex pair and merge it into `out`.

    out/labels.csv keeps the rows of the other datasets and replaces this dataset's; images go to
    out/flow/<subject>_<clip>.png. A clip whose PNG exists and whose onset/apex files (path, size,
    mtime), crop and encoding version are those recorded in out/prepare-cache.json is not encoded
    again (force=True re-encodes all). `flow` is a mex.features backend name ("auto", "cpu",
    "torch", "opencv-cuda"), built only if something has to be encoded. `select`: a composite-format
    labels.csv whose rows of this dataset are the clips to keep (see _apply_selection).
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    started = time.perf_counter()
    reading = read_dataset(dataset, root)
    if select is not None:
        _apply_selection(reading, Path(select))
    if not reading.clips:
        raise DataError(f"{reading.sheet}: no clip of {dataset} maps to the 3 classes "
                        f"({len(reading.excluded)} excluded)")
    out = Path(out)
    (out / "flow").mkdir(parents=True, exist_ok=True)
    table = out / "labels.csv"
    existing = _existing_rows(table)
    kept = [r for r in existing if r["dataset"] != dataset]
    report = PrepareReport(dataset, out, reading, kept_rows=len(kept))
    cache = _Cache(out, dataset, crop)
    cache.check_owned(existing, table)
    _encode_clips(reading.clips, out, cache, _Encoder(flow, crop), force, report, console)
    _write_rows(table, _merged_rows(kept, reading.clips))
    report.seconds = time.perf_counter() - started
    for line in report.lines():
        console.print(line, highlight=False, soft_wrap=True)
    return report


def _encode_clips(clips: list[Clip], out: Path, cache: _Cache, encoder: _Encoder, force: bool,
                  report: PrepareReport, console) -> None:
    """Each clip's PNG from the cache, or encoded and written (atomically); counted in `report`."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from mex.composite import write_png_rgb

    progress = Progress(TextColumn(f"[bold]prepare {report.dataset}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console, transient=False)
    try:
        with progress:
            task = progress.add_task(report.dataset, total=len(clips), info="")
            for clip in clips:
                png, key = out / clip.file, cache.key(clip)
                if not force and cache.reuse(clip, png, key):
                    report.cached += 1
                else:
                    image = encoder.encode(clip)
                    report.backend = encoder.backend_name()
                    tmp = png.with_name(f".{png.name}.tmp.png")
                    write_png_rgb(tmp, image)
                    os.replace(tmp, png)
                    cache.add(clip, png, key, report.backend)
                    report.computed += 1
                progress.update(task, advance=1, info=f"{report.computed} encoded, {report.cached} cached")
    finally:
        cache.save_partial()  # what was encoded before an error or Ctrl-C stays cached
    cache.save()


def _merged_rows(kept: list[dict], clips: list[Clip]) -> list[dict]:
    """The other datasets' rows and this dataset's, datasets in DATASETS order, each in its own order."""
    rows = [{"dataset": c.dataset, "subject": c.subject, "clip": c.clip, "label": str(c.label),
             "emotion": CLASSES[c.label], "file": c.file}
            for c in sorted(clips, key=lambda c: _subject_order(c.subject))]  # stable: sheet order within a subject
    order = {d: i for i, d in enumerate(DATASETS)}
    return sorted(kept + rows, key=lambda r: order.get(r["dataset"], len(order)))  # stable within a dataset


# ------------------------------------------------------------------------------------------ CLI
def _box(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--crop {text!r}: expected X,Y,W,H (4 integers)") from None
    return x, y, w, h


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mex-train prepare`."""
    parser.add_argument("--dataset", required=True, choices=list(READERS), help="which database ROOT holds")
    parser.add_argument("--root", required=True, metavar="DIR",
                        help="the database as distributed (casme2: coding .xlsx + Cropped/; samm: FACS .xlsx + "
                             "NNN/ folders; smic: HS/ + annotation sheet)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="composite-format folder to create or merge into (labels.csv + flow/*.png)")
    parser.add_argument("--flow", default="auto", choices=["auto", *FLOW_BACKENDS],
                        help="TV-L1 backend of mex.features")
    parser.add_argument("--crop", type=_box, metavar="X,Y,W,H",
                        help="cut this box from every frame before encoding (default: frames as they are)")
    parser.add_argument("--force", action="store_true", help="re-encode every clip, ignoring the cache")
    parser.add_argument("--select", metavar="LABELS_CSV",
                        help="keep only the clips this composite-format labels.csv lists for the dataset, e.g. "
                             "data/megc2019-composite-flow/labels.csv for the MEGC2019 selection")


def prepare_command(args: argparse.Namespace) -> int:
    """`mex-train prepare`: DataError propagates (the CLI prints it and exits 2)."""
    prepare(args.dataset, args.root, args.out, flow=args.flow, crop=getattr(args, "crop", None),
            force=getattr(args, "force", False), select=getattr(args, "select", None))
    return 0
