"""OUT/state.pt: what a run needs to continue exactly where it stopped, written atomically.

The members' weights and buffers, their EMA, the optimizer, every random generator, and the log so
far (epochs done, the curve, training time, the segments). A finished run's state keeps the weights
(and EMA) without the optimizer, so that the same command re-predicts without retraining at half the
disk.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mex.outputs import OutputError, new_temporary

from .batched import Members

STATE = "state.pt"


class StateNotSaved(OSError):
    """OUT/state.pt could not be written (a full disk, say); the previous state is kept."""


@dataclasses.dataclass
class TrainLog:
    epoch: int = 0  # epochs done
    curve: list[dict] = dataclasses.field(default_factory=list)  # {"epoch", "loss", "uf1", "uar"}
    wall_s: float = 0.0  # training time summed over the segments
    # one entry per process that trained: where it started, its CPU threads, the code it ran, so that two
    # runs which should match but do not can be told apart
    segments: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TrainState:
    members: Members
    opt: torch.optim.Optimizer
    ema: dict | None  # name -> stacked EMA weights; None without EMA
    gen: torch.Generator  # the batches' randomness (order, augmentation, mixup pairs)
    log: TrainLog = dataclasses.field(default_factory=TrainLog)
    saved_epoch: int | None = None  # the epoch of the state on disk

    def load(self, path: Path) -> None:
        device = self.gen.device  # the run's device
        st = torch.load(path, map_location=device, weights_only=False)
        with torch.no_grad():
            for k, v in st["params"].items():
                self.members.params[k].copy_(v)
            for k, v in st["buffers"].items():
                self.members.buffers[k].copy_(v)
            for k, v in (st["ema"] or {}).items():
                self.ema[k].copy_(v)
        if "opt" in st:  # a finished run's state has none (see save)
            self.opt.load_state_dict(st["opt"])
        self.gen.set_state(st["gen"].cpu())  # RNG states are CPU byte tensors, whatever map_location did
        torch.set_rng_state(st["torch_rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in st:
            torch.cuda.set_rng_state(st["cuda_rng"].cpu())
        self.log = TrainLog(st["epoch"], st["curve"], st["wall_s"], st.get("segments", []))
        self.saved_epoch = st["epoch"]

    def save(self, path: Path, finished: bool) -> None:
        """Write the state atomically; StateNotSaved, naming the file, if it cannot be written."""
        log = self.log
        st = {"params": {k: v.detach() for k, v in self.members.params.items()}, "buffers": self.members.buffers,
              "ema": self.ema, "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
              "epoch": log.epoch, "curve": log.curve, "wall_s": log.wall_s, "segments": log.segments}
        if not finished:  # the AdamW moments (half the file) only matter to a run that goes on
            st["opt"] = self.opt.state_dict()
        if self.gen.device.type == "cuda":
            st["cuda_rng"] = torch.cuda.get_rng_state()
        try:
            tmp = new_temporary(path, "--out")
        except OutputError as e:
            raise StateNotSaved(f"{e}; the run can go on once it can write there") from e
        try:
            torch.save(st, tmp)
        except (OSError, RuntimeError) as e:  # a full disk surfaces from torch's zip writer as a RuntimeError
            tmp.unlink(missing_ok=True)
            kept = (f"the state of epoch {self.saved_epoch} is kept" if self.saved_epoch is not None
                    else "no earlier state exists")
            raise StateNotSaved(
                f"{path}: cannot write the training state at epoch {log.epoch} ({e}); {kept}: "
                "free disk space (each save needs room for a second copy) and rerun the same command to continue"
            ) from e
        tmp.replace(path)  # atomic: a kill mid-write leaves the previous state intact
        self.saved_epoch = log.epoch
