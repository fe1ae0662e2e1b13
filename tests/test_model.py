"""ElipVisionTransformer / ElipCLIP / apply_elip against the method (docs/method.md) and the stock models."""
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_ELIP, TINY_STOCK, reference_attention_probs, tiny_config
from open_clip import ClipLoss, create_model, tokenize
from open_clip.model import CLIP
from open_clip.transformer import VisionTransformer

from open_clip_elip import ElipCLIP, ElipConfig, ElipVisionTransformer, apply_elip

TINY_RATIOS = [0.9, 0.65, 0.4]
DEEP_VISION = {**tiny_config(True)["vision_cfg"], "layers": 6}  # blocks of 1/2/2/1 layers: a real look-ahead
CAPTIONS = ["a photo of the digit three", "a photo of the digit seven", "a photo of the digit zero"]


def tiny_elip(seed=0, **elip_options):
    """The tiny ELIP model; with options, a 6-layer variant so that the look-ahead spans two layers."""
    torch.manual_seed(seed)
    if not elip_options:
        return create_model(TINY_ELIP)
    elip_cfg = {"layout": [1, 2, 2, 1], "keep_ratios": TINY_RATIOS, **elip_options}
    return create_model(TINY_ELIP, vision_cfg=DEEP_VISION, elip_cfg=elip_cfg)


def tiny_stock_like(model):
    stock = create_model(TINY_STOCK)
    stock.load_state_dict(model.state_dict(), strict=True)
    return stock.eval()


def images(batch, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def text_features(batch, width=32, seed=1):
    return F.normalize(torch.randn(batch, width, generator=torch.Generator().manual_seed(seed)), dim=-1)


def tokens_entering_layers(visual, *inputs, run=None):
    """``(run or visual)(*inputs)`` without gradient, and the token count entering each layer of ``visual`` in
    its last call (a look-ahead call of a layer comes before its real one)."""
    layers, seen = visual.transformer.resblocks, {}
    hooks = [layer.register_forward_pre_hook(lambda module, args, i=i: seen.__setitem__(i, args[0].shape[1]))
             for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            output = (run or visual)(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return [seen[i] for i in range(len(layers))], output


def per_layer(counts, layout):
    return [count for count, n_layers in zip(counts, layout) for _ in range(n_layers)]


@pytest.fixture(scope="module")
def vit_b32_pair():
    elip = create_model("ViT-B-32-elip").eval()
    stock = create_model("ViT-B-32").eval()
    stock.load_state_dict(elip.state_dict(), strict=True)
    return elip, stock


@pytest.fixture(scope="module")
def vit_b16_elip():
    return create_model("ViT-B-16-elip").eval()


# --- 1. no caption, no pruning ----------------------------------------------------------------------------

def test_unguided_tiny_equals_stock_bit_for_bit(tiny_configs):
    model = tiny_elip().eval()
    stock = tiny_stock_like(model)
    assert type(model) is ElipCLIP and type(stock) is CLIP
    image, text = images(4), tokenize(CAPTIONS + CAPTIONS[:1], context_length=16)
    with torch.no_grad():
        assert torch.equal(model.encode_image(image), stock.encode_image(image))
        assert torch.equal(model(image, None)[0], stock(image, None)[0])
        assert torch.equal(model.encode_text(text), stock.encode_text(text))
        guided = model.encode_image(image, text_features=model.encode_text(text, normalize=True))
    assert not torch.allclose(guided, stock.encode_image(image))  # the guided forward does prune


def test_unguided_vit_b32_equals_stock_bit_for_bit(tiny_configs, vit_b32_pair):
    elip, stock = vit_b32_pair
    image = images(2, size=224)
    with torch.no_grad():
        assert torch.equal(elip.encode_image(image), stock.encode_image(image))


# --- 2. token counts --------------------------------------------------------------------------------------

def test_vit_b16_token_counts(vit_b16_elip):
    visual = vit_b16_elip.visual
    assert visual.tokens_per_block() == (197, 179, 130, 80)
    lengths, _ = tokens_entering_layers(visual, images(1, size=224), text_features(1, width=512))
    assert lengths == per_layer([197, 179, 130, 80], [2, 2, 6, 2])


def test_vit_b32_token_counts_and_trace(vit_b32_pair):
    visual = vit_b32_pair[0].visual
    assert visual.tokens_per_block() == (50, 47, 34, 22)
    lengths, (_, trace) = tokens_entering_layers(visual, images(2, size=224), text_features(2, width=512),
                                                 run=visual.trace)
    assert lengths == per_layer([50, 47, 34, 22], [2, 2, 6, 2])
    assert [t.block for t in trace] == [1, 2, 3]
    assert [tuple(t.keep_index.shape) for t in trace] == [(2, 45), (2, 32), (2, 20)]
    assert [tuple(t.provenance.shape) for t in trace] == [(2, 46, 49), (2, 33, 49), (2, 21, 49)]
    for t in trace:
        assert torch.all(t.keep_index[:, 1:] > t.keep_index[:, :-1])  # original order, no repeats
        torch.testing.assert_close(t.provenance.sum(-1), torch.ones(t.provenance.shape[:2]), atol=1e-4, rtol=0)
        assert torch.all(t.provenance >= 0)
    first = trace[0]  # after the first pruning the kept tokens are the original patches themselves
    one_hot = F.one_hot(first.keep_index, 49).float()
    assert torch.equal(first.provenance[:, :-1], one_hot)


# --- 3. the vectorised implementation equals the six steps of docs/method.md ----------------------------

def reference_embed(visual, image):
    x = visual.conv1(image).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    return visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)


def reference_cls_attention(layer, z):
    """CLS query's attention probabilities, averaged over heads, CLS column dropped (``B x (N - 1)``)."""
    return reference_attention_probs(layer, layer.ln_1(z))[:, 0, 1:]


def reference_forward(visual, image, text):
    """Steps 1-6 of docs/method.md, written out plainly, one sample and one token at a time."""
    cfg = visual.elip_cfg
    blocks = list(visual.transformer.resblocks)
    x = reference_embed(visual, image)
    n0, batch = x.shape[1], x.shape[0]
    if cfg.caption_pairing == "other_row":  # image i is guided by caption i + 1, the last by the first
        text = torch.stack([text[(i + 1) % batch] for i in range(batch)])
    t_w = text @ visual.proj.T  # step 1
    kept_per_block, smallest_gap, start = [], float("inf"), 0
    for b, n_layers in enumerate(cfg.layout):
        layers = blocks[start:start + n_layers]
        start += n_layers
        if b > 0:
            k = int(n0 * cfg.keep_ratios[b - 1])
            with torch.no_grad():
                z = x.detach().clone()  # step 2
                for i in range(batch):
                    cls, text_term = z[i, 0].clone(), t_w[i]
                    if cfg.fusion == "norm_matched":  # the text term gets the length of this image's CLS
                        text_term = text_term / torch.linalg.vector_norm(text_term) * torch.linalg.vector_norm(cls)
                    z[i, 0] = (1 - cfg.lam) * text_term + cfg.lam * cls
                scoring_layers = layers if cfg.scoring == "lookahead" else layers[:1]
                for layer in scoring_layers[:-1]:  # step 3
                    z = layer(z)
                a = reference_cls_attention(scoring_layers[-1], z)
            rows, kept_rows = [], []
            for i in range(x.shape[0]):
                scores = a[i].tolist()
                order = sorted(range(len(scores)), key=lambda j: scores[j], reverse=True)  # step 4
                keep, pruned = sorted(order[:k]), order[k:]
                if pruned:
                    smallest_gap = min(smallest_gap, scores[order[k - 1]] - scores[order[k]])
                tokens = [x[i, 0]] + [x[i, 1 + j] for j in keep]
                if cfg.merge and pruned:  # step 5, from the real x
                    total = sum(scores[j] for j in pruned)
                    tokens.append(sum(scores[j] / (total + 1e-6) * x[i, 1 + j] for j in pruned))
                rows.append(torch.stack(tokens))  # step 6
                kept_rows.append(keep)
            x = torch.stack(rows)
            kept_per_block.append(kept_rows)
        for layer in layers:
            x = layer(x)
    return visual.ln_post(x[:, 0]) @ visual.proj, kept_per_block, smallest_gap


def visual_grads(model):
    return {name: p.grad.clone() for name, p in model.visual.named_parameters()}


@pytest.mark.parametrize("options", [
    {},  # the tiny model as configured: 1/1/1/1, look-ahead within one layer
    {"scoring": "lookahead"},  # 1/2/2/1: look-ahead through a layer, then score at the next
    {"scoring": "first_layer"},
    {"merge": False},
    {"lam": 1.0},
    {"lam": 0.0},
    {"keep_ratios": [1.0, 0.65, 0.4]},  # block II keeps every token: no merged token
    {"fusion": "norm_matched", "lam": 0.5},  # lam 0.5: the text term weighs as much as the CLS
    {"caption_pairing": "other_row", "lam": 0.5},
    {"fusion": "norm_matched", "caption_pairing": "other_row", "lam": 0.2},
], ids=["tiny", "lookahead", "first_layer", "no_merge", "vision_only", "text_only", "keep_all",
        "norm_matched", "other_row", "norm_matched_other_row"])
def test_guided_forward_equals_the_spec_written_out(tiny_configs, options):
    model = tiny_elip(seed=2, **options).eval()  # a seed whose selections have no near-tie (asserted below)
    visual = model.visual
    image, text = images(3), text_features(3)

    out, trace = visual.trace(image, text)
    out.square().sum().backward()
    grads = visual_grads(model)
    model.zero_grad()
    forward_out = visual(image, text)
    expected, kept, gap = reference_forward(visual, image, text)
    expected.square().sum().backward()

    assert gap > 1e-6, "a near-tie in the selection (float error is ~1e-9): the comparison would prove little"
    assert [t.keep_index.tolist() for t in trace] == kept
    torch.testing.assert_close(forward_out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, forward_out, rtol=0, atol=0)
    for name, grad in visual_grads(model).items():  # merge weights carry no gradient, the tokens do
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item(), msg=name)


def test_guidance_changes_the_selection(tiny_configs):
    model = tiny_elip(lam=0.0).eval()
    image = images(1).expand(2, -1, -1, -1)
    with torch.no_grad():
        _, trace = model.visual.trace(image, text_features(2))
    assert trace[0].keep_index[0].tolist() != trace[0].keep_index[1].tolist()


def test_prune_without_text_is_vision_only_pruning(tiny_configs):
    model = tiny_elip(prune_without_text=True, lam=1.0).eval()
    image = images(2)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), model.encode_image(image, text_features=text_features(2)),
                                   rtol=0, atol=0)
    assert tokens_entering_layers(model.visual, image)[0] == per_layer([65, 60, 44, 28], [1, 2, 2, 1])


@pytest.mark.parametrize("option", [{"fusion": "norm_matched"}, {"caption_pairing": "other_row"}],
                         ids=["norm_matched", "other_row"])
def test_fusion_and_pairing_options_change_nothing_vision_only(tiny_configs, option):
    image, text = images(3), text_features(3)
    outputs = {}
    for lam in (1.0, 0.5):
        for options in ({}, option):
            model = tiny_elip(seed=2, lam=lam, **options).eval()  # the same weights each time
            with torch.no_grad():
                out, trace = model.visual.trace(image, text)
            outputs[lam, bool(options)] = out, [t.keep_index for t in trace]
    (stock_out, stock_kept), (out, kept) = outputs[1.0, False], outputs[1.0, True]
    assert torch.equal(out, stock_out)  # lam = 1: the text term is weighed 0, whatever it is
    assert all(torch.equal(a, b) for a, b in zip(kept, stock_kept))
    (paper_out, _), (option_out, _) = outputs[0.5, False], outputs[0.5, True]
    assert not torch.allclose(option_out, paper_out)  # while at lam = 0.5 the option matters


def test_other_row_guides_each_image_by_the_next_caption(tiny_configs):
    image, text = images(3), text_features(3)
    paired, other = tiny_elip(seed=2, lam=0.0), tiny_elip(seed=2, lam=0.0, caption_pairing="other_row")
    with torch.no_grad():
        expected = paired.visual(image, text[[1, 2, 0]])
        assert torch.equal(other.visual(image, text), expected)
        assert not torch.allclose(paired.visual(image, text), expected)


def test_other_row_needs_two_images(tiny_configs):
    model = tiny_elip(caption_pairing="other_row").eval()
    with pytest.raises(ValueError, match="caption_pairing.*other_row.*got 1"):
        model.visual(images(1), text_features(1))
    with pytest.raises(ValueError, match="caption_pairing.*other_row"):
        model(images(1), tokenize(CAPTIONS[:1], context_length=16))
    with torch.no_grad():  # without a caption (evaluation) a single image is fine
        assert model.encode_image(images(1)).shape == (1, 32)
        assert model.encode_image(images(2), text_features=text_features(2)).shape == (2, 32)


def test_norm_matched_is_blind_to_the_text_embedding_scale(tiny_configs):
    image, text = images(3), text_features(3)
    scale = torch.tensor([[0.01], [3.0], [40.0]])
    results = {}
    for fusion in ("paper", "norm_matched"):
        model = tiny_elip(seed=2, lam=0.5, fusion=fusion).eval()
        with torch.no_grad():
            results[fusion] = [model.visual.trace(image, t) for t in (text, text * scale)]
    (out, trace), (scaled_out, scaled_trace) = results["norm_matched"]
    assert [t.keep_index.tolist() for t in trace] == [t.keep_index.tolist() for t in scaled_trace]
    torch.testing.assert_close(out, scaled_out, rtol=1e-5, atol=1e-5)
    (out, trace), (scaled_out, scaled_trace) = results["paper"]  # the paper's fusion is not
    assert [t.keep_index.tolist() for t in trace] != [t.keep_index.tolist() for t in scaled_trace]


# --- 4. stop-gradient -------------------------------------------------------------------------------------

def text_tower_params(model):
    return {n: p for n, p in model.named_parameters() if not n.startswith("visual.") and "logit" not in n}


def test_no_gradient_reaches_the_text_tower_through_the_image_tower(tiny_configs):
    model = tiny_elip().train()
    image, text = images(3), tokenize(CAPTIONS, context_length=16)
    image_features, _, _ = model(image, text)
    image_features.square().sum().backward()
    for name, param in text_tower_params(model).items():
        assert param.grad is None or not param.grad.any(), name

    model.zero_grad(set_to_none=True)
    ClipLoss()(*model(image, text)).backward()
    full = {n: p.grad.clone() for n, p in text_tower_params(model).items()}
    model.zero_grad(set_to_none=True)
    text_features_ = model.encode_text(text, normalize=True)
    image_features = model.encode_image(image, normalize=True, text_features=text_features_.detach().clone())
    ClipLoss()(image_features, text_features_, model.logit_scale.exp()).backward()
    for name, param in text_tower_params(model).items():
        assert full[name].any(), name
        torch.testing.assert_close(full[name], param.grad, rtol=0, atol=0, msg=name)


def test_every_image_tower_parameter_gets_a_gradient(tiny_configs):
    model = tiny_elip().train()
    ClipLoss()(*model(images(3), tokenize(CAPTIONS, context_length=16))).backward()
    for name, param in model.visual.named_parameters():
        assert param.grad is not None and param.grad.any(), name


# --- 5. checkpoints and apply_elip ------------------------------------------------------------------------

def test_stock_vit_b16_checkpoint_loads_strictly_both_ways(vit_b16_elip):
    stock = create_model("ViT-B-16")
    assert stock.state_dict().keys() == vit_b16_elip.state_dict().keys()
    elip_weights = {k: v.clone() for k, v in vit_b16_elip.state_dict().items()}
    vit_b16_elip.load_state_dict(stock.state_dict(), strict=True)
    for key, value in stock.state_dict().items():
        assert torch.equal(vit_b16_elip.state_dict()[key], value), key
    stock.load_state_dict(elip_weights, strict=True)
    assert torch.equal(stock.visual.proj, elip_weights["visual.proj"])


def test_apply_elip_keeps_the_state_dict_and_prunes(tiny_configs):
    torch.manual_seed(0)
    model = create_model(TINY_STOCK).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image, text = images(2), text_features(2)
    with torch.no_grad():
        stock_out = model.encode_image(image)
    assert apply_elip(model, elip_cfg={"layout": [1, 1, 1, 1], "keep_ratios": TINY_RATIOS}) is model
    assert type(model) is ElipCLIP and type(model.visual) is ElipVisionTransformer
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert tokens_entering_layers(model.visual, image, text)[0] == [65, 60, 44, 28]
    with torch.no_grad():
        assert torch.equal(model.encode_image(image), stock_out)


def test_apply_elip_takes_options_as_keywords(tiny_configs):
    model = apply_elip(create_model(TINY_STOCK), layout=[1, 1, 2], keep_ratios=[0.5, 0.25], scoring="first_layer")
    assert model.visual.elip_cfg.scoring == "first_layer"
    assert model.visual.tokens_per_block() == (65, 34, 18)


def test_forward_intermediates_with_captions_is_guided(tiny_configs):
    """OpenCLIP's ``model.forward_intermediates(image, text)``: the image tower guided by the captions as in
    ``forward``, each layer's tokens as many as enter it; without captions (and without ``prune_without_text``)
    OpenCLIP's own, equal to the stock model's."""
    model = tiny_elip(lam=0.5).eval()
    image, text = images(3), tokenize(CAPTIONS, context_length=16)
    with pytest.raises(ValueError, match="ELIP reduces the image tokens.*image_output_fmt='NLC'"):
        model.forward_intermediates(image, text)
    out = model.forward_intermediates(image, text, image_output_fmt="NLC", output_logits=True)
    guide = model.encode_text(text, normalize=True)
    entering, guided = tokens_entering_layers(model.visual, image, guide)
    assert entering == per_layer([65, 60, 44, 28], [1, 2, 2, 1])
    assert [y.shape[1] + 1 for y in out["image_intermediates"]] == entering
    torch.testing.assert_close(out["image_features"], F.normalize(guided, dim=-1))  # that one without gradient
    assert torch.equal(out["image_features"], model(image, text)[0])
    assert torch.equal(out["text_features"], guide)
    torch.testing.assert_close(out["image_logits"], model.logit_scale.exp() * F.normalize(guided, dim=-1) @ guide.T)
    unguided = model.forward_intermediates(image)
    stock_model = create_model(TINY_STOCK, vision_cfg=DEEP_VISION).eval()
    stock_model.load_state_dict(model.state_dict())
    stock = stock_model.forward_intermediates(image)
    assert unguided.keys() == stock.keys()
    for ours, theirs in zip(unguided["image_intermediates"], stock["image_intermediates"]):
        assert ours.shape == (3, 64, 8, 8) and torch.equal(ours, theirs)
    assert torch.equal(unguided["image_features"], stock["image_features"])


# --- 7. training features: grad checkpointing, autocast, torch.compile, patch dropout -------------------

def test_bf16_autocast_guided_forward(tiny_configs):
    model = tiny_elip().train()
    image, text = images(3), tokenize(CAPTIONS, context_length=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image_features, text_features_, _ = model(image, text)
        out, trace = model.visual.trace(image, text_features_.detach())
    assert image_features.shape == (3, 32) and torch.isfinite(image_features.float()).all()
    assert torch.isfinite(out.float()).all()
    assert [tuple(t.keep_index.shape) for t in trace] == [(3, 58), (3, 42), (3, 26)]
    ClipLoss()(image_features.float(), text_features_.float(), model.logit_scale.exp()).backward()
    assert torch.isfinite(model.visual.conv1.weight.grad).all()


def test_compiles_without_graph_breaks(tiny_configs):
    torch._dynamo.reset()
    model = tiny_elip().eval()
    image, text = images(2), text_features(2)
    compiled = torch.compile(model.visual, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(image, text), model.visual(image, text), rtol=1e-5, atol=1e-5)


def test_patch_dropout_counts_from_the_tokens_left(tiny_configs):
    torch.manual_seed(0)
    model = create_model(TINY_ELIP, force_patch_dropout=0.5)
    visual = model.visual
    image, text = images(2), text_features(2)
    assert visual.tokens_per_block(33) == (33, 31, 23, 15)
    visual.train()
    assert tokens_entering_layers(visual, image, text)[0] == [33, 31, 23, 15]
    visual.eval()
    assert tokens_entering_layers(visual, image, text)[0] == [65, 60, 44, 28]
    stock = tiny_stock_like(model)
    with torch.no_grad():
        assert torch.equal(visual(image), stock.visual(image))


# --- 8. bad input and bad options -------------------------------------------------------------------------

@pytest.mark.parametrize("image_shape, text_shape, named", [
    ((2, 3, 32, 32), (3, 32), ["(3, 32)", "(2, 3, 32, 32)"]),  # one caption too many
    ((2, 3, 32, 32), (2, 16), ["(2, 16)", "(2, 3, 32, 32)", "(2, 32)"]),  # wrong embedding width
    ((2, 3, 48, 48), None, ["(2, 3, 48, 48)", "(32, 32)"]),  # 48 px into a 32 px model
])
def test_bad_input_names_both_shapes(tiny_configs, image_shape, text_shape, named):
    visual = tiny_elip().visual
    text = None if text_shape is None else torch.randn(text_shape)
    with pytest.raises(ValueError) as error:
        visual(torch.randn(image_shape), text)
    for shape in named:
        assert shape in str(error.value)


def test_mismatched_caption_batch_in_clip_forward(tiny_configs):
    model = tiny_elip()
    with pytest.raises(ValueError, match=r"\(3, 32\)"):
        model(images(2), tokenize(CAPTIONS, context_length=16))


@pytest.mark.parametrize("options, named", [
    ({"keep_ratios": [0.9, 0.65, 0.0]}, "keep_ratios"),
    ({"keep_ratios": [1.5, 0.65, 0.4]}, "keep_ratios"),
    ({"keep_ratios": [0.5, 0.65, 0.4]}, "keep_ratios"),  # increasing
    ({"keep_ratios": [0.9, 0.65]}, "keep_ratios"),  # one ratio per pruned block
    ({"keep_ratios": [0.9, 0.65, 0.01]}, "keep_ratios"),  # int(65 x 0.01) = 0 kept tokens
    ({"layout": [1, 1, 1, 2]}, "layout"),  # 5 layers for a 4-layer tower
    ({"layout": [2, 0, 1, 1]}, "layout"),
    ({"scoring": "random"}, "scoring"),
    ({"lam": 1.5}, "lam"),
    ({"fusion": "norm"}, "fusion"),
    ({"fusion": None}, "fusion"),
    ({"caption_pairing": "shuffled"}, "caption_pairing"),
    ({"caption_pairing": "other-row"}, "caption_pairing"),
    ({"keep_ratio": 0.5}, "keep_ratio"),  # unknown key
])
def test_bad_options_raise_and_leave_the_model_stock(tiny_configs, options, named):
    model = create_model(TINY_STOCK)
    with pytest.raises(ValueError, match=named):
        apply_elip(model, elip_cfg={"layout": [1, 1, 1, 1], "keep_ratios": TINY_RATIOS, **options})
    assert type(model) is CLIP and type(model.visual) is VisionTransformer


def test_an_elip_config_checks_its_fields_by_type():
    with pytest.raises(ValueError, match=r"elip_cfg.merge must be true or false .*; got 'false' \(str\)"):
        ElipConfig(merge="false")
    with pytest.raises(ValueError, match=r"elip_cfg.layout must be .*; got \[1, 0\] \(item 1: 0\)"):
        ElipConfig(layout=[1, 0])
    config = ElipConfig(lam=1, keep_ratios=[1, 0.5], layout=[2, 2])
    assert (config.lam, config.keep_ratios, config.layout) == (1.0, (1.0, 0.5), (2, 2))
    assert type(config.lam) is float and type(config.keep_ratios[0]) is float


def test_bad_options_in_a_model_config_raise_at_construction(tiny_configs):
    with pytest.raises(ValueError, match="scoring"):
        tiny_elip(scoring="topk")


@pytest.mark.parametrize("depth, layout", [(12, (2, 2, 6, 2)), (24, (4, 4, 12, 4))])
def test_default_layout_scales_the_papers(depth, layout):
    assert ElipConfig().resolved(depth, [197]).layout == layout
