"""Train one model on every clip with a profile's recipe: the model mex-live ships."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from mex.checkpoint import save_checkpoint
from mex.composite import FlowSet
from mex.models import build_model

from .batched import resolve_precision
from .loop import RunSetup, train_members
from .loso import training_clips
from .runs import pin_run


def fit_all(data: FlowSet, profile, out: Path, device: torch.device, seed: int, progress=None,
            loso_dir: str | None = None, save_every_s: float = 30.0,
            precision: str = "auto", live: FlowSet | None = None) -> Path:
    """Same trainer as LOSO with a single fold whose test set is empty; writes OUT/model.pt. Every subject
    is a training subject, so with the recipe's `live_clips` all the `live` clips are trained on too."""
    out.mkdir(parents=True, exist_ok=True)
    profile = dataclasses.replace(profile, recipe=dataclasses.replace(profile.recipe, seeds=1))
    train_set, _ = training_clips(data, profile.recipe, live)
    train_mask = torch.ones(1, len(train_set), dtype=torch.bool, device=device)
    precision = resolve_precision(precision, device)
    run_args = {"data": str(data.root.resolve()), "profile": profile.to_dict(), "seed": seed, "fit": True,
                "precision": precision}
    if profile.recipe.live_clips:
        run_args["live"] = str(live.root.resolve())
    pin_run(out, run_args)
    members, params, log = train_members(train_set, train_mask, profile,
                                         RunSetup(out, device, seed, precision, save_every_s, progress))
    model = members.member(0, params, make=lambda: build_model(profile.model, **profile.model_config))
    loso = {}
    if loso_dir:
        res = json.loads((Path(loso_dir) / "results.json").read_text())
        loso = {"run": str(loso_dir), "pooled": res["pooled"], "protocol": res["protocol"], "profile": res["profile"]}
    meta = {
        "data": {"folder": str(data.root), "clips": len(data), "subjects": len(data.subjects),
                 "classes_count": np.bincount(data.y).tolist(),
                 **({"live": str(live.root), "live_clips": len(live)} if profile.recipe.live_clips else {})},
        "profile": profile.to_dict(),
        "seed": seed,
        "precision": precision,
        "wall_s": round(log.wall_s, 1),
        "segments": log.segments,
        "loso": loso,
    }
    path = out / "model.pt"
    save_checkpoint(path, profile.model, model, meta)
    return path
