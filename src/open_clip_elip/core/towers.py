"""What every family's image tower shares: the class swap with rollback, the prunable-tower check, a layer run
with OpenCLIP's activation checkpointing, the stock embedding and pooling, ``FamilyVisionTransformer`` (the base of
the families' towers: ``forward_intermediates`` that follows the family's forward) and ``FamilyCLIP``, the base of
the families' model classes, with ``apply_options``, the merge rule of every ``apply_<family>``. Like ToMe's
``apply_patch``, a family swaps the class of an existing module: no parameter is added, copied or renamed, so
state dicts stay those of the stock model.

A family's tower swaps each of its blocks to ``OpBlock`` too, whose call runs a family's operation on the block
(``block(x, op=evit_layer, args=(...))``): every computation on a block's weights then goes through the block's
own ``__call__``, so the hooks that wrappers put there fire (FSDP2's ``fully_shard`` gathers the block's sharded
weights in one; composable activation checkpointing lives in another)."""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import Callable, List, Mapping, Optional, Type, TypeVar, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import openclip
from .openclip import CLIP, ResidualAttentionBlock, VisionTransformer, feature_take_indices
from .options import Spec, check_options

CREATED_FROM = "_open_clip_model_cfg"  # the config create_model built a model from (registration.build_clip)
LAYER_OUTPUTS = "_family_layer_outputs"  # while set on a tower, run_layer appends each layer's output tokens
Module = TypeVar("Module", bound=torch.nn.Module)


def swap_class(module: Module, new_class: Type, init: Callable[[], None]) -> Module:
    """``module.__class__ = new_class``, then ``init()``; if ``init`` raises, the old class is restored (a
    rejected option leaves the model as it was) and the error propagates."""
    old_class = module.__class__
    module.__class__ = new_class
    try:
        init()
    except Exception:
        module.__class__ = old_class
        raise
    return module


class OpBlock(ResidualAttentionBlock):
    """OpenCLIP's ``ResidualAttentionBlock`` that also runs a family's operation through its own call:
    ``block(x, op=f, args=(a, b))`` is ``f(block, x, a, b)``; without ``op`` the stock forward. Same parameters,
    same state dict."""

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None, op=None, args=()):
        if op is None:
            return super().forward(q_x, k_x, v_x, attn_mask)
        return op(self, q_x, *args)


def call_block(block: torch.nn.Module, op: Callable, x: torch.Tensor, *args):
    """``op(block, x, *args)``, through ``block``'s own call when it is an ``OpBlock`` (a family's tower)."""
    if isinstance(block, OpBlock):
        return block(x, op=op, args=args)
    return op(block, x, *args)


def swap_tower(visual: VisionTransformer, new_class: Type, init: Callable[[], None]) -> VisionTransformer:
    """``swap_class`` of an image tower, its stock blocks made ``OpBlock`` with it (both rolled back if ``init``
    raises)."""
    stock = [b for b in openclip.blocks(visual) if type(b) is ResidualAttentionBlock]
    for block in stock:
        block.__class__ = OpBlock
    try:
        return swap_class(visual, new_class, init)
    except Exception:
        for block in stock:
            block.__class__ = ResidualAttentionBlock
        raise


def embed(visual: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The stock tower's tokens entering its first block (``B x N x W``), as in ``VisionTransformer.forward``."""
    return openclip.embeds(visual, x)


def check_vision_transformer(visual: torch.nn.Module, method: str) -> None:
    """TypeError unless ``visual`` is OpenCLIP's own ``VisionTransformer`` (or one of ours on top of it)."""
    if not isinstance(visual, VisionTransformer):
        raise TypeError(
            f"{method} reduces the tokens of OpenCLIP's own VisionTransformer; this model's image tower is "
            f"{type(visual).__name__} (timm and ResNet towers are not supported)")


def check_prunable(visual: VisionTransformer, method: str) -> None:
    """Token reduction needs OpenCLIP's default ViT blocks and CLS pooling: ValueError otherwise."""
    blocks = openclip.blocks(visual)
    if (not all(type(b) in (ResidualAttentionBlock, OpBlock) and openclip.plain_attention(b) for b in blocks)
            or not openclip.batch_first(visual)):
        raise ValueError(
            f"{method} needs the default OpenCLIP vision blocks (ResidualAttentionBlock with plain "
            f"multi-head attention, batch first); this tower uses {type(blocks[0]).__name__}: "
            "drop the custom block options (qk_norm, scale_*) from vision_cfg")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise ValueError(
            f"{method} pools the CLS token (pool_type 'tok', no attentional_pool); this tower uses "
            f"pool_type={visual.pool_type!r}, attentional_pool={visual.attn_pool is not None}")


def run_layer(visual: VisionTransformer, layer: Callable, *inputs):
    """``layer(*inputs)`` for a block ``layer``; for an operation ``layer`` on a block (``inputs`` the block, the
    tokens, then more), ``call_block(block, layer, x, ...)``. Through inline activation checkpointing when the
    tower's ``grad_checkpointing`` is on (``model.set_grad_checkpointing()``, the trainer's
    ``--grad-checkpointing``), as OpenCLIP's own loop does. A family's forward runs each of its layers once through
    here; ``layer`` returns the tokens, or a tuple whose first item is the tokens. Under
    ``FamilyVisionTransformer.forward_intermediates`` the tokens are recorded."""
    if not isinstance(layer, torch.nn.Module):
        inputs = (inputs[0], layer, *inputs[1:])
        layer = call_block
    if openclip.grad_checkpointing(visual) and not torch.jit.is_scripting():
        out = checkpoint(layer, *inputs, use_reentrant=False)
    else:
        out = layer(*inputs)
    recorded = getattr(visual, LAYER_OUTPUTS, None)
    if recorded is not None:
        recorded.append(out[0] if isinstance(out, tuple) else out)
    return out


@contextlib.contextmanager
def recording_layers(visual: VisionTransformer):
    """A list that collects the output tokens of every ``run_layer`` call of ``visual`` inside the block."""
    recorded: List[torch.Tensor] = []
    setattr(visual, LAYER_OUTPUTS, recorded)
    try:
        yield recorded
    finally:
        delattr(visual, LAYER_OUTPUTS)


def pool_and_project(visual: VisionTransformer, x: torch.Tensor):
    """The stock tower's tail, as in ``VisionTransformer.forward``: pool, project, tokens if asked."""
    pooled, tokens = openclip.pool(visual, x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return (pooled, tokens) if visual.output_tokens else pooled


class FamilyVisionTransformer(VisionTransformer):
    """The base of the families' image towers. ``forward_intermediates`` (OpenCLIP's, which
    ``CLIP.forward_intermediates`` calls) runs the family's own forward wherever ``reduces`` says it reduces
    tokens, and OpenCLIP's stock one elsewhere (where the output equals the stock model's)."""

    family_title: str = ""  # the family in messages: "EViT"

    def reduces(self, **inputs) -> bool:
        """Whether ``forward(x, **inputs)`` reduces tokens (it does, unless a family says otherwise)."""
        return True

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            stop_early: bool = False,
            normalize_intermediates: bool = False,
            intermediates_only: bool = False,
            output_fmt: str = "NCHW",
            output_extra_tokens: bool = False,
            **inputs,
    ) -> dict:
        """OpenCLIP's ``VisionTransformer.forward_intermediates``, through the family's forward when it reduces
        tokens: the output tokens of the layers ``indices`` picks (``B x N x W``, ``N`` as the family leaves it;
        the CLS token apart, in ``image_intermediates_prefix``) and ``image_features``, the forward's own output.
        Reduced tokens lie on no patch grid, so ``output_fmt`` must be ``'NLC'`` there; ``stop_early`` then saves
        nothing (the whole forward runs). ``inputs`` go to the forward (ELIP: ``text_features``)."""
        if not self.reduces(**inputs):
            return super().forward_intermediates(
                x, indices=indices, stop_early=stop_early, normalize_intermediates=normalize_intermediates,
                intermediates_only=intermediates_only, output_fmt=output_fmt, output_extra_tokens=output_extra_tokens)
        if output_fmt != "NLC":
            raise ValueError(
                f"{self.family_title} reduces the image tokens, so its intermediates lie on no patch grid and "
                f"output_fmt {output_fmt!r} cannot hold them: pass output_fmt='NLC' (in model.forward_intermediates: "
                "image_output_fmt='NLC') for each layer's B x N x W tokens, N as the family leaves it")
        depth = len(openclip.blocks(self))
        take, _ = feature_take_indices(depth, indices)
        with recording_layers(self) as recorded:
            features = self(x, **inputs)
        if len(recorded) != depth:
            raise RuntimeError(f"{type(self).__name__}: its forward ran {len(recorded)} layers through "
                               f"core.towers.run_layer, not the tower's {depth}; run each layer once through it")
        taken = [recorded[i] for i in take]
        if normalize_intermediates:
            taken = [self.ln_post(y) for y in taken]
        output = {"image_intermediates": [y[:, 1:] for y in taken]}
        if output_extra_tokens:
            output["image_intermediates_prefix"] = [y[:, :1] for y in taken]
        if not intermediates_only:
            output["image_features"] = features[0] if self.output_tokens else features
        return output


class FamilyCLIP(CLIP):
    """What the model classes of the families share: the config block that selects them, their options' spec
    (``core.options``), their current options, the model config that rebuilds them, and
    ``forward_intermediates`` through the family's image tower."""

    config_block: str = ""
    option_spec: Optional[Spec] = None  # name -> kind; None: the family checks its options itself

    @classmethod
    def check_options(cls, options: Optional[Mapping]) -> dict:
        """``options`` (a config block, or None) checked against ``option_spec``; see ``core.options``."""
        options = dict(options or {})
        return options if cls.option_spec is None else check_options(cls.config_block, cls.option_spec, options)

    def options(self) -> dict:
        """Every current option, as a JSON-ready ``config_block``."""
        raise NotImplementedError

    def image_inputs(self, text: torch.Tensor) -> dict:
        """What the image tower's forward takes from the captions ``text`` besides the images (ELIP:
        ``text_features``); nothing by default."""
        return {}

    def forward_intermediates(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None,
                              *args, **kwargs) -> dict:
        """OpenCLIP's ``CLIP.forward_intermediates``; the image part comes from the family's tower
        (``FamilyVisionTransformer.forward_intermediates``), given what it takes from ``text`` (``image_inputs``:
        the text tower then runs twice)."""
        if image is None:
            return super().forward_intermediates(image, text, *args, **kwargs)
        visual = self.visual
        if not isinstance(visual, FamilyVisionTransformer):
            raise TypeError(
                f"{type(self).__name__}.forward_intermediates: its image tower {type(visual).__name__} does not "
                "say how it reduces tokens (OpenCLIP's would return stock features): derive it from "
                "open_clip_elip.core.towers.FamilyVisionTransformer")
        inputs = self.image_inputs(text) if text is not None else {}
        if not inputs:
            return super().forward_intermediates(image, text, *args, **kwargs)
        visual.forward_intermediates = functools.partial(type(visual).forward_intermediates, visual, **inputs)
        try:
            return super().forward_intermediates(image, text, *args, **kwargs)
        finally:
            del visual.forward_intermediates

    def model_config(self) -> dict:
        """This model's OpenCLIP model config as it is now: the config ``create_model`` built it from,
        its family block holding every current option. Save it with the weights
        (``open_clip.push_to_hf_hub(model, tokenizer, model.model_config(), repo_id)``) and
        ``create_model`` rebuilds this very model."""
        created_from = getattr(self, CREATED_FROM, None)
        if created_from is None:
            raise ValueError(
                f"{type(self).__name__}.model_config(): this model was not made by open_clip.create_model, so "
                "its model config is unknown; create it with open_clip.create_model(name, ...), or save "
                f"open_clip.get_model_config(name) with its '{self.config_block}' set to {self.options()}")
        return {**copy.deepcopy(created_from), self.config_block: self.options()}


class GuidedCLIP(FamilyCLIP):
    """A family model whose image tower can read the paired captions: ``forward`` gives the tower the captions'
    L2-normalised embeddings, detached (``text_features=``), whenever ``reads_captions()`` says so, and
    ``image_inputs`` does the same for ``forward_intermediates``."""

    def reads_captions(self) -> bool:
        """Whether the image tower takes the captions now (always, unless a family says otherwise)."""
        return True

    def image_inputs(self, text: torch.Tensor) -> dict:
        """The captions' embeddings, as ``forward`` gives them to the image tower."""
        return {"text_features": self.encode_text(text, normalize=True).detach()} if self.reads_captions() else {}

    def encode_image(self, image, normalize: bool = False, text_features: Optional[torch.Tensor] = None):
        features = self.visual(image, text_features=text_features)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        # the class's methods, not the instance's: under FSDP2 the instance's encode_text / encode_image are
        # wrappers (register_fsdp_forward_method) that gather the root's weights and free them on return, which
        # would leave this forward with sharded ones (logit_scale) after the first call
        cls = type(self)
        text_features = cls.encode_text(self, text, normalize=True) if text is not None else None
        guide = text_features.detach() if text_features is not None and self.reads_captions() else None
        image_features = (
            cls.encode_image(self, image, normalize=True, text_features=guide) if image is not None else None)
        if self.output_dict:
            out_dict = {"image_features": image_features, "text_features": text_features,
                        "logit_scale": self.logit_scale.exp()}
            if self.logit_bias is not None:
                out_dict["logit_bias"] = self.logit_bias
            return out_dict
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()


def apply_options(model: CLIP, model_class: Type[FamilyCLIP], cfg: Optional[Mapping], options: Mapping) -> dict:
    """The options ``apply_<family>(model, <family>_cfg=None, **options)`` converts ``model`` with: ``cfg`` and
    ``options`` together (``options`` win), over the model's current ones if it has the family already (so they
    change only what they name). TypeError unless ``model`` is a stock ``CLIP`` or a ``model_class``."""
    if type(model) not in (CLIP, model_class):
        raise TypeError(f"apply_{model_class.config_block.removesuffix('_cfg')} takes an open_clip CLIP model (as "
                        f"create_model('ViT-B-16') returns), got {type(model).__name__}")
    given = model_class.check_options({**dict(cfg or {}), **options})
    return {**model.options(), **given} if type(model) is model_class else given
