"""Leave-one-subject-out on a composite-format folder: all folds (x seeds) trained at once.

Honest protocol: one fixed schedule, the last epoch's weights (or their EMA), metrics pooled over
all folds. Test subjects are evaluated along the way only to draw the epoch curve (Fig. 6); nothing
is selected from it.

A run folder: OUT/run.json pins the arguments (train/runs.py), OUT/state.pt makes the run resumable
(train/state.py); a run restarted with the same arguments continues from it, and a finished one
re-predicts without retraining.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mex.composite import FlowSet
from mex.models import build_model, num_params

from .batched import resolve_precision
from .loop import RunSetup, padded_index, predict, train_members
from .metrics import score_rows, uf1_uar
from .predictions import prediction_rows, write_csv
from .recipes import Profile, Recipe
from .runs import pin_run, versions


def loso_folds(data: FlowSet) -> tuple[list[str], np.ndarray]:
    """Subjects (fold order) and each clip's fold index."""
    subjects = data.subjects
    index = {s: i for i, s in enumerate(subjects)}
    return subjects, np.array([index[s] for s in data.subject])


def run_loso(
    data: FlowSet,
    profile: Profile,
    out: Path,
    device: torch.device,
    seed: int = 0,
    eval_every: int = 10,
    progress=None,
    save_every_s: float = 30.0,
    precision: str = "auto",
    live: FlowSet | None = None,
    predict_also: dict[str, FlowSet] | None = None,
    keep_models: bool = False,
) -> dict:
    """Train and score; writes OUT/predictions.csv, OUT/curve.csv, OUT/results.json. Returns results.

    `live`: live-encoded clips to train on when the recipe's `live_clips` is on (see `training_clips`).
    `predict_also`: name -> clips of the folds' subjects, each predicted by the fold model that held out
    its subject, written to OUT/predictions-NAME.csv (scored by whoever asked for them).
    `keep_models`: also write every fold's evaluated weights (see `save_fold_models`).
    """
    out.mkdir(parents=True, exist_ok=True)
    subjects, fold_of = loso_folds(data)
    n_folds, n_seeds, tta = len(subjects), profile.recipe.seeds, profile.recipe.tta_flip
    setup = RunSetup(out, device, seed, resolve_precision(precision, device), save_every_s, progress)
    train_set, train_fold = training_clips(data, profile.recipe, live)
    pin_run(out, loso_run_args(data, profile, seed, setup.precision, live))

    # member m = (fold m // n_seeds, seed m % n_seeds)
    member_fold = torch.arange(n_folds, device=device).repeat_interleave(n_seeds)
    train_mask = torch.from_numpy(train_fold).to(device)[None, :] != member_fold[:, None]  # (members, clips)
    test_idx = fold_test_index(fold_of, n_folds, device)  # (folds, T)
    y = torch.from_numpy(data.y).to(device)

    def evaluate(members, params, x):
        valid = test_idx >= 0
        pred = predict(members, params, x, test_idx, n_seeds, tta)[valid].argmax(-1)
        return uf1_uar(y[test_idx[valid]].cpu().numpy(), pred.cpu().numpy())

    members, params, log = train_members(train_set, train_mask, profile, setup, evaluate, eval_every)
    probs = predict(members, params, torch.from_numpy(data.x).to(device), test_idx, n_seeds, tta)
    rows = prediction_rows(data, probs, test_idx)
    write_csv(out / "predictions.csv", rows)
    for name, other in (predict_also or {}).items():
        other_idx = fold_test_index(fold_index(other, subjects, name), n_folds, device)
        other_probs = predict(members, params, torch.from_numpy(other.x).to(device), other_idx, n_seeds, tta)
        write_csv(out / f"predictions-{name}.csv", prediction_rows(other, other_probs, other_idx))
    write_csv(out / "curve.csv", log.curve, ["epoch", "loss", "uf1", "uar"])
    if keep_models:
        save_fold_models(out, members, params, subjects, profile, seed)
    results = {**score_rows(rows), **_about(profile, setup, n_folds, log)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


FOLDS = "folds"


def fold_model_paths(out: Path, subject: str, n_seeds: int) -> list[Path]:
    """The checkpoints of the fold that held out `subject`: OUT/folds/<subject>.pt, or with several seeds
    OUT/folds/<subject>-seed<k>.pt, k = 0 .. n_seeds - 1 (their probabilities averaged are the fold's)."""
    if n_seeds == 1:
        return [out / FOLDS / f"{subject}.pt"]
    return [out / FOLDS / f"{subject}-seed{k}.pt" for k in range(n_seeds)]


def save_fold_models(out: Path, members, params: dict, subjects: list[str], profile: Profile, seed: int) -> None:
    """Every fold's weights as evaluated (the EMA when the recipe keeps one) in mex.checkpoint's format, which
    mex-export and the torch runtime read; each one's meta names the subject it held out."""
    from mex.checkpoint import save_checkpoint

    def make():
        return build_model(profile.model, **profile.model_config)

    n_seeds = profile.recipe.seeds
    for f, subject in enumerate(subjects):
        for k, path in enumerate(fold_model_paths(out, subject, n_seeds)):
            meta = {"held_out": subject, "fold": f, "fold_seed": k, "seeds": n_seeds, "run": str(out.resolve()),
                    "seed": seed, "tta_flip": profile.recipe.tta_flip, "profile": profile.to_dict()}
            save_checkpoint(path, profile.model, members.member(f * n_seeds + k, params, make=make), meta)


def _about(profile: Profile, setup: RunSetup, n_folds: int, log) -> dict:
    """What results.json says about the run besides its scores."""
    recipe, device = profile.recipe, setup.device
    protocol = ("LOSO over subjects; fixed schedule; last-epoch weights"
                + (f" (EMA {recipe.ema})" if recipe.ema > 0 else "")
                + ("; probabilities averaged with the mirrored image's" if recipe.tta_flip else "")
                + f"; {recipe.seeds}-seed probability average; metrics pooled over all folds; no per-fold epoch "
                  "selection")
    return dict(
        protocol=protocol,
        folds=n_folds,
        epochs=recipe.epochs,
        seed=setup.seed,
        device=str(device) + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""),
        precision=setup.precision,
        wall_s=round(log.wall_s, 1),
        segments=log.segments,
        params_per_model=num_params(build_model(profile.model, **profile.model_config)),
        profile=profile.to_dict(),
        versions=versions(),
    )


def fold_test_index(fold_of: np.ndarray, n_folds: int, device) -> torch.Tensor:
    """(folds, T) indices of each fold's clips, -1 padding."""
    return padded_index([np.flatnonzero(fold_of == f) for f in range(n_folds)], device)


def fold_index(clips: FlowSet, subjects: list[str], what: str) -> np.ndarray:
    """Each clip's fold: the index of its subject among the LOSO `subjects`."""
    index = {s: i for i, s in enumerate(subjects)}
    unknown = sorted(set(clips.subject) - set(index))
    if unknown:
        raise ValueError(f"{clips.root}: {what} clips of subject(s) {', '.join(unknown)}, which are not in the LOSO "
                         "data")
    return np.array([index[s] for s in clips.subject])


def training_clips(data: FlowSet, recipe: Recipe, live: FlowSet | None) -> tuple[FlowSet, np.ndarray]:
    """The clips the folds train on and each one's fold: `data`, then, when the recipe's `live_clips` is
    on, the `live` clips, each counting as its subject's, so that no fold trains on the live encoding of
    its held-out subject."""
    _, fold_of = loso_folds(data)
    if not recipe.live_clips:
        return data, fold_of
    if live is None:
        raise ValueError("the recipe trains on live-encoded clips (live_clips): give their folder (--live)")
    both = FlowSet(np.concatenate([data.x, live.x]), np.concatenate([data.y, live.y]), data.dataset + live.dataset,
                   data.subject + live.subject, data.clip + live.clip, data.root)
    return both, np.concatenate([fold_of, fold_index(live, data.subjects, "live")])


def loso_run_args(data: FlowSet, profile: Profile, seed: int, precision: str, live: FlowSet | None = None) -> dict:
    """What OUT/run.json of a LOSO run pins (precision resolved): equal arguments, equal run."""
    args = {"data": str(data.root.resolve()), "profile": profile.to_dict(), "seed": seed, "folds": data.subjects,
            "precision": precision}
    if profile.recipe.live_clips:  # the live clips are an input only then
        args["live"] = str(live.root.resolve())
    return args


