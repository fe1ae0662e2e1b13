"""EViT (Liang et al., ICLR 2022), the paper's vision-only baseline, on OpenCLIP's ViT.

At a few layers (the 4th, 7th and 10th of 12 by default), after the layer's attention, the
CLS query's attention of that same attention (averaged over heads) keeps the top
``ceil(keep_rate x (N - 1))`` tokens; the inattentive ones are fused into one token, their
sum weighted by that attention (not renormalised, and with gradient, as in EViT's code);
then the layer's MLP runs on the reduced set. The fused token is an ordinary token later.
Like ``apply_elip``, ``apply_evit`` swaps the class of an existing tower: no parameter changes;
``EvitCLIP`` is the model class of the ``-evit`` configs.
Kept tokens stay in their original order (EViT orders them by score; the outputs are the same).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from .model import FamilyCLIP, check_prunable, pool_and_project
from .tokens import select_tokens

EVIT_KEEP_RATE = 0.7
EVIT_LAYERS_OF_12 = (3, 6, 9)  # 0-based: EViT's default pruning locations in a 12-layer ViT


def evit_prune_layers(depth: int) -> Tuple[int, ...]:
    """EViT's pruning layers (0-based), the 4th/7th/10th of 12 scaled to ``depth`` layers."""
    layers = tuple(depth * layer // 12 for layer in EVIT_LAYERS_OF_12)
    if len(set(layers)) < len(layers):
        raise ValueError(f"EViT: a {depth}-layer ViT is too shallow for 3 pruning layers; give prune_layers")
    return layers


def evit_keep_count(num_tokens: int, keep_rate: float) -> int:
    """Tokens other than CLS kept out of ``num_tokens`` (CLS and an earlier fused token included)."""
    return math.ceil(keep_rate * (num_tokens - 1))


def attention_with_cls_scores(block: ResidualAttentionBlock, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``block.attn(ln_1(x))`` (nn.MultiheadAttention's maths, through SDPA) and the CLS query's
    attention probabilities over the other tokens, averaged over heads (``B x (N - 1)``), from
    the same queries and keys, with gradient."""
    attn = block.attn
    batch, num_tokens, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, num_tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    out = F.linear(out.transpose(1, 2).reshape(batch, num_tokens, width), attn.out_proj.weight, attn.out_proj.bias)
    logits = (q[:, :, :1] * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # B x H x 1 x N
    cls_attn = logits.float().softmax(dim=-1).mean(dim=1)[:, 0, 1:]
    return out, cls_attn


def evit_layer(block: ResidualAttentionBlock, x: torch.Tensor, keep_rate: float, fuse: bool = True) -> torch.Tensor:
    """One OpenCLIP layer with EViT's token reorganisation between its attention and its MLP."""
    out, cls_attn = attention_with_cls_scores(block, x)
    x = x + block.ls_1(out)
    patches = x[:, 1:]
    num_keep = evit_keep_count(x.shape[1], keep_rate)
    if num_keep < patches.shape[1]:
        keep_index = select_tokens(cls_attn.detach(), num_keep)
        kept = patches[torch.arange(x.shape[0], device=x.device).unsqueeze(1), keep_index]
        parts = [x[:, :1], kept]
        if fuse:
            inattentive = cls_attn.scatter(1, keep_index, 0.0)  # zero where kept
            parts.append(inattentive.to(x.dtype).unsqueeze(1) @ patches)
        x = torch.cat(parts, dim=1)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class EvitVisionTransformer(VisionTransformer):
    """OpenCLIP ViT image tower with EViT's token pruning (always on: training and inference)."""

    def init_evit(self, keep_rate: float = EVIT_KEEP_RATE, prune_layers: Optional[Sequence[int]] = None,
                  fuse: bool = True) -> None:
        """Check the options against this tower and store them."""
        check_prunable(self, "EViT")
        blocks = self.transformer.resblocks
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"EViT keep_rate must lie in (0, 1], got {keep_rate}")
        layers = evit_prune_layers(len(blocks)) if prune_layers is None else tuple(sorted(prune_layers))
        if any(not 0 <= i < len(blocks) for i in layers):
            raise ValueError(f"EViT prune_layers {list(layers)} must be 0-based layer indices below {len(blocks)}")
        self.evit_keep_rate, self.evit_prune_layers, self.evit_fuse = keep_rate, layers, fuse

    def tokens_per_layer(self, num_tokens: Optional[int] = None) -> Tuple[Tuple[int, int], ...]:
        """(tokens into the attention, tokens into the MLP) of each layer, CLS and fused token included."""
        current = num_tokens or self.grid_size[0] * self.grid_size[1] + 1
        counts = []
        for i in range(len(self.transformer.resblocks)):
            entering = current
            if i in self.evit_prune_layers:
                keep = evit_keep_count(current, self.evit_keep_rate)
                if keep < current - 1:
                    current = 1 + keep + int(self.evit_fuse)
            counts.append((entering, current))
        return tuple(counts)

    def forward(self, x: torch.Tensor):
        x = self._embeds(x)
        for i, layer in enumerate(self.transformer.resblocks):
            if i in self.evit_prune_layers:
                x = evit_layer(layer, x, self.evit_keep_rate, self.evit_fuse)
            else:
                x = layer(x)
        return pool_and_project(self, x)


def apply_evit(visual: VisionTransformer, keep_rate: float = EVIT_KEEP_RATE,
               prune_layers: Optional[Sequence[int]] = None, fuse: bool = True) -> EvitVisionTransformer:
    """Turn a stock OpenCLIP ``VisionTransformer`` (e.g. ``model.visual``) into EViT, in place."""
    if type(visual) is not VisionTransformer:
        raise TypeError(
            f"apply_evit takes a stock open_clip VisionTransformer (model.visual of a ViT CLIP), "
            f"got {type(visual).__name__}")
    visual.__class__ = EvitVisionTransformer
    try:
        visual.init_evit(keep_rate, prune_layers, fuse)
    except Exception:
        visual.__class__ = VisionTransformer
        raise
    return visual


class EvitCLIP(FamilyCLIP):
    """OpenCLIP ``CLIP`` whose image tower is EViT (the ``-evit`` models, config block ``evit_cfg``:
    ``keep_rate``, ``prune_layers``, ``fuse``); parameters and state dict are the stock model's."""

    config_block = "evit_cfg"

    def __init__(self, *args, evit_cfg: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        options = dict(evit_cfg or {})
        unknown = sorted(set(options) - {"keep_rate", "prune_layers", "fuse"})
        if unknown:
            raise ValueError(f"evit_cfg: unknown option(s) {unknown}; accepted options are "
                             "['keep_rate', 'prune_layers', 'fuse']")
        apply_evit(self.visual, **options)

    def options(self) -> dict:
        return evit_options(self.visual)


def evit_options(visual: EvitVisionTransformer) -> dict:
    """Every option of an EViT tower as a JSON-ready ``evit_cfg`` block."""
    return {"keep_rate": visual.evit_keep_rate, "prune_layers": list(visual.evit_prune_layers),
            "fuse": visual.evit_fuse}
