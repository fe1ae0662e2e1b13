"""Attention from an OpenCLIP block's own weights (``ResidualAttentionBlock.attn``: ``nn.MultiheadAttention`` in
3.x, OpenCLIP's own ``Attention`` in main, both read through ``core.openclip``): the query/key/value projections
per head, the attention itself through SDPA, and the CLS query's attention probabilities that token-pruning
methods score by. Tokens are batch first, ``B x N x W``; per-head tensors are ``B x H x N x D``. Under FSDP these
run inside the block's own call (``core.towers.call_block``)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import openclip
from .openclip import ResidualAttentionBlock

QUERY, KEY, VALUE = 0, 1, 2


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``B x N x W`` -> ``B x H x N x (W / H)``."""
    batch, tokens, width = t.shape
    return t.view(batch, tokens, heads, width // heads).transpose(1, 2)


def project(block: ResidualAttentionBlock, h: torch.Tensor, part: int) -> torch.Tensor:
    """One of the block's query, key or value projections (``QUERY``, ``KEY``, ``VALUE``) of the normalised
    tokens ``h``, per head."""
    weight, bias = openclip.attention_in_proj(block)
    width = h.shape[-1]
    rows = slice(part * width, (part + 1) * width)
    return split_heads(F.linear(h, weight[rows], None if bias is None else bias[rows]), openclip.attention_heads(block))


def qkv(block: ResidualAttentionBlock, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of the normalised tokens ``h`` per head, from one fused projection."""
    batch, tokens, width = h.shape
    heads = openclip.attention_heads(block)
    fused = F.linear(h, *openclip.attention_in_proj(block))
    q, k, v = fused.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    return q, k, v


def attend(block: ResidualAttentionBlock, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The block's attention maths through SDPA, output projection and attention dropout (in training)
    included (``B x N x W``); ``bias`` is added to the attention logits (broadcast to ``B x H x N x N``)."""
    dropout = openclip.attention_dropout(block) if block.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    batch, heads, tokens, head_width = out.shape
    out = out.transpose(1, 2).reshape(batch, tokens, heads * head_width)
    return F.linear(out, *openclip.attention_out_proj(block))


def match_norm(t: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each row of ``t`` rescaled to the norm of that row of ``reference`` (a caption term put on the CLS token's
    scale before the two are fused into a scoring query)."""
    return t * (reference.norm(dim=-1, keepdim=True) / t.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def cls_probs(q_cls: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The CLS query's attention probabilities over the other tokens, averaged over heads, as
    ``nn.MultiheadAttention(need_weights=True)`` returns them with the CLS column dropped: ``B x (N - 1)``.
    ``q_cls`` is ``B x H x 1 x D``."""
    logits = (q_cls * q_cls.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # B x H x 1 x N
    return logits.float().softmax(dim=-1).mean(dim=1)[:, 0, 1:]


def cls_attention(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``cls_probs`` of ``block`` on the tokens ``x``, computing only the CLS query: ``B x (N - 1)``."""
    h = block.ln_1(x)
    return cls_probs(project(block, h[:, :1], QUERY), project(block, h, KEY))


def attention_with_probs(block: ResidualAttentionBlock, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The block's attention on the normalised tokens ``h`` with explicit probabilities, as
    ``nn.MultiheadAttention(need_weights=True)`` of OpenCLIP 3.x computed it (OpenCLIP main's ``Attention`` has
    no such option): the output (``B x N x W``, eval mode) and the probabilities averaged over heads
    (``B x N x N``, float)."""
    q, k, v = qkv(block, h)
    probs = ((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)).softmax(dim=-1)
    out = probs @ v
    batch, heads, tokens, head_width = out.shape
    out = F.linear(out.transpose(1, 2).reshape(batch, tokens, heads * head_width), *openclip.attention_out_proj(block))
    return out, probs.float().mean(dim=1)
