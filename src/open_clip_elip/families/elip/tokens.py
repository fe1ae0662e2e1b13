"""ELIP's maths as pure functions: fuse, select, merge (docs/method.md, steps 1-6; the CLS attention score is
``core.attention.cls_attention``).

Tokens are batch-first, ``B x N x W``, CLS at index 0. Every function is vectorised over
the batch and has static output shapes, so that ``torch.compile`` sees no host sync.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from ...core.attention import match_norm
from ...core.reduce import select_tokens, take_tokens, weighted_token

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
    return match_norm(text_embed, cls) if norm_matched else text_embed


def other_row(features: torch.Tensor) -> torch.Tensor:
    """The ``other_row`` ablation's pairing: row i gets row ``(i + 1) mod B`` (never itself for B >= 2)."""
    return features.roll(-1, dims=0)


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
    weights = merge_weights(scores, keep_index)
    parts = [x[:, :1], take_tokens(patches, keep_index)]
    if merge and num_keep < patches.shape[1]:
        parts.append(weighted_token(weights, patches))
    return torch.cat(parts, dim=1), keep_index, weights
