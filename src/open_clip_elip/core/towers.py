"""What every family's image tower shares: the class swap with rollback, the prunable-tower check, a layer run
with OpenCLIP's activation checkpointing, the stock embedding and pooling, and ``FamilyCLIP``, the base of the
families' model classes. Like ToMe's ``apply_patch``, a family swaps the class of an existing module: no parameter
is added, copied or renamed, so state dicts stay those of the stock model.

A family's tower swaps each of its blocks to ``OpBlock`` too, whose call runs a family's operation on the block
(``block(x, op=evit_layer, args=(...))``): every computation on a block's weights then goes through the block's
own ``__call__``, so the hooks that wrappers put there fire (FSDP2's ``fully_shard`` gathers the block's sharded
weights in one; composable activation checkpointing lives in another)."""
from __future__ import annotations

import copy
from typing import Callable, Type, TypeVar

import torch
from torch.utils.checkpoint import checkpoint

from . import openclip
from .openclip import CLIP, ResidualAttentionBlock, VisionTransformer

CREATED_FROM = "_open_clip_model_cfg"  # the config create_model built a model from (registration.build_clip)
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
    ``--grad-checkpointing``), as OpenCLIP's own loop does."""
    if not isinstance(layer, torch.nn.Module):
        inputs = (inputs[0], layer, *inputs[1:])
        layer = call_block
    if openclip.grad_checkpointing(visual) and not torch.jit.is_scripting():
        return checkpoint(layer, *inputs, use_reentrant=False)
    return layer(*inputs)


def pool_and_project(visual: VisionTransformer, x: torch.Tensor):
    """The stock tower's tail, as in ``VisionTransformer.forward``: pool, project, tokens if asked."""
    pooled, tokens = openclip.pool(visual, x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return (pooled, tokens) if visual.output_tokens else pooled


class FamilyCLIP(CLIP):
    """What the model classes of the families share: the config block that selects them, their current
    options, and the model config that rebuilds them."""

    config_block: str = ""

    def options(self) -> dict:
        """Every current option, as a JSON-ready ``config_block``."""
        raise NotImplementedError

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
