"""``-mask`` models: OpenCLIP's ``VisionTransformer`` and ``CLIP`` with the patch tokens chosen once, at the input.

After the patch and positional embeddings (``core.towers.embed``: ``ln_pre`` is per token, so choosing after it equals
choosing before), the CLS token and the top-``k`` patches of the strategy's scores (kept in their original order)
go through the layers; in eval mode the forward is the stock one. ``attentive*`` towers hold an EMA copy of
themselves at ``visual.ema`` (``model.visual_ema``), an ordinary OpenCLIP ``VisionTransformer`` without gradient.
Like every family, ``apply_mask`` swaps the classes of existing modules: the stock parameters are not renamed, so
a stock state dict loads strictly (the EMA tower, if any, starts from its weights)."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ...core.attention import QUERY, attend, cls_probs, match_norm, project, qkv
from ...core.openclip import CLIP, PatchDropout, VisionTransformer, blocks
from ...core.options import Choice, Count, Default, Ratio, check_options
from ...core.reduce import select_tokens, take_tokens
from ...core.towers import (
    FamilyVisionTransformer,
    GuidedCLIP,
    apply_options,
    check_prunable,
    check_vision_transformer,
    embed,
    pool_and_project,
    run_layer,
    swap_tower,
)
from . import select
from .ema import BASE_MOMENTUM, EMA_MODULE, EMA_STEPS, ema_update, momentum, track

STRATEGIES = ("random", "center", "cluster", "attentive", "attentive_text")
WITH_EMA = ("attentive", "attentive_text")
TEXT_SCORINGS = ("fused", "similarity")


@dataclass(frozen=True)
class MaskConfig:
    """Options of the ``-mask`` family (config block ``mask_cfg``; docs/options.md).

    strategy: how the kept patches are chosen (``STRATEGIES``; docs/masking.md).
    keep_ratio: share of the patches kept, in (0, 1]; 1 keeps all (the stock forward, as the +tune runs train).
    center_cov: ``center``: variance of the centre prior on the [-1, 1] grid (GLIP's 0.2).
    anchor_ratio: ``cluster``: share of the patches drawn as anchors, in (0, 1] (about 5%).
    text_scoring: ``attentive_text``: ``fused`` (the caption fused into the CLS query, norm-matched; the default:
        it steered least wrongly in the scenes measurement, docs/masking.md) or ``similarity`` (patch-to-caption
        cosine through ``ln_post`` and ``proj``, mixed with the attention score).
    lam: ``attentive_text``: weight of the image's own attention (1: ``attentive``; 0: the caption alone).
    ema_momentum: the EMA's momentum at step 0 (A-CLIP's 0.996).
    total_steps: optimizer steps of the run: the momentum rises to 1 on a cosine over them; None: constant.
    """

    strategy: str = "random"
    keep_ratio: float = 0.5
    center_cov: float = 0.2
    anchor_ratio: float = 0.05
    text_scoring: str = "fused"
    lam: float = 0.5
    ema_momentum: float = BASE_MOMENTUM
    total_steps: Optional[int] = None

    @classmethod
    def from_options(cls, options: dict) -> "MaskConfig":
        """Validated options (``MASK_OPTIONS``' kinds); ValueError naming the option, the value and what it takes."""
        return cls(**check_options("mask_cfg", MASK_OPTIONS, options))

    def options(self) -> dict:
        return asdict(self)


MASK_OPTIONS = {  # option -> kind (core.options)
    "strategy": Choice(STRATEGIES),
    "keep_ratio": Ratio(),
    "center_cov": Ratio(0.0, 100.0),  # the prior is all but flat long before 100
    "anchor_ratio": Ratio(),
    "text_scoring": Choice(TEXT_SCORINGS),
    "lam": Ratio(closed_low=True),
    "ema_momentum": Ratio(closed_low=True),
    "total_steps": Default(Count(1)),
}


class MaskVisionTransformer(FamilyVisionTransformer):
    """OpenCLIP ViT image tower that keeps the CLS token and ``num_keep`` patches in training:
    ``forward(x, text_features=None)``; ``text_features`` (the paired captions' L2-normalised embeddings,
    ``B x embed_dim``) are read by ``attentive_text`` only."""

    family_title = "-mask"

    def reduces(self, **inputs) -> bool:
        """Patches are dropped in training only (eval: the stock forward)."""
        return self.training and self.masks

    def init_mask(self, cfg: MaskConfig, ema: Optional[VisionTransformer] = None) -> None:
        """Check the options against this tower and store them; ``ema``: the EMA tower to keep (``attentive*``),
        else a copy of this tower is made."""
        check_prunable(self, "-mask")
        if isinstance(self.patch_dropout, PatchDropout):
            raise ValueError("-mask chooses the patches itself: this tower also has patch dropout "
                             f"(prob {self.patch_dropout.prob}); drop --force-patch-dropout / vision_cfg.patch_dropout")
        self.mask_cfg = cfg
        grid = tuple(self.grid_size)
        if cfg.strategy in WITH_EMA:
            self.num_keep = select.attentive_keep_count(grid, cfg.keep_ratio)
        else:
            self.num_keep = select.keep_count(grid[0] * grid[1], cfg.keep_ratio)
        if cfg.strategy in WITH_EMA:
            if ema is None:
                ema = copy.deepcopy(self)
                ema.__class__ = VisionTransformer
                for name in ("mask_cfg", "num_keep"):
                    del ema.__dict__[name]
            ema.requires_grad_(False)
            ema.eval()
            self.add_module(EMA_MODULE, ema)
            self.register_buffer(EMA_STEPS, torch.zeros((), dtype=torch.long, device=self.class_embedding.device))
            track(self)

    @property
    def masks(self) -> bool:
        """Whether a training forward drops patches at all."""
        return self.num_keep < self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor, text_features: Optional[torch.Tensor] = None):
        if not self.training or not self.masks:
            return super().forward(x)
        keep_index = self.kept_patches(x, text_features)
        tokens = embed(self, x)
        tokens = torch.cat([tokens[:, :1], take_tokens(tokens[:, 1:], keep_index)], dim=1)
        for layer in blocks(self):
            tokens = run_layer(self, layer, tokens)
        return pool_and_project(self, tokens)

    def trace(self, x: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Each image's kept patch indices (``B x num_keep``, into the raster-ordered patches, ascending), as a
        training forward would draw them (the random strategies draw afresh)."""
        return self.kept_patches(x, text_features)

    @torch.no_grad()
    def kept_patches(self, x: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The strategy's scores of the patches of ``x`` (no gradient), their top ``num_keep`` in order."""
        self._check_inputs(x, text_features)
        scores = SCORERS[self.mask_cfg.strategy](self, x, text_features)
        return select_tokens(scores, self.num_keep)

    def _check_inputs(self, x: torch.Tensor, text_features: Optional[torch.Tensor]) -> None:
        if tuple(x.shape[-2:]) != tuple(self.image_size):
            raise ValueError(f"image batch of shape {tuple(x.shape)} does not match the model's image size "
                             f"{tuple(self.image_size)}: resize with the model's preprocess transform")
        if text_features is not None and tuple(text_features.shape) != (x.shape[0], self.proj.shape[1]):
            raise ValueError(f"text_features of shape {tuple(text_features.shape)} do not match the image batch "
                             f"{tuple(x.shape)}: expected {(x.shape[0], self.proj.shape[1])}, one caption embedding "
                             "per image")

    @torch.no_grad()
    def step_ema(self) -> None:
        """One EMA update at the current step's momentum, then the step count (called after an optimizer step)."""
        ema_update(self.ema, self, momentum(self.ema_steps, self.mask_cfg.ema_momentum, self.mask_cfg.total_steps))
        self.ema_steps += 1

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, EMA_MODULE):
            self.ema.eval()  # the EMA tower only scores, without dropout
        return self

    def __setstate__(self, state):  # copies and unpickled models keep their EMA updated
        super().__setstate__(state)
        if EMA_MODULE in self._modules:
            track(self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A state dict without the EMA tower (a stock checkpoint) starts it from the tower's own weights and its
        step count from 0."""
        if EMA_MODULE in self._modules:
            for key in self.ema.state_dict():
                own = state_dict.get(prefix + key)
                if prefix + f"{EMA_MODULE}.{key}" not in state_dict and own is not None:
                    state_dict[prefix + f"{EMA_MODULE}.{key}"] = own
            state_dict.setdefault(prefix + EMA_STEPS, torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _attentive(visual: "MaskVisionTransformer", x: torch.Tensor, text_features: Optional[torch.Tensor]):
    guide = text_features if visual.mask_cfg.strategy == "attentive_text" else None
    return select.cell_scores(ema_scores(visual.ema, x, guide, visual.mask_cfg), tuple(visual.grid_size))


# strategy -> (tower, images, captions' embeddings or None) -> B x N patch scores (no gradient); the top are kept
SCORERS = {
    "random": lambda visual, x, _: select.random_scores(x.shape[0], visual.grid_size[0] * visual.grid_size[1],
                                                        x.device),
    "center": lambda visual, x, _: select.center_scores(x.shape[0], tuple(visual.grid_size),
                                                        visual.mask_cfg.center_cov, x.device),
    "cluster": lambda visual, x, _: select.cluster_scores(x, tuple(visual.patch_size), visual.mask_cfg.anchor_ratio),
    "attentive": _attentive,
    "attentive_text": _attentive,
}


def ema_scores(ema: VisionTransformer, x: torch.Tensor, text_features: Optional[torch.Tensor],
               cfg: MaskConfig) -> torch.Tensor:
    """Per-patch scores of the EMA tower on the full images (``B x N``, no gradient): the CLS query's attention
    averaged over heads and every layer; with a caption, ``attentive_text``'s scoring (``cfg.text_scoring``)."""
    fused = text_features is not None and cfg.text_scoring == "fused"
    text_embed = text_features.to(ema.proj.dtype) @ ema.proj.T if fused else None
    tokens = embed(ema, x)
    total = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, device=x.device)
    layers = blocks(ema)
    for block in layers:
        q, k, v = qkv(block, block.ln_1(tokens))
        if fused:  # the CLS query of the fused token (1 - lam) text + lam CLS, text norm-matched to the CLS
            cls = tokens[:, :1]
            query = (1 - cfg.lam) * match_norm(text_embed.to(cls.dtype).unsqueeze(1), cls) + cfg.lam * cls
            total = total + cls_probs(project(block, block.ln_1(query), QUERY), k)
        else:
            total = total + cls_probs(q[:, :, :1], k)
        tokens = tokens + block.ls_1(attend(block, q, k, v))
        tokens = tokens + block.ls_2(block.mlp(block.ln_2(tokens)))
    attention = total / len(layers)
    if text_features is None or fused:
        return attention
    patches = ema.ln_post(tokens[:, 1:]) @ ema.proj
    similarity = F.normalize(patches.float(), dim=-1) @ text_features.float().unsqueeze(-1)
    return cfg.lam * select.standardise(attention) + (1 - cfg.lam) * select.standardise(similarity[..., 0])


class MaskCLIP(GuidedCLIP):
    """OpenCLIP ``CLIP`` whose image tower masks patches in training (config block ``mask_cfg``); the paired
    captions' embeddings (detached) reach the tower, which reads them with ``attentive_text`` only."""

    config_block = "mask_cfg"
    option_spec = MASK_OPTIONS

    def __init__(self, *args, mask_cfg: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        _convert_visual(self.visual, dict(mask_cfg or {}))

    @property
    def visual_ema(self) -> Optional[VisionTransformer]:
        """The EMA image tower (``attentive*``), None for the other strategies."""
        return getattr(self.visual, EMA_MODULE, None)

    def options(self) -> dict:
        return self.visual.mask_cfg.options()

    def reads_captions(self) -> bool:
        """``attentive_text`` in training reads the captions."""
        return self.visual.mask_cfg.strategy == "attentive_text" and self.visual.training


def _to_stock(visual: MaskVisionTransformer) -> Optional[VisionTransformer]:
    """Undo ``init_mask``: the stock tower again; returns its EMA tower, if it had one."""
    ema = visual._modules.pop(EMA_MODULE, None)
    visual._buffers.pop(EMA_STEPS, None)
    for name in ("mask_cfg", "num_keep"):
        visual.__dict__.pop(name, None)
    visual.__class__ = VisionTransformer
    return ema


def _convert_visual(visual: torch.nn.Module, options: dict) -> None:
    cfg = MaskConfig.from_options(options)
    ema = None
    if type(visual) is MaskVisionTransformer:
        previous = visual.mask_cfg
        ema = _to_stock(visual)
        try:
            swap_tower(visual, MaskVisionTransformer, lambda: visual.init_mask(cfg, ema))
        except Exception:
            swap_tower(visual, MaskVisionTransformer, lambda: visual.init_mask(previous, ema))
            raise
        return
    check_vision_transformer(visual, "-mask")
    if type(visual) is not VisionTransformer:
        raise TypeError(f"-mask masks the patches of OpenCLIP's own VisionTransformer; this model's image tower is "
                        f"{type(visual).__name__} (other families' towers are not supported)")
    swap_tower(visual, MaskVisionTransformer, lambda: visual.init_mask(cfg))


def apply_mask(model: CLIP, mask_cfg: Optional[dict] = None, **options) -> MaskCLIP:
    """Turn a stock OpenCLIP ViT ``CLIP`` into a ``MaskCLIP``, in place (stock parameters untouched; ``attentive*``
    add the EMA tower, a copy of the image tower). ``mask_cfg`` and ``options`` are ``MaskConfig`` fields, e.g.
    ``apply_mask(model, strategy="attentive")``; on a ``MaskCLIP`` they change only the options they name (an EMA
    tower is kept while the strategy needs one). A refused option leaves the model as it was."""
    given = apply_options(model, MaskCLIP, mask_cfg, options)  # TypeError unless a CLIP
    _convert_visual(model.visual, given)
    model.__class__ = MaskCLIP
    return model


def kept_tokens(visual: MaskVisionTransformer) -> Tuple[int, ...]:
    """Tokens entering each layer on the training path (CLS included)."""
    return (visual.num_keep + 1,) * len(blocks(visual))
