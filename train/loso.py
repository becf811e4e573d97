"""Leave-one-subject-out on a composite-format folder: all folds (x seeds) trained at once.

Honest protocol: one fixed schedule, the last epoch's weights (or their EMA), metrics pooled over
all folds. Test subjects are evaluated along the way only to draw the epoch curve (Fig. 6); nothing
is selected from it.

Resume: OUT/state.pt holds weights, optimizer, RNG and curve, written atomically every few epochs;
a run restarted with the same arguments continues from it. OUT/run.json pins the arguments. A
finished run's state keeps the weights (and EMA) without the optimizer, so that the same command
re-predicts without retraining at half the disk.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mex.composite import FlowSet
from mex.labels import CLASSES, DATASETS, NUM_CLASSES
from mex.models import build_model, num_params

from .batched import Members, augment, autocast, lr_factor, mirror, optimizer, resolve_precision
from .metrics import uf1_uar
from .recipes import Profile, Recipe, pinned_profile

STATE = "state.pt"


class RunMismatch(ValueError):
    """OUT holds a run made with other arguments."""


class StateNotSaved(OSError):
    """OUT/state.pt could not be written (a full disk, say); the previous state is kept."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


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
) -> dict:
    """Train and score; writes OUT/predictions.csv, OUT/curve.csv, OUT/results.json. Returns results.

    `live`: live-encoded clips to train on when the recipe's `live_clips` is on (see `training_clips`).
    `predict_also`: name -> clips of the folds' subjects, each predicted by the fold model that held out
    its subject, written to OUT/predictions-NAME.csv (scored by whoever asked for them).
    """
    out.mkdir(parents=True, exist_ok=True)
    subjects, fold_of = loso_folds(data)
    n_folds, n_seeds = len(subjects), profile.recipe.seeds
    precision = resolve_precision(precision, device)
    train_set, train_fold = training_clips(data, profile.recipe, live)
    pin_run(out, loso_run_args(data, profile, seed, precision, live))

    # member m = (fold m // n_seeds, seed m % n_seeds)
    member_fold = torch.arange(n_folds, device=device).repeat_interleave(n_seeds)
    train_mask = torch.from_numpy(train_fold).to(device)[None, :] != member_fold[:, None]  # (members, clips trained on)
    test_idx = padded_index([np.flatnonzero(fold_of == f) for f in range(n_folds)], device)  # (folds, T)
    y = torch.from_numpy(data.y).to(device)

    tta = profile.recipe.tta_flip

    def evaluate(members, params, x):
        return uf1_uar(*_pooled(_predict(members, params, x, test_idx, n_seeds, tta), y, test_idx))

    members, params, log = train_members(
        train_set, train_mask, profile, out, device, seed, progress, evaluate, eval_every, save_every_s, precision
    )
    probs = _predict(members, params, torch.from_numpy(data.x).to(device), test_idx, n_seeds, tta)
    rows = _prediction_rows(data, probs, test_idx)
    write_csv(out / "predictions.csv", rows)
    for name, other in (predict_also or {}).items():
        other_fold = fold_index(other, subjects, name)
        other_idx = padded_index([np.flatnonzero(other_fold == f) for f in range(n_folds)], device)
        other_probs = _predict(members, params, torch.from_numpy(other.x).to(device), other_idx, n_seeds, tta)
        write_csv(out / f"predictions-{name}.csv", _prediction_rows(other, other_probs, other_idx))
    write_csv(out / "curve.csv", log.curve, ["epoch", "loss", "uf1", "uar"])
    results = score_rows(rows)
    recipe = profile.recipe
    results.update(
        protocol="LOSO over subjects; fixed schedule; last-epoch weights"
        + (f" (EMA {recipe.ema})" if recipe.ema > 0 else "")
        + ("; probabilities averaged with the mirrored image's" if tta else "")
        + f"; {n_seeds}-seed probability average; metrics pooled over all folds; no per-fold epoch selection",
        folds=n_folds,
        epochs=recipe.epochs,
        seed=seed,
        device=str(device) + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""),
        precision=precision,
        wall_s=round(log.wall_s, 1),
        segments=log.segments,
        params_per_model=num_params(build_model(profile.model, **profile.model_config)),
        profile=profile.to_dict(),
        versions=_versions(),
    )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


@dataclasses.dataclass
class TrainLog:
    curve: list[dict]  # {"epoch", "loss", "uf1", "uar"} every eval_every epochs
    wall_s: float  # training time summed over the segments
    # one entry per process that trained: where it started, its CPU threads, the code it ran, so that two
    # runs which should match but do not can be told apart
    segments: list[dict]


def code_version() -> str | None:
    """`git describe --always --dirty` of the checkout this code runs from; None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def train_members(
    data: FlowSet,
    train_mask,
    profile: Profile,
    out: Path,
    device,
    seed: int,
    progress=None,
    evaluate=None,
    eval_every: int = 10,
    save_every_s: float = 30.0,
    precision: str = "fp32",
):
    """Train one model per row of `train_mask` (members x clips, True = train on it), all at once.

    `precision` ("fp32" | "bf16", see batched.resolve_precision) is the forward pass's; weights, AdamW
    state and the loss are fp32 either way. Resumes from OUT/state.pt. Returns (members, the weights to evaluate, TrainLog).
    `evaluate(members, params, x) -> {"uf1", "uar"}` draws the curve every `eval_every` epochs.
    """
    recipe = profile.recipe
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    members = Members(lambda: build_model(profile.model, **profile.model_config), train_mask.shape[0], seed, device)
    opt = optimizer(members.params.values(), recipe, device)
    ema = {k: v.detach().clone() for k, v in members.params.items()} if recipe.ema > 0 else None
    class_w = _class_weights(y, train_mask) if recipe.class_balanced else None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    start_epoch, curve, wall_before, segments = 0, [], 0.0, []
    state_path = out / STATE
    if state_path.exists():
        st = torch.load(state_path, map_location=device, weights_only=False)
        with torch.no_grad():
            for k, v in st["params"].items():
                members.params[k].copy_(v)
            for k, v in st["buffers"].items():
                members.buffers[k].copy_(v)
            for k, v in (st["ema"] or {}).items():
                ema[k].copy_(v)
        if "opt" in st:  # a finished run's state has none (see save_state)
            opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"].cpu())  # RNG states are CPU byte tensors, whatever map_location did
        torch.set_rng_state(st["torch_rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in st:
            torch.cuda.set_rng_state(st["cuda_rng"].cpu())
        start_epoch, curve, wall_before = st["epoch"], st["curve"], st["wall_s"]
        segments = st.get("segments", [])  # states written before segments were kept have none
    if 0 < start_epoch < recipe.epochs and progress:
        progress.console.print(f"resuming from epoch {start_epoch} of {recipe.epochs} ({state_path})")
    if start_epoch < recipe.epochs:
        segments.append({"from_epoch": start_epoch, "cpu_threads": torch.get_num_threads(), "device": str(device),
                         "code": code_version()})

    saved_epoch = start_epoch if state_path.exists() else None

    def save_state(epoch: int, wall: float) -> None:
        nonlocal saved_epoch
        st = {
            "params": {k: v.detach() for k, v in members.params.items()},
            "buffers": members.buffers,
            "ema": ema,
            "gen": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "curve": curve,
            "wall_s": wall,
            "segments": segments,
        }
        if epoch < recipe.epochs:  # the AdamW moments (half the file) only matter to a run that goes on
            st["opt"] = opt.state_dict()
        if device.type == "cuda":
            st["cuda_rng"] = torch.cuda.get_rng_state()
        tmp = state_path.with_suffix(".tmp")
        try:
            torch.save(st, tmp)
        except (OSError, RuntimeError) as e:  # a full disk surfaces from torch's zip writer as a RuntimeError
            tmp.unlink(missing_ok=True)
            kept = f"the state of epoch {saved_epoch} is kept" if saved_epoch is not None else "no earlier state exists"
            raise StateNotSaved(
                f"{state_path}: cannot write the training state at epoch {epoch} ({e}); {kept}: "
                "free disk space (each save needs room for a second copy) and rerun the same command to continue"
            ) from e
        tmp.replace(state_path)  # atomic: a kill mid-write leaves the previous state intact
        saved_epoch = epoch

    n_train_max = int(train_mask.sum(1).max())
    steps_per_epoch = -(-n_train_max // recipe.batch_size)
    task = progress.add_task(f"{members.n} models", total=recipe.epochs, completed=start_epoch, info="") if progress else None
    t0 = last_save = time.perf_counter()
    loss_value = float("nan")
    ema_pairs = (list(ema.values()), list(members.params.values())) if ema is not None else None
    stop = _EpochEndInterrupt(progress)
    try:
        for epoch in range(start_epoch, recipe.epochs):
            order, valid = _epoch_order(train_mask, n_train_max, gen)
            for step in range(steps_per_epoch):
                for g in opt.param_groups:
                    g["lr"] = recipe.lr * lr_factor(recipe, epoch + step / steps_per_epoch)
                sl = slice(step * recipe.batch_size, (step + 1) * recipe.batch_size)
                idx, ok = order[:, sl], valid[:, sl].float()
                xb = augment(x[idx], recipe, gen)
                target = F.one_hot(y[idx], NUM_CLASSES).float()
                if recipe.label_smoothing:
                    target = target * (1 - recipe.label_smoothing) + recipe.label_smoothing / NUM_CLASSES
                if recipe.mixup > 0:
                    xb, target = _mixup(xb, target, ok, recipe.mixup, gen)
                weight = ok if class_w is None else ok * (target * class_w[:, None, :]).sum(-1)
                with autocast(device, precision):
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
            loss_value = loss.item() / members.n
            done = epoch + 1
            info = f"loss {loss_value:.4f}"
            if evaluate and (done % eval_every == 0 or done == recipe.epochs):
                curve.append({"epoch": done, "loss": loss_value, **evaluate(members, ema or members.params, x)})
            if curve:
                info += f"  pooled UF1 {curve[-1]['uf1']:.3f} UAR {curve[-1]['uar']:.3f} (ep {curve[-1]['epoch']})"
            if progress:
                progress.update(task, completed=done, info=info)
                if not progress.console.is_terminal and (done % eval_every == 0 or done == recipe.epochs):
                    progress.console.print(f"epoch {done}/{recipe.epochs} {info}")  # a log file gets no live bar
            now = time.perf_counter()
            if now - last_save >= save_every_s or done == recipe.epochs or stop.requested:
                save_state(done, wall_before + now - t0)
                last_save = now
            if stop.requested and done < recipe.epochs:
                raise KeyboardInterrupt(f"stopped after epoch {done} of {recipe.epochs}; its state is saved in {state_path}")
    finally:
        stop.close()
    return members, ema or members.params, TrainLog(curve, wall_before + time.perf_counter() - t0, segments)


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


def fold_index(clips: FlowSet, subjects: list[str], what: str) -> np.ndarray:
    """Each clip's fold: the index of its subject among the LOSO `subjects`."""
    index = {s: i for i, s in enumerate(subjects)}
    unknown = sorted(set(clips.subject) - set(index))
    if unknown:
        raise ValueError(f"{clips.root}: {what} clips of subject(s) {', '.join(unknown)}, which are not in the LOSO data")
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
    if profile.recipe.live_clips:  # only runs that train on live clips pin them, so older runs stay comparable
        args["live"] = str(live.root.resolve())
    return args


def _comparable(pinned: dict, like: dict) -> dict:
    """A run.json as the current code would pin it: written before the precision was pinned (fp32 was all
    there was), before a recipe field existed (it held its default), or committed with the data path
    relative to the repository (resolved from the working folder), it pins what it did then."""
    out = dict(pinned)
    if "precision" in like:
        out.setdefault("precision", "fp32")
    for key in ("data", "live"):
        if key in out:
            out[key] = str(Path(out[key]).resolve())
    if "profile" in out:
        out["profile"] = pinned_profile(out["profile"])
    return out


def _pinned_and_wanted(out: Path, run_args: dict) -> tuple[dict, dict]:
    wanted = json.loads(json.dumps(run_args))  # as JSON, where tuples are lists
    return _comparable(json.loads((out / "run.json").read_text()), wanted), _comparable(wanted, wanted)


def same_run(out: Path, run_args: dict) -> bool:
    """Whether OUT/run.json pins these arguments (see `_comparable` for runs pinned by older code)."""
    if not (out / "run.json").exists():
        return False
    pinned, wanted = _pinned_and_wanted(out, run_args)
    return pinned == wanted


def _differences(before: dict, wanted: dict, prefix: str = "") -> list[str]:
    """'profile.recipe.epochs (200 -> 30)': the leaves that differ, so a user sees which argument changed."""
    out = []
    for k in sorted(set(before) | set(wanted)):
        a, b = before.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({a} -> {b})")
    return out


def pin_run(out: Path, run_args: dict) -> None:
    pinned = out / "run.json"
    if pinned.exists():
        if not same_run(out, run_args):
            before, wanted = _pinned_and_wanted(out, run_args)
            changed = _differences(before, wanted)
            raise RunMismatch(
                f"{out}: holds a run with other arguments (differs in: {', '.join(changed)}); "
                "use another --out, or delete the folder to start over"
            )
    else:
        pinned.write_text(json.dumps(run_args, indent=2) + "\n")


def padded_index(per_row: list[np.ndarray], device) -> torch.Tensor:
    """(rows, longest) clip indices, -1 padding: each fold's (or inner group's) test clips."""
    t = max(len(p) for p in per_row)
    idx = np.full((len(per_row), t), -1, dtype=np.int64)
    for f, p in enumerate(per_row):
        idx[f, : len(p)] = p
    return torch.from_numpy(idx).to(device)


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


@torch.no_grad()
def _predict(members: Members, params: dict, x: torch.Tensor, test_idx: torch.Tensor, n_seeds: int,
             tta_flip: bool = False) -> torch.Tensor:
    """(folds, T, classes) probabilities, averaged over each fold's seeds (and the mirrored images)."""
    xt = x[test_idx.clamp_min(0)]  # (folds, T, 3, 28, 28)
    xt = xt.repeat_interleave(n_seeds, dim=0)
    probs = members.forward(params, xt, train=False).softmax(-1)
    if tta_flip:
        probs = (probs + members.forward(params, mirror(xt), train=False).softmax(-1)) / 2
    return probs.reshape(test_idx.shape[0], n_seeds, *probs.shape[1:]).mean(1)


def _pooled(probs: torch.Tensor, y: torch.Tensor, test_idx: torch.Tensor):
    valid = test_idx >= 0
    return y[test_idx[valid]].cpu().numpy(), probs[valid].argmax(-1).cpu().numpy()


def prediction_row(data: FlowSet, i: int, probs) -> dict:
    """Clip i's row of a predictions.csv: who it is, its label, the argmax of `probs` (its class
    probabilities) and each probability (every writer of predictions uses this layout)."""
    row = {"dataset": data.dataset[i], "subject": data.subject[i], "clip": data.clip[i],
           "label": int(data.y[i]), "pred": int(np.argmax(probs))}
    row.update({f"p_{c}": round(float(probs[k]), 6) for k, c in enumerate(CLASSES)})
    return row


def _prediction_rows(data: FlowSet, probs: torch.Tensor, test_idx: torch.Tensor) -> list[dict]:
    p = probs.cpu().numpy()
    return [prediction_row(data, i, p[f, t]) for f in range(len(test_idx)) for t, i in enumerate(test_idx[f].tolist()) if i >= 0]


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """Rows of dicts as CSV; the columns are the first row's keys unless given (an empty curve has none)."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_predictions(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["label"], r["pred"] = int(r["label"]), int(r["pred"])
    return rows


def score_rows(rows: list[dict]) -> dict:
    """Pooled and per-fold-mean UF1/UAR for Full and each dataset, from prediction rows alone."""
    y = np.array([r["label"] for r in rows])
    pred = np.array([r["pred"] for r in rows])
    ds = np.array([r["dataset"] for r in rows])
    subj = np.array([r["subject"] for r in rows])
    pooled, per_fold = {}, {}
    for name in ("full", *DATASETS):
        sel = np.ones(len(rows), bool) if name == "full" else ds == name
        if not sel.any():
            continue
        pooled[name] = uf1_uar(y[sel], pred[sel])
        folds = [uf1_uar(y[sel & (subj == s)], pred[sel & (subj == s)]) for s in dict.fromkeys(subj[sel])]
        per_fold[name] = {k: float(np.mean([f[k] for f in folds])) for k in ("uf1", "uar")}
    return {"pooled": pooled, "per_fold_mean": per_fold, "clips": len(rows)}


def _versions() -> dict:
    import platform

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
