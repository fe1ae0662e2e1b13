"""Every registered family (core.registry), parametrised: a new family gets these tests by registering. Its
behaviour without a caption and at inference as it declares it, strict state-dict loading both ways with the
stock twin, activation checkpointing, saving and rebuilding through ``local-dir:``, and two steps of OpenCLIP's
own trainer. A family
defined outside the package (``external_family.py``, registered through the public call) is among them."""
import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import external_family  # noqa: F401  (registers the 'stride' family, as a user's package would)
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from open_clip.push_to_hf_hub import save_for_hf
from open_clip.transformer import VisionTransformer

from open_clip_elip import FAMILIES, FamilyCLIP
from open_clip_elip.core.options import AnyOf, Boolean, Choice, Count, Default, ListOf, Ratio
from open_clip_elip.core.registration import EXTRA_CONFIGS_ENV, FAMILY_MODULES_ENV
from open_clip_elip.core.registry import REDUCES, STOCK, twin_config

BASE = "ViT-Fam-6"  # 6 layers: every family's defaults (ELIP's layout 1/1/3/1) fit it
NO_TOKENIZER = types.SimpleNamespace(save_pretrained=lambda directory: None)
FAMILY_NAMES = list(FAMILIES)


def test_the_external_family_is_registered_beside_the_built_in_ones():
    assert {"elip", "evit", "stride"} <= set(FAMILY_NAMES)
    assert FAMILY_NAMES.index("stride") > FAMILY_NAMES.index("evit")


@pytest.fixture(scope="module")
def family_configs(tiny_configs, tmp_path_factory):
    """``ViT-Fam-6`` and its ``-<family>`` twins, made from the registry (``twin_config``) for every family."""
    stock = tiny_config(elip=False)
    stock["vision_cfg"]["layers"] = 6
    folder = tmp_path_factory.mktemp("family_configs")
    configs = {BASE: stock, **{f"{BASE}-{name}": twin_config(family, stock) for name, family in FAMILIES.items()}}
    for name, config in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return folder


def models(name: str):
    """The family twin and the stock model, with the same weights."""
    torch.manual_seed(0)
    stock = open_clip.create_model(BASE)
    family = open_clip.create_model(f"{BASE}-{name}")
    family.load_state_dict(stock.state_dict())
    return family, stock


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_behaviour_without_a_caption_and_at_inference_is_as_declared(family_configs, name):
    family, stock = models(name)
    declared = FAMILIES[name]
    assert type(family) is declared.model_class and family.options() == family.model_config()[
        declared.config_block]
    images = torch.randn(3, 3, 32, 32)
    for mode, behaviour in (("train", declared.without_caption), ("eval", declared.at_inference)):
        family.train(mode == "train"), stock.train(mode == "train")
        with torch.no_grad():
            ours, theirs = family.encode_image(images), stock.encode_image(images)
        if behaviour == STOCK:
            assert torch.equal(ours, theirs), mode
        else:
            assert behaviour == REDUCES and not torch.allclose(ours, theirs), mode
    tokens = declared.layer_tokens(family.visual)
    assert len(tokens) == 6 and max(tokens) <= 65  # (an input mask reduces them before the first layer)
    assert (min(tokens) < 65) == (declared.without_caption == REDUCES or declared.takes_caption)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_state_dicts_load_strictly_both_ways_with_the_stock_twin(family_configs, name):
    family, stock = models(name)
    assert family.state_dict().keys() == stock.state_dict().keys()
    fresh_stock = open_clip.create_model(BASE)
    fresh_stock.load_state_dict(family.state_dict(), strict=True)
    fresh_family = open_clip.create_model(f"{BASE}-{name}")
    fresh_family.load_state_dict(stock.state_dict(), strict=True)
    for key, value in fresh_family.state_dict().items():
        assert torch.equal(value, stock.state_dict()[key]), key


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_grad_checkpointing_gives_the_same_loss_and_grads(family_configs, name):
    model, _ = models(name)
    model.train()
    images, text = torch.randn(3, 3, 32, 32), open_clip.tokenize(["a one", "a two", "a three"], context_length=16)
    transformer = model.visual.transformer
    calls = []  # the last layer's MLP runs once per forward, and again in backward when checkpointed
    transformer.resblocks[-1].ln_2.register_forward_pre_hook(lambda *args: calls.append(transformer.grad_checkpointing))
    results = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same random draws both times (a family that masks at random)
        loss = open_clip.ClipLoss()(*model(images, text))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss, grads), (ckpt_loss, ckpt_grads) = results
    assert calls == [False, True, True]
    torch.testing.assert_close(ckpt_loss, loss)
    for key, grad in grads.items():
        torch.testing.assert_close(ckpt_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_save_and_rebuild_through_local_dir(family_configs, name, tmp_path):
    family, _ = models(name)
    family.eval()
    save_for_hf(family, NO_TOKENIZER, family.model_config(), tmp_path / "saved")
    loaded = open_clip.create_model(f"local-dir:{tmp_path / 'saved'}")
    loaded.eval()
    assert type(loaded) is type(family) and loaded.options() == family.options()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), family.encode_image(images))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_two_trainer_steps(family_configs, tiny_shard, tmp_path, name):
    """OpenCLIP's own trainer, unmodified, in a fresh process: the external family comes in through
    ``OPEN_CLIP_ELIP_FAMILIES``, the configs through ``OPEN_CLIP_ELIP_CONFIGS``."""
    env = {**os.environ, EXTRA_CONFIGS_ENV: str(family_configs), FAMILY_MODULES_ENV: "external_family",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "open_clip_train.main", "--model", f"{BASE}-{name}", "--train-data",
               str(tiny_shard), "--train-num-samples", "32", "--dataset-type", "webdataset", "--batch-size", "16",
               "--epochs", "1", "--workers", "0", "--device", "cpu", "--logs", str(tmp_path), "--name", "run",
               "--lr", "1e-3", "--warmup", "1", "--seed", "0", "--log-every-n-steps", "1"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    log = (tmp_path / "run" / "out.log").read_text()
    assert "[32/32 (100%)]" in log and "Loss:" in log  # two steps of 16 samples
    saved = torch.load(tmp_path / "run" / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=False)
    model = open_clip.create_model(f"{BASE}-{name}", pretrained=str(tmp_path / "run" / "checkpoints" / "epoch_1.pt"))
    assert type(model) is FAMILIES[name].model_class and saved["epoch"] == 1


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_scored_pruned_reduces_tokens_at_inference_without_a_caption(family_configs, name):
    """What the study's ``zeroshot_top1_pruned`` scores: the twin under ``scored_pruned`` in eval mode, no caption,
    differs from the stock model with the same weights; a family with no such mode declares None."""
    declared = FAMILIES[name]
    options = declared.scored_pruned
    assert options == ({} if declared.at_inference == REDUCES else declared.pruned_at_inference)
    if options is None:
        return
    torch.manual_seed(0)
    stock = open_clip.create_model(BASE).eval()
    pruned = open_clip.create_model(f"{BASE}-{name}", **{declared.config_block: options}).eval()
    pruned.load_state_dict(stock.state_dict())
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(pruned.encode_image(images), stock.encode_image(images))


def test_pruned_at_inference_is_for_families_that_keep_every_token():
    with pytest.raises(ValueError, match="reduces them already"):
        dataclasses.replace(FAMILIES["evit"], pruned_at_inference={"keep_rate": 0.5}).check()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_clip_benchmark_and_the_study_take_every_family(family_configs, name, tmp_path):
    from clip_benchmark.models import load_clip

    from open_clip_elip.study.methods import catalogue

    family, _ = models(name)
    torch.save({"state_dict": family.state_dict()}, tmp_path / "ckpt.pt")
    loaded, transform, tokenizer = load_clip("open_clip", f"{BASE}-{name}", str(tmp_path / "ckpt.pt"), None, "cpu")
    assert type(loaded) is FAMILIES[name].model_class
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, family.state_dict()[key]), key
    assert any(method.family == name for method in catalogue().values())  # a study method, with or without a row


def test_a_family_module_that_cannot_be_imported_is_named(tmp_path):
    code = "import open_clip_elip"
    env = {**os.environ, FAMILY_MODULES_ENV: "no_such_family_module"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "OPEN_CLIP_ELIP_FAMILIES names the module 'no_such_family_module'" in result.stderr


# --- one API for every family: typed options, apply_<family>'s merge rule, forward_intermediates ----------------

SPECIFIED = [name for name in FAMILY_NAMES if FAMILIES[name].model_class.option_spec is not None]


def bad_values(kind) -> list:
    """Values ``kind`` must refuse, written out per kind: strings of good-looking values, booleans for numbers,
    numbers for booleans, fractions for counts, values out of range, a list with a bad item."""
    if isinstance(kind, Default):
        return bad_values(kind.kind)
    if isinstance(kind, Boolean):
        return ["false", "true", 0, 1]
    if isinstance(kind, Count):
        return [True, False, 1.5, "3", kind.minimum - 1]
    if isinstance(kind, Ratio):
        return [True, "0.5", float("nan"), kind.high + 0.5, kind.low - 0.5 if kind.closed_low else kind.low]
    if isinstance(kind, Choice):
        return [kind.values[0].upper(), 1, True, None]
    if isinstance(kind, ListOf):
        return ["3", True, [bad_values(kind.item)[0]], (bad_values(kind.item)[1],)]
    if isinstance(kind, AnyOf):  # bad for every member
        lists = [[(type(v), repr(v)) for v in bad_values(k)] for k in kind.kinds]
        return [v for v in bad_values(kind.kinds[0]) if all((type(v), repr(v)) in other for other in lists[1:])]
    raise AssertionError(f"no bad values written for {kind!r}")


def changed(kind, value):
    """Another value ``kind`` accepts, near ``value``, or None where none is written out."""
    if isinstance(kind, Default):
        return None if value is None else changed(kind.kind, value)
    if isinstance(kind, Boolean):
        return not value
    if isinstance(kind, Choice):
        return kind.values[(kind.values.index(value) + 1) % len(kind.values)]
    if isinstance(kind, Count):
        return value + 1
    if isinstance(kind, Ratio):
        return (value + kind.high) / 2 if value < kind.high else (value + kind.low) / 2
    if isinstance(kind, AnyOf) and isinstance(value, int):
        return changed(kind.kinds[0], value)
    return None


@pytest.mark.parametrize("name", SPECIFIED)
def test_the_options_a_family_reports_are_those_it_declares(family_configs, name):
    assert {"elip", "evit", "tome", "stride"} <= set(SPECIFIED)
    family, _ = models(name)
    assert list(family.options()) == list(FAMILIES[name].model_class.option_spec)


@pytest.mark.parametrize("name", SPECIFIED)
def test_a_value_of_the_wrong_type_or_range_is_refused_naming_option_value_and_what_is_allowed(family_configs, name):
    """Through the model config (create_model), through apply_<family>, and on a model that has the family."""
    declared = FAMILIES[name]
    block, spec = declared.config_block, declared.model_class.option_spec
    stock = open_clip.create_model(BASE)
    family, _ = models(name)
    before = family.options()
    for option, kind in spec.items():
        values = bad_values(kind)
        assert values, option
        for value in values:
            expected = f"{block}.{option} must be {kind.allowed}; got {value!r}"
            for build, args, kwargs in ((open_clip.create_model, (f"{BASE}-{name}",), {block: {option: value}}),
                                        (declared.apply, (stock,), {option: value}),
                                        (declared.apply, (family, {option: value}), {})):
                with pytest.raises(ValueError) as error:
                    build(*args, **kwargs)
                assert expected in str(error.value), (option, value, str(error.value))
            assert type(stock) is open_clip.model.CLIP and type(stock.visual) is VisionTransformer
            assert type(family) is declared.model_class and family.options() == before


def test_a_json_config_string_for_a_boolean_is_refused(family_configs, tmp_path):
    config = json.loads((family_configs / f"{BASE}-elip.json").read_text())
    config["elip_cfg"]["merge"] = "false"
    (tmp_path / "ViT-Fam-6-elip-string.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    with pytest.raises(ValueError, match=r"elip_cfg.merge must be true or false .*; got 'false' \(str\)"):
        open_clip.create_model("ViT-Fam-6-elip-string")


def test_unknown_options_are_named_with_the_accepted_ones():
    for name in SPECIFIED:
        model_class = FAMILIES[name].model_class
        accepted = ", ".join(map(repr, model_class.option_spec))
        with pytest.raises(ValueError) as error:
            model_class.check_options({"nope": 1})
        assert str(error.value) == (f"{model_class.config_block}: unknown option(s) ['nope']; accepted options are "
                                    f"[{accepted}]")


@pytest.mark.parametrize("name", SPECIFIED)
def test_apply_merges_the_same_way_for_every_family(family_configs, name):
    """``apply_<family>(model, <family>_cfg=None, **options)``: on a stock model the family's defaults plus what
    is named; on a model that has the family, only what is named changes (keywords over the dict); applying
    again with nothing named changes nothing."""
    declared = FAMILIES[name]
    spec = declared.model_class.option_spec
    twin, stock = models(name)
    defaults = twin.options()
    changes = {option: changed(kind, defaults[option]) for option, kind in spec.items()}
    changes = {option: value for option, value in changes.items() if value is not None}
    assert changes, "no option to change"
    (first, first_value), *rest = changes.items()
    model = declared.apply(stock, {first: first_value})
    assert model is stock and type(model) is declared.model_class
    assert model.options() == {**defaults, first: first_value}
    declared.apply(model)
    assert model.options() == {**defaults, first: first_value}
    for option, value in rest:
        declared.apply(model, {option: defaults[option]}, **{option: value})  # the keyword wins
        assert model.options()[option] == value
    assert model.options() == {**defaults, **changes}
    for key, tensor in twin.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


def layer_outputs_by_hooks(visual, images, **inputs):
    """Every layer's output tokens, read off the block's own modules: the input of ``ln_2`` plus the output of
    ``ls_2`` (``x + ls_2(mlp(ln_2(x)))``), in the order the forward runs them, skipping no-gradient passes (ELIP's
    look-ahead). Then the forward's output."""
    seen, outputs, handles = {}, [], []
    for block in visual.transformer.resblocks:
        handles.append(block.ln_2.register_forward_pre_hook(
            lambda module, args: seen.__setitem__("mid", args[0]) if torch.is_grad_enabled() else None))
        handles.append(block.ls_2.register_forward_hook(
            lambda module, args, out: outputs.append(seen["mid"] + out) if torch.is_grad_enabled() else None))
    try:
        features = visual(images, **inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, features


@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if FAMILIES[n].scored_pruned is not None])
def test_forward_intermediates_follows_the_family_where_it_reduces(family_configs, name):
    """Under the options that make the family reduce without a caption (``scored_pruned``), in eval mode:
    OpenCLIP's ``model.forward_intermediates`` gives the family's reduced tokens per layer (as its blocks compute
    them) and the features of ``encode_image``, or refuses a patch-grid format naming the family."""
    declared = FAMILIES[name]
    options = declared.scored_pruned
    torch.manual_seed(0)
    stock = open_clip.create_model(BASE)
    model = open_clip.create_model(f"{BASE}-{name}", **{declared.config_block: options})
    model.load_state_dict(stock.state_dict())
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=rf"{model.visual.family_title} reduces the image tokens.*output_fmt='NLC'"):
        model.forward_intermediates(images)
    expected, features = layer_outputs_by_hooks(model.visual, images)
    assert len(expected) == 6 and min(y.shape[1] for y in expected) < 65  # reduced
    out = model.forward_intermediates(images, image_output_fmt="NLC", image_output_extra_tokens=True)
    got = [torch.cat([prefix, rest], dim=1) for prefix, rest in
           zip(out["image_intermediates_prefix"], out["image_intermediates"])]
    assert [y.shape for y in got] == [y.shape for y in expected]
    for mine, theirs in zip(got, expected):
        assert torch.equal(mine, theirs)
    assert torch.equal(out["image_features"], F.normalize(features, dim=-1))
    assert torch.equal(out["image_features"], model.encode_image(images, normalize=True))
    picked = model.visual.forward_intermediates(images, indices=[1, -1], output_fmt="NLC",
                                                normalize_intermediates=True, intermediates_only=True)
    assert set(picked) == {"image_intermediates"}
    for mine, theirs in zip(picked["image_intermediates"], (expected[1], expected[-1])):
        assert torch.equal(mine, model.visual.ln_post(theirs)[:, 1:])
    assert len(model.visual.forward_intermediates(images, indices=2, output_fmt="NLC")["image_intermediates"]) == 2


@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if FAMILIES[n].at_inference == STOCK])
def test_forward_intermediates_is_stock_where_the_output_is(family_configs, name):
    family, stock = models(name)
    family.eval(), stock.eval()
    images, text = torch.randn(2, 3, 32, 32), open_clip.tokenize(["a one", "a two"], context_length=16)
    for kwargs in ({}, {"image_output_fmt": "NLC", "image_indices": 2, "normalize_intermediates": True}):
        ours, theirs = family.forward_intermediates(images, **kwargs), stock.forward_intermediates(images, **kwargs)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            for mine, stocks in zip(*(v if isinstance(v, list) else [v] for v in (ours[key], theirs[key]))):
                assert torch.equal(mine, stocks), key
    text_only = family.forward_intermediates(text=text)
    assert torch.equal(text_only["text_features"], stock.forward_intermediates(text=text)["text_features"])


def test_a_family_tower_that_does_not_declare_its_reduction_is_refused():
    class Plain(FamilyCLIP):
        config_block = "plain_cfg"

    model = Plain(**tiny_config(elip=False))
    with pytest.raises(TypeError, match="image tower VisionTransformer does not say how it reduces tokens.*"
                                        "FamilyVisionTransformer"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32))


class BlockWeightUses(torch.overrides.TorchFunctionMode):
    """Records each torch call that reads a vision block's parameter, and whether that block's own call
    (``__call__``: where FSDP gathers its sharded weights) was running at the time."""

    def __init__(self, visual):
        super().__init__()
        self.owner = {id(p): block for block in visual.transformer.resblocks for p in block.parameters()}
        self.running, self.inside, self.outside = [], 0, []
        for block in visual.transformer.resblocks:
            block.register_forward_pre_hook(self.enter)
            block.register_forward_hook(self.leave, always_call=True)

    def enter(self, block, args):
        self.running.append(block)

    def leave(self, block, args, out):
        self.running.remove(block)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in torch.utils._pytree.tree_leaves((args, kwargs)):
            block = self.owner.get(id(leaf)) if isinstance(leaf, torch.nn.Parameter) else None
            if block is not None:
                if block in self.running:
                    self.inside += 1
                else:
                    self.outside.append(func.__name__)
        return func(*args, **kwargs)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_use_of_a_blocks_weights_runs_inside_the_blocks_own_call(family_configs, name, checkpointing):
    """What lets FSDP2 shard a family's tower per block (``fully_shard`` gathers a block's weights in hooks on its
    call): a guided training step, forward and backward, reads a vision block's weights only inside that block's
    call, scoring and reduction included."""
    model, _ = models(name)
    model.train()
    model.set_grad_checkpointing(checkpointing)
    images, text = torch.randn(3, 3, 32, 32), open_clip.tokenize(["a one", "a two", "a three"], context_length=16)
    uses = BlockWeightUses(model.visual)
    with uses:
        open_clip.ClipLoss()(*model(images, text)).backward()
    assert uses.outside == [] and uses.inside > 0


@pytest.mark.parametrize("apply, options", [("apply_elip", {"layout": [1, 1]}), ("apply_evit", {"keep_rate": 2.0}),
                                            ("apply_tome", {"r": -1})])
def test_a_rejected_option_leaves_the_tower_and_its_blocks_stock(family_configs, apply, options):
    from open_clip_elip.core.openclip import ResidualAttentionBlock, VisionTransformer
    from open_clip_elip.core.towers import OpBlock

    applies = {name: family.apply for name, family in FAMILIES.items()}
    model = open_clip.create_model(BASE)
    with pytest.raises(ValueError):
        applies[apply.removeprefix("apply_")](model, **options)
    assert type(model.visual) is VisionTransformer
    assert {type(block) for block in model.visual.transformer.resblocks} == {ResidualAttentionBlock}
    applies[apply.removeprefix("apply_")](model)
    assert {type(block) for block in model.visual.transformer.resblocks} == {OpBlock}
