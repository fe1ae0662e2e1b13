"""Attention from an OpenCLIP block's own weights (``ResidualAttentionBlock.attn``, an
``nn.MultiheadAttention``): the query/key/value projections per head, the attention itself through SDPA, and
the CLS query's attention probabilities that token-pruning methods score by. Tokens are batch first,
``B x N x W``; per-head tensors are ``B x H x N x D``."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock

QUERY, KEY, VALUE = 0, 1, 2


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``B x N x W`` -> ``B x H x N x (W / H)``."""
    batch, tokens, width = t.shape
    return t.view(batch, tokens, heads, width // heads).transpose(1, 2)


def project(block: ResidualAttentionBlock, h: torch.Tensor, part: int) -> torch.Tensor:
    """One of the block's query, key or value projections (``QUERY``, ``KEY``, ``VALUE``) of the normalised
    tokens ``h``, per head."""
    attn = block.attn
    width = h.shape[-1]
    bias = attn.in_proj_bias
    rows = slice(part * width, (part + 1) * width)
    return split_heads(F.linear(h, attn.in_proj_weight[rows], None if bias is None else bias[rows]), attn.num_heads)


def qkv(block: ResidualAttentionBlock, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of the normalised tokens ``h`` per head, from one fused projection."""
    attn = block.attn
    batch, tokens, width = h.shape
    heads = attn.num_heads
    fused = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = fused.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    return q, k, v


def attend(block: ResidualAttentionBlock, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``nn.MultiheadAttention``'s maths through SDPA, output projection and attention dropout (in training)
    included (``B x N x W``); ``bias`` is added to the attention logits (broadcast to ``B x H x N x N``)."""
    dropout = block.attn.dropout if block.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    batch, heads, tokens, head_width = out.shape
    out = out.transpose(1, 2).reshape(batch, tokens, heads * head_width)
    return F.linear(out, block.attn.out_proj.weight, block.attn.out_proj.bias)


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
