"""The -mask family (open_clip_elip.families.mask) against its description written out one sample at a time:
each strategy's kept patches, the EMA tower's upkeep, the stock model in eval mode, state dicts both ways,
options, torch.compile, and OpenCLIP's own trainer (every strategy two steps, --accum-freq 2, --resume)."""
import copy
import json
import math
import os
import subprocess
import sys
from itertools import combinations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip import ClipLoss, create_model, tokenize
from open_clip.model import CLIP
from open_clip.transformer import PatchDropout, VisionTransformer
from scipy.stats import chi2_contingency, chisquare

from open_clip_elip.core.reduce import select_tokens
from open_clip_elip.core.registration import EXTRA_CONFIGS_ENV
from open_clip_elip.families.mask import MaskCLIP, apply_mask, select, stock_state_dict
from open_clip_elip.families.mask.ema import momentum
from open_clip_elip.families.mask.model import STRATEGIES

CAPTIONS = ["a photo of the digit three", "a photo of the digit seven", "a photo of the digit zero"]
GRID = 8  # 32 px, patch 4
N = GRID * GRID


def tiny_config(image_size=32):
    """Patch 4, 4 layers of width 64 in 2 heads: an 8 x 8 grid at 32 px, 7 x 7 at 28 px."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image_size, "layers": 4, "width": 64, "head_width": 32, "patch_size": 4},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def tiny_mask(seed=0, image_size=32, **mask_cfg):
    torch.manual_seed(seed)
    return MaskCLIP(**tiny_config(image_size), mask_cfg=mask_cfg)


def images(batch, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def captions(model, batch=3):
    with torch.no_grad():
        return model.encode_text(tokenize(CAPTIONS[:batch], context_length=16), normalize=True)


def traced(model, image, text=None, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return model.visual.trace(image, text)


# --- the plain re-computations ---------------------------------------------------------------------------------

def top(scores, k):
    """The ``k`` highest of a list of scores, as a sorted list of indices."""
    return sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])


def plain_layer_attention(ema, image):
    """Per layer, the CLS row of the attention (averaged over heads, as nn.MultiheadAttention returns it), its
    patch columns; and the tokens after the last layer. Through the stock blocks, one sample at a time."""
    rows, tokens = [], ema._embeds(image[None])
    for block in ema.transformer.resblocks:
        h = block.ln_1(tokens)
        _, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=True)
        rows.append(weights[0, 0, 1:])
        tokens = block(tokens)
    return rows, tokens[0]


def plain_cells(scores, grid=GRID):
    """A-CLIP's get_att_mask on one sample: the mean of each 2x2 cell, the top int(cells / 2) + 1 cells, their
    four patches each."""
    cells = {}
    for r in range(0, grid, 2):
        for c in range(0, grid, 2):
            members = [r * grid + c, r * grid + c + 1, (r + 1) * grid + c, (r + 1) * grid + c + 1]
            cells[tuple(members)] = sum(float(scores[i]) for i in members) / 4
    ranked = sorted(cells, key=lambda m: -cells[m])[:int(len(cells) * 0.5) + 1]
    return sorted(i for members in ranked for i in members)


def zscore(values):
    values = torch.as_tensor(values, dtype=torch.float64)
    return (values - values.mean()) / values.std(unbiased=False)


def plain_attentive(model, image, layers="all", pooling="cells"):
    """A-CLIP's mask for one image: CLS attention averaged over heads and every layer, cells. The mutations:
    ``layers="last"`` (not averaged over layers), ``pooling="strips"`` (1 x 4 strips instead of 2x2 cells)."""
    with torch.no_grad():
        rows, _ = plain_layer_attention(model.visual_ema, image)
    scores = rows[-1] if layers == "last" else sum(rows) / len(rows)
    if pooling == "strips":
        strips = scores.view(-1, 4).mean(dim=1).repeat_interleave(4)
        return top(strips.tolist(), select.attentive_keep_count((GRID, GRID), 0.5))
    return plain_cells(scores)


def plain_similarity(model, image, caption, lam):
    """attentive_text, similarity scoring, for one image: lam z(attention) + (1 - lam) z(cosine of each patch
    through ln_post and proj with the caption), then cells."""
    ema = model.visual_ema
    with torch.no_grad():
        rows, tokens = plain_layer_attention(ema, image)
        attention = sum(rows) / len(rows)
        cosines = [float(F.cosine_similarity(ema.ln_post(tokens[1 + i]) @ ema.proj, caption, dim=0))
                   for i in range(N)]
    return plain_cells(lam * zscore(attention) + (1 - lam) * zscore(cosines))


def plain_fused(model, image, caption, lam):
    """attentive_text, fused scoring, for one image: in each layer the query of (1 - lam) t + lam CLS, t the caption
    in the tower's width rescaled to the CLS norm, over the keys of every token; per head, then averaged."""
    ema = model.visual_ema
    total = torch.zeros(N)
    with torch.no_grad():
        text = ema.proj @ caption
        tokens = ema._embeds(image[None])[0]
        for block in ema.transformer.resblocks:
            cls = tokens[0]
            fused = (1 - lam) * text * (cls.norm() / text.norm()) + lam * cls
            weight, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
            width, heads = cls.shape[0], block.attn.num_heads
            query = weight[:width] @ block.ln_1(fused) + bias[:width]
            keys = block.ln_1(tokens) @ weight[width:2 * width].T + bias[width:2 * width]
            d = width // heads
            per_head = [torch.softmax(keys[:, h * d:(h + 1) * d] @ query[h * d:(h + 1) * d] / math.sqrt(d), dim=0)
                        for h in range(heads)]
            total += (sum(per_head) / heads)[1:]
            tokens = block(tokens[None])[0]
    return plain_cells(total / len(ema.transformer.resblocks))


def plain_center_scores(u, grid, cov, sign=1.0):
    """GLIP's u + pdf(p) - 1 for one sample, the density written out; ``sign=-1``: the flipped mutation."""
    scores = []
    for r in range(grid[0]):
        for c in range(grid[1]):
            y, x = -1 + 2 * r / (grid[0] - 1), -1 + 2 * c / (grid[1] - 1)
            pdf = math.exp(-(x * x + y * y) / (2 * cov)) / (2 * math.pi * cov)
            scores.append(float(u[r * grid[1] + c]) + sign * pdf - 1)
    return scores


def plain_pixel_similarity(image, anchors, patch=4):
    """Each patch's highest cosine to an anchor over its raw pixels standardised per patch (mean 0, variance 1)."""
    vectors = []
    for r in range(GRID):
        for c in range(GRID):
            v = image[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].flatten().double()
            vectors.append((v - v.mean()) / v.std(unbiased=False))
    return [max(float(F.cosine_similarity(v, vectors[a], dim=0)) for a in anchors) for v in vectors]


# --- strategies against their re-computations ------------------------------------------------------------------

def test_attentive_keeps_a_clips_cells_and_the_mutations_differ():
    model = tiny_mask(strategy="attentive").train()
    image = images(4)
    kept = traced(model, image)
    assert kept.shape == (4, 36) and select.attentive_keep_count((14, 14), 0.5) == 100  # 9 of 16 cells; ViT-B/16
    for b in range(4):
        assert kept[b].tolist() == plain_attentive(model, image[b])
    for mutation in ({"layers": "last"}, {"pooling": "strips"}):
        assert any(plain_attentive(model, image[b], **mutation) != kept[b].tolist() for b in range(4)), mutation


def test_attentive_on_an_odd_grid_keeps_whole_cells_first():
    """7 x 7: the last row and column of cells are one patch wide; int(49 / 2) patches, ranked by their cell's
    mean (docs/masking.md)."""
    model = tiny_mask(image_size=28, strategy="attentive").train()
    image = images(2, size=28)
    kept = traced(model, image)
    assert kept.shape == (2, 24)
    for b in range(2):
        with torch.no_grad():
            rows, _ = plain_layer_attention(model.visual_ema, image[b])
        scores = (sum(rows) / len(rows)).view(7, 7)
        cell = {(r, c): scores[r - r % 2:r - r % 2 + 2, c - c % 2:c - c % 2 + 2].mean() for r in range(7)
                for c in range(7)}
        by_patch = [float(cell[divmod(i, 7)]) for i in range(49)]
        dropped = set(range(49)) - set(kept[b].tolist())
        assert min(by_patch[i] for i in kept[b].tolist()) >= max(by_patch[i] for i in dropped) - 1e-7


def test_center_keeps_the_top_of_u_plus_the_prior_at_a_fixed_seed_and_the_flipped_sign_differs():
    model = tiny_mask(strategy="center", center_cov=0.3).train()
    image = images(3)
    kept = traced(model, image, seed=7)
    torch.manual_seed(7)
    u = torch.rand(3, N)
    for b in range(3):
        assert kept[b].tolist() == top(plain_center_scores(u[b], (GRID, GRID), 0.3), 32)
        assert top(plain_center_scores(u[b], (GRID, GRID), 0.3, sign=-1.0), 32) != kept[b].tolist()


def test_center_inclusion_frequencies_match_a_plain_sampler():
    """Each patch's share of 4000 draws, against the description sampled with numpy one draw at a time; the
    flipped prior is far off."""
    draws, grid, cov = 4000, (GRID, GRID), 0.2
    torch.manual_seed(0)
    ours = torch.zeros(N)
    kept = select_tokens(select.center_scores(draws, grid, cov, "cpu"), 32)
    ours.scatter_add_(0, kept.flatten(), torch.ones(kept.numel()))
    rng = np.random.default_rng(0)
    plain, flipped = np.zeros(N), np.zeros(N)
    for _ in range(draws):
        u = rng.random(N)
        plain[top(plain_center_scores(u, grid, cov), 32)] += 1
        flipped[top(plain_center_scores(u, grid, cov, sign=-1.0), 32)] += 1
    ours, plain, flipped = ours.numpy() / draws, plain / draws, flipped / draws
    bound = 5 * np.sqrt(2 * 0.25 / draws)  # 5 sigma of a difference of two shares
    assert np.abs(ours - plain).max() < bound
    assert np.abs(ours - flipped).max() > 10 * bound
    assert ours[3 * GRID + 3] > 0.95 and ours[0] < 0.4  # the centre nearly always kept, a corner mostly masked


def kept_set_counts(kept: torch.Tensor, n: int, k: int) -> np.ndarray:
    index = {subset: i for i, subset in enumerate(combinations(range(n), k))}
    counts = np.zeros(len(index))
    for row in kept.sort(dim=1).values.tolist():
        counts[index[tuple(row)]] += 1
    return counts


def test_random_kept_sets_are_distributed_as_openclip_patch_dropout():
    """6 patches at 0.5: the 20 possible kept sets, 6000 draws each way; equal to PatchDropout's distribution
    (and uniform); centre-biased scores, the mutation, are not."""
    draws, n = 6000, 6
    torch.manual_seed(0)
    dropout = PatchDropout(0.5).train()
    tokens = torch.arange(n + 1, dtype=torch.float32).view(1, n + 1, 1).expand(draws, -1, -1)
    theirs = dropout(tokens)[:, 1:, 0].long() - 1
    k = theirs.shape[1]
    assert k == select.keep_count(n, 0.5) == 3
    ours = select_tokens(select.random_scores(draws, n, "cpu"), k)
    biased = select_tokens(select.center_scores(draws, (2, 3), 0.2, "cpu"), k)
    counts = [kept_set_counts(kept, n, k) for kept in (ours, theirs, biased)]
    assert chi2_contingency(np.stack(counts[:2])).pvalue > 1e-3
    assert chisquare(counts[0]).pvalue > 1e-3
    assert chi2_contingency(np.stack([counts[0], counts[2]])).pvalue < 1e-9


def test_random_masks_differ_per_image_and_keep_sorted_unique_patches():
    model = tiny_mask(strategy="random").train()
    kept = traced(model, images(8))
    assert kept.shape == (8, 32) and (kept.diff(dim=1) > 0).all() and len({tuple(r) for r in kept.tolist()}) == 8


def test_cluster_masks_the_patches_most_like_an_anchor():
    model = tiny_mask(strategy="cluster", anchor_ratio=0.05).train()
    image = images(3)
    kept = traced(model, image, seed=3)
    torch.manual_seed(3)
    anchors = torch.rand(3, N).topk(select.anchor_count(N, 0.05)).indices
    assert anchors.shape == (3, 3)
    for b in range(3):
        similarity = plain_pixel_similarity(image[b], anchors[b].tolist())
        masked = set(range(N)) - set(kept[b].tolist())
        assert set(anchors[b].tolist()) <= masked
        assert min(similarity[i] for i in masked) >= max(similarity[i] for i in kept[b].tolist()) - 1e-6
        mutated = top(similarity, 32)  # the mutation keeps the most anchor-like
        assert min(similarity[i] for i in set(range(N)) - set(mutated)) < max(similarity[i] for i in mutated)


def test_attentive_text_scorings_match_their_re_computations_and_steer():
    for scoring, plain in (("similarity", plain_similarity), ("fused", plain_fused)):
        model = tiny_mask(strategy="attentive_text", text_scoring=scoring, lam=0.3).train()
        image, text = images(3), captions(model)
        kept = traced(model, image, text)
        for b in range(3):
            assert kept[b].tolist() == plain(model, image[b], text[b], 0.3), (scoring, b)
        attentive = tiny_mask(strategy="attentive").train()
        assert torch.equal(traced(model, image), traced(attentive, image))  # without a caption: attentive
        apply_mask(model, lam=0.0)
        other = traced(model, image, text.roll(1, dims=0))
        assert not torch.equal(traced(model, image, text), other), scoring  # the caption chooses


def test_the_model_passes_the_caption_only_to_attentive_text_in_training():
    seen = []
    for strategy in ("attentive_text", "attentive", "random"):
        model = tiny_mask(strategy=strategy)
        model.visual.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("text_features") is not None),
                                               with_kwargs=True)
        for mode in (True, False):
            model.train(mode)
            with torch.no_grad():
                model(images(3), tokenize(CAPTIONS, context_length=16))
    assert seen == [True, False, False, False, False, False]


# --- the stock model, state dicts, export ---------------------------------------------------------------------

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_eval_output_is_the_stock_models_bit_for_bit_and_training_masks(strategy):
    model = tiny_mask(strategy=strategy)
    stock = CLIP(**tiny_config())
    stock.load_state_dict(stock_state_dict(model.state_dict()), strict=True)
    image, text = images(3), tokenize(CAPTIONS, context_length=16)
    model.eval(), stock.eval()
    with torch.no_grad():
        ours, theirs = model(image, text), stock(image, text)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    model.train(), stock.train()
    with torch.no_grad():
        assert not torch.allclose(model(image, text)[0], stock(image, text)[0])


def test_a_full_keep_ratio_is_the_stock_forward_in_training():
    for strategy in STRATEGIES:
        model = tiny_mask(strategy=strategy, keep_ratio=1.0).train()
        stock = CLIP(**tiny_config()).train()
        stock.load_state_dict(stock_state_dict(model.state_dict()))
        with torch.no_grad():
            assert torch.equal(model.encode_image(images(2)), stock.encode_image(images(2))), strategy


def test_state_dicts_with_the_ema_tower_load_strictly_both_ways():
    stock = CLIP(**tiny_config())
    model = tiny_mask(seed=1, strategy="attentive")
    model.load_state_dict(stock.state_dict(), strict=True)  # a stock checkpoint: the EMA starts from its weights
    for key, value in stock.visual.state_dict().items():
        assert torch.equal(model.visual_ema.state_dict()[key], value) and torch.equal(model.visual.state_dict()[key],
                                                                                      value), key
    assert model.visual.ema_steps.item() == 0
    assert type(model.visual_ema) is VisionTransformer
    assert not any(p.requires_grad for p in model.visual_ema.parameters())
    exported = stock_state_dict(model.state_dict())
    assert set(model.state_dict()) - set(exported) == {"visual.ema_steps", *(f"visual.ema.{k}" for k in
                                                                             stock.visual.state_dict())}
    CLIP(**tiny_config()).load_state_dict(exported, strict=True)
    with torch.no_grad():
        model.visual_ema.conv1.weight.add_(1.0)
        model.visual.ema_steps.fill_(5)
    again = tiny_mask(seed=2, strategy="attentive")
    again.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(again.visual_ema.conv1.weight, model.visual_ema.conv1.weight)
    assert again.visual.ema_steps.item() == 5
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}  # a DDP trainer checkpoint
    assert set(stock_state_dict(wrapped)) == {f"module.{k}" for k in exported}


def test_the_non_ema_strategies_have_the_stock_state_dict():
    keys = set(CLIP(**tiny_config()).state_dict())
    for strategy in ("random", "center", "cluster"):
        assert set(tiny_mask(strategy=strategy).state_dict()) == keys


# --- the EMA tower's upkeep --------------------------------------------------------------------------------------

def test_momentum_rises_from_the_base_to_one_on_a_cosine():
    for step, expected in ((0, 0.996), (25, 1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2), (50, 0.998), (100, 1.0),
                           (150, 1.0)):
        assert momentum(torch.tensor(step), 0.996, 100).item() == pytest.approx(expected, abs=1e-7)
    assert momentum(torch.tensor(1000), 0.99, None).item() == pytest.approx(0.99)


def loss_step(model, optimizer):
    optimizer.zero_grad()
    ClipLoss()(*model(images(3), tokenize(CAPTIONS, context_length=16))).backward()
    optimizer.step()


def test_one_ema_update_per_optimizer_step_in_training_only():
    model = tiny_mask(strategy="attentive", ema_momentum=0.9, total_steps=4).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    before = {k: v.clone() for k, v in model.visual_ema.state_dict().items()}
    for _ in range(3):  # forward passes without a step: no update
        with torch.no_grad():
            model(images(3), tokenize(CAPTIONS, context_length=16))
    assert model.visual.ema_steps.item() == 0
    loss_step(model, optimizer)
    online = model.visual.state_dict()
    assert model.visual.ema_steps.item() == 1
    for key, value in model.visual_ema.state_dict().items():
        torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * online[key], rtol=0, atol=1e-6, msg=key)
    m = 1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2  # the second step's momentum (1 of 4 steps done)
    previous = {k: v.clone() for k, v in model.visual_ema.state_dict().items()}
    loss_step(model, optimizer)
    for key, value in model.visual_ema.state_dict().items():
        expected = m * previous[key] + (1 - m) * model.visual.state_dict()[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6, msg=key)
    model.eval()
    optimizer.step()  # eval mode: no update
    other = torch.optim.SGD(torch.nn.Linear(2, 2).parameters())
    model.train()
    other.step()  # an optimizer of other parameters: no update
    assert model.visual.ema_steps.item() == 2


def test_a_step_that_amps_grad_scaler_skips_skips_the_ema_update():
    model = tiny_mask(strategy="attentive").train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    for poisoned in (True, False):
        optimizer.zero_grad()
        loss = ClipLoss()(*model(images(3), tokenize(CAPTIONS, context_length=16)))
        scaler.scale(loss * (math.inf if poisoned else 1.0)).backward()
        scaler.step(optimizer)
        scaler.update()
        assert model.visual.ema_steps.item() == (0 if poisoned else 1)


def test_grad_checkpointing_gives_the_same_loss_and_grads_with_the_ema_tower():
    model = tiny_mask(strategy="attentive_text").train()
    results = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad(set_to_none=True)
        loss = ClipLoss()(*model(images(3), tokenize(CAPTIONS, context_length=16)))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss, grads), (ckpt_loss, ckpt_grads) = results
    torch.testing.assert_close(ckpt_loss, loss)
    for key, grad in grads.items():
        torch.testing.assert_close(ckpt_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)
    assert "visual.ema.conv1.weight" not in grads


@pytest.mark.parametrize("strategy,scoring", [("attentive_text", "fused"), ("attentive_text", "similarity"),
                                              ("cluster", "fused")])
def test_the_training_forward_compiles_without_graph_breaks(strategy, scoring):
    torch._dynamo.reset()
    model = tiny_mask(strategy=strategy, text_scoring=scoring).train()
    image, text = images(2), captions(model, 2)
    compiled = torch.compile(model.visual, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    expected = model.visual(image, text_features=text)
    torch.manual_seed(0)
    out = compiled(image, text_features=text)
    assert out.shape == (2, 32)
    if strategy == "attentive_text":  # deterministic: the same kept patches
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.pow(2).sum().backward()
    assert torch.isfinite(model.visual.conv1.weight.grad).all()


# --- options ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, named", [
    ({"strategy": "Random"}, "strategy must be one of"),
    ({"keep_ratio": 0}, r"keep_ratio must be a number in \(0, 1\]"),
    ({"keep_ratio": 1.5}, "keep_ratio must be"),
    ({"keep_ratio": "0.5"}, "keep_ratio must be"),
    ({"keep_ratio": True}, "keep_ratio must be"),
    ({"center_cov": 0.0}, r"center_cov must be a number in \(0, 100\]"),
    ({"anchor_ratio": 0}, "anchor_ratio must be"),
    ({"text_scoring": "cosine"}, "text_scoring must be one of"),
    ({"lam": 1.5}, "lam must be a number in"),
    ({"ema_momentum": "high"}, "ema_momentum must be"),
    ({"total_steps": 0}, "total_steps must be an integer >= 1"),
    ({"total_steps": True}, "total_steps must be"),
    ({"total_steps": 10.0}, "total_steps must be"),
    ({"ratio": 0.5}, r"unknown option\(s\) \['ratio'\]"),
])
def test_bad_options_are_named_and_leave_the_model_as_it_was(options, named):
    stock = CLIP(**tiny_config())
    with pytest.raises(ValueError, match=named):
        apply_mask(stock, **options)
    assert type(stock) is CLIP and type(stock.visual) is VisionTransformer
    model = apply_mask(CLIP(**tiny_config()), strategy="attentive", keep_ratio=0.25)
    ema = model.visual_ema
    with pytest.raises(ValueError, match=named):
        apply_mask(model, options)
    assert model.options()["keep_ratio"] == 0.25 and model.visual_ema is ema and model.visual.num_keep == 20


def test_apply_mask_changes_only_the_options_it_names_and_keeps_the_ema_tower():
    model = apply_mask(CLIP(**tiny_config()), {"strategy": "attentive"}, total_steps=10)
    ema = model.visual_ema
    apply_mask(model, keep_ratio=0.25)
    assert model.options()["strategy"] == "attentive" and model.options()["total_steps"] == 10
    assert model.visual_ema is ema and model.visual.num_keep == 4 * (int(16 * 0.25) + 1)
    apply_mask(model, strategy="random")
    assert model.visual_ema is None and "visual.ema_steps" not in model.state_dict()


def test_patch_dropout_is_refused():
    stock = CLIP(**{**tiny_config(), "vision_cfg": {**tiny_config()["vision_cfg"], "patch_dropout": 0.5}})
    with pytest.raises(ValueError, match="also has patch dropout"):
        apply_mask(stock)
    assert type(stock.visual) is VisionTransformer


def test_bad_inputs_are_named():
    model = tiny_mask(strategy="attentive_text").train()
    with pytest.raises(ValueError, match="does not match the model's image size"):
        model.visual.trace(images(2, size=28))
    with pytest.raises(ValueError, match="one caption embedding per image"):
        model.visual.trace(images(2), torch.zeros(3, 32))


def test_vit_b_16_attentive_builds_without_weights():
    model = create_model("ViT-B-16-mask", mask_cfg={"strategy": "attentive"})
    assert type(model) is MaskCLIP and type(model.visual_ema) is VisionTransformer
    assert model.visual.num_keep == 100 and model.options()["strategy"] == "attentive"
    assert not any(p.requires_grad for p in model.visual_ema.parameters())


# --- OpenCLIP's trainer -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mask_configs(tiny_configs, tmp_path_factory):
    """``ViT-Mask-4-<strategy>`` configs; the attentive one with the run's length (4 optimizer steps)."""
    folder = tmp_path_factory.mktemp("mask_configs")
    for strategy in STRATEGIES:
        extra = {"total_steps": 4} if strategy == "attentive" else {}
        config = {**tiny_config(), "mask_cfg": {"strategy": strategy, **extra}}
        (folder / f"ViT-Mask-4-{strategy}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return folder


def start(folder, shard, logs, strategy, *flags):
    """OpenCLIP's trainer, unmodified, in a fresh process (wait with ``finish``)."""
    env = {**os.environ, EXTRA_CONFIGS_ENV: str(folder)}
    command = [sys.executable, "-m", "open_clip_train.main", "--model", f"ViT-Mask-4-{strategy}", "--train-data",
               str(shard), "--dataset-type", "webdataset", "--workers", "0", "--device", "cpu", "--logs", str(logs),
               "--name", strategy, "--lr", "1e-3", "--warmup", "1", "--seed", "0", "--log-every-n-steps", "1", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return process, logs / strategy


def finish(started):
    process, run = started
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-4000:]
    return run


def train(*args):
    return finish(start(*args))


def test_a_stock_checkpoint_file_loads_into_an_attentive_twin(mask_configs, tmp_path):
    stock = CLIP(**tiny_config())
    torch.save(stock.state_dict(), tmp_path / "stock.pt")
    model = create_model("ViT-Mask-4-attentive", pretrained=str(tmp_path / "stock.pt"))
    for key, value in stock.visual.state_dict().items():
        assert torch.equal(model.visual_ema.state_dict()[key], value), key
    assert open_clip.list_pretrained_tags_by_model("ViT-B-16-mask") == open_clip.list_pretrained_tags_by_model(
        "ViT-B-16")


def test_every_other_strategy_runs_two_trainer_steps(mask_configs, tiny_shard, tmp_path):
    """(random, the default, runs in tests/test_families.py; attentive below.)"""
    flags = ("--train-num-samples", "32", "--batch-size", "16", "--epochs", "1")
    started = {strategy: start(mask_configs, tiny_shard, tmp_path, strategy, *flags)
               for strategy in ("center", "cluster", "attentive_text")}
    for strategy, process in started.items():  # the three trainers run side by side
        run = finish(process)
        assert "[32/32 (100%)]" in (run / "out.log").read_text()
        model = create_model(f"ViT-Mask-4-{strategy}", pretrained=str(run / "checkpoints" / "epoch_1.pt"))
        assert type(model) is MaskCLIP and model.options()["strategy"] == strategy


def test_attentive_trains_with_accum_freq_and_resumes_its_ema_tower(mask_configs, tiny_shard, tmp_path):
    """--accum-freq 2: 4 batches of 8, 2 optimizer steps (the model is called 8 times in training mode): 2 EMA
    updates. --resume for one more step: the EMA tower and its count continue from the checkpoint."""
    accum = ["--batch-size", "8", "--accum-freq", "2"]
    first = train(mask_configs, tiny_shard, tmp_path / "a", "attentive", "--train-num-samples", "32", "--epochs", "1",
                  *accum)
    one = torch.load(first / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert one["visual.ema_steps"].item() == 2
    assert not torch.equal(one["visual.ema.conv1.weight"], one["visual.conv1.weight"])
    resumed = train(mask_configs, tiny_shard, tmp_path / "b", "attentive", "--train-num-samples", "16", "--epochs",
                    "2", "--resume", str(first / "checkpoints" / "epoch_1.pt"), *accum)
    two = torch.load(resumed / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert two["visual.ema_steps"].item() == 3
    m = 1 - 0.004 * (math.cos(math.pi * 2 / 4) + 1) / 2  # the momentum after 2 of the run's 4 steps
    ema_keys = [k for k in two if k.startswith("visual.ema.")]
    assert ema_keys
    for key in ema_keys:
        online = two["visual." + key.removeprefix("visual.ema.")]
        torch.testing.assert_close(two[key], m * one[key] + (1 - m) * online, rtol=0, atol=1e-6, msg=key)


def test_forward_intermediates_in_training_are_the_masked_tokens():
    """In training the tower's intermediates are those of the masked forward (CLS and the kept patches per layer,
    the same draw as the forward's at the same seed); a patch-grid format is refused; in eval mode they are
    stock's."""
    torch.manual_seed(0)
    stock = CLIP(**tiny_config()).eval()
    model = apply_mask(copy.deepcopy(stock), strategy="center").train()
    image = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="-mask reduces the image tokens.*output_fmt='NLC'"):
        model.visual.forward_intermediates(image)
    torch.manual_seed(1)
    out = model.visual.forward_intermediates(image, output_fmt="NLC")
    torch.manual_seed(1)
    features = model.visual(image)
    assert [y.shape[1] for y in out["image_intermediates"]] == [model.visual.num_keep] * 4
    assert torch.equal(out["image_features"], features)
    model.eval()
    ours, theirs = model.visual.forward_intermediates(image), stock.visual.forward_intermediates(image)
    for mine, reference in zip(ours["image_intermediates"], theirs["image_intermediates"]):
        assert torch.equal(mine, reference)
