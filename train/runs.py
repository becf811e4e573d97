"""run.json: the arguments a run folder was made with, so that a rerun continues only the same run.

Every run.json holds `schema`, an integer. `migrate` brings a file of any older schema to the
current one and every reader goes through `read_run`, so the rest of the code knows one layout.
Changing what a run pins (a new Recipe field, say) bumps SCHEMA and adds a step to `migrate` that
writes what the older files meant.

Schema 1: "data" (and "live", the live-encoded clips, when the recipe trains on them) an absolute
folder; "profile" the whole profile, every Recipe field included; "precision" in every run that
trains; "seed"; and what makes the run what it is: "folds" (LOSO), "fit": true (the shipped model),
"inner_groups" (a nested selection's inner models), or the candidates of a nested selection or the
inputs of a stack under "profile".

Schema 0 (no `schema` field) pinned what its run used then: no precision in the runs that trained
before bf16 existed (they ran in fp32), only the Recipe fields of its day (a field added later held
its default), and in the runs committed to benchmarks/results/ the data folder relative to the
repository.
"""
from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path

from .recipes import Recipe

SCHEMA = 1
REPO = Path(__file__).resolve().parents[1]
RUN = "run.json"


class RunMismatch(ValueError):
    """OUT holds a run made with other arguments."""


def migrate(run: dict) -> dict:
    """`run`, a run.json as read, in the current schema. ValueError for a schema this code does not know."""
    schema = run.get("schema", 0)
    if not isinstance(schema, int) or schema < 0:
        raise ValueError(f"schema {schema!r} is not a run file schema (an integer >= 0)")
    if schema > SCHEMA:
        raise ValueError(f"schema {schema} is newer than this code reads (schema {SCHEMA} and older): "
                         "read it with the version of mex-live that wrote it, or a newer one")
    if schema == 0:
        run = _from_schema_0(run)
    return run


def _from_schema_0(run: dict) -> dict:
    run = {**run, "schema": 1}
    for key in ("data", "live"):
        if key in run and not Path(run[key]).is_absolute():
            run[key] = str((REPO / run[key]).resolve())
    profile = run.get("profile", {})
    if "model" in profile:  # a run that trains
        run.setdefault("precision", "fp32")
        run["profile"] = _every_recipe_field(profile)
    elif "nested selection" in profile:
        candidates = profile["nested selection"]
        run["profile"] = {**profile, "nested selection": {n: _every_recipe_field(p) for n, p in candidates.items()}}
    elif "stacked with the floor" in profile:
        stack = profile["stacked with the floor"]
        run["profile"] = {**profile, "stacked with the floor": {**stack, "deep": _every_recipe_field(stack["deep"])}}
    return run


def _every_recipe_field(profile: dict) -> dict:
    """The profile with the Recipe fields it lacks at their defaults."""
    return {**profile, "recipe": asdict(Recipe(**profile.get("recipe", {})))}


def read_run(path: Path) -> dict:
    """A run.json in the current schema; a file that cannot be one is a ValueError naming it."""
    try:
        return migrate(json.loads(Path(path).read_text()))
    except (ValueError, TypeError, KeyError) as e:  # JSONDecodeError is a ValueError; a bad recipe a TypeError
        raise ValueError(f"{path}: not a run file this code reads: {e}") from None


def write_run(path: Path, run_args: dict) -> None:
    Path(path).write_text(json.dumps({"schema": SCHEMA, **run_args}, indent=2) + "\n")


def _as_pinned(run_args: dict) -> dict:
    return {"schema": SCHEMA, **json.loads(json.dumps(run_args))}  # as JSON reads it back: tuples are lists


def same_run(out: Path, run_args: dict) -> bool:
    """Whether OUT/run.json pins these arguments."""
    return (out / RUN).exists() and read_run(out / RUN) == _as_pinned(run_args)


def pin_run(out: Path, run_args: dict) -> None:
    """Write OUT/run.json, or check that the one there pins the same arguments (RunMismatch if not)."""
    path = out / RUN
    if not path.exists():
        write_run(path, run_args)
        return
    pinned, wanted = read_run(path), _as_pinned(run_args)
    if pinned != wanted:
        raise RunMismatch(f"{out}: holds a run with other arguments (differs in: "
                          f"{', '.join(_differences(pinned, wanted))}); "
                          "use another --out, or delete the folder to start over")


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


def code_version() -> str | None:
    """`git describe --always --dirty` of the checkout this code runs from; None outside a git checkout."""
    if not (REPO / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def versions() -> dict:
    """The library versions a run's results.json records."""
    import numpy as np
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
