"""ELIP models: OpenCLIP's ``VisionTransformer`` and ``CLIP`` with text-guided token pruning.

Like every family, ELIP swaps the classes of existing modules (``apply_elip``, ``core.towers.swap_tower``): no
parameter is added, copied or renamed, so state dicts stay those of the stock model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ...core.attention import cls_attention
from ...core.openclip import CLIP, PatchDropout, blocks
from ...core.towers import (
    FamilyVisionTransformer,
    GuidedCLIP,
    apply_options,
    call_block,
    check_prunable,
    check_vision_transformer,
    embed,
    pool_and_project,
    run_layer,
    swap_tower,
)
from .config import ELIP_OPTIONS, ElipConfig
from .tokens import fuse_cls, keep_counts, other_row, prune_and_merge


@dataclass
class BlockTrace:
    """What one pruned block kept, for callers who ask (``ElipVisionTransformer.trace``).

    keep_index: ``B x k`` indices of the kept tokens among the patch tokens entering the block.
    provenance: ``B x T x P``: for each patch token after pruning (kept ones, then the merged
        one), its weights over the ``P`` original patches (one-hot for never-merged tokens).
    """

    block: int
    keep_index: torch.Tensor
    provenance: torch.Tensor


class ElipVisionTransformer(FamilyVisionTransformer):
    """OpenCLIP ViT image tower with ELIP: ``forward(x, text_features=None)``.

    ``text_features`` are the paired captions' L2-normalised embeddings (``B x embed_dim``).
    Without them (and without ``prune_without_text``) the forward is the stock one.
    """

    family_title = "ELIP"

    def __init__(self, *args, elip_cfg: "ElipConfig | dict | None" = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_elip(elip_cfg)

    def init_elip(self, elip_cfg: "ElipConfig | dict | None" = None, **overrides) -> None:
        """Validate the options against this tower and store them as ``self.elip_cfg``."""
        check_prunable(self, "ELIP")
        num_tokens = [self.grid_size[0] * self.grid_size[1] + 1]
        if isinstance(self.patch_dropout, PatchDropout):
            patches = max(1, int((num_tokens[0] - 1) * (1 - self.patch_dropout.prob)))
            num_tokens.append(patches + 1)
        self.elip_cfg = ElipConfig.from_options(elip_cfg, **overrides).resolved(len(blocks(self)), num_tokens)
        starts = [sum(self.elip_cfg.layout[:b]) for b in range(len(self.elip_cfg.layout))]
        self._elip_blocks = tuple(zip(starts, self.elip_cfg.layout))

    def tokens_per_block(self, num_tokens: Optional[int] = None) -> Tuple[int, ...]:
        """Tokens entering each block when guided (CLS and the merged token included)."""
        n0 = num_tokens or self.grid_size[0] * self.grid_size[1] + 1
        counts, current = [n0], n0
        for keep in keep_counts(n0, self.elip_cfg.keep_ratios):
            keep = min(keep, current - 1)
            merged = int(self.elip_cfg.merge and keep < current - 1)
            current = 1 + keep + merged
            counts.append(current)
        return tuple(counts)

    def reduces(self, text_features: Optional[torch.Tensor] = None) -> bool:
        """Guided by captions, or ``prune_without_text``: otherwise the forward is the stock one."""
        return text_features is not None or self.elip_cfg.prune_without_text

    def forward(self, x: torch.Tensor, text_features: Optional[torch.Tensor] = None):
        self._check_inputs(x, text_features)
        if not self.reduces(text_features):
            return super().forward(x)
        return self._forward_pruned(x, text_features, trace=None)

    def trace(self, x: torch.Tensor, text_features: Optional[torch.Tensor] = None):
        """Forward that also returns a ``BlockTrace`` per pruned block (for visualisation)."""
        self._check_inputs(x, text_features)
        trace: List[BlockTrace] = []
        return self._forward_pruned(x, text_features, trace), trace

    def _check_inputs(self, x: torch.Tensor, text_features: Optional[torch.Tensor]) -> None:
        if tuple(x.shape[-2:]) != tuple(self.image_size):
            raise ValueError(
                f"image batch of shape {tuple(x.shape)} does not match the model's image size "
                f"{tuple(self.image_size)}: resize with the model's preprocess transform")
        if text_features is not None:
            expected = (x.shape[0], self.proj.shape[1])
            if tuple(text_features.shape) != expected:
                raise ValueError(
                    f"text_features of shape {tuple(text_features.shape)} do not match the image batch "
                    f"{tuple(x.shape)}: expected {expected}, one caption embedding per image")
            if self.elip_cfg.caption_pairing == "other_row" and x.shape[0] < 2:
                raise ValueError(
                    "elip_cfg.caption_pairing 'other_row' guides each image by another row's caption: it needs "
                    f"a batch of at least 2 images, got {x.shape[0]}")

    @torch.no_grad()
    def project_text(self, text_features: torch.Tensor) -> torch.Tensor:
        """Step 1: the guiding captions in the vision width (``B x W``), paired as ``caption_pairing`` says."""
        if self.elip_cfg.caption_pairing == "other_row":
            text_features = other_row(text_features)
        return text_features.to(self.proj.dtype) @ self.proj.T

    def _forward_pruned(self, x, text_features, trace: Optional[List[BlockTrace]]):
        text_embed = None if text_features is None else self.project_text(text_features)
        x = embed(self, x)
        return pool_and_project(self, self._pruned_transformer(x, text_embed, trace))

    def _pruned_transformer(self, x, text_embed, trace):
        cfg = self.elip_cfg
        tower = blocks(self)
        keeps = keep_counts(x.shape[1], cfg.keep_ratios)
        provenance = None
        if trace is not None:
            provenance = torch.eye(x.shape[1] - 1, device=x.device).expand(x.shape[0], -1, -1)
        for b, (start, n_layers) in enumerate(self._elip_blocks):
            layers = tower[start:start + n_layers]
            if b > 0:
                with torch.no_grad():
                    scores = self._score(x, layers, text_embed)
                num_keep = min(keeps[b - 1], x.shape[1] - 1)
                x, keep_index, weights = prune_and_merge(x, scores, num_keep, cfg.merge)
                if trace is not None:
                    provenance = _track(provenance, keep_index, weights, x.shape[1] - 1)
                    trace.append(BlockTrace(b, keep_index, provenance))
            for layer in layers:
                x = run_layer(self, layer, x)
        return x

    def _score(self, x, layers, text_embed):
        """Steps 2-3: CLS attention of the fused sequence, ``B x (N - 1)``, no gradient."""
        cfg = self.elip_cfg
        z = x if text_embed is None else fuse_cls(x, text_embed, cfg.lam, cfg.fusion == "norm_matched")
        if cfg.scoring == "first_layer":
            return call_block(layers[0], cls_attention, z)
        for layer in layers[:-1]:
            z = layer(z)
        return call_block(layers[-1], cls_attention, z)


def _track(provenance, keep_index, weights, num_out):
    """Provenance of the tokens after a pruning step (see ``BlockTrace``)."""
    kept = provenance.gather(1, keep_index.unsqueeze(-1).expand(-1, -1, provenance.shape[-1]))
    if num_out == kept.shape[1]:
        return kept
    return torch.cat([kept, weights.to(provenance.dtype).unsqueeze(1) @ provenance], dim=1)


class ElipCLIP(GuidedCLIP):
    """OpenCLIP ``CLIP`` whose image tower is guided by the paired captions in ``forward``."""

    config_block = "elip_cfg"
    option_spec = ELIP_OPTIONS

    def __init__(self, *args, elip_cfg: "ElipConfig | dict | None" = None, **kwargs):
        super().__init__(*args, **kwargs)
        _convert_visual(self.visual, elip_cfg)

    def options(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.visual.elip_cfg).items()}


def _convert_visual(visual: torch.nn.Module, elip_cfg, **overrides) -> None:
    check_vision_transformer(visual, "ELIP")
    swap_tower(visual, ElipVisionTransformer, lambda: visual.init_elip(elip_cfg, **overrides))


def apply_elip(model: CLIP, elip_cfg: "ElipConfig | dict | None" = None, **options) -> ElipCLIP:
    """Turn a stock OpenCLIP ViT ``CLIP`` into an ``ElipCLIP``, in place (state dict unchanged).

    ``elip_cfg`` (a dict or an ``ElipConfig``) and ``options`` are ``ElipConfig`` fields, e.g.
    ``apply_elip(model, lam=1.0, scoring="first_layer")``. On a model that has ELIP already, they change only
    the options they name (an ``ElipConfig`` names them all). A rejected option leaves the model as it was.
    """
    if isinstance(elip_cfg, ElipConfig):
        elip_cfg = dataclasses.asdict(elip_cfg)
    options = apply_options(model, ElipCLIP, elip_cfg, options)  # TypeError unless a CLIP
    _convert_visual(model.visual, options)
    model.__class__ = ElipCLIP
    return model
