"""Keep and merge: the token bookkeeping that pruning and merging families share. Tokens are batch first,
``B x N x W``, CLS at index 0; every function is vectorised over the batch with static output shapes."""
from __future__ import annotations

import torch


def select_tokens(scores: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Indices of the ``num_keep`` highest scores per row, in their original order."""
    return scores.topk(num_keep, dim=1, sorted=False).indices.sort(dim=1).values


def take_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens[b, index[b]]`` per row (``B x k x W``); unlike gather, saves only the indices for backward."""
    rows = torch.arange(tokens.shape[0], device=tokens.device).unsqueeze(1)
    return tokens[rows, index]


def weighted_token(weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """One token per row, the ``weights``-weighted sum of ``tokens`` (``B x N`` and ``B x N x W`` -> ``B x 1 x W``)."""
    return weights.to(tokens.dtype).unsqueeze(1) @ tokens
