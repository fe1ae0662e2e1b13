"""ToMe (open_clip_elip.tome) against its description written out one sample and one token at a time, and
against the stock model: outputs, token counts, gradients, state dicts, torch.compile, options."""
import json
import math

import pytest
import torch
from open_clip import ClipLoss, create_model, tokenize
from open_clip.model import CLIP
from open_clip.transformer import VisionTransformer

from open_clip_elip.core import openclip
from open_clip_elip.families import tome
from open_clip_elip.families.tome import (
    TomeCLIP,
    TomeVisionTransformer,
    apply_tome,
    tome_default_r,
    tome_token_layer_ratio,
    tome_tokens_per_layer,
)

CAPTIONS = ["a photo of the digit three", "a photo of the digit seven", "a photo of the digit zero"]


def tiny_config(image_size=32, **vision):
    """Patch 4, 4 layers of width 64 in 2 heads: 65 tokens at 32 px (odd), 50 at 28 px (even)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image_size, "layers": 4, "width": 64, "head_width": 32, "patch_size": 4,
                       **vision},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def tiny_tome(seed=0, image_size=32, **tome_cfg):
    torch.manual_seed(seed)
    return TomeCLIP(**tiny_config(image_size), tome_cfg=tome_cfg)


def stock_like(model, image_size=32):
    stock = CLIP(**tiny_config(image_size))
    stock.load_state_dict(model.state_dict(), strict=True)
    return stock


def images(batch, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tokens_in_layers(visual, image):
    """``visual(image)`` without gradient, and (tokens into the attention, tokens into the MLP) of each layer,
    seen at the inputs of its two layer norms."""
    seen, hooks = {}, []
    for i, layer in enumerate(visual.transformer.resblocks):
        for j, norm in enumerate((layer.ln_1, layer.ln_2)):
            hooks.append(norm.register_forward_pre_hook(
                lambda module, args, key=(i, j): seen.__setitem__(key, args[0].shape[1])))
    try:
        with torch.no_grad():
            output = visual(image)
    finally:
        for hook in hooks:
            hook.remove()
    return [(seen[i, 0], seen[i, 1]) for i in range(len(visual.transformer.resblocks))], output


# --- the description, written out ----------------------------------------------------------------------------

def reference_embed(visual, image):
    x = visual.conv1(image).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    return visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)


def reference_attention(block, x, size, prop_attn):
    """One sample (``N x W``): the attention output, one head at a time, and the keys averaged over heads."""
    width, heads = x.shape[1], openclip.attention_heads(block)
    dim = width // heads
    h = block.ln_1(x)
    weight, bias = openclip.attention_in_proj(block)
    q, k, v = (h @ weight[i * width:(i + 1) * width].T + bias[i * width:(i + 1) * width] for i in range(3))
    outs, keys = [], []
    for head in range(heads):
        cols = slice(head * dim, (head + 1) * dim)
        logits = q[:, cols] @ k[:, cols].T / math.sqrt(dim)
        if prop_attn:
            logits = logits + torch.log(size)[None, :]  # log(size) of each key
        outs.append(torch.softmax(logits, dim=-1) @ v[:, cols])
        keys.append(k[:, cols])
    out_weight, out_bias = openclip.attention_out_proj(block)
    return torch.cat(outs, dim=1) @ out_weight.T + out_bias, sum(keys) / heads


def reference_merge(x, size, metric, r, gaps):
    """Bipartite soft matching and the size-weighted merge of one sample; appends to ``gaps`` the margins of
    the choices made (best match against the runner-up; r-th merged edge against the first unmerged one)."""
    n = x.shape[0]
    r = min(r, (n - 1) // 2)
    if r == 0:
        return x, size
    m = [row / torch.linalg.vector_norm(row) for row in metric.detach()]
    a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))
    best_sim, best_match, runner_up_gap = [-math.inf], [None], [math.inf]  # the CLS token: never merged
    for p in a_pos[1:]:
        sims = [float(m[p] @ m[q]) for q in b_pos]
        j = max(range(len(sims)), key=lambda t: sims[t])
        best_sim.append(sims[j])
        best_match.append(j)
        runner_up_gap.append(sims[j] - max((s for t, s in enumerate(sims) if t != j), default=-math.inf))
    order = sorted(range(len(a_pos)), key=lambda i: best_sim[i], reverse=True)  # stable: earlier first on ties
    merged, unmerged = order[:r], sorted(order[r:])
    gaps.extend(runner_up_gap[i] for i in merged)
    gaps.append(best_sim[order[r - 1]] - best_sim[order[r]])
    tokens = [x[a_pos[i]] for i in unmerged]
    sizes = [size[a_pos[i]] for i in unmerged]
    for j, q in enumerate(b_pos):
        group = [q] + [a_pos[i] for i in merged if best_match[i] == j]
        total = sum(size[p] for p in group)
        tokens.append(sum(x[p] * size[p] for p in group) / total)
        sizes.append(total)
    return torch.stack(tokens), torch.stack(sizes)


def reference_forward(visual, image, rs, prop_attn):
    """The image embeddings, the (attention, MLP) token counts of each layer and the choices' margins."""
    blocks = list(visual.transformer.resblocks)
    x = reference_embed(visual, image)
    outputs, gaps = [], []
    for i in range(x.shape[0]):
        xi, size = x[i], torch.ones(x.shape[1])
        counts = []
        for block, r in zip(blocks, rs):
            attention_tokens = xi.shape[0]
            out, metric = reference_attention(block, xi, size, prop_attn)
            xi = xi + block.ls_1(out)
            xi, size = reference_merge(xi, size, metric, r, gaps)
            counts.append((attention_tokens, xi.shape[0]))
            xi = xi + block.ls_2(block.mlp(block.ln_2(xi)))
        outputs.append(visual.ln_post(xi[0]) @ visual.proj)
    return torch.stack(outputs), counts, min(gaps, default=math.inf)


def visual_grads(model):
    return {name: p.grad.clone() for name, p in model.visual.named_parameters()}


SETTINGS = {
    "uniform": (32, {"r": 8}, [(65, 57), (57, 49), (49, 41), (41, 33)]),
    "list_with_zeros": (32, {"r": [0, 12, 0, 20]}, [(65, 65), (65, 53), (53, 53), (53, 33)]),
    "capped": (32, {"r": 40}, [(65, 33), (33, 17), (17, 9), (9, 5)]),
    "prop_attn": (32, {"r": 8, "prop_attn": True}, [(65, 57), (57, 49), (49, 41), (41, 33)]),
    "even": (28, {"r": 6}, [(50, 44), (44, 38), (38, 32), (32, 26)]),
    "even_list_prop_attn": (28, {"r": [5, 30, 0, 3], "prop_attn": True}, [(50, 45), (45, 23), (23, 23), (23, 20)]),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_forward_equals_the_description_written_out(setting):
    image_size, options, expected_counts = SETTINGS[setting]
    model = tiny_tome(seed=0, image_size=image_size, **options).eval()
    visual, image = model.visual, images(3, size=image_size)

    counts, out = tokens_in_layers(visual, image)
    visual(image).square().sum().backward()
    grads = visual_grads(model)
    model.zero_grad()
    expected, expected_counts_, gap = reference_forward(visual, image, visual.tome_rs, visual.tome_prop_attn)
    expected.square().sum().backward()

    assert gap > 1e-6, "a near-tie in the matching (float error is ~1e-7): the comparison would prove little"
    assert counts == expected_counts_ == expected_counts
    assert list(visual.tokens_per_layer()) == expected_counts
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if visual.tome_prop_attn:  # and the sizes do matter to the attention here
        visual.tome_prop_attn = False
        with torch.no_grad():
            assert not torch.allclose(visual(image), expected, rtol=1e-4, atol=1e-4)
    for name, grad in visual_grads(model).items():  # the matching carries no gradient, the merged tokens do
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item(), msg=name)


def flipped_unmerged(match):
    def broken(metric, r):
        src, dst, unmerged = match(metric, r)
        return src, dst, unmerged.flip(-1)  # the CLS token ends up last
    return broken


def cls_first_rest_flipped(match):
    def broken(metric, r):
        src, dst, unmerged = match(metric, r)  # attention does not see the order: only later matchings do
        return src, dst, torch.cat([unmerged[:, :1], unmerged[:, 1:].flip(-1)], dim=1)
    return broken


def unweighted(merge):
    def broken(x, size, *index):
        return merge(x, torch.ones_like(size), *index)[0], merge(x, size, *index)[1]  # a plain mean of each group
    return broken


@pytest.mark.parametrize("name, breaks", [
    ("bipartite_soft_matching", flipped_unmerged),
    ("bipartite_soft_matching", cls_first_rest_flipped),
    ("merge_wavg", unweighted),
], ids=["cls_not_first", "unmerged_out_of_order", "size_not_weighted"])
def test_the_reference_comparison_catches_a_broken_merge(monkeypatch, name, breaks):
    model = tiny_tome(seed=0, r=8).eval()
    image = images(3)
    with torch.no_grad():
        expected, _, _ = reference_forward(model.visual, image, model.visual.tome_rs, False)
        torch.testing.assert_close(model.visual(image), expected, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(tome, name, breaks(getattr(tome, name)))
        assert not torch.allclose(model.visual(image), expected, rtol=1e-3, atol=1e-3)


# --- the stock model ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prop_attn", [False, True])
def test_r_zero_everywhere_is_the_stock_model_bit_for_bit(prop_attn):
    model = tiny_tome(r=0, prop_attn=prop_attn).eval()
    stock = stock_like(model).eval()
    image = images(3)
    with torch.no_grad():
        assert torch.equal(model.encode_image(image), stock.encode_image(image))
    assert tokens_in_layers(model.visual, image)[0] == [(65, 65)] * 4


def test_state_dict_is_the_stock_one_both_ways():
    model = tiny_tome(r=8)
    torch.manual_seed(1)
    stock = CLIP(**tiny_config())
    assert model.state_dict().keys() == stock.state_dict().keys()
    tome_weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(stock.state_dict(), strict=True)
    for key, value in stock.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    stock.load_state_dict(tome_weights, strict=True)
    for key, value in tome_weights.items():
        assert torch.equal(stock.state_dict()[key], value), key


def test_apply_tome_keeps_the_state_dict_and_merges():
    torch.manual_seed(0)
    model = CLIP(**tiny_config()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image = images(2)
    with torch.no_grad():
        stock_out = model.encode_image(image)
    assert apply_tome(model, r=[4, 4, 8, 8]) is model
    assert type(model) is TomeCLIP and type(model.visual) is TomeVisionTransformer
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    counts, out = tokens_in_layers(model.visual, image)
    assert counts == [(65, 61), (61, 57), (57, 49), (49, 41)]
    assert not torch.allclose(out, stock_out)
    apply_tome(model, r=0)
    with torch.no_grad():
        assert torch.equal(model.encode_image(image), stock_out)


def test_merges_with_or_without_a_caption():
    model = tiny_tome(r=8).eval()
    image, text = images(3), tokenize(CAPTIONS, context_length=16)
    with torch.no_grad():
        with_caption = model(image, text)[0]
        assert torch.equal(with_caption, model.encode_image(image, normalize=True))
        assert not torch.allclose(with_caption, stock_like(model).eval().encode_image(image, normalize=True))


# --- training: gradients, checkpointing, autocast, torch.compile ---------------------------------------------

def test_every_image_tower_parameter_gets_a_finite_gradient():
    model = tiny_tome(r=[8, 8, 16, 8], prop_attn=True).train()
    ClipLoss()(*model(images(3), tokenize(CAPTIONS, context_length=16))).backward()
    for name, param in model.visual.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.any(), name


def test_bf16_autocast():
    model = tiny_tome(r=8, prop_attn=True).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image_features, text_features, scale = model(images(3), tokenize(CAPTIONS, context_length=16))
    assert torch.isfinite(image_features.float()).all()
    ClipLoss()(image_features.float(), text_features.float(), scale).backward()
    assert torch.isfinite(model.visual.conv1.weight.grad).all()


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    model = tiny_tome(r=[5, 30, 0, 3], prop_attn=True).eval()
    image = images(2)
    compiled = torch.compile(model.visual, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(image), model.visual(image), rtol=1e-5, atol=1e-5)


# --- options --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, named", [
    ({"r": -1}, r"tome_cfg.r must be an integer >= 0, or a list, each item an integer >= 0.*; got -1 \(int\)"),
    ({"r": 1.5}, r"tome_cfg.r must be an integer >= 0.*; got 1.5"),
    ({"r": True}, r"tome_cfg.r must be an integer >= 0.*; got True \(bool\)"),
    ({"r": "8"}, r"tome_cfg.r must be an integer >= 0.*; got '8' \(str\)"),
    ({"r": [1, 2]}, "r has 2 entries for a 4-layer tower"),
    ({"r": [1, -2, 0, 0]}, r"tome_cfg.r must be .*; got \[1, -2, 0, 0\]"),
    ({"r": [1, 2.0, 0, 0]}, r"tome_cfg.r must be .*; got \[1, 2.0, 0, 0\]"),
    ({"prop_attn": "yes"}, r"tome_cfg.prop_attn must be true or false.*; got 'yes' \(str\)"),
    ({"prop_attn": 1}, r"tome_cfg.prop_attn must be true or false.*; got 1 \(int\)"),
    ({"ratio": 0.7}, r"unknown option\(s\) \['ratio'\]"),
])
def test_bad_options_raise_and_leave_the_model_as_it_was(options, named):
    model = CLIP(**tiny_config())
    with pytest.raises(ValueError, match=named):
        apply_tome(model, **options)
    assert type(model) is CLIP and type(model.visual) is VisionTransformer
    with pytest.raises(ValueError, match=named):
        TomeCLIP(**tiny_config(), tome_cfg=options)
    model = tiny_tome(r=[1, 2, 3, 4], prop_attn=True)
    with pytest.raises(ValueError, match=named):
        apply_tome(model, options)
    assert model.options() == {"r": [1, 2, 3, 4], "prop_attn": True}


def test_towers_tome_cannot_merge_are_refused():
    with pytest.raises(ValueError, match="ToMe needs the default OpenCLIP vision blocks"):
        apply_tome(CLIP(**tiny_config(qk_norm=True)))
    with pytest.raises(ValueError, match="ToMe pools the CLS token"):
        apply_tome(CLIP(**tiny_config(pool_type="avg")))
    with pytest.raises(TypeError, match="apply_tome takes an open_clip CLIP model"):
        apply_tome(CLIP(**tiny_config()).visual)


def test_options_are_json_ready_and_kept_as_given():
    model = tiny_tome(r=[0, 12, 0, 20])
    assert model.options() == {"r": [0, 12, 0, 20], "prop_attn": False}
    assert json.loads(json.dumps(model.options())) == model.options()
    apply_tome(model, prop_attn=True)  # changes only what it names
    assert model.options() == {"r": [0, 12, 0, 20], "prop_attn": True}
    apply_tome(model, {"r": 3})
    assert model.options() == {"r": 3, "prop_attn": True} and model.visual.tome_rs == (3, 3, 3, 3)
    assert tiny_tome().options() == {"r": tome_default_r(65, 4), "prop_attn": False}


# --- token counts and the default r --------------------------------------------------------------------------

def test_tokens_per_layer_caps_r():
    assert tome_tokens_per_layer(65, [40] * 4) == ((65, 33), (33, 17), (17, 9), (9, 5))
    assert tome_tokens_per_layer(50, [30, 30]) == ((50, 26), (26, 14))
    assert tome_tokens_per_layer(3, [5, 5]) == ((3, 2), (2, 2))  # CLS and one token: nothing left to merge
    assert tome_token_layer_ratio(197, [0] * 12) == 1.0
    assert tome_token_layer_ratio(197, [9] * 12) == (2364 - 72 * 9) / 2364  # sum of (197 - 9 l - 9 / 2)


@pytest.mark.parametrize("num_tokens, depth, r, ratio", [
    (197, 12, 9, 0.7259),  # ViT-S-16, ViT-B-16
    (50, 12, 2, 0.7600),  # ViT-B-32
    (257, 24, 6, 0.7198),  # ViT-L-14
])
def test_default_r_is_closest_to_elips_budget(num_tokens, depth, r, ratio):
    assert tome_default_r(num_tokens, depth) == r
    assert tome_token_layer_ratio(num_tokens, [r] * depth) == pytest.approx(ratio, abs=1e-4)
    for other in (r - 1, r + 1):
        assert abs(tome_token_layer_ratio(num_tokens, [other] * depth) - 0.72) > abs(ratio - 0.72)


def test_vit_b16_default():
    model = apply_tome(create_model("ViT-B-16"))
    assert model.options() == {"r": 9, "prop_attn": False}
    assert abs(tome_token_layer_ratio(197, model.visual.tome_rs) - 0.72) < 0.01
    assert model.visual.tokens_per_layer()[:2] == ((197, 188), (188, 179))
