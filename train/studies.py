"""The paper's comparison tables as runs: each study is a list of LOSO configurations around a profile.

`mex-train study NAME --profile P --out DIR` runs every configuration (each its own resumable run
folder, DIR/<config>_seed<k>) and writes DIR/<NAME>.md with mean ± std over seeds. A configuration
changes one thing relative to the profile; the table reports, it does not choose.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from mex.outputs import write_text

from .recipes import Profile, resolve

# study -> [(configuration name, recipe overrides, model family or None, model-config overrides)]
STUDIES: dict[str, list[tuple[str, dict, str | None, dict]]] = {
    # Table 4: dual attention against CrossViT's cross-attention, and the AoA form of DA.
    "fusion": [
        ("da-paper", {}, "dacrossvit", {"da_form": "paper"}),
        ("da-aoa", {}, "dacrossvit", {"da_form": "aoa"}),
        ("cross-attention", {}, "crossvit", {}),
    ],
    # Table 3: patches per branch (La, Sm).
    "patches": [(f"patches-{a}-{b}", {}, None, {"patches": (a, b)})
                for a, b in ((1, 1), (1, 4), (1, 16), (4, 4), (4, 16))],
    # Each small-data idea removed (or added) one at a time, single models, so seeds show the spread.
    "ablation": [
        ("recipe", {"seeds": 1}, None, {}),
        ("no-flip", {"seeds": 1, "flip": False}, None, {}),
        ("no-shift-rotate", {"seeds": 1, "shift_px": 0.0, "rotate_deg": 0.0}, None, {}),
        ("no-mixup", {"seeds": 1, "mixup": 0.0}, None, {}),
        ("no-label-smoothing", {"seeds": 1, "label_smoothing": 0.0}, None, {}),
        ("no-ema", {"seeds": 1, "ema": 0.0}, None, {}),
        ("no-dropout-droppath", {"seeds": 1}, None, {"drop": 0.0, "drop_path": 0.0}),
        ("plus-class-balanced", {"seeds": 1, "class_balanced": True}, None, {}),
        # trains exactly as `recipe` (same seeds, same weights); only the evaluation adds the mirror
        ("plus-flip-tta", {"seeds": 1, "tta_flip": True}, None, {}),
    ],  # the seed ensemble's effect: each row's "probability average of the N seeds" line in the table
}


def configurations(study: str, profile_name: str, epochs: int | None) -> list[tuple[str, Profile]]:
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; choose one of {', '.join(STUDIES)}")
    if resolve(profile_name).recipe.live_clips:
        raise ValueError(f"mex-train study does not train on live clips (profile {profile_name!r} has live_clips on); "
                         "run its configurations with mex-train loso --set ...")
    out = []
    for name, recipe_changes, family, model_changes in STUDIES[study]:
        prof = resolve(profile_name, family, epochs, **recipe_changes)
        prof = dataclasses.replace(prof, model_config={**prof.model_config, **model_changes})
        out.append((name, prof))
    return out


def run_study(study: str, profile_name: str, data, out: Path, device, seeds: int, epochs: int | None, progress=None,
              precision: str = "auto", only: list[str] | None = None) -> Path:
    """Train the study's configurations (or just those named in `only`), then tabulate every finished one
    in OUT, so that two processes with disjoint `only` lists can share a study folder."""
    from .loso import run_loso
    from .report import ablation_table, write_reports

    configs = configurations(study, profile_name, epochs)
    unknown = sorted(set(only or ()) - {name for name, _ in configs})
    if unknown:
        raise ValueError(f"--only: {', '.join(unknown)} not in study {study!r} "
                         f"({', '.join(name for name, _ in configs)})")
    out.mkdir(parents=True, exist_ok=True)
    # seed-major: a study cut short still has every configuration at the same seeds
    runs = [(name, prof, seed, out / f"{name}_seed{seed}") for seed in range(seeds) for name, prof in configs]
    for name, prof, seed, run in runs:
        if (only and name not in only) or (run / "results.json").exists():
            continue
        run_loso(data, prof, run, device, seed=seed, progress=progress, precision=precision)
        write_reports(run)
    # Listed after training, not while passing: another process may have finished runs meanwhile.
    finished = [run for *_, run in runs if (run / "results.json").exists()]
    table = out / f"{study}.md"
    title = f"{study} study around profile {profile_name!r} ({seeds} seed(s) each)"
    write_text(table, ablation_table(finished, title, figure=table.with_suffix(".png")), flag="--out")
    return table
