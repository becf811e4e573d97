"""STSTNet (Liong et al., FG 2019): the shallow triple-stream baseline on the same 3x28x28 input.

Three 3x3 conv streams (3, 5, 8 filters), each ReLU -> BatchNorm -> 3x3/3 max-pool (28 -> 10),
concatenated (16 channels), 2x2 average pool (-> 5x5), flattened (400) and a linear classifier.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class STSTNetConfig:
    in_chans: int = 3
    num_classes: int = 3
    filters: tuple[int, int, int] = (3, 5, 8)
    drop: float = 0.5

    def __post_init__(self):
        self.filters = tuple(self.filters)

    def to_dict(self) -> dict:
        return asdict(self)


class STSTNet(nn.Module):
    def __init__(self, cfg: STSTNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or STSTNetConfig()
        self.streams = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cfg.in_chans, f, 3, padding=1),
                nn.ReLU(),
                nn.BatchNorm2d(f),
                nn.MaxPool2d(3, stride=3, padding=1),
                nn.Dropout(cfg.drop),
            )
            for f in cfg.filters
        )
        self.pool = nn.AvgPool2d(2, stride=2)
        self.fc = nn.Linear(sum(cfg.filters) * 5 * 5, cfg.num_classes)

    def forward(self, x):
        x = torch.cat([s(x) for s in self.streams], dim=1)
        return self.fc(self.pool(x).flatten(1))
