"""Named training profiles: a model (family + config) and a recipe, fixed in code so that a run is one name.

`ours` was fixed before any LOSO run of it was scored (see docs/training.md, "How the recipe was
chosen"); the ablation varies one idea at a time around it and is reported, never used to pick.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field


# mex.models.FAMILIES by name, without importing torch for the command line (a test keeps them equal)
MODEL_FAMILIES = ("dacrossvit", "crossvit", "ststnet", "logreg")

# How a run executes its recipe on the device (train/batched.py resolve_precision); not part of a profile.
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class Recipe:
    epochs: int = 800
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.0  # decoupled (AdamW); 0 = the paper's Adam
    schedule: str = "constant"  # "constant" (paper) | "cosine" (with warmup_epochs of linear warm-up)
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    flip: bool = False  # horizontal flip with u mirrored (u -> 1 - u in min-max space)
    shift_px: float = 0.0  # random translation up to this many pixels (border-replicated)
    rotate_deg: float = 0.0  # random rotation up to this many degrees
    zoom: float = 0.0  # random scale of the grid by up to this fraction (0.08 = +-8 %)
    # Per image and channel, the min-max scaling redone as if the channel's true extremes spanned a
    # range `span` times its own (log-uniform in [span_min, span_max]), placed at random around it:
    # x -> clip((x - lo) / span), lo = (1 - span) t, t ~ U(0, 1). 1, 1 = off. See `augment`.
    span_min: float = 1.0
    span_max: float = 1.0
    blur: float = 0.0  # x + k (x - blur3x3(x)), k ~ U(-blur, blur): k = -1 is the 3x3 blur, k > 0 sharpens
    # train also on live-encoded clips (mex.features.encode of the same clips, e.g. data/casme2-live-encoded),
    # each only in folds that do not hold out its subject (train/loso.py training_clips)
    live_clips: bool = False
    mixup: float = 0.0  # Beta(a, a) mixing of pairs within a batch; 0 = off
    class_balanced: bool = False  # loss weights inversely proportional to class frequency
    ema: float = 0.0  # evaluate an exponential moving average of the weights with this decay; 0 = off
    tta_flip: bool = False  # evaluate the mean of the image's and its mirror's probabilities (see `flip`)
    seeds: int = 1  # models per fold, trained together; their probabilities are averaged

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.seeds < 1:
            raise ValueError("epochs, batch_size and seeds must be >= 1")
        if not 0 < self.span_min <= self.span_max:
            raise ValueError(f"need 0 < span_min <= span_max, got {self.span_min}, {self.span_max}")
        if not 0 <= self.zoom < 1 or not 0 <= self.blur <= 1:
            raise ValueError(f"zoom must be in [0, 1) and blur in [0, 1], got {self.zoom}, {self.blur}")


@dataclass
class Profile:
    model: str
    model_config: dict = field(default_factory=dict)
    recipe: Recipe = field(default_factory=Recipe)
    about: str = ""

    def to_dict(self) -> dict:
        return {"model": self.model, "model_config": self.model_config, "recipe": asdict(self.recipe),
                "about": self.about}


SMALL = dict(dims=(96, 48), depths=(1, 1), heads=(4, 2), blocks=2, mlp_ratio=2.0)
OURS_RECIPE = Recipe(
    epochs=200,
    batch_size=64,
    lr=1e-3,
    weight_decay=0.05,
    schedule="cosine",
    warmup_epochs=10,
    label_smoothing=0.1,
    flip=True,
    shift_px=1.5,
    rotate_deg=5.0,
    mixup=0.2,
    ema=0.99,
    seeds=3,
)


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        "dacrossvit",
        dict(dims=(192, 96), depths=(3, 1), heads=(6, 3), blocks=3, mlp_ratio=4.0),
        Recipe(epochs=800, batch_size=256, lr=5e-4),
        "the paper's schedule (Adam 5e-4, batch 256, 800 epochs, cross-entropy) on a 5 M-parameter DA-CrossViT",
    ),
    "small": Profile(
        "dacrossvit", SMALL, Recipe(epochs=400, batch_size=256, lr=5e-4),
        "right-sized model, the paper's optimizer, 400 epochs"
    ),
    "ours": Profile(
        "dacrossvit",
        {**SMALL, "drop": 0.1, "drop_path": 0.1},
        OURS_RECIPE,
        "right-sized model, flow-aware augmentation, mixup, label smoothing, EMA, 3-seed ensemble",
    ),
    "live": Profile(
        "dacrossvit",
        {**SMALL, "drop": 0.1, "drop_path": 0.1},
        dataclasses.replace(OURS_RECIPE, span_min=0.8, span_max=6.0, live_clips=True),
        "`ours` made robust to the live encoder: min-max scaling redone at random (span 0.8-6x), training subjects' "
        "live clips",
    ),
    "logreg": Profile(
        "logreg",
        {},
        Recipe(epochs=100, batch_size=64, lr=1e-3, weight_decay=0.05, schedule="cosine", warmup_epochs=5),
        "logistic regression on the raw feature pixels (the floor), AdamW with weight decay, no augmentation",
    ),
    "cpu-quick": Profile(
        "dacrossvit",
        {**SMALL, "drop": 0.1, "drop_path": 0.1},
        dataclasses.replace(OURS_RECIPE, epochs=30, batch_size=32, seeds=1, warmup_epochs=3),
        "`ours` shortened for a 2-core CPU: 30 epochs of batch 32, one seed (about 30 min on 2 cores)",
    ),
}


def resolve(profile: str, model: str | None = None, epochs: int | None = None, seeds: int | None = None,
            **recipe_overrides) -> Profile:
    """The named profile with command-line overrides applied (a different model family keeps the recipe)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    base = PROFILES[profile]
    changes = {k: v for k, v in dict(epochs=epochs, seeds=seeds, **recipe_overrides).items() if v is not None}
    recipe = dataclasses.replace(base.recipe, **changes)
    if model is None or model == base.model:
        return Profile(base.model, dict(base.model_config), recipe, base.about)
    if model == "crossvit" and base.model == "dacrossvit":  # the ablation: same config, plain fusion
        return Profile("crossvit", dict(base.model_config), recipe, base.about + " (plain cross-attention)")
    if model == "dacrossvit" and base.model == "crossvit":
        return Profile("dacrossvit", dict(base.model_config), recipe, base.about)
    return Profile(model, {}, recipe, f"{model} with its published config; recipe of profile {profile!r}")
