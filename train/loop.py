"""The training loop: many members (folds x seeds) of one model trained at once, each on its own clips.

Every member sees the same schedule; which clips a member trains on is a row of a (members, clips)
mask. The loop resumes from OUT/state.pt (train/state.py), and Ctrl-C finishes the epoch and saves
before it stops.
"""
from __future__ import annotations

import dataclasses
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mex.composite import FlowSet
from mex.labels import NUM_CLASSES
from mex.models import build_model

from .batched import Members, augment, autocast, lr_factor, mirror, optimizer
from .recipes import Profile, Recipe
from .runs import code_version
from .state import STATE, TrainLog, TrainState


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


@dataclasses.dataclass
class RunSetup:
    """Where and how a run trains; what it trains is the clips, the members' mask and the profile."""
    out: Path  # the run folder: OUT/state.pt makes the run resumable
    device: torch.device
    seed: int = 0  # the members' initial weights and the batches' randomness
    precision: str = "fp32"  # the forward pass's, "fp32" | "bf16" (see batched.resolve_precision)
    save_every_s: float = 30.0  # seconds between writes of OUT/state.pt (also written at the end and on Ctrl-C)
    progress: object = None  # a rich Progress to show the epochs on; None: silent


@dataclasses.dataclass
class _Clips:
    """The training clips on the device, and which of them each member trains on."""
    x: torch.Tensor  # (clips, 3, 28, 28)
    y: torch.Tensor  # (clips,)
    train_mask: torch.Tensor  # (members, clips), True = train on it
    class_w: torch.Tensor | None  # (members, classes) loss weights when the recipe balances classes


def train_members(data: FlowSet, train_mask: torch.Tensor, profile: Profile, setup: RunSetup, evaluate=None,
                  eval_every: int = 10) -> tuple[Members, dict, TrainLog]:
    """Train one model per row of `train_mask` (members x clips, True = train on it), all at once.

    Weights, AdamW state and the loss are fp32 whatever the forward pass's precision. Resumes from
    OUT/state.pt. `evaluate(members, params, x) -> {"uf1", "uar"}` draws the curve every `eval_every`
    epochs. Returns (members, the weights to evaluate: their EMA when the recipe keeps one, TrainLog).
    """
    recipe, progress, path = profile.recipe, setup.progress, setup.out / STATE
    y = torch.from_numpy(data.y).to(setup.device)
    clips = _Clips(torch.from_numpy(data.x).to(setup.device), y, train_mask,
                   _class_weights(y, train_mask) if recipe.class_balanced else None)
    state = _new_state(profile, train_mask.shape[0], setup)
    if path.exists():
        state.load(path)
    log = state.log
    if 0 < log.epoch < recipe.epochs and progress:
        progress.console.print(f"resuming from epoch {log.epoch} of {recipe.epochs} ({path})")
    if log.epoch < recipe.epochs:
        log.segments.append({"from_epoch": log.epoch, "cpu_threads": torch.get_num_threads(),
                             "device": str(setup.device), "code": code_version()})
    task = progress.add_task(f"{state.members.n} models", total=recipe.epochs, completed=log.epoch, info="") \
        if progress else None
    t0 = last_save = time.perf_counter()
    wall_before = log.wall_s
    stop = _EpochEndInterrupt(progress)
    try:
        for epoch in range(log.epoch, recipe.epochs):
            loss = _train_epoch(state, clips, recipe, epoch, setup.precision)
            log.epoch = done = epoch + 1
            if evaluate and (done % eval_every == 0 or done == recipe.epochs):
                log.curve.append({"epoch": done, "loss": loss,
                                  **evaluate(state.members, state.ema or state.members.params, clips.x)})
            _show(progress, task, log, loss, recipe.epochs, eval_every)
            now = time.perf_counter()
            log.wall_s = wall_before + now - t0
            if now - last_save >= setup.save_every_s or done == recipe.epochs or stop.requested:
                state.save(path, finished=done == recipe.epochs)
                last_save = now
            if stop.requested and done < recipe.epochs:
                raise KeyboardInterrupt(f"stopped after epoch {done} of {recipe.epochs}; its state is saved in {path}")
    finally:
        stop.close()
    log.wall_s = wall_before + time.perf_counter() - t0
    return state.members, state.ema or state.members.params, log


def _new_state(profile: Profile, n_members: int, setup: RunSetup) -> TrainState:
    members = Members(lambda: build_model(profile.model, **profile.model_config), n_members, setup.seed, setup.device)
    opt = optimizer(members.params.values(), profile.recipe, setup.device)
    ema = {k: v.detach().clone() for k, v in members.params.items()} if profile.recipe.ema > 0 else None
    gen = torch.Generator(device=setup.device)
    gen.manual_seed(setup.seed)
    return TrainState(members, opt, ema, gen)


def _train_epoch(state: TrainState, clips: _Clips, recipe: Recipe, epoch: int, precision: str) -> float:
    """One epoch of every member; returns the last step's loss, averaged over the members."""
    members, opt, gen = state.members, state.opt, state.gen
    n_train_max = int(clips.train_mask.sum(1).max())
    steps = -(-n_train_max // recipe.batch_size)
    order, valid = _epoch_order(clips.train_mask, n_train_max, gen)
    ema_pairs = (list(state.ema.values()), list(members.params.values())) if state.ema is not None else None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = recipe.lr * lr_factor(recipe, epoch + step / steps)
        sl = slice(step * recipe.batch_size, (step + 1) * recipe.batch_size)
        xb, target, weight = _batch(clips, order[:, sl], valid[:, sl].float(), recipe, gen)
        with autocast(xb.device, precision):
            logits = members.forward(members.params, xb, train=True)
        ce = -(target * logits.float().log_softmax(-1)).sum(-1)  # (members, B)
        loss = ((ce * weight).sum(1) / weight.sum(1).clamp_min(1e-6)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema_pairs is not None:
            with torch.no_grad():
                torch._foreach_lerp_(*ema_pairs, 1 - recipe.ema)
    # read once per epoch: .item() waits for the device, which would stall a GPU every step
    return loss.item() / members.n


def _batch(clips: _Clips, idx: torch.Tensor, ok: torch.Tensor, recipe: Recipe, gen: torch.Generator):
    """(members, B) clip indices and their validity (0 = padding) -> augmented images, soft targets, loss weights."""
    xb = augment(clips.x[idx], recipe, gen)
    target = F.one_hot(clips.y[idx], NUM_CLASSES).float()
    if recipe.label_smoothing:
        target = target * (1 - recipe.label_smoothing) + recipe.label_smoothing / NUM_CLASSES
    if recipe.mixup > 0:
        xb, target = _mixup(xb, target, ok, recipe.mixup, gen)
    weight = ok if clips.class_w is None else ok * (target * clips.class_w[:, None, :]).sum(-1)
    return xb, target, weight


def _show(progress, task, log: TrainLog, loss: float, epochs: int, eval_every: int) -> None:
    if not progress:
        return
    info = f"loss {loss:.4f}"
    if log.curve:
        last = log.curve[-1]
        info += f"  pooled UF1 {last['uf1']:.3f} UAR {last['uar']:.3f} (ep {last['epoch']})"
    progress.update(task, completed=log.epoch, info=info)
    if not progress.console.is_terminal and (log.epoch % eval_every == 0 or log.epoch == epochs):
        progress.console.print(f"epoch {log.epoch}/{epochs} {info}")  # a log file gets no live bar


class _EpochEndInterrupt:
    """Ctrl-C during training finishes the epoch, saves the state and then stops: nothing is lost and a
    restart continues from exactly there. A second Ctrl-C stops at once (back to the last save)."""

    def __init__(self, progress=None):
        self.requested = False
        self.progress = progress
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.progress:
            self.progress.console.print("Ctrl-C: finishing this epoch and saving the state (Ctrl-C again: stop now)")

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _epoch_order(train_mask: torch.Tensor, length: int, gen: torch.Generator):
    """Per member, a random permutation of its training clips, padded to a common length."""
    keys = torch.rand(train_mask.shape, device=train_mask.device, generator=gen)
    keys = keys.masked_fill(~train_mask, 2.0)  # non-training clips sort last
    order = keys.argsort(dim=1)[:, :length]
    return order, train_mask.gather(1, order)


def _mixup(xb, target, ok, alpha: float, gen):
    m, b = ok.shape
    dev = xb.device
    lam = torch.distributions.Beta(alpha, alpha).sample((m, b)).to(dev)
    lam = torch.maximum(lam, 1 - lam)  # the first image dominates, so its validity mask still applies
    perm = torch.rand(m, b, device=dev, generator=gen).argsort(1)
    other_ok = ok.gather(1, perm)
    lam = torch.where(other_ok > 0, lam, torch.ones_like(lam))  # never mix in a padding slot
    xo = xb.gather(1, perm[..., None, None, None].expand_as(xb))
    to = target.gather(1, perm[..., None].expand_as(target))
    lx = lam[..., None, None, None]
    return lx * xb + (1 - lx) * xo, lam[..., None] * target + (1 - lam[..., None]) * to


def _class_weights(y: torch.Tensor, train_mask: torch.Tensor) -> torch.Tensor:
    """(members, classes): n / (C * n_c) over each member's own training clips."""
    onehot = F.one_hot(y, NUM_CLASSES).float()
    counts = train_mask.float() @ onehot
    return counts.sum(1, keepdim=True) / (NUM_CLASSES * counts.clamp_min(1))


def padded_index(per_row: list[np.ndarray], device) -> torch.Tensor:
    """(rows, longest) clip indices, -1 padding: each fold's (or inner group's) test clips."""
    t = max(len(p) for p in per_row)
    idx = np.full((len(per_row), t), -1, dtype=np.int64)
    for f, p in enumerate(per_row):
        idx[f, : len(p)] = p
    return torch.from_numpy(idx).to(device)


@torch.no_grad()
def predict(members: Members, params: dict, x: torch.Tensor, test_idx: torch.Tensor, n_seeds: int,
            tta_flip: bool = False) -> torch.Tensor:
    """(rows, T, classes) probabilities of the clips `test_idx` indexes, row r by members r * n_seeds ...
    (r + 1) * n_seeds - 1 and averaged over them (and over the mirrored images with `tta_flip`)."""
    xt = x[test_idx.clamp_min(0)]  # (rows, T, 3, 28, 28)
    xt = xt.repeat_interleave(n_seeds, dim=0)
    probs = members.forward(params, xt, train=False).softmax(-1)
    if tta_flip:
        probs = (probs + members.forward(params, mirror(xt), train=False).softmax(-1)) / 2
    return probs.reshape(test_idx.shape[0], n_seeds, *probs.shape[1:]).mean(1)
