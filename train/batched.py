"""Many copies of one model trained at once: one stacked set of weights, one vmap'd forward.

LOSO trains 68 folds (times seeds) of the same small model on the same 442 images. Run one after
another, each step is a few tiny kernels; stacked, the "member" axis (fold x seed) is a batch
dimension and the device does all of them in one pass. Adam/AdamW are element-wise, so one
optimizer over the stacked tensors is exactly one optimizer per member, as long as the loss is
the sum of the members' own losses (no global-norm clipping, which would couple them).
"""
from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .recipes import PRECISIONS, Recipe


def resolve_precision(name: str, device: torch.device) -> str:
    """"auto" is bf16 on a CUDA GPU that supports it (tensor cores; the weights, AdamW and the loss
    stay fp32) and fp32 elsewhere (a CPU runs bf16 matmuls slower than fp32)."""
    if name not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def autocast(device: torch.device, precision: str):
    """The context the forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def optimizer(params, recipe: Recipe, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the stacked tensors; on CUDA the fused kernel (a few launches per step, not one per tensor)."""
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=device.type == "cuda")


class Members:
    """`n` independently initialised copies of `make()` as stacked tensors on `device`."""

    def __init__(self, make, n: int, seed: int, device: torch.device):
        models = []
        for i in range(n):
            torch.manual_seed(seed * 100_003 + i)
            models.append(make())
        self.base = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(models)
        self.params = {k: v.to(device).detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        self.n = n

    def forward(self, params: dict, x: torch.Tensor, train: bool) -> torch.Tensor:
        """x (n, B, ...) -> logits (n, B, classes); each member sees its own slice."""
        self.base.train(train)

        def one(p, b, xi):
            return functional_call(self.base, (p, b), (xi,))

        return vmap(one, randomness="different")(params, self.buffers, x)

    def member(self, i: int, params: dict | None = None, make=None) -> nn.Module:
        """Member i as an ordinary module (for export / checkpoints)."""
        model = make()
        state = {k: v[i].detach().cpu() for k, v in (params or self.params).items()}
        state.update({k: v[i].detach().cpu() for k, v in self.buffers.items()})
        model.load_state_dict(state)
        return model.eval()


def mirror(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) flow images of the mirrored face: flipped left-right, and u (the horizontal
    motion, min-max scaled to [0, 1] per image) changes sign, which in that scaling is u -> 1 - u."""
    flipped = x.flip(-1)
    return torch.cat([1.0 - flipped[..., :1, :, :], flipped[..., 1:, :, :]], dim=-3)


def augment(x: torch.Tensor, recipe: Recipe, gen: torch.Generator) -> torch.Tensor:
    """Flow-aware augmentation of (..., 3, 28, 28) images in [0, 1], channels (u, v, strain).

    A horizontal flip mirrors the motion (`mirror`). Shifts, small rotations and zooms move the
    pattern; a rotation by a few degrees changes the flow vectors' direction by the same few degrees,
    which the min-max encoding cannot follow exactly and which we accept as noise at <= 5 degrees.
    The blur/sharpen and the redone min-max scaling (`rescale`) span what another encoder of the
    same motion changes. Each step draws random numbers only when it is on, so a step turned off
    leaves the other steps' draws, and so the batches, unchanged.
    """
    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    n, dev = x.shape[0], x.device
    if recipe.flip:
        flip = torch.rand(n, device=dev, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], mirror(x), x)
    if recipe.shift_px > 0 or recipe.rotate_deg > 0 or recipe.zoom > 0:
        angle = (torch.rand(n, device=dev, generator=gen) * 2 - 1) * math.radians(recipe.rotate_deg)
        shift = (torch.rand(n, 2, device=dev, generator=gen) * 2 - 1) * (2 * recipe.shift_px / shape[-1])
        cos, sin = torch.cos(angle), torch.sin(angle)
        if recipe.zoom > 0:  # the grid samples 1/scale of the image: scale > 1 zooms in
            scale = 1 + (torch.rand(n, device=dev, generator=gen) * 2 - 1) * recipe.zoom
            cos, sin = cos / scale, sin / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if recipe.blur > 0:
        k = (torch.rand(n, 1, 1, 1, device=dev, generator=gen) * 2 - 1) * recipe.blur
        x = (x + k * (x - box3(x))).clamp(0, 1)
    if recipe.span_min != 1 or recipe.span_max != 1:
        x = rescale(x, recipe.span_min, recipe.span_max, gen)
    return x.reshape(shape)


def box3(x: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) images smoothed by a 3x3 box per channel, the border replicated."""
    return nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def rescale(x: torch.Tensor, span_min: float, span_max: float, gen: torch.Generator) -> torch.Tensor:
    """(n, 3, H, W) images with each channel's min-max scaling redone at random.

    An encoder scales each channel by its extreme pixels, which are a few pixels wherever the flow
    is noisiest and differ between encoders of the same motion. Had the extremes spanned `span`
    times the image's range (span > 1: a spike elsewhere, the rest compressed) or only part of it
    (span < 1: those pixels clipped), the channel would read clip((x - lo) / span) with lo somewhere
    in [min(0, 1 - span), max(0, 1 - span)]: span is drawn log-uniform in [span_min, span_max] and
    where the extra range lies (below, above, split) uniformly.
    """
    n, c = x.shape[:2]
    u = torch.rand(n, c, 2, 1, 1, device=x.device, generator=gen)
    span = span_min * (span_max / span_min) ** u[:, :, 0]
    lo = (1 - span) * u[:, :, 1]
    return ((x - lo) / span).clamp(0, 1)


def lr_factor(recipe: Recipe, epoch_progress: float) -> float:
    """Multiplier of the base lr at a fractional epoch."""
    if recipe.schedule == "constant":
        return 1.0
    if epoch_progress < recipe.warmup_epochs:
        return (epoch_progress + 1e-3) / recipe.warmup_epochs
    t = (epoch_progress - recipe.warmup_epochs) / max(recipe.epochs - recipe.warmup_epochs, 1)
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
