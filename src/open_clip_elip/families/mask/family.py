"""The ``-mask`` family's entry in the family registry: its defaults, its cost model and its benchmark variants
(one per strategy)."""
from __future__ import annotations

from ...core.costs import TowerCost, predict_plain
from ...core.openclip import blocks
from ...core.registration import register_family
from ...core.registry import REDUCES, STOCK, Family, Variant
from . import select
from .model import WITH_EMA, MaskCLIP, MaskConfig, MaskVisionTransformer, apply_mask, kept_tokens


def default_options(stock_config: dict) -> dict:
    """FLIP's random mask at the papers' 50%, every other option at its default."""
    return MaskConfig().options()


def ema_flops(visual: MaskVisionTransformer, cost: TowerCost) -> int:
    """The EMA tower's no-gradient pass on the full image and its scores: the patch embedding, every layer, the
    CLS row of attention scores in each layer (``attentive_text`` ``fused``: from the fused query, plus the
    caption into the tower's width); ``similarity`` adds each patch through the projection head."""
    cfg = visual.mask_cfg
    n = cost.num_patches + 1
    layers = len(blocks(visual))
    flops = cost.embed() + layers * (cost.layer(n) + cost.mix(n))
    if cfg.strategy != "attentive_text":
        return flops
    if cfg.text_scoring == "fused":
        return flops + cost.head() + layers * 2 * cost.width ** 2  # caption into the width; the fused query
    return flops + cost.num_patches * cost.head() + 2 * cost.num_patches * cost.embed_dim  # projection, cosines


def predict_mask(visual: MaskVisionTransformer, cost: TowerCost, train: bool = True) -> int:
    """FLOPs per image: a training step of the masked tower (the patch embedding of every patch, the layers on the
    kept tokens) plus its choice of patches (``cluster``: the pixel cosines to the anchors; ``attentive*``: the
    EMA pass); at inference, or when nothing is masked, the stock forward."""
    layers = len(blocks(visual))
    if not (train and visual.masks):
        return predict_plain(cost, (cost.num_patches + 1,) * layers, train)
    cfg = visual.mask_cfg
    flops = predict_plain(cost, kept_tokens(visual), True)
    if cfg.strategy == "cluster":
        anchors = select.anchor_count(cost.num_patches, cfg.anchor_ratio)
        flops += 2 * cost.num_patches * anchors * cost.patch_dim
    elif cfg.strategy in WITH_EMA:
        flops += ema_flops(visual, cost)
    return flops


FAMILY = register_family(Family(
    name="mask",
    model_class=MaskCLIP,
    apply=apply_mask,
    default_options=default_options,
    without_caption=REDUCES,
    at_inference=STOCK,
    takes_caption=True,
    layer_tokens=kept_tokens,
    flops=predict_mask,
    variants=tuple(Variant(f"mask {strategy}", {"strategy": strategy})
                   for strategy in ("center", "cluster", "attentive", "attentive_text"))
    + (Variant("mask attentive_text similarity", {"strategy": "attentive_text", "text_scoring": "similarity"}),),
    description="input masking: the CLS and half the patches kept before the first layer, in training only "
                "(random by default; center, cluster, attentive, attentive_text)",
))
