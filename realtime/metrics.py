"""MEGC spotting score: a spotted interval is a hit when its IoU with a true one is >= 0.5.

Intervals are inclusive frame ranges (onset, offset). Each true interval is matched at most once
(greedily, best IoU first); unmatched spotted intervals are false positives, unmatched true ones
false negatives. F1 is computed from the counts, so scores of several clips are summed first
(`SpotScore.__add__`) and the ratios taken after, as MEGC does over a whole dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def span(onset: int, apex: int, offset: int | None) -> tuple[int, int]:
    """A movement's interval; one whose end was not seen (the stream ended) ends at its apex."""
    return onset, apex if offset is None else offset


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
    if inter <= 0:
        return 0.0
    return inter / ((a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter)


def match(spotted: list[tuple[int, int]], truth: list[tuple[int, int]],
          threshold: float = 0.5) -> list[tuple[int, int]]:
    """(spotted index, true index) pairs with IoU >= threshold, one-to-one, best IoU first."""
    pairs = sorted(((iou(s, t), i, j) for i, s in enumerate(spotted) for j, t in enumerate(truth)), reverse=True)
    used_s, used_t, out = set(), set(), []
    for v, i, j in pairs:
        if v < threshold:
            break
        if i not in used_s and j not in used_t:
            used_s.add(i)
            used_t.add(j)
            out.append((i, j))
    return sorted(out)


@dataclass
class SpotScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    seconds: float = 0.0  # length of video scored (for false alarms per minute)
    apex_errors: list[int] = field(default_factory=list)  # |spotted apex - true apex| per hit, frames

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    @property
    def false_alarms_per_min(self) -> float:
        return 60.0 * self.fp / self.seconds if self.seconds else 0.0

    @property
    def apex_error_mean(self) -> float | None:
        return sum(self.apex_errors) / len(self.apex_errors) if self.apex_errors else None

    @property
    def apex_error_max(self) -> int | None:
        return max(self.apex_errors) if self.apex_errors else None

    def __add__(self, other: "SpotScore") -> "SpotScore":
        return SpotScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                         self.seconds + other.seconds, self.apex_errors + other.apex_errors)

    def to_json(self) -> dict:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "f1": round(self.f1, 4), "seconds": round(self.seconds, 2),
                "false_alarms_per_min": round(self.false_alarms_per_min, 3),
                "apex_error_mean": None if self.apex_error_mean is None else round(self.apex_error_mean, 3),
                "apex_error_max": self.apex_error_max}


def score(spotted: list[dict], truth: list[dict], seconds: float, threshold: float = 0.5) -> SpotScore:
    """Score one clip. Both lists hold {"onset", "apex", "offset"} in frames (the truth JSON's events).
    A spotted interval may have no apex (None: a movement the spotter rejected as too long, scored as a
    macro-expression by its interval alone); hits without an apex add no apex error."""
    pairs = match([span(s["onset"], s["apex"], s["offset"]) for s in spotted],
                  [span(t["onset"], t["apex"], t["offset"]) for t in truth], threshold)
    errors = [abs(spotted[i]["apex"] - truth[j]["apex"]) for i, j in pairs if spotted[i]["apex"] is not None]
    return SpotScore(tp=len(pairs), fp=len(spotted) - len(pairs), fn=len(truth) - len(pairs),
                     seconds=seconds, apex_errors=errors)
