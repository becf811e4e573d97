"""Reader for folders in the composite-set format: `labels.csv` + 28x28 RGB flow PNGs.

Training, export parity and the accuracy benchmark all read this format, so it lives in the core.
Every problem is an error that names the file or row; nothing is skipped silently.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .labels import CLASSES, INPUT_SHAPE, class_of_emotion

COLUMNS = ("dataset", "subject", "clip", "label", "emotion", "file")


class DataError(ValueError):
    """A data folder is malformed; the message names the file or row."""


@dataclass
class FlowSet:
    """N clips: x float32 (N, 3, 28, 28) in [0, 1], channels (u, v, strain); y int64 (N,)."""

    x: np.ndarray
    y: np.ndarray
    dataset: list[str]
    subject: list[str]
    clip: list[str]
    root: Path

    def __len__(self) -> int:
        return len(self.y)

    @property
    def subjects(self) -> list[str]:
        """Subjects in first-seen order: the LOSO folds."""
        return list(dict.fromkeys(self.subject))


def read_png_rgb(path: Path) -> np.ndarray:
    """A 3-channel PNG as uint8 (H, W, 3) in RGB order."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise DataError(f"{path}: expected an RGB image, got mode {im.mode}")
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def write_png_rgb(path: Path, image_chw: np.ndarray) -> None:
    """Store a (3, H, W) float image in [0, 1] as an 8-bit RGB PNG (the composite encoding)."""
    from PIL import Image

    hwc = np.clip(np.rint(np.transpose(image_chw, (1, 2, 0)) * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(hwc, "RGB").save(path)


def load_flow_folder(root: str | Path) -> FlowSet:
    root = Path(root)
    table = root / "labels.csv"
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    if not table.is_file():
        raise DataError(f"{table}: labels.csv is missing")
    with table.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's BOM is not a column name
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{table}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{table}: no rows")

    xs, ys, datasets, subjects, clips = [], [], [], [], []
    seen: dict[tuple[str, str, str], int] = {}
    files: dict[str, tuple[int, int]] = {}  # image -> (first row, its label)
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{table}, row {line}"
        for c in COLUMNS:
            if not (row.get(c) or "").strip():
                raise DataError(f"{where}: empty '{c}'")
        key = (row["dataset"], row["subject"], row["clip"])
        if key in seen:
            raise DataError(f"{where}: duplicate clip {'/'.join(key)} (first at row {seen[key]})")
        seen[key] = line
        try:
            label = int(row["label"])
        except ValueError:
            raise DataError(f"{where}: label '{row['label']}' is not an integer") from None
        if not 0 <= label < len(CLASSES):
            raise DataError(f"{where}: unknown label {label}; expected 0..{len(CLASSES) - 1} ({', '.join(CLASSES)})")
        named = class_of_emotion(row["emotion"])
        if named is not None and named != label:
            raise DataError(f"{where}: emotion '{row['emotion']}' is class {CLASSES[named]} but label {label} is "
                            f"{CLASSES[label]}")
        file = row["file"].strip()
        if file in files and files[file][1] != label:
            raise DataError(f"{where}: image {file} is also row {files[file][0]}'s, with another label "
                            f"({files[file][1]} there, {label} here)")
        files.setdefault(file, (line, label))
        img = read_png_rgb(root / row["file"])
        if img.shape != (INPUT_SHAPE[1], INPUT_SHAPE[2], 3):
            raise DataError(f"{root / row['file']} (row {line}): shape {img.shape}, expected (28, 28, 3)")
        xs.append(np.transpose(img, (2, 0, 1)).astype(np.float32) / 255.0)
        ys.append(label)
        datasets.append(row["dataset"].strip())
        subjects.append(row["subject"].strip())
        clips.append(row["clip"].strip())
    return FlowSet(np.stack(xs), np.asarray(ys, dtype=np.int64), datasets, subjects, clips, root)
