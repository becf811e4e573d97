"""Logistic regression on the raw 3x28x28 feature pixels: the floor a deep model has to clear.

The project brief measured 0.719 / 0.729 Full UF1 / UAR for it under the honest protocol (docs/results.md);
this family puts the floor through the same LOSO harness, metrics and reports as the other models, so
the comparison is like for like (profile `logreg` in train/recipes.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn


@dataclass
class LogRegConfig:
    img_size: int = 28
    in_chans: int = 3
    num_classes: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


class LogReg(nn.Module):
    def __init__(self, cfg: LogRegConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LogRegConfig()
        self.fc = nn.Linear(cfg.in_chans * cfg.img_size * cfg.img_size, cfg.num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
