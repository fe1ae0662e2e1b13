"""A token-reduction family defined outside the package, as a user would write one: at one layer it keeps the
CLS token and every other patch token. It registers through the public call only."""
from typing import Optional

import torch
from open_clip.model import CLIP

from open_clip_elip import Family, FamilyCLIP, register_family
from open_clip_elip.core.costs import TowerCost, predict_plain
from open_clip_elip.core.options import Count, Default
from open_clip_elip.core.registry import REDUCES
from open_clip_elip.core.towers import (
    FamilyVisionTransformer,
    apply_options,
    check_prunable,
    embed,
    pool_and_project,
    run_layer,
    swap_class,
)


class StrideVisionTransformer(FamilyVisionTransformer):
    family_title = "stride"

    def init_stride(self, layer: Optional[int] = None) -> None:
        check_prunable(self, "stride")
        depth = len(self.transformer.resblocks)
        layer = depth // 2 if layer is None else layer
        if not 0 <= layer < depth:
            raise ValueError(f"stride_cfg layer must lie in [0, {depth}), got {layer}")
        self.stride_layer = layer

    def tokens_per_layer(self):
        n0 = self.grid_size[0] * self.grid_size[1] + 1
        kept = 1 + (n0 - 1 + 1) // 2
        return tuple(n0 if i < self.stride_layer else kept for i in range(len(self.transformer.resblocks)))

    def forward(self, x: torch.Tensor):
        x = embed(self, x)
        for i, layer in enumerate(self.transformer.resblocks):
            if i == self.stride_layer:
                x = torch.cat([x[:, :1], x[:, 1::2]], dim=1)
            x = run_layer(self, layer, x)
        return pool_and_project(self, x)


class StrideCLIP(FamilyCLIP):
    config_block = "stride_cfg"
    option_spec = {"layer": Default(Count())}

    def __init__(self, *args, stride_cfg: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        options = self.check_options(stride_cfg)
        visual = self.visual
        swap_class(visual, StrideVisionTransformer, lambda: visual.init_stride(**options))

    def options(self) -> dict:
        return {"layer": self.visual.stride_layer}


def apply_stride(model: CLIP, stride_cfg: Optional[dict] = None, **options) -> StrideCLIP:
    options = apply_options(model, StrideCLIP, stride_cfg, options)
    visual = model.visual
    swap_class(visual, StrideVisionTransformer, lambda: visual.init_stride(**options))
    model.__class__ = StrideCLIP
    return model


def stride_flops(visual: StrideVisionTransformer, cost: TowerCost, train: bool) -> int:
    return predict_plain(cost, visual.tokens_per_layer(), train)


FAMILY = register_family(Family(
    name="stride", model_class=StrideCLIP, apply=apply_stride,
    default_options=lambda stock: {"layer": stock["vision_cfg"]["layers"] // 2},
    without_caption=REDUCES, at_inference=REDUCES, layer_tokens=lambda visual: visual.tokens_per_layer(),
    flops=stride_flops, twins=(), description="every other patch token from the middle layer on (a test family)"))
