"""The pure maths of ELIP (families/elip/tokens.py, core/attention.py, core/reduce.py) against the
method's formulas (docs/method.md)."""
import pytest
import torch
from conftest import reference_attention_probs

from open_clip_elip.core import openclip
from open_clip_elip.core.attention import cls_attention
from open_clip_elip.core.openclip import ResidualAttentionBlock
from open_clip_elip.core.reduce import select_tokens
from open_clip_elip.families.elip.tokens import (
    MERGE_EPS,
    fuse_cls,
    keep_counts,
    merge_weights,
    other_row,
    prune_and_merge,
)

PAPER_RATIOS = (0.9, 0.65, 0.4)


@pytest.mark.parametrize("num_tokens, expected", [
    (197, (177, 128, 78)),  # ViT-B/16 at 224 px: 177.3, 128.05, 78.8 -> truncated, not rounded
    (50, (45, 32, 20)),  # ViT-B/32 at 224 px: 45.0, 32.5, 20.0
    (65, (58, 42, 26)),  # the tiny test model: 58.5, 42.25, 26.0
])
def test_keep_counts_truncate_the_original_count(num_tokens, expected):
    assert keep_counts(num_tokens, PAPER_RATIOS) == expected


def test_fuse_cls_mixes_only_the_cls_of_a_copy():
    torch.manual_seed(0)
    x, text_embed = torch.randn(3, 7, 8), torch.randn(3, 8)
    before = x.clone()
    fused = fuse_cls(x, text_embed, lam=0.8)
    assert torch.allclose(fused[:, 0], 0.2 * text_embed + 0.8 * x[:, 0])
    assert torch.equal(fused[:, 1:], x[:, 1:])
    assert torch.equal(x, before)
    assert torch.equal(fuse_cls(x, text_embed, lam=1.0), x)


def test_fuse_cls_norm_matched_rescales_each_text_row_to_its_cls_norm():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 8) * torch.tensor([0.5, 2.0, 9.0]).view(3, 1, 1)  # CLS norms far apart
    text_embed = torch.randn(3, 8) * torch.tensor([[0.01], [1.0], [30.0]])  # and text norms too
    before = x.clone()
    fused = fuse_cls(x, text_embed, lam=0.3, norm_matched=True)
    for i in range(3):
        cls, text = x[i, 0], text_embed[i]
        rescaled = text * (cls.norm() / text.norm())
        torch.testing.assert_close(rescaled.norm(), cls.norm())
        torch.testing.assert_close(fused[i, 0], 0.7 * rescaled + 0.3 * cls)
    assert torch.equal(fused[:, 1:], x[:, 1:])
    assert torch.equal(x, before)
    # only the direction of the text counts; the paper's fusion does depend on its length
    torch.testing.assert_close(fuse_cls(x, text_embed * 5.0, lam=0.3, norm_matched=True), fused)
    assert not torch.allclose(fuse_cls(x, text_embed, lam=0.3), fused)
    assert torch.equal(fuse_cls(x, text_embed, lam=1.0, norm_matched=True), x)
    text_only = fuse_cls(x, text_embed, lam=0.0, norm_matched=True)[:, 0]
    torch.testing.assert_close(text_only.norm(dim=-1), x[:, 0].norm(dim=-1))


def test_other_row_pairs_each_row_with_the_next():
    features = torch.arange(5.0).unsqueeze(1).expand(5, 3)
    assert other_row(features)[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 0.0]
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(other_row(two), two.flip(0))
    for batch in range(2, 7):  # never a row's own
        rows = other_row(torch.arange(batch).unsqueeze(1)).squeeze(1)
        assert not torch.any(rows == torch.arange(batch))
        assert sorted(rows.tolist()) == list(range(batch))


@pytest.mark.parametrize("heads", [1, 4])
def test_cls_attention_equals_a_per_head_recomputation(heads):
    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, heads).eval()
    with torch.no_grad():
        openclip.attention_in_proj(block)[1].normal_()  # a bias in q and k must be taken into account too
        x = torch.randn(2, 11, 32) * 3
        h = block.ln_1(x)
        probs = reference_attention_probs(block, h)  # averaged over heads
        scores = cls_attention(block, x)
    assert scores.shape == (2, 10)
    torch.testing.assert_close(scores, probs[:, 0, 1:], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(scores, torch.full_like(scores, 0.1), atol=1e-3)  # not trivially uniform


def test_select_tokens_keeps_the_top_scores_in_original_order():
    scores = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05],
                           [0.4, 0.0, 0.2, 0.1, 0.3]])
    assert select_tokens(scores, 3).tolist() == [[0, 1, 3], [0, 2, 4]]
    assert select_tokens(scores, 5).tolist() == [[0, 1, 2, 3, 4]] * 2


def test_select_tokens_matches_python_sorting():
    torch.manual_seed(1)
    scores = torch.rand(4, 30)
    for row, index in zip(scores.tolist(), select_tokens(scores, 12).tolist()):
        top = sorted(range(len(row)), key=lambda j: row[j], reverse=True)[:12]
        assert index == sorted(top)


def test_merge_weights_renormalise_the_pruned_scores():
    torch.manual_seed(2)
    scores = torch.rand(3, 9)
    keep_index = select_tokens(scores, 4)
    weights = merge_weights(scores, keep_index)
    kept = torch.zeros_like(scores, dtype=torch.bool).scatter(1, keep_index, True)
    assert torch.all(weights[kept] == 0)
    pruned = scores.masked_fill(kept, 0)
    torch.testing.assert_close(weights, pruned / (pruned.sum(1, keepdim=True) + MERGE_EPS))
    torch.testing.assert_close(weights.sum(1), torch.ones(3), atol=1e-5, rtol=0)


def test_prune_and_merge_builds_cls_kept_merged():
    torch.manual_seed(3)
    x = torch.randn(2, 9, 4, requires_grad=True)
    scores = torch.rand(2, 8)
    out, keep_index, weights = prune_and_merge(x, scores, num_keep=5)
    assert out.shape == (2, 1 + 5 + 1, 4) and keep_index.shape == (2, 5)
    assert torch.equal(out[:, 0], x[:, 0])
    for b in range(2):
        assert keep_index[b].tolist() == sorted(keep_index[b].tolist())
        assert torch.equal(out[b, 1:6], x[b, 1 + keep_index[b]])
        pruned = [j for j in range(8) if j not in keep_index[b].tolist()]
        w = scores[b, pruned] / (scores[b, pruned].sum() + MERGE_EPS)
        torch.testing.assert_close(out[b, 6], (w.unsqueeze(1) * x[b, [1 + j for j in pruned]]).sum(0))
    out[:, -1].sum().backward()  # gradient reaches the pruned tokens with the merge weights
    torch.testing.assert_close(x.grad[:, 1:, 0], weights)
    assert torch.all(x.grad[:, 0] == 0)


def test_prune_and_merge_without_merge():
    torch.manual_seed(4)
    x, scores = torch.randn(2, 9, 4), torch.rand(2, 8)
    merged, _, _ = prune_and_merge(x, scores, num_keep=5, merge=True)
    pruned_only, keep_index, _ = prune_and_merge(x, scores, num_keep=5, merge=False)
    assert pruned_only.shape == (2, 6, 4)
    assert torch.equal(pruned_only, merged[:, :-1])


def test_prune_and_merge_when_nothing_is_pruned():
    torch.manual_seed(5)
    x, scores = torch.randn(2, 9, 4), torch.rand(2, 8)
    out, keep_index, weights = prune_and_merge(x, scores, num_keep=8)  # ratio 1.0: no merged token
    assert torch.equal(out, x)
    assert keep_index.tolist() == [list(range(8))] * 2
    assert torch.all(weights == 0)
