"""ToMe (Token Merging, Bolya et al., ICLR 2023) on OpenCLIP's ViT, written from the paper's description.

In every layer with ``r > 0``, between the attention and the MLP, bipartite soft matching merges ``r`` tokens:
the keys of the layer's own attention, averaged over heads, are the similarity metric; the tokens at even
positions (CLS among them, never merged) are matched to those at odd positions, and the ``r`` most similar
pairs are merged by a size-weighted average. Tokens carry their size (how many patches they stand for);
``prop_attn`` adds ``log(size)`` of each key to the attention logits. Reduction is always on (training and
inference, with or without a caption). Like every family, ``apply_tome`` swaps the class of an existing
tower: no parameter changes; ``TomeCLIP`` is the model class of the ``-tome`` configs (block ``tome_cfg``).
Tokens are batch-first, ``B x N x W``, CLS at index 0; every function is vectorised over the batch with
static shapes (``torch.compile`` sees no host sync).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..core.attention import attend, qkv
from ..core.costs import TowerCost
from ..core.openclip import CLIP, ResidualAttentionBlock, VisionTransformer, attention_heads, blocks
from ..core.options import AnyOf, Boolean, Count, Default, ListOf
from ..core.registration import register_family
from ..core.registry import REDUCES, Family
from ..core.towers import (
    FamilyCLIP,
    FamilyVisionTransformer,
    apply_options,
    check_prunable,
    embed,
    pool_and_project,
    run_layer,
    swap_tower,
)

TOME_TARGET = 0.72  # default r: the token-layer ratio closest to ELIP's budget (0.716x of stock on ViT-B/16)
TOME_OPTIONS = {"r": Default(AnyOf((Count(), ListOf(Count())))), "prop_attn": Boolean()}
Merge = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def tome_max_r(num_tokens: int) -> int:
    """Most tokens one layer can merge: every even-position token but CLS, ``(N - 1) // 2``."""
    return (num_tokens - 1) // 2


def tome_tokens_per_layer(num_tokens: int, rs: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    """(tokens into the attention, tokens into the MLP) of each layer, ``r`` capped per layer, CLS included."""
    counts, current = [], num_tokens
    for r in rs:
        merged = current - min(r, tome_max_r(current))
        counts.append((current, merged))
        current = merged
    return tuple(counts)


def tome_token_layer_ratio(num_tokens: int, rs: Sequence[int]) -> float:
    """Token-layer count relative to stock: the sum over layers of the mean of (attention tokens, MLP
    tokens), over ``num_tokens x depth`` (ELIP's 197/179/130/80 tokens in 2/2/6/2 layers give 0.716)."""
    counts = tome_tokens_per_layer(num_tokens, rs)
    return sum(a + m for a, m in counts) / (2 * num_tokens * len(counts))


def tome_default_r(num_tokens: int, depth: int, target: float = TOME_TARGET) -> int:
    """The uniform ``r`` whose ``tome_token_layer_ratio`` is closest to ``target`` (the smaller on a tie)."""
    return min(range(tome_max_r(num_tokens) + 1),
               key=lambda r: (abs(tome_token_layer_ratio(num_tokens, [r] * depth) - target), r))


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Merge:
    """ToMe's matching on ``metric`` (``B x N x D``), without gradient: ``(src, dst, unmerged)``.

    Set A is the tokens at even positions (CLS first, never merged), set B those at odd positions. Each A
    token's best match is its most cosine-similar B token (``max``: the first one on a tie); the ``r`` A
    tokens with the highest similarity (stable sort, descending: the earlier one on a tie) are merged. ``src``
    (``B x r``, into A) are those tokens, ``dst`` (``B x r``, into B) their matches, ``unmerged`` the other A
    tokens in their original order. ``r`` is capped at ``(N - 1) // 2``."""
    r = min(r, tome_max_r(metric.shape[1]))
    with torch.no_grad():
        metric = F.normalize(metric, dim=-1)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)  # B x |A| x |B|
        scores[:, 0] = -math.inf  # CLS
        node_max, node_idx = scores.max(dim=-1)
        order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices
        src = order[:, :r]
        return src, node_idx.gather(1, src), order[:, r:].sort(dim=-1).values


def merge_sum(x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, unmerged: torch.Tensor) -> torch.Tensor:
    """``[unmerged A tokens, B tokens each plus the A tokens merged into it]`` (sums; gradient through ``x``)."""
    a, b = x[:, ::2], x[:, 1::2]
    width = x.shape[-1]
    kept = a.gather(1, unmerged.unsqueeze(-1).expand(-1, -1, width))
    b = b.scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, width), a.gather(1, src.unsqueeze(-1).expand(-1, -1, width)))
    return torch.cat([kept, b], dim=1)


def merge_wavg(x: torch.Tensor, size: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
               unmerged: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: each group's ``sum(x * size) / sum(size)``, and its size ``sum(size)``."""
    total = merge_sum(torch.cat([x * size, size], dim=-1), src, dst, unmerged)
    size = total[..., -1:]
    return total[..., :-1] / size, size


def tome_attention(block: ResidualAttentionBlock, x: torch.Tensor, size: Optional[torch.Tensor] = None,
                   prop_attn: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``block.attn(ln_1(x))`` through SDPA, and ToMe's metric: the keys averaged over heads (``B x N x D``,
    unscaled, detached). ``prop_attn`` adds ``log(size)`` of each key token to the logits."""
    q, k, v = qkv(block, block.ln_1(x))
    bias = None
    if prop_attn and size is not None:
        bias = size.log().to(q.dtype).view(x.shape[0], 1, 1, x.shape[1])
    return attend(block, q, k, v, bias), k.detach().mean(dim=1)


def tome_layer(block: ResidualAttentionBlock, x: torch.Tensor, size: Optional[torch.Tensor], r: int,
               prop_attn: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """One OpenCLIP layer with ToMe between its attention and its MLP: the new ``(x, size)``.
    ``size`` (``B x N x 1``) None means ones."""
    if size is None:
        size = torch.ones_like(x[..., :1])
    out, metric = tome_attention(block, x, size, prop_attn)
    x = x + block.ls_1(out)
    if min(r, tome_max_r(x.shape[1])) > 0:
        x, size = merge_wavg(x, size, *bipartite_soft_matching(metric, r))
    return x + block.ls_2(block.mlp(block.ln_2(x))), size


def tome_layer_rs(r: Union[int, Sequence[int]], depth: int) -> Tuple[int, ...]:
    """``r`` (a count, or one count per layer) as one count per layer; ValueError naming the fix when a list does
    not have ``depth`` counts."""
    if isinstance(r, int):
        return (r,) * depth
    if len(r) != depth:
        raise ValueError(f"tome_cfg.r has {len(r)} entries for a {depth}-layer tower: give one per layer, "
                         "or a single int for every layer")
    return tuple(r)


class TomeVisionTransformer(FamilyVisionTransformer):
    """OpenCLIP ViT image tower with ToMe's token merging (always on: training and inference)."""

    family_title = "ToMe"

    def init_tome(self, r: Union[int, Sequence[int], None] = None, prop_attn: bool = False) -> None:
        """Check the options (of ``TOME_OPTIONS``' kinds) against this tower and store them (nothing is stored if
        one is refused)."""
        check_prunable(self, "ToMe")
        depth = len(blocks(self))
        if r is None:
            r = tome_default_r(self.grid_size[0] * self.grid_size[1] + 1, depth)
        rs = tome_layer_rs(r, depth)
        self.tome_r, self.tome_rs, self.tome_prop_attn = (r if isinstance(r, int) else list(r)), rs, prop_attn

    def tokens_per_layer(self, num_tokens: Optional[int] = None) -> Tuple[Tuple[int, int], ...]:
        """(tokens into the attention, tokens into the MLP) of each layer, CLS included."""
        return tome_tokens_per_layer(num_tokens or self.grid_size[0] * self.grid_size[1] + 1, self.tome_rs)

    def forward(self, x: torch.Tensor):
        x = embed(self, x)
        size = torch.ones_like(x[..., :1])
        merged = False  # sizes all ones until a layer merges: a layer with r = 0 is then the stock layer
        for layer, r in zip(blocks(self), self.tome_rs):
            r = min(r, tome_max_r(x.shape[1]))
            if r == 0 and not (self.tome_prop_attn and merged):
                x = run_layer(self, layer, x)
            else:
                x, size = run_layer(self, tome_layer, layer, x, size, r, self.tome_prop_attn)
                merged = merged or r > 0
        return pool_and_project(self, x)


def _convert_visual(visual: torch.nn.Module, options: dict) -> None:
    """Make ``visual`` a ToMe tower with ``options`` (checked against ``TOME_OPTIONS`` already)."""
    if type(visual) is TomeVisionTransformer:
        visual.init_tome(**options)
        return
    if type(visual) is not VisionTransformer:
        raise TypeError(f"ToMe merges the tokens of OpenCLIP's own VisionTransformer; this model's image tower is "
                        f"{type(visual).__name__} (timm, ResNet and other families' towers are not supported)")
    swap_tower(visual, TomeVisionTransformer, lambda: visual.init_tome(**options))


def apply_tome(model: CLIP, tome_cfg: Optional[dict] = None, **options) -> "TomeCLIP":
    """Turn a stock OpenCLIP ViT ``CLIP`` into a ``TomeCLIP``, in place (state dict unchanged).

    ``tome_cfg`` and ``options`` are ``r`` and ``prop_attn``, e.g. ``apply_tome(model, r=9)``. On a model
    that has ToMe already, they change only the options they name. A rejected option leaves the model as it was."""
    options = apply_options(model, TomeCLIP, tome_cfg, options)  # TypeError unless a CLIP
    _convert_visual(model.visual, options)
    model.__class__ = TomeCLIP
    return model


class TomeCLIP(FamilyCLIP):
    """OpenCLIP ``CLIP`` whose image tower is ToMe (config block ``tome_cfg``: ``r``, ``prop_attn``);
    parameters and state dict are the stock model's."""

    config_block = "tome_cfg"
    option_spec = TOME_OPTIONS

    def __init__(self, *args, tome_cfg: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        _convert_visual(self.visual, self.check_options(tome_cfg))

    def options(self) -> dict:
        return tome_options(self.visual)


def tome_options(visual: TomeVisionTransformer) -> dict:
    """Every option of a ToMe tower as a JSON-ready ``tome_cfg`` block (``r`` as given: an int or a list)."""
    r = visual.tome_r
    return {"r": r if isinstance(r, int) else list(r), "prop_attn": visual.tome_prop_attn}


def predict_tome(visual: TomeVisionTransformer, cost: TowerCost, train: bool = True) -> int:
    """FLOPs per image of a ToMe tower: each layer's attention on the tokens entering it, its MLP on the tokens
    left after merging, and the matching's similarity scores (``|A| x |B|`` dot products of head-width keys,
    no gradient); the averages and sums of merging are not matrix products."""
    head_width = cost.width // attention_heads(blocks(visual)[0])
    flops = cost.ends(train)
    for n_attention, n_mlp in visual.tokens_per_layer():
        flops += cost.step(n_attention, n_mlp, train)
        if n_mlp < n_attention:
            flops += 2 * ((n_attention + 1) // 2) * (n_attention // 2) * head_width
    return flops


def default_options(stock_config: dict) -> dict:
    """``r`` closest to ELIP's token-layer budget for the stock config's token count and depth; no proportional
    attention (ToMe's authors advise it off for training)."""
    vision = stock_config["vision_cfg"]
    size, patch = vision["image_size"], vision["patch_size"]
    grid = (size // patch) ** 2 if isinstance(size, int) else (size[0] // patch) * (size[1] // patch)
    return {"r": tome_default_r(grid + 1, vision["layers"]), "prop_attn": False}


FAMILY = register_family(Family(
    name="tome",
    model_class=TomeCLIP,
    apply=apply_tome,
    default_options=default_options,
    without_caption=REDUCES,
    at_inference=REDUCES,
    layer_tokens=lambda visual: tuple(n for n, _ in visual.tokens_per_layer()),
    flops=predict_tome,
    description="ToMe: bipartite soft matching merges r tokens per layer, size-weighted, between attention and MLP",
))
