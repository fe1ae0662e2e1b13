"""EViT (Liang et al., ICLR 2022), the paper's vision-only baseline, on OpenCLIP's ViT.

At a few layers (the 4th, 7th and 10th of 12 by default), after the layer's attention, the
CLS query's attention of that same attention (averaged over heads) keeps the top
``ceil(keep_rate x (N - 1))`` tokens; the inattentive ones are fused into one token, their
sum weighted by that attention (not renormalised, and with gradient, as in EViT's code);
then the layer's MLP runs on the reduced set. The fused token is an ordinary token later.
Like every family, ``apply_evit`` swaps the class of an existing tower: no parameter changes;
``EvitCLIP`` is the model class of the ``-evit`` configs (block ``evit_cfg``, checked against ``EVIT_OPTIONS``).
Kept tokens stay in their original order (EViT orders them by score; the outputs are the same).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from ..core.attention import attend, cls_probs, qkv
from ..core.costs import TowerCost
from ..core.openclip import CLIP, ResidualAttentionBlock, blocks
from ..core.options import Boolean, Count, Default, ListOf, Ratio
from ..core.reduce import select_tokens, take_tokens, weighted_token
from ..core.registration import register_family
from ..core.registry import REDUCES, Family
from ..core.towers import (
    FamilyCLIP,
    FamilyVisionTransformer,
    apply_options,
    check_prunable,
    check_vision_transformer,
    embed,
    pool_and_project,
    run_layer,
    swap_tower,
)

EVIT_KEEP_RATE = 0.7
EVIT_LAYERS_OF_12 = (3, 6, 9)  # 0-based: EViT's default pruning locations in a 12-layer ViT
EVIT_OPTIONS = {"keep_rate": Ratio(), "prune_layers": Default(ListOf(Count())), "fuse": Boolean()}


def evit_prune_layers(depth: int) -> Tuple[int, ...]:
    """EViT's pruning layers (0-based), the 4th/7th/10th of 12 scaled to ``depth`` layers."""
    layers = tuple(depth * layer // 12 for layer in EVIT_LAYERS_OF_12)
    if len(set(layers)) < len(layers):
        raise ValueError(f"EViT: a {depth}-layer ViT is too shallow for 3 pruning layers; give prune_layers")
    return layers


def evit_keep_count(num_tokens: int, keep_rate: float) -> int:
    """Tokens other than CLS kept out of ``num_tokens`` (CLS and an earlier fused token included)."""
    return math.ceil(keep_rate * (num_tokens - 1))


def evit_layer(block: ResidualAttentionBlock, x: torch.Tensor, keep_rate: float, fuse: bool = True) -> torch.Tensor:
    """One OpenCLIP layer with EViT's token reorganisation between its attention and its MLP. The CLS query's
    attention (averaged over heads) comes from the layer's own queries and keys, with gradient."""
    q, k, v = qkv(block, block.ln_1(x))
    x = x + block.ls_1(attend(block, q, k, v))
    cls_attn = cls_probs(q[:, :, :1], k)
    patches = x[:, 1:]
    num_keep = evit_keep_count(x.shape[1], keep_rate)
    if num_keep < patches.shape[1]:
        keep_index = select_tokens(cls_attn.detach(), num_keep)
        parts = [x[:, :1], take_tokens(patches, keep_index)]
        if fuse:
            parts.append(weighted_token(cls_attn.scatter(1, keep_index, 0.0), patches))  # inattentive tokens
        x = torch.cat(parts, dim=1)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class EvitVisionTransformer(FamilyVisionTransformer):
    """OpenCLIP ViT image tower with EViT's token pruning (always on: training and inference)."""

    family_title = "EViT"

    def init_evit(self, keep_rate: float = EVIT_KEEP_RATE, prune_layers: Optional[Sequence[int]] = None,
                  fuse: bool = True) -> None:
        """Check the options (of ``EVIT_OPTIONS``' kinds) against this tower and store them."""
        check_prunable(self, "EViT")
        depth = len(blocks(self))
        layers = evit_prune_layers(depth) if prune_layers is None else tuple(sorted(prune_layers))
        if any(not 0 <= i < depth for i in layers):
            raise ValueError(f"EViT prune_layers {list(layers)} must be 0-based layer indices below {depth}")
        self.evit_keep_rate, self.evit_prune_layers, self.evit_fuse = keep_rate, layers, fuse

    def tokens_per_layer(self, num_tokens: Optional[int] = None) -> Tuple[Tuple[int, int], ...]:
        """(tokens into the attention, tokens into the MLP) of each layer, CLS and fused token included."""
        current = num_tokens or self.grid_size[0] * self.grid_size[1] + 1
        counts = []
        for i in range(len(blocks(self))):
            entering = current
            if i in self.evit_prune_layers:
                keep = evit_keep_count(current, self.evit_keep_rate)
                if keep < current - 1:
                    current = 1 + keep + int(self.evit_fuse)
            counts.append((entering, current))
        return tuple(counts)

    def forward(self, x: torch.Tensor):
        x = embed(self, x)
        for i, layer in enumerate(blocks(self)):
            if i in self.evit_prune_layers:
                x = run_layer(self, evit_layer, layer, x, self.evit_keep_rate, self.evit_fuse)
            else:
                x = run_layer(self, layer, x)
        return pool_and_project(self, x)


def apply_evit(model: CLIP, evit_cfg: Optional[dict] = None, **options) -> "EvitCLIP":
    """Turn a stock OpenCLIP ViT ``CLIP`` into an ``EvitCLIP``, in place (state dict unchanged).

    ``evit_cfg`` and ``options`` are ``keep_rate``, ``prune_layers`` and ``fuse``, e.g.
    ``apply_evit(model, keep_rate=0.5)``. On a model that has EViT already, they change only the options they
    name. A rejected option leaves the model as it was."""
    options = apply_options(model, EvitCLIP, evit_cfg, options)  # TypeError unless a CLIP
    _convert_visual(model.visual, options)
    model.__class__ = EvitCLIP
    return model


def _convert_visual(visual, options: dict) -> None:
    """Make ``visual`` an EViT tower with ``options`` (checked against ``EVIT_OPTIONS`` already)."""
    check_vision_transformer(visual, "EViT")
    swap_tower(visual, EvitVisionTransformer, lambda: visual.init_evit(**options))


class EvitCLIP(FamilyCLIP):
    """OpenCLIP ``CLIP`` whose image tower is EViT (the ``-evit`` models, config block ``evit_cfg``:
    ``keep_rate``, ``prune_layers``, ``fuse``); parameters and state dict are the stock model's."""

    config_block = "evit_cfg"
    option_spec = EVIT_OPTIONS

    def __init__(self, *args, evit_cfg: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        _convert_visual(self.visual, self.check_options(evit_cfg))

    def options(self) -> dict:
        """Every option of the EViT tower as a JSON-ready ``evit_cfg`` block."""
        visual = self.visual
        return {"keep_rate": visual.evit_keep_rate, "prune_layers": list(visual.evit_prune_layers),
                "fuse": visual.evit_fuse}


def predict_evit(visual: EvitVisionTransformer, cost: TowerCost, train: bool = True) -> int:
    """FLOPs per image of an EViT training step (its scores and fused token carry gradient) or forward."""
    flops = cost.ends(train)
    factor = 3 if train else 1
    for i, (n_attention, n_mlp) in enumerate(visual.tokens_per_layer()):
        flops += cost.step(n_attention, n_mlp, train)
        if i in visual.evit_prune_layers:
            flops += factor * cost.mix(n_attention)  # CLS row of scores, from the layer's own q and k
            if visual.evit_fuse and n_mlp < n_attention:
                flops += factor * cost.mix(n_attention - 1)
    return flops


FAMILY = register_family(Family(
    name="evit",
    model_class=EvitCLIP,
    apply=apply_evit,
    default_options=lambda stock_config: {"keep_rate": EVIT_KEEP_RATE, "fuse": True},
    without_caption=REDUCES,
    at_inference=REDUCES,
    layer_tokens=lambda visual: tuple(n for n, _ in visual.tokens_per_layer()),
    flops=predict_evit,
    description="EViT: the CLS attention of the layer keeps the top 70% of tokens at 3 layers, fuses the rest",
))
