"""Model families by name. Each family is one file with one config dataclass."""
from __future__ import annotations

import dataclasses

from torch import nn

from .dacrossvit import DACrossViT, DACrossViTConfig
from .logreg import LogReg, LogRegConfig
from .ststnet import STSTNet, STSTNetConfig

# name -> (model class, config class, config overrides that define the name)
FAMILIES = {
    "dacrossvit": (DACrossViT, DACrossViTConfig, {"fusion": "da"}),
    "crossvit": (DACrossViT, DACrossViTConfig, {"fusion": "cross"}),
    "ststnet": (STSTNet, STSTNetConfig, {}),
    "logreg": (LogReg, LogRegConfig, {}),
}


def build_model(name: str, **overrides) -> nn.Module:
    """A fresh model; `overrides` set config fields (unknown fields are an error naming them)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(FAMILIES)}")
    cls, cfg_cls, fixed = FAMILIES[name]
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"model {name!r} has no config field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    return cls(cfg_cls(**{**overrides, **fixed}))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["DACrossViT", "DACrossViTConfig", "LogReg", "LogRegConfig", "STSTNet", "STSTNetConfig", "FAMILIES",
           "build_model", "num_params"]
