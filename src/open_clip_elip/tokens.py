"""ELIP's maths as pure functions: fuse, score, select, merge (docs/method.md, steps 1-6).

Tokens are batch-first, ``B x N x W``, CLS at index 0. Every function is vectorised over
the batch and has static output shapes, so that ``torch.compile`` sees no host sync.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

MERGE_EPS = 1e-6


def keep_counts(num_tokens: int, keep_ratios: Sequence[float]) -> Tuple[int, ...]:
    """Patch tokens kept entering each pruned block: ``int(N0 x ratio)`` of the original count."""
    return tuple(int(num_tokens * r) for r in keep_ratios)


def fuse_cls(x: torch.Tensor, text_embed: torch.Tensor, lam: float, norm_matched: bool = False) -> torch.Tensor:
    """Step 2: a copy of ``x`` whose CLS is ``(1 - lam) * text_embed + lam * CLS``.

    ``norm_matched`` (ours, not the paper's) first rescales each row of ``text_embed`` to the norm
    of that row's CLS token, so that ``lam`` weighs two terms of equal size."""
    cls = x[:, 0]
    cls = (1.0 - lam) * text_term(text_embed.to(x.dtype), cls, norm_matched) + lam * cls
    return torch.cat([cls.unsqueeze(1), x[:, 1:]], dim=1)


def text_term(text_embed: torch.Tensor, cls: torch.Tensor, norm_matched: bool = False) -> torch.Tensor:
    """The text embedding as step 2 mixes it in: as it is, or (``norm_matched``) each row rescaled to
    the norm of that row's CLS token."""
    if not norm_matched:
        return text_embed
    return text_embed * (cls.norm(dim=-1, keepdim=True) / text_embed.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def other_row(features: torch.Tensor) -> torch.Tensor:
    """The ``other_row`` ablation's pairing: row i gets row ``(i + 1) mod B`` (never itself for B >= 2)."""
    return features.roll(-1, dims=0)


def cls_attention(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Step 3's score: the CLS query's attention probabilities over the patch keys of
    ``block`` (an OpenCLIP ``ResidualAttentionBlock``), averaged over heads, as
    ``nn.MultiheadAttention(need_weights=True)`` returns them with the CLS column dropped.
    Only the CLS query is computed. Returns ``B x (N - 1)``."""
    attn = block.attn
    batch, num_tokens, width = x.shape
    heads = attn.num_heads
    h = block.ln_1(x)
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(h[:, :1], weight[:width], None if bias is None else bias[:width])
    k = F.linear(h, weight[width:2 * width], None if bias is None else bias[width:2 * width])
    q = q.view(batch, 1, heads, -1).transpose(1, 2)
    k = k.view(batch, num_tokens, heads, -1).transpose(1, 2)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # B x H x 1 x N
    probs = logits.float().softmax(dim=-1).mean(dim=1)  # B x 1 x N
    return probs[:, 0, 1:]


def select_tokens(scores: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Step 4: indices of the ``num_keep`` highest scores per row, in their original order."""
    return scores.topk(num_keep, dim=1, sorted=False).indices.sort(dim=1).values


def merge_weights(scores: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
    """Step 5's weights: scores of the pruned tokens renormalised (``+1e-6``), zero where kept."""
    pruned = scores.scatter(1, keep_index, 0.0)
    return pruned / (pruned.sum(dim=1, keepdim=True) + MERGE_EPS)


def prune_and_merge(
        x: torch.Tensor,
        scores: torch.Tensor,
        num_keep: int,
        merge: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 4-6: ``[CLS, kept patches in original order, merged token]``.

    ``scores`` (``B x (N - 1)``, no gradient) ranks the patch tokens of ``x``. The merged
    token is the ``merge_weights`` average of the pruned tokens of the real ``x``, so gradient
    flows through the tokens, not the weights; it is omitted when ``merge`` is False or
    nothing is pruned. Returns the new sequence, the kept indices (into ``x[:, 1:]``) and
    the merge weights (``B x (N - 1)``, zero where kept).
    """
    patches = x[:, 1:]
    keep_index = select_tokens(scores, num_keep)
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    kept = patches[rows, keep_index]  # unlike gather, saves only the indices for backward
    weights = merge_weights(scores, keep_index)
    parts = [x[:, :1], kept]
    if merge and num_keep < patches.shape[1]:
        parts.append(weights.to(x.dtype).unsqueeze(1) @ patches)
    return torch.cat(parts, dim=1), keep_index, weights
