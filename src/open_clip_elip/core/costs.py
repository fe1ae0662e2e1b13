"""The cost model every family's costs are counted in: FLOPs per image of the parts of a ViT, from token
counts (``TowerCost``), and of a plain tower and of a text tower. Families add what they compute beyond the
layers (``Family.flops``); the benchmark checks the predictions against ``FlopCounterMode``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .openclip import VisionTransformer, blocks


@dataclass(frozen=True)
class TowerCost:
    """FLOPs of one image's pass through parts of a ViT, counted as ``FlopCounterMode`` counts
    them (2 per multiply-add, matrix products only). Backward costs 2x the forward, except the
    SDPA core (2.5x: the scores are recomputed) and the patch embedding (weight gradient only)."""

    width: int
    mlp_width: int
    embed_dim: int
    patch_dim: int
    num_patches: int

    @classmethod
    def of(cls, visual: VisionTransformer) -> "TowerCost":
        block = blocks(visual)[0]
        return cls(width=visual.transformer.width, mlp_width=block.mlp.c_fc.out_features,
                   embed_dim=visual.proj.shape[1], patch_dim=visual.conv1.weight[0].numel(),
                   num_patches=visual.grid_size[0] * visual.grid_size[1])

    def projections(self, n: int) -> int:
        """Attention's in and out projections on ``n`` tokens."""
        return 8 * n * self.width ** 2

    def core(self, n: int) -> int:
        """Attention's scores and weighted sum (QK^T, AV) over ``n`` tokens."""
        return 4 * n * n * self.width

    def mlp(self, n: int) -> int:
        return 4 * n * self.width * self.mlp_width

    def layer(self, n_attention: int, n_mlp: Optional[int] = None) -> int:
        """A forward pass of one layer: attention on ``n_attention`` tokens, its MLP on ``n_mlp`` (the same
        by default; fewer where a family reduces tokens between the two)."""
        n_mlp = n_attention if n_mlp is None else n_mlp
        return self.projections(n_attention) + self.core(n_attention) + self.mlp(n_mlp)

    def step(self, n_attention: int, n_mlp: Optional[int] = None, train: bool = True) -> int:
        """``layer_train`` or ``layer``."""
        return self.layer_train(n_attention, n_mlp) if train else self.layer(n_attention, n_mlp)

    def layer_train(self, n_attention: int, n_mlp: Optional[int] = None) -> int:
        n_mlp = n_attention if n_mlp is None else n_mlp
        return 3 * (self.projections(n_attention) + self.mlp(n_mlp)) + 7 * self.core(n_attention) // 2

    def cls_score(self, n: int) -> int:
        """``attention.cls_attention``: CLS query, keys of ``n`` tokens, one row of scores."""
        return 2 * self.width ** 2 + 2 * n * self.width ** 2 + 2 * n * self.width

    def mix(self, n: int) -> int:
        """A weighted sum of ``n`` tokens."""
        return 2 * n * self.width

    def embed(self) -> int:
        return 2 * self.num_patches * self.patch_dim * self.width

    def head(self) -> int:
        return 2 * self.width * self.embed_dim

    def ends(self, train: bool) -> int:
        """The patch embedding and the projection head (with their backward in training)."""
        return (2 if train else 1) * self.embed() + (3 if train else 1) * self.head()


def text_train_flops(model) -> int:
    """Training FLOPs per caption of an OpenCLIP text tower, with ``TowerCost``'s per-layer formulas."""
    transformer = model.transformer
    cost = TowerCost(width=transformer.width, mlp_width=transformer.resblocks[0].mlp.c_fc.out_features,
                     embed_dim=model.text_projection.shape[1], patch_dim=0, num_patches=0)
    return len(transformer.resblocks) * cost.layer_train(model.context_length) + 3 * cost.head()


def predict_plain(cost: TowerCost, layer_tokens: Sequence[int], train: bool) -> int:
    """FLOPs per image of an unpruned tower whose layers see ``layer_tokens`` tokens."""
    return cost.ends(train) + sum(cost.step(n, train=train) for n in layer_tokens)
