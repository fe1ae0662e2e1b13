"""ELIP's entry in the family registry: its defaults, its cost model and its benchmark variants."""
from __future__ import annotations

from typing import Tuple

from ...core.costs import TowerCost, predict_plain
from ...core.openclip import blocks
from ...core.registration import register_family
from ...core.registry import INFERENCE, STOCK, Family, Variant
from .config import ElipConfig, scaled_paper_layout
from .model import ElipCLIP, ElipVisionTransformer, apply_elip
from .tokens import keep_counts


def default_options(stock_config: dict) -> dict:
    """The paper's options for a stock config: its layout scaled to the depth (none for a depth the paper's
    layout does not scale to: the model then asks for one), keep ratios, lam, merge, scoring."""
    paper = ElipConfig()
    depth = stock_config["vision_cfg"]["layers"]
    layout = {"layout": list(scaled_paper_layout(depth))} if depth % 6 == 0 else {}
    return {**layout, "keep_ratios": list(paper.keep_ratios), "lam": paper.lam, "merge": paper.merge,
            "scoring": paper.scoring}


def elip_layer_tokens(visual: ElipVisionTransformer) -> Tuple[int, ...]:
    """Tokens entering each layer of a guided ELIP tower."""
    return tuple(n for n, layers in zip(visual.tokens_per_block(), visual.elip_cfg.layout) for _ in range(layers))


def predict_elip(visual: ElipVisionTransformer, cost: TowerCost, train: bool, guided: bool = True,
                 authors_shape: bool = False) -> int:
    """FLOPs per image of an ELIP tower: pruned layers, look-ahead (forward only), scoring, merging."""
    cfg = visual.elip_cfg
    counts = visual.tokens_per_block()
    flops = cost.ends(train)
    flops += cost.head() if guided else 0  # text into vision space, no gradient
    for b, (n, layers) in enumerate(zip(counts, cfg.layout)):
        flops += layers * (cost.step(n, train=train))
        if b == 0:
            continue
        previous = counts[b - 1]
        if cfg.scoring == "first_layer":
            flops += cost.cls_score(previous)
        elif authors_shape:  # full attention of the block's last layer, need_weights=True
            flops += (layers - 1) * cost.layer(previous) + cost.projections(previous) + cost.core(previous)
        else:
            flops += (layers - 1) * cost.layer(previous) + cost.cls_score(previous)
        if n > 1 + min(keep_counts(counts[0], cfg.keep_ratios)[b - 1], previous - 1):  # a merged token
            mixed = previous - n + 1 if authors_shape else previous - 1
            flops += (2 if train else 1) * cost.mix(mixed)
    return flops


def _flops(visual: ElipVisionTransformer, cost: TowerCost, train: bool) -> int:
    """A guided training step; at inference, vision-only pruning if ``prune_without_text`` is on, else the stock
    forward."""
    if train:
        return predict_elip(visual, cost, True)
    if visual.elip_cfg.prune_without_text:
        return predict_elip(visual, cost, False, guided=False)
    return predict_plain(cost, (cost.num_patches + 1,) * len(blocks(visual)), False)


FAMILY = register_family(Family(
    name="elip",
    model_class=ElipCLIP,
    apply=apply_elip,
    default_options=default_options,
    without_caption=STOCK,
    at_inference=STOCK,
    takes_caption=True,
    layer_tokens=elip_layer_tokens,
    flops=_flops,
    variants=(
        Variant("elip first_layer", {"scoring": "first_layer"}),
        Variant("elip vision-only", {"prune_without_text": True}, INFERENCE),
        Variant("elip vision-only first_layer", {"prune_without_text": True, "scoring": "first_layer"}, INFERENCE),
    ),
    pruned_at_inference={"prune_without_text": True},
    description="ELIP (the paper's): text-guided pruning and merging entering blocks II-IV, look-ahead scoring",
))
