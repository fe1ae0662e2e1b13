"""OpenCLIP users' habits (issue 9): stock pretrained tags for the -elip / -evit twins, through OpenCLIP's
real resolution path down to its download function; options that survive saving (save_for_hf and
``local-dir:``) and ``apply_elip`` changing only what it names; the recipes' dry runs and python."""
import copy
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import TINY_ELIP, TINY_STOCK, tiny_config
from open_clip import pretrained as open_clip_pretrained
from open_clip.push_to_hf_hub import save_for_hf
from open_clip.transformer import QuickGELU
from open_clip_train.params import parse_args

import open_clip_elip
from open_clip_elip import ElipCLIP, ElipConfig, apply_elip
from open_clip_elip.core.registration import EXTRA_CONFIGS_ENV, register_pretrained_tags
from open_clip_elip.families.evit import EvitCLIP

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
# the shipped family configs -> their stock twins (ViT-S-16 has no tags in OpenCLIP: neither have its twins)
SHIPPED = {**{f"ViT-{m}-{f}": f"ViT-{m}" for m in ("S-16", "B-16", "B-32", "L-14") for f in ("elip", "evit")},
           **{f"ViT-{m}-quickgelu-{f}": f"ViT-{m}-quickgelu"
              for m in ("B-16", "B-32", "L-14") for f in ("elip", "evit")}}

HABIT = "ViT-Habit"  # a tiny stock model given pretrained tags here, with its -elip / -evit twins
HABIT_TAGS = {
    "openai": open_clip_pretrained._pcfg(hf_hub="fake/habit-openai/", quick_gelu=True),
    # not OpenCLIP's default preprocessing: ImageNet mean and std, bilinear, squash
    "squashed": open_clip_pretrained._apcfg(hf_hub="fake/habit-squashed/open_clip_model.safetensors"),
}
NO_TOKENIZER = types.SimpleNamespace(save_pretrained=lambda directory: None)  # save_for_hf wants one
CAPTIONS = ["a photo of the digit one", "a photo of the digit two", "a photo of the digit three", "a seven"]


@pytest.fixture(scope="module")
def habit(tiny_configs, tmp_path_factory):
    """User configs (through OPEN_CLIP_ELIP_CONFIGS) around the tiny stock ViT-Habit, which gets two tags."""
    folder = tmp_path_factory.mktemp("habit_configs")
    stock, elip = tiny_config(False), tiny_config(True)
    wide = copy.deepcopy(elip)
    wide["vision_cfg"]["width"] = 128
    configs = {
        HABIT: stock,
        f"{HABIT}-elip": elip,
        f"{HABIT}-evit": {**stock, "evit_cfg": {"keep_rate": 0.7, "prune_layers": [1, 2]}},
        f"{HABIT}-quickgelu": {**stock, "quick_gelu": True},
        f"{HABIT}-quickgelu-elip": {**elip, "quick_gelu": True},
        f"{HABIT}-elip-wide": wide,  # not the stock architecture: no tags
    }
    for name, config in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    registry = open_clip_pretrained._PRETRAINED
    registry[HABIT] = copy.deepcopy(HABIT_TAGS)
    registry[f"{HABIT}-quickgelu"] = {"openai": copy.deepcopy(HABIT_TAGS["openai"])}
    paths = os.environ[EXTRA_CONFIGS_ENV]
    os.environ[EXTRA_CONFIGS_ENV] = os.pathsep.join([paths, str(folder)])
    open_clip_elip.register()
    yield configs
    os.environ[EXTRA_CONFIGS_ENV] = paths
    del registry[HABIT], registry[f"{HABIT}-quickgelu"]
    register_pretrained_tags()


@pytest.fixture(scope="module")
def habit_weights(habit, tmp_path_factory):
    """A stock ViT-Habit checkpoint: what the fake hub serves. Returns (path, state dict)."""
    torch.manual_seed(0)
    state = open_clip.create_model(HABIT).state_dict()
    path = tmp_path_factory.mktemp("hub") / "habit.bin"
    torch.save(state, path)
    return path, state


@pytest.fixture
def hub(monkeypatch):
    """OpenCLIP's lowest download point, ``open_clip.pretrained.hf_hub_download``, serves ``hub.file`` and
    records ``(repo_id, filename)``; URL downloads fail the test."""
    served = types.SimpleNamespace(file=None, calls=[])

    def hf_hub_download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        served.calls.append((repo_id, filename))
        if served.file is None:
            raise FileNotFoundError(f"{repo_id}/{filename}: nothing served")
        return str(served.file)

    def urlopen(*args, **kwargs):
        raise AssertionError(f"network access in a test: {args}")

    monkeypatch.setattr(open_clip_pretrained, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    return served


def activations(model):
    """The activation classes of the image and text towers (QuickGELU or nn.GELU)."""
    return type(model.visual.transformer.resblocks[0].mlp.gelu), type(model.transformer.resblocks[0].mlp.gelu)


def assert_weights(model, state):
    assert model.state_dict().keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value.float()), key


def create_recording_warnings(create, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = create(*args, **kwargs)
    return result, sorted(str(w.message) for w in caught if issubclass(w.category, UserWarning))


# --- 1. stock pretrained tags for the twins ------------------------------------------------------------------

def test_shipped_twins_have_the_stock_tags():
    pairs = set(open_clip.list_pretrained())
    for name, twin in SHIPPED.items():
        tags = open_clip.list_pretrained_tags_by_model(twin)
        assert open_clip.list_pretrained_tags_by_model(name) == tags, name
        for tag in tags:
            assert open_clip.get_pretrained_cfg(name, tag) == open_clip.get_pretrained_cfg(twin, tag), (name, tag)
            assert (name, tag) in pairs
        config = open_clip.get_model_config(name)
        assert {k: v for k, v in config.items() if k not in ("elip_cfg", "evit_cfg")} == \
            open_clip.get_model_config(twin)
    for name in ("ViT-B-16-elip", "ViT-B-16-evit", "ViT-L-14-elip"):
        assert {"openai", "datacomp_xl_s13b_b90k"} <= set(open_clip.list_pretrained_tags_by_model(name))
    assert open_clip.get_pretrained_cfg("ViT-B-16-elip", "laion2b_s34b_b88k")["hf_hub"] == \
        "laion/CLIP-ViT-B-16-laion2B-s34B-b88K/"
    assert open_clip.get_pretrained_cfg("ViT-B-32-quickgelu-elip", "openai")["quick_gelu"] is True


def test_a_real_tag_loads_the_stock_weights_into_the_twin(hub, tmp_path):
    """ViT-B-32-elip with pretrained='openai': the same download, weights, preprocessing and activation (and
    the same QuickGELU warning) as ViT-B-32."""
    torch.manual_seed(0)
    state = {k: v.half() for k, v in open_clip.create_model("ViT-B-32").state_dict().items()}
    hub.file = tmp_path / "vit-b-32.bin"
    torch.save(state, hub.file)
    made = {name: create_recording_warnings(open_clip.create_model_and_transforms, name, pretrained="openai")
            for name in ("ViT-B-32", "ViT-B-32-elip")}
    (stock, stock_train, stock_val), stock_warnings = made["ViT-B-32"]
    (twin, twin_train, twin_val), twin_warnings = made["ViT-B-32-elip"]
    assert {repo for repo, _ in hub.calls} == {"timm/vit_base_patch32_clip_224.openai"} and len(hub.calls) == 2
    assert type(twin) is ElipCLIP
    assert_weights(twin, state)
    assert (repr(twin_train), repr(twin_val)) == (repr(stock_train), repr(stock_val))
    assert twin.visual.preprocess_cfg == stock.visual.preprocess_cfg
    assert activations(twin) == activations(stock)
    assert twin_warnings == stock_warnings and any("QuickGELU mismatch" in w for w in twin_warnings)


@pytest.mark.parametrize("tag", sorted(HABIT_TAGS))
@pytest.mark.parametrize("family", ["elip", "evit"])
def test_twin_tags_resolve_through_the_factory_functions(habit, habit_weights, hub, family, tag):
    path, state = habit_weights
    hub.file = path
    name = f"{HABIT}-{family}"
    (stock, stock_train, stock_val), stock_warnings = create_recording_warnings(
        open_clip.create_model_and_transforms, HABIT, pretrained=tag)
    (twin, twin_train, twin_val), twin_warnings = create_recording_warnings(
        open_clip.create_model_and_transforms, name, pretrained=tag)
    assert type(twin) is {"elip": ElipCLIP, "evit": EvitCLIP}[family]
    assert_weights(twin, state)
    assert (repr(twin_train), repr(twin_val)) == (repr(stock_train), repr(stock_val))
    expected = {key: HABIT_TAGS[tag][key] for key in ("mean", "std", "interpolation", "resize_mode")}
    assert {key: twin.visual.preprocess_cfg[key] for key in expected} == expected  # the tag's, not defaults
    assert twin.visual.preprocess_cfg == stock.visual.preprocess_cfg
    assert activations(twin) == activations(stock) and twin_warnings == stock_warnings

    (model, preprocess), caught = create_recording_warnings(
        open_clip.create_model_from_pretrained, name, pretrained=tag)
    assert_weights(model, state)
    assert caught == stock_warnings
    assert repr(preprocess) == repr(stock_val)
    assert torch.equal(open_clip.get_tokenizer(name)(CAPTIONS), open_clip.get_tokenizer(HABIT)(CAPTIONS))
    assert {repo for repo, _ in hub.calls} == {HABIT_TAGS[tag]["hf_hub"].split("/open_clip")[0].rstrip("/")}


def test_quickgelu_twins_get_quickgelu_as_the_stock_name_does(habit, habit_weights, hub):
    hub.file = habit_weights[0]
    stock = open_clip.create_model(f"{HABIT}-quickgelu", pretrained="openai")
    twin, caught = create_recording_warnings(open_clip.create_model, f"{HABIT}-quickgelu-elip", pretrained="openai")
    assert activations(twin) == activations(stock) == (QuickGELU, QuickGELU) and caught == []
    assert_weights(twin, habit_weights[1])
    forced = open_clip.create_model(f"{HABIT}-elip", pretrained="openai", force_quick_gelu=True)
    assert activations(forced) == (QuickGELU, QuickGELU)


def test_unknown_tags_name_the_known_ones(habit):
    with pytest.raises(RuntimeError, match=r"'laion' is not a known tag.*'ViT-Habit-elip'.*tags of stock "
                                           r"'ViT-Habit': \['openai', 'squashed'\]"):
        open_clip.create_model(f"{HABIT}-elip", pretrained="laion")
    assert open_clip.list_pretrained_tags_by_model(f"{HABIT}-elip-wide") == []
    with pytest.raises(RuntimeError, match="its config differs from stock 'ViT-Habit' beyond elip_cfg"):
        open_clip.create_model(f"{HABIT}-elip-wide", pretrained="openai")
    with pytest.raises(RuntimeError, match="stock 'ViT-S-16' has no pretrained tags either. Pass the path"):
        open_clip.create_model("ViT-S-16-elip", pretrained="openai")


def test_clip_benchmark_loads_a_twin_by_tag(habit, habit_weights, hub):
    from clip_benchmark.models import load_clip  # what `clip_benchmark eval --model M --pretrained TAG` calls

    hub.file = habit_weights[0]
    stock, stock_transform, _ = load_clip("open_clip", HABIT, "squashed", cache_dir=None, device="cpu")
    twin, transform, tokenizer = load_clip("open_clip", f"{HABIT}-elip", "squashed", cache_dir=None, device="cpu")
    assert type(twin) is ElipCLIP and repr(transform) == repr(stock_transform)
    assert_weights(twin, habit_weights[1])
    assert torch.equal(tokenizer(CAPTIONS), open_clip.get_tokenizer(HABIT)(CAPTIONS))


def test_open_clip_train_pretrained_tag_reaches_the_download(habit, habit_weights, hub, monkeypatch, tmp_path):
    """open_clip_train.main itself, in-process, up to its model: `--pretrained openai` for a twin."""
    import open_clip_train.main as train_main

    class Created(Exception):
        pass

    created = {}
    real_create = train_main.create_model_and_transforms

    def create_then_stop(*args, **kwargs):
        created["model"], _, created["preprocess"] = real_create(*args, **kwargs)
        raise Created

    monkeypatch.setattr(train_main, "create_model_and_transforms", create_then_stop)
    monkeypatch.setattr(train_main, "setup_logging", lambda *args, **kwargs: None)  # leave pytest's logging be
    hub.file = habit_weights[0]
    with pytest.raises(Created):
        train_main.main(["--model", f"{HABIT}-quickgelu-elip", "--pretrained", "openai", "--device", "cpu",
                         "--precision", "fp32", "--logs", str(tmp_path), "--name", "habit"])
    model = created["model"]
    assert type(model) is ElipCLIP and activations(model) == (QuickGELU, QuickGELU)
    assert_weights(model, habit_weights[1])
    assert [repo for repo, _ in hub.calls][:1] == ["fake/habit-openai"]


# --- 2. options survive saving and loading -------------------------------------------------------------------

def guided(model, images, captions=CAPTIONS):
    with torch.no_grad():
        return model.eval()(images, open_clip.get_tokenizer(TINY_ELIP)(captions))[0]


@pytest.mark.parametrize("config_from", ["model.model_config()", "open_clip.get_model_config(name)"])
def test_per_call_options_survive_save_for_hf(tiny_configs, tmp_path, config_from):
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ELIP, elip_cfg={"lam": 0.5, "scoring": "first_layer", "merge": False})
    config = model.model_config() if config_from.startswith("model") else open_clip.get_model_config(TINY_ELIP)
    save_for_hf(model, NO_TOKENIZER, config, tmp_path / "saved")
    loaded = open_clip.create_model(f"local-dir:{tmp_path / 'saved'}")
    assert type(loaded) is ElipCLIP and loaded.visual.elip_cfg == model.visual.elip_cfg
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(guided(loaded, images), guided(model, images))
    defaults = apply_elip(copy.deepcopy(loaded), ElipConfig(layout=(1, 1, 1, 1)))
    assert not torch.allclose(guided(defaults, images), guided(model, images))  # the options matter here

    # per-call options on a saved model merge over its saved block
    again = open_clip.create_model(f"local-dir:{tmp_path / 'saved'}", elip_cfg={"merge": True})
    assert again.visual.elip_cfg == dataclasses.replace(model.visual.elip_cfg, merge=True)


def test_apply_elip_options_survive_save_for_hf(tiny_configs, tmp_path):
    torch.manual_seed(0)
    model = apply_elip(open_clip.create_model(TINY_STOCK), layout=[1, 1, 1, 1], lam=0.3, keep_ratios=[0.8, 0.5, 0.3])
    save_for_hf(model, NO_TOKENIZER, model.model_config(), tmp_path / "saved")
    loaded = open_clip.create_model(f"local-dir:{tmp_path / 'saved'}")
    assert type(loaded) is ElipCLIP and loaded.visual.elip_cfg == model.visual.elip_cfg
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(guided(loaded, images), guided(model, images))


def test_evit_options_merge_per_call_and_survive_save_for_hf(habit, tmp_path):
    torch.manual_seed(0)
    name = f"{HABIT}-evit"
    model = open_clip.create_model(name, evit_cfg={"keep_rate": 0.5})
    assert (model.visual.evit_keep_rate, model.visual.evit_prune_layers) == (0.5, (1, 2))  # the config's layers
    save_for_hf(model, NO_TOKENIZER, open_clip.get_model_config(name), tmp_path / "saved")
    loaded = open_clip.create_model(f"local-dir:{tmp_path / 'saved'}")
    assert type(loaded) is EvitCLIP and loaded.options() == model.options()
    assert loaded.model_config() == model.model_config()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode_image(images), model.eval().encode_image(images))


def test_model_config_is_the_full_openclip_config(tiny_configs):
    model = open_clip.create_model(TINY_ELIP, elip_cfg={"lam": 0.5}, force_quick_gelu=True)
    config = model.model_config()
    assert json.loads(json.dumps(config)) == config  # JSON as it is
    expected = tiny_config(True)
    assert (config["embed_dim"], config["vision_cfg"], config["text_cfg"], config["quick_gelu"]) == \
        (expected["embed_dim"], expected["vision_cfg"], expected["text_cfg"], True)
    assert set(config["elip_cfg"]) == {field.name for field in dataclasses.fields(ElipConfig)}  # every option
    assert (config["elip_cfg"]["lam"], config["elip_cfg"]["layout"]) == (0.5, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="not made by open_clip.create_model"):
        ElipCLIP(**tiny_config(True)).model_config()


def test_apply_elip_changes_only_the_options_it_names(tiny_configs):
    model = open_clip.create_model(TINY_ELIP, elip_cfg={"lam": 0.5, "scoring": "first_layer"})
    before = model.visual.elip_cfg
    apply_elip(model, merge=False)
    assert model.visual.elip_cfg == dataclasses.replace(before, merge=False)
    apply_elip(model, {"lam": 0.2})
    assert model.visual.elip_cfg == dataclasses.replace(before, merge=False, lam=0.2)
    with pytest.raises(ValueError, match="lam"):
        apply_elip(model, lam=2.0)
    assert model.visual.elip_cfg == dataclasses.replace(before, merge=False, lam=0.2)  # a refused change: none
    apply_elip(model, ElipConfig(layout=(1, 1, 1, 1)))  # a whole config replaces them all
    assert (model.visual.elip_cfg.lam, model.visual.elip_cfg.scoring, model.visual.elip_cfg.merge) == \
        (0.8, "lookahead", True)


# --- 4. recipes ----------------------------------------------------------------------------------------------

def run(script, env, *args):
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=120)


def test_dry_run_prints_the_command_before_the_shards_exist(tmp_path, tiny_shard):
    (tmp_path / "cc3m").mkdir()
    shutil.copy(tiny_shard, tmp_path / "cc3m" / "00000.tar")  # CC3M is there, SBU and MSCOCO are not
    env = {**os.environ, "DRY_RUN": "1", "DATA_ROOT": str(tmp_path), "PYTHON": sys.executable}
    result = run(RECIPES / "train" / "vit-b16-cc3m-elip.sh", env)
    assert result.returncode == 0, result.stderr
    assert f"no cc3m+ shards in {tmp_path}/sbu {tmp_path}/coco-shards: build them with recipes/data" in result.stderr
    words = shlex.split(result.stdout)
    trainer = words[words.index("open_clip_train.main") + 1:]
    assert trainer[trainer.index("--train-data") + 1].split("::") == [
        f"{tmp_path}/{source}/{{00000..NNNNN}}.tar" for source in ("cc3m", "sbu", "coco-shards")]
    assert trainer[trainer.index("--train-num-samples") + 1] == "N"
    trainer[trainer.index("--train-num-samples") + 1] = "1"
    args = parse_args(trainer)
    assert (args.model, args.epochs, args.batch_size) == ("ViT-B-16-elip", 32, 230)

    env["DRY_RUN"] = "0"  # a real run still refuses
    result = run(RECIPES / "train" / "vit-b16-cc3m-elip.sh", env)
    assert result.returncode == 2 and not result.stdout and "error: no cc3m+ shards in" in result.stderr


def test_recipes_use_the_project_python(tmp_path, tiny_shard):
    recipes = tmp_path / "repo" / "recipes"  # a copy of the recipes beside a .venv of its own
    shutil.copytree(RECIPES, recipes)
    venv_python = tmp_path / "repo" / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")  # this test's python, which has the package
    venv_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"  # no virtual environment active
    (tmp_path / "shards").mkdir()
    shutil.copy(tiny_shard, tmp_path / "shards" / "00000.tar")
    result = run(recipes / "data" / "manifest.sh", {**env, "SOURCES": str(tmp_path / "shards")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "--train-num-samples 64"

    train = run(recipes / "train" / "vit-s16-cc3m-elip.sh",
                {**env, "DRY_RUN": "1", "TRAIN_DATA": "/a/0.tar", "TRAIN_NUM_SAMPLES": "1"})
    assert shlex.split(train.stdout)[:3] == [str(venv_python), "-m", "torch.distributed.run"], train.stderr
    evaluate = run(recipes / "eval" / "eval_checkpoint.sh", {**env, "DRY_RUN": "1"}, "ViT-B-16-elip", "x.pt", "out")
    assert shlex.split(evaluate.stdout.splitlines()[0])[:4] == [str(venv_python), "-m", "clip_benchmark.cli", "eval"]
    for script in [*RECIPES.glob("data/*.sh"), *RECIPES.glob("eval/*.sh"), RECIPES / "train" / "common.sh"]:
        assert "python.sh" in script.read_text() and "${PYTHON:-python}" not in script.read_text(), script


def test_recipes_without_the_project_python_say_how(tmp_path):
    shutil.copytree(RECIPES, tmp_path / "recipes")  # no .venv beside this copy
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").write_text("#!/bin/sh\nexit 1\n")  # a python3 without open_clip_elip
    (tmp_path / "bin" / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    result = run(tmp_path / "recipes" / "data" / "manifest.sh", env)
    assert result.returncode == 2 and not result.stdout
    assert "python3 cannot import open_clip_elip: run `make install`" in result.stderr and "PYTHON=" in result.stderr
