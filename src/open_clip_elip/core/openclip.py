"""Every name this package touches inside OpenCLIP, in one place: the factory's model-class hook and config table,
the pretrained table, the hub-saving hook, the image tower's embed and pool steps, a block's attention weights,
heads and dropout, and the transformer's layout. No other module of the package reads an OpenCLIP private name or
an attention attribute; they call the functions here.

OpenCLIP changed these between releases: 2.32 has no ``parse_model_name`` (a small equivalent is used there);
3.0 to 3.3 run a block's attention through ``nn.MultiheadAttention`` (``in_proj_weight``, ``dropout`` a float,
``Transformer.batch_first``); main (4.x) has its own ``Attention`` (the same weight names, ``attn_drop`` an
``nn.Dropout``) and no ``batch_first`` (always batch first). ``check()`` verifies each of them on the installed
OpenCLIP, by name and on a tiny tower against OpenCLIP's own forward; registration runs it once
(``usable()``) and, on an OpenCLIP it cannot serve, registers nothing and warns once.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import warnings
from typing import List, Optional, Tuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip import factory
from open_clip import pretrained as _pretrained
from open_clip import utils as _utils
from open_clip.model import CLIP
from open_clip.transformer import PatchDropout, ResidualAttentionBlock, VisionTransformer

__all__ = ["CLIP", "PatchDropout", "ResidualAttentionBlock", "VisionTransformer", "feature_take_indices"]

# the layer picker of ``forward_intermediates`` (from 2.32; ``check()`` refuses an OpenCLIP without it)
feature_take_indices = getattr(_utils, "feature_take_indices", None)

def _installed_version() -> str:
    """``open_clip.__version__`` (2.24 has none: then the distribution's)."""
    try:
        return getattr(open_clip, "__version__", None) or importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION = _installed_version()
SUPPORTED = "2.32, 3.0 to 3.3 and main (4.x; checked at commit 89fb801, 4.2.0.dev0)"
OLDEST = (2, 32)
_state: dict = {}  # "problems": the result of check(), once


# --- the factory, the pretrained table, the hub-saving hook -----------------------------------------------------

def model_configs() -> dict:
    """OpenCLIP's table of model configs (``factory._MODEL_CONFIGS``), name -> config."""
    return factory._MODEL_CONFIGS


def set_model_configs(configs: dict) -> None:
    factory._MODEL_CONFIGS = configs


def config_paths() -> list:
    """The config files and folders OpenCLIP has read (``factory._MODEL_CONFIG_PATHS``)."""
    return factory._MODEL_CONFIG_PATHS


def add_model_config(path) -> None:
    factory.add_model_config(path)


def natural_key(name: str):
    """The sort key OpenCLIP orders its config table by."""
    return factory._natural_key(name)


def get_model_config(name: str) -> Optional[dict]:
    return factory.get_model_config(name)


def parse_model_name(name: str) -> Tuple[Optional[str], str]:
    """``(schema, rest)`` of a model name (``'hf-hub:org/repo'`` -> ``('hf-hub', 'org/repo')``), as OpenCLIP 3.x
    parses it; 2.32 has no parser and knows only the ``hf-hub:`` schema."""
    parse = getattr(factory, "parse_model_name", None)
    if parse is not None:
        return parse(name)
    prefix = "hf-hub:"
    return ("hf-hub", name[len(prefix):]) if name.startswith(prefix) else (None, name)


def model_class():
    """What ``create_model`` builds a non-custom-text model with (``factory.CLIP``)."""
    return factory.CLIP


def set_model_class(build) -> None:
    factory.CLIP = build


def create_model():
    return factory.create_model


def set_create_model(create) -> None:
    """``open_clip.create_model`` and the factory's own (``create_model_and_transforms`` calls that one)."""
    factory.create_model = open_clip.create_model = create


def pretrained_table() -> dict:
    """OpenCLIP's pretrained tags (``pretrained._PRETRAINED``), model name -> tag -> source."""
    return _pretrained._PRETRAINED


def is_pretrained_cfg(name: str, tag: str) -> bool:
    return _pretrained.is_pretrained_cfg(name, tag)


def list_pretrained_tags_by_model(name: str) -> list:
    return _pretrained.list_pretrained_tags_by_model(name)


def hub_module():
    """``open_clip.push_to_hf_hub`` the module (``open_clip.push_to_hf_hub`` is the function of that name)."""
    return importlib.import_module("open_clip.push_to_hf_hub")


def save_config_for_hf():
    return hub_module().save_config_for_hf


def set_save_config_for_hf(save) -> None:
    hub_module().save_config_for_hf = save


# --- the image tower and its transformer ----------------------------------------------------------------------

def embeds(visual: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The tower's tokens before its first block (patches, CLS, positions, patch dropout, ``ln_pre``), ``B x N x W``."""
    return visual._embeds(x)


def pool(visual: VisionTransformer, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The tower's pooling of the last block's tokens: ``(pooled, tokens)``, before the projection."""
    return visual._pool(x)


def blocks(visual: VisionTransformer) -> torch.nn.ModuleList:
    """The tower's blocks (``visual.transformer.resblocks``)."""
    return visual.transformer.resblocks


def batch_first(visual: VisionTransformer) -> bool:
    """Whether the tower's blocks take ``B x N x W`` (main has no ``batch_first``: always)."""
    return getattr(visual.transformer, "batch_first", True)


def grad_checkpointing(visual: VisionTransformer) -> bool:
    """Whether the tower checkpoints each block inline (``set_grad_checkpointing()``)."""
    return bool(visual.transformer.grad_checkpointing)


# --- a block's attention ----------------------------------------------------------------------------------------

def attention_heads(block: ResidualAttentionBlock) -> int:
    return block.attn.num_heads


def attention_in_proj(block: ResidualAttentionBlock) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The fused query/key/value projection: weight ``3W x W`` and bias ``3W`` (or None)."""
    return block.attn.in_proj_weight, block.attn.in_proj_bias


def attention_out_proj(block: ResidualAttentionBlock) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    return block.attn.out_proj.weight, block.attn.out_proj.bias


def attention_dropout(block: ResidualAttentionBlock) -> float:
    """The dropout probability on the attention weights (3.x: ``attn.dropout``; main: ``attn.attn_drop.p``)."""
    attn = block.attn
    return attn.attn_drop.p if hasattr(attn, "attn_drop") else attn.dropout


def plain_attention(block: ResidualAttentionBlock) -> bool:
    """Whether the block's attention is plain multi-head attention with one fused projection, batch first (what
    the families recompute from its weights): 3.x's ``nn.MultiheadAttention`` as OpenCLIP builds it, main's own
    ``Attention`` without its optional extras."""
    attn = block.attn
    if isinstance(attn, torch.nn.MultiheadAttention):
        return attn.batch_first and attn.in_proj_weight is not None and attn.bias_k is None and not attn.add_zero_attn
    return (getattr(attn, "in_proj_weight", None) is not None and getattr(attn, "logit_scale", None) is None
            and getattr(attn, "head_scale", None) is None
            and all(isinstance(getattr(attn, name, torch.nn.Identity()), torch.nn.Identity)
                    for name in ("ln_q", "ln_k", "ln_inner"))
            and getattr(getattr(attn, "out_drop", None), "p", 0.0) == 0.0)


def block_attention(block: ResidualAttentionBlock, h: torch.Tensor) -> torch.Tensor:
    """The block's own attention on normalised tokens ``h`` (OpenCLIP's ``ResidualAttentionBlock.attention``)."""
    return block.attention(q_x=h)


# --- the check --------------------------------------------------------------------------------------------------

def version_tuple(version: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _plain_attention(block, h: torch.Tensor) -> torch.Tensor:
    """A block's attention on normalised tokens ``h``, written out from the accessors above (eval mode)."""
    weight, bias = attention_in_proj(block)
    out_weight, out_bias = attention_out_proj(block)
    batch, tokens, width = h.shape
    heads = attention_heads(block)
    q, k, v = F.linear(h, weight, bias).view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    probs = (q @ k.transpose(-1, -2) * (width // heads) ** -0.5).softmax(dim=-1)
    return F.linear((probs @ v).transpose(1, 2).reshape(batch, tokens, width), out_weight, out_bias)


def check() -> List[str]:
    """What the installed OpenCLIP lacks of what this package uses (empty when it can serve it): each name above,
    and on a tiny tower, ``embeds``, ``pool``, a block's attention and its forward each against a plain
    re-computation from the weights, and the tower's forward against ``embeds``, the blocks, ``pool`` and the
    projection."""
    problems = []
    if version_tuple(VERSION) < OLDEST:
        problems.append(f"version {VERSION} is older than {OLDEST[0]}.{OLDEST[1]}")
    names = {factory: ("CLIP", "_MODEL_CONFIGS", "_MODEL_CONFIG_PATHS", "add_model_config", "_natural_key",
                       "get_model_config", "create_model"),
             _pretrained: ("_PRETRAINED", "is_pretrained_cfg", "list_pretrained_tags_by_model"),
             VisionTransformer: ("_embeds", "_pool"),
             _utils: ("feature_take_indices",),
             ResidualAttentionBlock: ("attention",)}
    problems += [f"{getattr(owner, '__name__', owner)}.{name} is missing"
                 for owner, attrs in names.items() for name in attrs if not hasattr(owner, name)]
    if hasattr(factory, "create_model") and "CLIP" not in inspect.unwrap(factory.create_model).__code__.co_names:
        problems.append("factory.create_model does not build its models through factory.CLIP")
    try:
        hub = hub_module()
        if "save_config_for_hf" not in hub.save_for_hf.__code__.co_names:
            problems.append("push_to_hf_hub.save_for_hf does not save through push_to_hf_hub.save_config_for_hf")
    except (ImportError, AttributeError) as exc:
        problems.append(f"push_to_hf_hub: {exc}")
    if problems:
        return problems
    try:
        problems += _check_tower()
    except Exception as exc:  # an attribute gone or renamed, a signature changed
        problems.append(f"a tiny ViT tower: {type(exc).__name__}: {exc}")
    return problems


def _check_tower() -> List[str]:
    problems = []
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        visual = VisionTransformer(image_size=8, patch_size=4, width=16, layers=2, heads=2, mlp_ratio=2.0,
                                   output_dim=8).eval()
    block = blocks(visual)[0]
    with torch.no_grad():
        for p in visual.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        images = torch.randn(2, 3, 8, 8, generator=generator)
        x = embeds(visual, images)
        if not batch_first(visual) or x.shape != (2, 5, 16):
            problems.append(f"embeds gives shape {tuple(x.shape)} (layout batch first: {batch_first(visual)}), "
                            "expected B x N x W")
            return problems
        for name, ok in (("plain attention", plain_attention(block)), ("heads", attention_heads(block) == 2),
                         ("dropout", attention_dropout(block) == 0.0),
                         ("grad_checkpointing", grad_checkpointing(visual) is False)):
            if not ok:
                problems.append(f"a block's {name} reads wrong")
        visual.set_grad_checkpointing(True)
        if grad_checkpointing(visual) is not True:
            problems.append("set_grad_checkpointing() does not turn the transformer's grad_checkpointing on")
        visual.set_grad_checkpointing(False)
        attended = _plain_attention(block, block.ln_1(x))
        if not torch.allclose(block_attention(block, block.ln_1(x)), attended, atol=1e-5):
            problems.append("a block's attention differs from the plain computation from its weights")
        after = x + block.ls_1(attended)
        if not torch.allclose(after + block.ls_2(block.mlp(block.ln_2(after))), block(x), atol=1e-5):
            problems.append("a block's forward differs from attention then MLP, each with its residual")
        patches = visual.conv1(images).flatten(2).transpose(1, 2)
        plain = torch.cat([visual.class_embedding.expand(2, 1, -1), patches], dim=1) + visual.positional_embedding
        if not torch.allclose(x, visual.ln_pre(plain), atol=1e-5):
            problems.append("embeds differs from patches, CLS and positions, then ln_pre")
        for b in blocks(visual):
            x = b(x)
        pooled, _ = pool(visual, x)
        if not torch.allclose(pooled, visual.ln_post(x)[:, 0], atol=1e-5):
            problems.append("pool differs from the CLS token after ln_post")
        if not torch.allclose(pooled @ visual.proj, visual(images), atol=1e-5):
            problems.append("the tower's forward differs from embeds, its blocks, pool and its projection")
    return problems


def usable() -> bool:
    """``check()`` run once: True when the installed OpenCLIP can serve this package; otherwise one warning
    (naming the version, the supported range and what is missing), then False."""
    if "problems" not in _state:
        _state["problems"] = check()
        if _state["problems"]:
            warnings.warn(
                f"open_clip_elip: OpenCLIP {VERSION} is not supported (supported: {SUPPORTED}): "
                f"{'; '.join(_state['problems'])}. No family model (-elip, -evit, -tome, -mask) is registered and "
                "open_clip works as without this package; install a supported open_clip_torch (e.g. pip install "
                "open_clip_torch==3.3.0)",
                RuntimeWarning, stacklevel=2)
    return not _state["problems"]
