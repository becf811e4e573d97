import csv
import shutil
from pathlib import Path

import pytest

from mex.features import available_backends

ROOT = Path(__file__).resolve().parents[1]
COMPOSITE = ROOT / "data" / "megc2019-composite-flow"

# Where a skipped test's subject has run (or not): skip reasons end with this.
RUN_WHERE = 'see docs/results.md, "What has run where"'

# OpenCV's TV-L1 (flow backend "cpu", the reference flow) lives only in opencv-contrib; where OpenCV
# lacks it, tests that need it skip and say so.
HAVE_OPENCV_TVL1 = "cpu" in available_backends()
needs_opencv_tvl1 = pytest.mark.skipif(not HAVE_OPENCV_TVL1,
                                       reason=f"OpenCV contrib (cv2.optflow) is not installed ({RUN_WHERE})")


def make_subset(dest: Path, subjects_per_dataset: int = 2) -> Path:
    """A small composite-format folder: the first subjects of each dataset, real images."""
    with (COMPOSITE / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep, seen = [], {}
    for r in rows:
        subs = seen.setdefault(r["dataset"], [])
        if r["subject"] not in subs and len(subs) < subjects_per_dataset:
            subs.append(r["subject"])
        if r["subject"] in subs:
            keep.append(r)
    (dest / "flow").mkdir(parents=True)
    for r in keep:
        shutil.copy(COMPOSITE / r["file"], dest / r["file"])
    with (dest / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return dest


@pytest.fixture
def subset(tmp_path) -> Path:
    """Two subjects per dataset: six LOSO folds."""
    return make_subset(tmp_path / "subset")


@pytest.fixture
def tiny_subset(tmp_path) -> Path:
    """One subject per dataset: three LOSO folds."""
    return make_subset(tmp_path / "tiny", subjects_per_dataset=1)
