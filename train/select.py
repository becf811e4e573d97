"""Nested selection: each LOSO fold picks its recipe among candidates from its training subjects alone.

An ablation table shows which configuration scored best on the test subjects; taking that row is
selection on the test set. Here the choice for outer fold f (test subject f) is made by validation
on other subjects, with models that never saw f, and f's clips are then predicted by the chosen
candidate's ordinary LOSO model for f. The pooled score of those predictions is an honest estimate
of "choose the recipe by validation".

Inner validation without 68 x K extra models per candidate: each of `repeats` random deals splits
the subjects into groups of about `holdout`, and one model per group trains on every other subject.
That model never saw any subject of its group, so for each subject f of the group it is an inner
model of outer fold f, validated on f's group-mates. A candidate's inner score for f is the pooled
UF1 over those group-mates' clips, pooled over the deals. The highest inner score wins; a tie goes
to the earlier candidate (the profile as it is comes first).

The same rule with no subject held out (every inner prediction pooled) names `choice_for_fit`: the
recipe to fit the shipped model with. The nested score is the honest estimate of that procedure.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mex.composite import FlowSet
from mex.outputs import write_text

from .batched import resolve_precision
from .loop import RunSetup, padded_index, predict, train_members
from .loso import loso_folds, loso_run_args, run_loso
from .metrics import score_rows, uf1_uar
from .predictions import prediction_row, read_predictions, write_csv
from .runs import pin_run, same_run, versions
from .recipes import Profile


def deal_groups(n_subjects: int, holdout: int, repeats: int, seed: int) -> list[list[list[int]]]:
    """`repeats` random partitions of the subject indices into groups of about `holdout` subjects."""
    if holdout < 2 or holdout > n_subjects // 2:
        raise ValueError(f"--holdout {holdout}: must be between 2 and half the subjects ({n_subjects // 2})")
    if repeats < 1:
        raise ValueError(f"--repeats {repeats}: must be >= 1")
    n_groups = n_subjects // holdout  # floor: every group has at least `holdout` subjects, so f has mates
    deals = []
    for r in range(repeats):
        perm = np.random.default_rng([seed, r]).permutation(n_subjects)
        deals.append([sorted(g.tolist()) for g in np.array_split(perm, n_groups)])
    return deals


def group_clips(groups: list[list[int]], fold_of: np.ndarray) -> np.ndarray:
    """(groups, clips) bool: the clips of each group's subjects, which its inner model must not train on.
    Inner member m is (group m // seeds, seed m % seeds), as in LOSO."""
    in_group = np.zeros((len(groups), int(fold_of.max()) + 1), dtype=bool)
    for i, g in enumerate(groups):
        in_group[i, g] = True
    return in_group[:, fold_of]


def run_inner(data: FlowSet, profile: Profile, out: Path, device, seed: int, deals, progress=None,
              save_every_s: float = 30.0, precision: str = "auto") -> list[dict]:
    """Train one model per group of every deal (all at once) without that group; predict the group.

    Writes and returns OUT/predictions.csv rows: deal, group, dataset, subject, clip, label, pred, p_*."""
    out.mkdir(parents=True, exist_ok=True)
    subjects, fold_of = loso_folds(data)
    precision = resolve_precision(precision, device)
    groups = [g for deal in deals for g in deal]
    pin_run(out, {"data": str(data.root.resolve()), "profile": profile.to_dict(), "seed": seed,
                  "inner_groups": [[subjects[s] for s in g] for g in groups], "precision": precision})
    done = out / "predictions.csv"
    if done.exists():
        return _read_inner(done)
    n_seeds = profile.recipe.seeds
    held_out = group_clips(groups, fold_of)
    train_mask = ~torch.from_numpy(held_out).to(device).repeat_interleave(n_seeds, dim=0)
    members, params, _ = train_members(data, train_mask, profile,
                                       RunSetup(out, device, seed, precision, save_every_s, progress))
    per_group = [np.flatnonzero(h) for h in held_out]
    test_idx = padded_index(per_group, device)
    probs = predict(members, params, torch.from_numpy(data.x).to(device), test_idx, n_seeds,
                     profile.recipe.tta_flip).cpu().numpy()
    per_deal = len(deals[0])
    rows = []
    for i, p in enumerate(per_group):
        for t, c in enumerate(p):
            rows.append({"deal": i // per_deal, "group": i % per_deal, **prediction_row(data, c, probs[i, t])})
    write_csv(done, rows)
    return _read_inner(done)


def _read_inner(path: Path) -> list[dict]:
    rows = read_predictions(path)
    for r in rows:
        r["deal"], r["group"] = int(r["deal"]), int(r["group"])
    return rows


def inner_scores(rows: list[dict], subjects: list[str]) -> dict[str, tuple[float, int]]:
    """Per outer subject f: (pooled UF1, clips) over f's group-mates in every deal."""
    by_group: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        by_group.setdefault((r["deal"], r["group"]), []).append(r)
    scores = {}
    for f in subjects:
        mates = [r for g in by_group.values() if any(r["subject"] == f for r in g) for r in g if r["subject"] != f]
        y = np.array([r["label"] for r in mates])
        pred = np.array([r["pred"] for r in mates])
        scores[f] = (uf1_uar(y, pred)["uf1"], len(mates))
    return scores


def _outer_run(data: FlowSet, profile: Profile, out: Path, device, seed: int, reuse: list[Path], progress,
               save_every_s: float, precision: str) -> tuple[Path, list[dict]]:
    """The candidate's ordinary LOSO run: a finished one among `reuse` whose pinned arguments are the
    ones this run would pin, else trained (resumably) into OUT."""
    wanted = loso_run_args(data, profile, seed, resolve_precision(precision, device))
    for run in reuse:
        if same_run(run, wanted) and (run / "predictions.csv").exists():
            return run, read_predictions(run / "predictions.csv")
    run_loso(data, profile, out, device, seed=seed, progress=progress, save_every_s=save_every_s, precision=precision)
    return out, read_predictions(out / "predictions.csv")


def run_select(data: FlowSet, candidates: list[tuple[str, Profile]], out: Path, device, seed: int = 0,
               holdout: int = 8, repeats: int = 2, reuse: list[Path] = (), progress=None, save_every_s: float = 30.0,
               precision: str = "auto") -> dict:
    """Writes OUT/choices.csv (per subject: the chosen candidate and every candidate's inner UF1),
    OUT/predictions.csv (each subject's clips from its chosen candidate's LOSO model) and results.json."""
    out.mkdir(parents=True, exist_ok=True)
    names = [name for name, _ in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidates repeat a name: {names}")
    subjects, _ = loso_folds(data)
    deals = deal_groups(len(subjects), holdout, repeats, seed)
    pin_run(out, {"data": str(data.root.resolve()), "seed": seed, "folds": subjects,
                  "profile": {"nested selection": {n: p.to_dict() for n, p in candidates}, "holdout": holdout,
                              "repeats": repeats}})
    inner, inner_all, outer, outer_dirs = {}, {}, {}, {}
    for name, prof in candidates:
        outer_dirs[name], rows = _outer_run(data, prof, out / f"outer-{name}", device, seed, list(reuse), progress,
                                            save_every_s, precision)
        outer[name] = rows
        if progress:
            progress.console.print(f"{name}: LOSO run {outer_dirs[name]}; inner models in {out / f'inner-{name}'}")
        inner_rows = run_inner(data, prof, out / f"inner-{name}", device, seed, deals, progress, save_every_s,
                               precision)
        inner[name] = inner_scores(inner_rows, subjects)
        inner_all[name] = uf1_uar(np.array([r["label"] for r in inner_rows]), np.array([r["pred"] for r in inner_rows]))

    def best(score) -> str:  # the highest score; a tie keeps the earlier candidate
        return max(names, key=lambda n: (score(n), -names.index(n)))

    chosen, table = {}, []
    for f in subjects:
        chosen[f] = best(lambda n: inner[n][f][0])
        table.append({"subject": f, "chosen": chosen[f], "inner_clips": inner[names[0]][f][1],
                      **{f"inner_uf1[{n}]": inner[n][f][0] for n in names}})
    write_csv(out / "choices.csv", table)
    rows = [r for f in subjects for r in outer[chosen[f]] if r["subject"] == f]
    write_csv(out / "predictions.csv", rows)
    results = score_rows(rows)
    results.update(
        protocol=("nested selection: per LOSO fold, the candidate with the best pooled UF1 on held-out training "
                  f"subjects ({repeats} deal(s) into groups of about {holdout}, models that never saw the fold's "
                  "test subject); the fold's clips predicted by that candidate's LOSO model"),
        seed=seed,
        candidates={n: {"profile": p.to_dict(), "outer_run": str(outer_dirs[n]),
                        "chosen_folds": sum(c == n for c in chosen.values()),
                        "outer_pooled_full": score_rows(outer[n])["pooled"]["full"],
                        "inner_pooled_full": inner_all[n]} for n, p in candidates},
        # The same procedure with no subject held out: the recipe to fit the shipped model with.
        choice_for_fit=best(lambda n: inner_all[n]["uf1"]),
        versions=versions(),
    )
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n", flag="--out")
    plot_choices(results, out / "choices.png")
    return results


def plot_choices(results: dict, path: Path) -> None:
    """How many folds chose each candidate, beside each candidate's own LOSO Full UF1."""
    from .report import pyplot

    plt = pyplot()
    cands = results["candidates"]
    names = list(cands)
    fig, (a, b) = plt.subplots(1, 2, sharey=True, figsize=(10, 1.4 + 0.42 * len(names)))
    a.barh(names, [cands[n]["chosen_folds"] for n in names], color="C0")
    a.set_xlabel("folds that chose it (inner validation)")
    a.invert_yaxis()
    b.barh(names, [cands[n]["outer_pooled_full"]["uf1"] for n in names], color="C7")
    nested = results["pooled"]["full"]["uf1"]
    b.axvline(nested, color="C3", lw=2, label=f"nested selection {nested:.3f}")
    lo = min(nested, *(cands[n]["outer_pooled_full"]["uf1"] for n in names))
    b.set_xlim(lo - 0.03, None)
    b.set_xlabel("the candidate's own LOSO Full UF1")
    b.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"nested selection, seed {results['seed']}: pooled Full UF1 / UAR {nested:.3f} / "
                 f"{results['pooled']['full']['uar']:.3f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
