"""DA-CrossViT and CrossViT for 3x28x28 optical-flow images, as the DA-CrossViT paper describes them
(Ran et al., "Micro-expression recognition based on dual-attention CrossViT", §2-§3; docs/training.md).

Two branches see the same image: La (coarse, primary, wider, M encoders per block) and Sm (fine,
complementary, narrower, N encoders). In each of K multi-scale blocks both branches run their
encoders, then the CLS tokens are fused across branches; patch tokens never cross.

Fusion is CrossViT's projected-CLS attention (Chen et al., ICCV 2021). `fusion="da"` replaces its
cross-attention by the paper's dual attention (attention on attention): a gate from the query and
an information vector from the attended value, multiplied. `da_form="paper"` gates from q alone
(paper eq. 4-5); `da_form="aoa"` is Huang et al.'s original, both halves from [q ; v_hat] via GLU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class DACrossViTConfig:
    img_size: int = 28
    in_chans: int = 3
    num_classes: int = 3
    patches: tuple[int, int] = (1, 4)  # (La, Sm) patches per image; each a square number
    dims: tuple[int, int] = (96, 48)  # token widths (La, Sm)
    depths: tuple[int, int] = (1, 1)  # encoders per multi-scale block (M for La, N for Sm)
    heads: tuple[int, int] = (4, 2)
    blocks: int = 2  # K multi-scale blocks
    mlp_ratio: float = 2.0
    fusion: str = "da"  # "da" (the paper) | "cross" (plain CrossViT, the ablation)
    da_form: str = "paper"  # "paper" (gate from q) | "aoa" (gate and info from [q ; v_hat])
    drop: float = 0.0  # dropout on embeddings, MLPs and the head input
    drop_path: float = 0.0  # stochastic depth, max rate (linearly increasing over blocks)
    # a linear classifier on the input pixels added to the logits (the logistic-regression floor inside
    # the model); zero-initialised, so training starts from the attention model alone
    pixel_head: bool = False

    def __post_init__(self):
        self.patches, self.dims = tuple(self.patches), tuple(self.dims)
        self.depths, self.heads = tuple(self.depths), tuple(self.heads)
        if self.fusion not in ("da", "cross"):
            raise ValueError(f"fusion must be 'da' or 'cross', got {self.fusion!r}")
        if self.da_form not in ("paper", "aoa"):
            raise ValueError(f"da_form must be 'paper' or 'aoa', got {self.da_form!r}")
        if self.blocks < 1:
            raise ValueError(f"blocks must be >= 1 (the last one hands the heads its CLS tokens), got {self.blocks}")
        for n in self.patches:
            side = round(n**0.5)
            if side * side != n or self.img_size % side:
                raise ValueError(f"patches {n}: must be a square number whose side divides {self.img_size}")
        for d, h in zip(self.dims, self.heads):
            if d % h:
                raise ValueError(f"width {d} is not divisible by {h} heads")

    def to_dict(self) -> dict:
        return asdict(self)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


def attend(q, k, v):
    """softmax(q kᵀ / √d) v, written out: with 2-5 tokens the fused kernels gain nothing, and the
    explicit form vmaps (training stacks folds with torch.func.vmap) and exports to plain ONNX ops."""
    return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1) @ v


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, drop: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        # (b, n, 3d) -> (b, 3h, n, d/h) -> three (b, h, n, d/h): one Reshape, Transpose and Split in
        # ONNX (a permute to (3, b, h, n, d/h) and unbind adds a Squeeze per tensor)
        q, k, v = self.qkv(x).reshape(b, n, 3 * h, d // h).transpose(1, 2).split(h, dim=1)
        y = attend(q, k, v)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float, drop: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim), nn.Dropout(drop))


class Encoder(nn.Module):
    """Pre-norm transformer encoder layer."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, drop)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, mlp_ratio, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ClsAttention(nn.Module):
    """Attention whose query is the CLS position only (x[:, 0]); keys and values are all of x.
    (b, n, d) -> (b, d): the CLS path stays 2-D, where a Linear exports as one Gemm (MatMul + Add on 3-D).

    `fusion="cross"`: CrossViT's cross-attention, out = W_o (A v).
    `fusion="da"`: dual attention, out = gate ⊙ info with v_hat = A v and
      paper: gate = σ(W'_q q), info = W_A v_hat;   aoa: [info ; gate] = GLU-split of W [q ; v_hat].
    """

    def __init__(self, dim: int, heads: int, fusion: str, da_form: str, drop: float):
        super().__init__()
        self.heads, self.fusion, self.da_form = heads, fusion, da_form
        self.wq, self.wk, self.wv = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        if fusion == "cross":
            self.proj = nn.Linear(dim, dim)
        elif da_form == "paper":
            self.gate = nn.Linear(dim, dim)  # W'_q
            self.info = nn.Linear(dim, dim)  # W_A
        else:
            self.aoa = nn.Linear(2 * dim, 2 * dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q = self.wq(x[:, 0])  # (b, d)
        # k and v from one matmul with the two weights stacked (one node instead of two in ONNX,
        # where the concatenation of constant weights folds away), split after the head transpose
        kv = F.linear(x, torch.cat([self.wk.weight, self.wv.weight]), torch.cat([self.wk.bias, self.wv.bias]))
        k, v = kv.reshape(b, n, 2 * h, d // h).transpose(1, 2).split(h, dim=1)
        # one query token: (b, d) <-> (b, h, 1, d/h) is a pure reshape, no transpose needed
        v_hat = attend(q.reshape(b, h, 1, d // h), k, v).reshape(b, d)
        if self.fusion == "cross":
            out = self.proj(v_hat)
        elif self.da_form == "paper":
            out = torch.sigmoid(self.gate(q)) * self.info(v_hat)
        else:
            out = F.glu(self.aoa(torch.cat([q, v_hat], dim=-1)), dim=-1)
        return self.drop(out)


def _projector(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.GELU(), nn.Linear(d_in, d_out))


class CrossFusion(nn.Module):
    """Fuse branch i's CLS into branch j's tokens and back: new cls_i = g_i(f_i(cls_i) + Attn(LN(x'))).

    The CLS path is (b, d), not (b, 1, d): five Linears each export as one Gemm instead of MatMul + Add.
    """

    def __init__(self, d_i: int, d_j: int, heads_j: int, cfg: DACrossViTConfig, drop_path: float):
        super().__init__()
        self.f = _projector(d_i, d_j)
        self.g = _projector(d_j, d_i)
        self.norm = nn.LayerNorm(d_j)
        self.attn = ClsAttention(d_j, heads_j, cfg.fusion, cfg.da_form, cfg.drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x_i, x_j, cls_only: bool = False):
        """New x_i (b, n_i, d_i); with cls_only its CLS token alone, (b, d_i) (the last block: the heads read
        nothing else)."""
        cls = self.f(x_i[:, 0])
        xp = torch.cat([cls.unsqueeze(1), x_j[:, 1:]], dim=1)
        y = self.g(cls + self.drop_path(self.attn(self.norm(xp))))
        return y if cls_only else torch.cat([y.unsqueeze(1), x_i[:, 1:]], dim=1)


class MultiScaleBlock(nn.Module):
    def __init__(self, cfg: DACrossViTConfig, drop_path: float):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[Encoder(d, h, cfg.mlp_ratio, cfg.drop, drop_path) for _ in range(depth)])
            for d, h, depth in zip(cfg.dims, cfg.heads, cfg.depths)
        )
        (d0, d1), (h0, h1) = cfg.dims, cfg.heads
        self.fuse = nn.ModuleList([CrossFusion(d0, d1, h1, cfg, drop_path), CrossFusion(d1, d0, h0, cfg, drop_path)])

    def forward(self, xs: list[torch.Tensor], cls_only: bool = False) -> list[torch.Tensor]:
        a, b = (branch(x) for branch, x in zip(self.branches, xs))
        return [self.fuse[0](a, b, cls_only), self.fuse[1](b, a, cls_only)]


class PatchEmbed(nn.Module):
    """Cut the image into a g x g grid of square patches and project each flattened patch.

    The same map as a stride-s convolution, written as reshape + Linear because the training
    stacks models with vmap, where a Linear becomes one batched matmul and a convolution does not.
    """

    def __init__(self, img_size: int, patches: int, in_chans: int, dim: int):
        super().__init__()
        self.grid = round(patches**0.5)
        self.side = img_size // self.grid
        self.proj = nn.Linear(in_chans * self.side * self.side, dim)

    def forward(self, x):
        b, c = x.shape[:2]
        g, s = self.grid, self.side
        if g == 1:  # one patch: the permute moves size-1 axes only, a plain reshape gives the same tensor
            return self.proj(x.reshape(b, 1, c * s * s))
        x = x.reshape(b, c, g, s, g, s).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * s * s)
        return self.proj(x)


class DACrossViT(nn.Module):
    """Input (B, 3, 28, 28) in [0, 1]; output logits (B, num_classes), the mean of both branches' heads."""

    def __init__(self, cfg: DACrossViTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DACrossViTConfig()
        self.embeds = nn.ModuleList(PatchEmbed(cfg.img_size, p, cfg.in_chans, d) for p, d in zip(cfg.patches, cfg.dims))
        self.cls = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, d)) for d in cfg.dims)
        self.pos = nn.ParameterList(nn.Parameter(torch.zeros(1, 1 + p, d)) for p, d in zip(cfg.patches, cfg.dims))
        self.drop = nn.Dropout(cfg.drop)
        rates = torch.linspace(0, cfg.drop_path, cfg.blocks).tolist()
        self.blocks = nn.ModuleList(MultiScaleBlock(cfg, r) for r in rates)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in cfg.dims)
        self.heads = nn.ModuleList(nn.Linear(d, cfg.num_classes) for d in cfg.dims)
        self.pixel_head = nn.Linear(cfg.in_chans * cfg.img_size**2, cfg.num_classes) if cfg.pixel_head else None
        for p in [*self.cls, *self.pos]:
            nn.init.trunc_normal_(p, std=0.02)
        self.apply(_init_weights)
        if self.pixel_head is not None:
            nn.init.zeros_(self.pixel_head.weight)

    def forward(self, x):
        xs = []
        for embed, cls, pos in zip(self.embeds, self.cls, self.pos):
            t = embed(x)
            xs.append(self.drop(torch.cat([cls.expand(t.shape[0], -1, -1), t], dim=1) + pos))
        for i, block in enumerate(self.blocks):
            xs = block(xs, cls_only=i == len(self.blocks) - 1)  # the last block: CLS tokens (b, d) only
        la, sm = (head(self.drop(norm(cls))) for cls, norm, head in zip(xs, self.norms, self.heads))
        logits = (la + sm) / 2  # the mean of the two; two ONNX nodes where stack + mean takes four
        return logits if self.pixel_head is None else logits + self.pixel_head(x.flatten(1))


def _init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
