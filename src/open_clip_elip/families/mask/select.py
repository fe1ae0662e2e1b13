"""The ``-mask`` family's maths as pure functions: how many patches each strategy keeps, and the per-patch
scores whose top ``k`` are kept (``core.reduce.select_tokens``). Scores are ``B x N`` over the ``N`` patch tokens
in raster order (row by row of the ``rows x cols`` patch grid); every function is vectorised over the batch,
has static output shapes and makes no host sync. Randomness comes from ``torch.rand`` on the input's device."""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

NORM_EPS = 1e-6  # per-patch pixel standardisation and score standardisation


def keep_count(num_patches: int, keep_ratio: float) -> int:
    """Patches kept by ``random``, ``center`` and ``cluster`` (and ``attentive*`` on a grid with an odd side):
    ``int(N x keep_ratio)``, at least one, as OpenCLIP's ``PatchDropout`` counts them."""
    return max(1, int(num_patches * keep_ratio))


def cell_grid(grid: Tuple[int, int]) -> Tuple[int, int]:
    """Rows and columns of 2x2 cells over a patch grid; on an odd side the last cell is one patch wide."""
    return math.ceil(grid[0] / 2), math.ceil(grid[1] / 2)


def attentive_keep_count(grid: Tuple[int, int], keep_ratio: float) -> int:
    """Patches kept by ``attentive*``: A-CLIP's ``int(cells x keep_ratio) + 1`` cells of four patches on a grid
    with even sides (100 of 196 on a 14 x 14 grid at 0.5); ``keep_count`` on a grid with an odd side (its edge
    cells hold fewer than four patches); never more than every patch."""
    num_patches = grid[0] * grid[1]
    if grid[0] % 2 or grid[1] % 2:
        return keep_count(num_patches, keep_ratio)
    cells = num_patches // 4
    return min(num_patches, 4 * (int(cells * keep_ratio) + 1))


def random_scores(batch: int, num_patches: int, device) -> torch.Tensor:
    """FLIP: i.i.d. uniform scores, so the top ``k`` are a uniform ``k``-subset (without replacement)."""
    return torch.rand(batch, num_patches, device=device)


def center_prior(grid: Tuple[int, int], cov: float, device=None) -> torch.Tensor:
    """GLIP's centre prior per patch (``N``): the density of a bivariate normal with mean 0 and covariance
    ``cov x I`` at the patch's position on a grid spanning [-1, 1] on each axis (corners at +-1)."""
    ys = torch.linspace(-1.0, 1.0, grid[0], device=device)
    xs = torch.linspace(-1.0, 1.0, grid[1], device=device)
    squared = (ys[:, None] ** 2 + xs[None, :] ** 2).flatten()
    return torch.exp(-squared / (2 * cov)) / (2 * math.pi * cov)


def center_scores(batch: int, grid: Tuple[int, int], cov: float, device) -> torch.Tensor:
    """GLIP: ``u + pdf(p) - 1`` per patch, ``u ~ U(0, 1)``; the top ``k`` are kept."""
    return torch.rand(batch, grid[0] * grid[1], device=device) + center_prior(grid, cov, device) - 1.0


def patch_pixels(images: torch.Tensor, patch_size: Tuple[int, int]) -> torch.Tensor:
    """Each patch's raw pixels as a vector (``B x N x (C p p)``, raster order), standardised per patch (mean 0,
    variance 1; a flat patch stays zero)."""
    patches = F.unfold(images.float(), kernel_size=patch_size, stride=patch_size).transpose(1, 2)
    centred = patches - patches.mean(dim=-1, keepdim=True)
    return centred / (centred.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS).sqrt()


def anchor_count(num_patches: int, anchor_ratio: float) -> int:
    """Random anchors of ``cluster``: ``round(N x anchor_ratio)``, at least one."""
    return max(1, round(num_patches * anchor_ratio))


def anchor_similarity(pixels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Each patch's highest cosine similarity to any anchor patch (``B x N``); ``anchors`` is ``B x A``."""
    unit = F.normalize(pixels, dim=-1)
    chosen = unit.gather(1, anchors.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))
    return (unit @ chosen.transpose(1, 2)).amax(dim=-1)


def cluster_scores(images: torch.Tensor, patch_size: Tuple[int, int], anchor_ratio: float) -> torch.Tensor:
    """E-CLIP's cluster masking as a per-sample top-k: random anchors, each patch scored by minus its highest
    similarity to an anchor, so that the most anchor-like patches (the anchors first) are the ones masked."""
    pixels = patch_pixels(images, patch_size)
    batch, num_patches = pixels.shape[:2]
    anchors = random_scores(batch, num_patches, images.device).topk(anchor_count(num_patches, anchor_ratio)).indices
    return -anchor_similarity(pixels, anchors)


def cell_scores(scores: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Each patch's score replaced by the mean over its 2x2 cell (A-CLIP's cell pooling; an edge cell of a grid
    with an odd side averages the patches it has)."""
    batch = scores.shape[0]
    cells = F.avg_pool2d(scores.view(batch, 1, *grid), kernel_size=2, stride=2, ceil_mode=True)
    return cells.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[:, 0, :grid[0], :grid[1]].flatten(1)


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Per row: mean 0, standard deviation 1 (a constant row stays zero), so that two scores mix on one scale."""
    centred = scores - scores.mean(dim=1, keepdim=True)
    return centred / (centred.pow(2).mean(dim=1, keepdim=True) + NORM_EPS).sqrt()

