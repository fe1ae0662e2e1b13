"""OpenCLIP's trainer (``python -m open_clip_train.main``, unmodified) with the flags of a real run, on a tiny
``-elip`` model on CPU (issue 13). Three trainer runs cover the flags:

- ``real_run``: two ranks under torchrun (gloo), two epochs, then ``--resume latest`` for a third: ``::`` sources
  with ``--train-data-upsampling-factors`` and ``--dataset-resampled``, ``--val-data`` / ``--val-num-samples``,
  ``--imagenet-val`` / ``--zeroshot-frequency``, ``--save-most-recent``, ``--delete-previous-checkpoint``,
  ``--lock-text``, ``--grad-checkpointing``, ``--accum-freq``, ``--precision amp_bf16``, ``--local-loss
  --gather-with-grad``;
- ``compiled_run``: one process, ``--torchcompile --siglip``.

Assertions are on what the trainer logs and writes (``out.log``, ``params.txt``, ``checkpoints/``,
``results.jsonl``) and on what ``HOOKS`` record (they wrap OpenCLIP and torch functions, and hook the image
tower with torch's module hooks; they only observe). The sample shuffle of
``patches/open_clip_torch-0002-seeded-sample-shuffle.patch`` is tested on OpenCLIP's own ``get_wds_dataset``.
"""
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import open_clip
import pytest
import torch
import webdataset as wds
from conftest import EXTRA_CONFIGS_ENV, TINY_ELIP, digit_samples, tiny_config
from open_clip_train.data import _SAMPLE_SHUFFLE_INITIAL, _SAMPLE_SHUFFLE_SIZE, get_wds_dataset
from open_clip_train.params import parse_args
from PIL import Image
from webdataset.filters import _shuffle

MODEL = "ViT-Tiny-4-textlite-elip"  # the tiny -elip model, tinier text tower: the zero-shot encodes 80,000 prompts
TOKENS_PER_BLOCK = [65, 60, 44, 28]  # its image tower: 64 patches + CLS, ELIP keeps 0.9 / 0.65 / 0.4 of them
TRAIN_LINE = re.compile(r"Train Epoch: (\d+) .* Logit Scale: (\S+) .* Loss: (\S+) ")
HOOKS = '''"""open_clip_train.main, run unchanged, with hooks that only observe; report in $HOOK_DIR/rank<RANK>.json."""
import atexit
import functools
import json
import os
import runpy
import sys

import open_clip
import torch
import torch.distributed.nn
import torch.utils.checkpoint
from open_clip import loss as clip_loss
from open_clip_train import data, train

RANK = os.environ.get("RANK", "0")
report = {"forwards": {}, "out_dtypes": {}, "checkpointed": {}, "train_texts": [], "draws": [], "logits": [],
          "grad_gathers": 0, "loss": None, "compiled": None, "dynamo": None}
phase = ["setup"]


def in_phase(name, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        outer, phase[0] = phase[0], name
        try:
            return function(*args, **kwargs)
        finally:
            phase[0] = outer
    return wrapper


def first_epoch_weights(function):
    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        path = os.environ.get("HOOK_EPOCH_START")
        if path and RANK == "0" and not os.path.exists(path):
            torch.save(model.state_dict(), path)
        return function(model, *args, **kwargs)
    return wrapper


def add(table, key, value=1):
    table[key] = table.get(key, 0) + value


def before_visual(module, args, kwargs):
    text = kwargs.get("text_features", args[1] if len(args) > 1 else None)
    add(report["forwards"], f"{phase[0]}:{'guided' if text is not None else 'unguided'}", int(args[0].shape[0]))


def after_visual(module, args, kwargs, output):
    output = output[0] if isinstance(output, tuple) else output
    report["out_dtypes"].setdefault(phase[0], []).append(str(output.dtype))


def before_model(module, args, kwargs):
    if phase[0] == "train" and len(args) > 1:
        report["train_texts"].append(args[1].tolist())


create_model_and_transforms = open_clip.create_model_and_transforms


def observed_create_model_and_transforms(*args, **kwargs):
    model, *rest = create_model_and_transforms(*args, **kwargs)
    if os.environ.get("HOOK_INITIAL") and RANK == "0":
        torch.save(model.state_dict(), os.environ["HOOK_INITIAL"])
    if not os.environ.get("HOOK_NO_MODULE_HOOKS"):  # not with torch.compile: dynamo would trace them
        model.visual.register_forward_pre_hook(before_visual, with_kwargs=True)
        model.visual.register_forward_hook(after_visual, with_kwargs=True)
        model.register_forward_pre_hook(before_model, with_kwargs=True)
    return (model, *rest)


original_checkpoint = torch.utils.checkpoint.checkpoint


def counting_checkpoint(function, *args, **kwargs):
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() == 3:  # batch x tokens x width
        add(report["checkpointed"], f"{phase[0]}:{x.shape[1]}")
    return original_checkpoint(function, *args, **kwargs)


iterate_shards = data.ResampledShards2.__iter__


def counting_iterate_shards(self):
    for shard in iterate_shards(self):
        report["draws"].append(os.path.basename(shard["url"]))
        yield shard


get_logits = clip_loss.ClipLoss.get_logits


def recording_get_logits(self, image_features, text_features, *args, **kwargs):
    logits = get_logits(self, image_features, text_features, *args, **kwargs)
    report["logits"].append([phase[0], list(image_features.shape), list(logits[0].shape)])
    return logits


all_gather_with_grad = torch.distributed.nn.all_gather


def counting_all_gather(*args, **kwargs):
    report["grad_gathers"] += 1
    return all_gather_with_grad(*args, **kwargs)


create_loss = open_clip.create_loss


def recording_create_loss(args):
    loss = create_loss(args)
    report["loss"] = type(loss).__name__
    return loss


compile_model = torch.compile


def recording_compile(model, *args, **kwargs):
    report["compiled"] = type(model).__name__
    if os.environ.get("HOOK_COMPILE_BACKEND"):
        kwargs["backend"] = os.environ["HOOK_COMPILE_BACKEND"]
    return compile_model(model, *args, **kwargs)


def write_report():
    if report["compiled"]:
        from torch._dynamo.utils import counters
        report["dynamo"] = {"frames_ok": counters["frames"]["ok"], "graphs": counters["stats"]["unique_graphs"],
                            "graph_breaks": sum(counters["graph_break"].values())}
    with open(os.path.join(os.environ["HOOK_DIR"], f"rank{RANK}.json"), "w") as f:
        json.dump(report, f)


train.train_one_epoch = in_phase("train", first_epoch_weights(train.train_one_epoch))
train.evaluate = in_phase("val", train.evaluate)
train.zero_shot_eval = in_phase("zeroshot", train.zero_shot_eval)
open_clip.create_model_and_transforms = observed_create_model_and_transforms
open_clip.create_loss = recording_create_loss
for module in list(sys.modules.values()):  # `from torch.utils.checkpoint import checkpoint` done already
    if getattr(module, "checkpoint", None) is original_checkpoint:
        module.checkpoint = counting_checkpoint
torch.utils.checkpoint.checkpoint = counting_checkpoint
data.ResampledShards2.__iter__ = counting_iterate_shards
clip_loss.ClipLoss.get_logits = recording_get_logits
torch.distributed.nn.all_gather = counting_all_gather
torch.compile = recording_compile
atexit.register(write_report)
runpy.run_module("open_clip_train.main", run_name="__main__", alter_sys=True)
'''


def write_shard(path: Path, samples) -> Path:
    """A webdataset shard of (image, caption) pairs, as jpg/txt."""
    with wds.TarWriter(str(path)) as sink:
        for i, (image, caption) in enumerate(samples):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG")
            sink.write({"__key__": f"{i:06d}", "jpg": buffer.getvalue(), "txt": caption})
    return path


@pytest.fixture(scope="module")
def setup(tiny_configs, tiny_shard, tmp_path_factory):
    """The model config, the hooks, a second training source, a validation shard and a small ImageFolder."""
    root = tmp_path_factory.mktemp("trainer_flags")
    config = tiny_config(elip=True)
    config["text_cfg"] = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}
    (root / "configs").mkdir()
    (root / "configs" / f"{MODEL}.json").write_text(json.dumps(config))
    hooks = root / "trainer_flag_hooks.py"
    hooks.write_text(HOOKS)
    digits = list(itertools.islice(digit_samples(144), 64, 144))
    sketches = write_shard(root / "sketches-000000.tar",
                           [(image, caption.replace("a photo", "a sketch")) for image, caption, _ in digits[:64]])
    val = write_shard(root / "val-000000.tar", [(image, caption) for image, caption, _ in digits[64:]])
    for i, (image, _, _) in enumerate(digits[:12]):  # 3 classes (ImageNet's first three) x 4 images
        folder = root / "imagenet-val" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.png")
    env = {**os.environ, EXTRA_CONFIGS_ENV: os.pathsep.join([str(tiny_configs), str(root / "configs")]),
           "OMP_NUM_THREADS": "1"}
    return types.SimpleNamespace(root=root, env=env, hooks=hooks, photos=tiny_shard, sketches=sketches, val=val,
                                 imagenet=root / "imagenet-val")


def trainer(setup, launcher, name, *args, hooks=None, timeout=300):
    """Run the trainer under the hooks; the run folder. ``hooks``: extra HOOK_* variables."""
    report = setup.root / f"{name}-hooks"
    report.mkdir(exist_ok=True)
    command = [*launcher, str(setup.hooks), "--model", MODEL, "--dataset-type", "webdataset",
               "--workers", "0", "--device", "cpu", "--logs", str(setup.root / "logs"), "--name", name,
               "--lr", "1e-3", "--warmup", "1", "--seed", "0", "--log-every-n-steps", "1", *args]
    env = {**setup.env, "HOOK_DIR": str(report), **(hooks or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return setup.root / "logs" / name


def params(run: Path) -> dict:
    """The trainer's params.txt (``name: value`` lines) as strings."""
    return dict(line.split(": ", 1) for line in (run / "params.txt").read_text().splitlines())


def results(run: Path) -> list:
    return [json.loads(line) for line in (run / "checkpoints" / "results.jsonl").read_text().splitlines()]


def hooks_report(run: Path, rank: int = 0) -> dict:
    return json.loads((run.parents[1] / f"{run.name}-hooks" / f"rank{rank}.json").read_text())


def adam_steps(checkpoint) -> set:
    return {float(state["step"]) for state in checkpoint["optimizer"]["state"].values()}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def unprefixed(state_dict: dict) -> dict:
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def is_text_tower(key: str) -> bool:
    return not key.startswith("visual.") and key not in ("logit_scale", "logit_bias")


REAL_RUN_FLAGS = [
    "--dataset-resampled", "--train-data-upsampling-factors", "1::3", "--train-num-samples", "64",
    "--batch-size", "8", "--accum-freq", "2", "--precision", "amp_bf16", "--grad-checkpointing", "--lock-text",
    "--lock-text-freeze-layer-norm", "--local-loss", "--gather-with-grad", "--save-most-recent",
    "--delete-previous-checkpoint"]


@pytest.fixture(scope="module")
def real_run(setup):
    """Two ranks x 2 epochs (4 batches of 8 per rank and epoch, 2 optimizer steps), then resumed for a third."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--"]
    sources = f"{setup.photos}::{setup.sketches}"
    common = ["--train-data", sources, "--val-data", str(setup.val), "--val-num-samples", "12", *REAL_RUN_FLAGS]
    run = trainer(setup, torchrun, "real", *common, "--epochs", "2", "--imagenet-val", str(setup.imagenet),
                  "--zeroshot-frequency", "2", hooks={"HOOK_INITIAL": str(setup.root / "initial.pt")})
    first = types.SimpleNamespace(
        log=(run / "out.log").read_text(), params=params(run), results=results(run), hooks=[
            hooks_report(run, rank) for rank in (0, 1)], files=sorted(p.name for p in (run / "checkpoints").iterdir()))
    shutil.copy(run / "checkpoints" / "epoch_2.pt", setup.root / "epoch_2.pt")  # the resumed run deletes it
    trainer(setup, torchrun, "real", *common, "--epochs", "3", "--resume", "latest",
            hooks={"HOOK_EPOCH_START": str(setup.root / "resumed.pt")})
    second = types.SimpleNamespace(
        log=(run / "out.log").read_text()[len(first.log):], results=results(run)[len(first.results):],
        hooks=hooks_report(run), files=sorted(p.name for p in (run / "checkpoints").iterdir()))
    return types.SimpleNamespace(run=run, root=setup.root, first=first, second=second)


def test_real_run_settings_reach_the_trainer(real_run):
    settings = real_run.first.params
    assert (settings["world_size"], settings["distributed"]) == ("2", "True")
    expected = {"dataset_resampled": "True", "train_data_upsampling_factors": "1::3", "val_num_samples": "12",
                "zeroshot_frequency": "2", "save_most_recent": "True", "delete_previous_checkpoint": "True",
                "lock_text": "True", "lock_text_freeze_layer_norm": "True", "grad_checkpointing": "True",
                "accum_freq": "2", "precision": "amp_bf16", "local_loss": "True", "gather_with_grad": "True"}
    assert {key: settings[key] for key in expected} == expected


def test_zero_shot_runs_every_zeroshot_frequency_epochs_unpruned(real_run):
    """--imagenet-val --zeroshot-frequency 2: the ImageNet zero-shot (1000 classes, OpenAI's templates) runs
    after epoch 2, not 1, on rank 0 only; its image forwards get no caption, so ELIP does not prune them."""
    by_epoch = {line["epoch"]: line for line in real_run.first.results}
    assert "imagenet-zeroshot-val-top1" not in by_epoch[1]
    for key in ("imagenet-zeroshot-val-top1", "imagenet-zeroshot-val-top5"):
        assert 0.0 <= by_epoch[2][key] <= 1.0
    assert real_run.first.log.count("Starting zero-shot imagenet.") == 1
    assert re.search(r"Eval Epoch: 2 .*imagenet-zeroshot-val-top1: \d\.\d{4}", real_run.first.log)
    rank0, rank1 = real_run.first.hooks
    assert rank0["forwards"]["zeroshot:unguided"] == 12 and "zeroshot:guided" not in rank0["forwards"]
    assert not any(key.startswith("zeroshot") for key in rank1["forwards"])


def test_validation_loss_is_computed_on_pruned_forwards(real_run):
    """--val-data / --val-num-samples 12: clip_val_loss after every epoch, from guided (pruned) forwards of the
    whole 16-sample shard; --val-num-samples only sets the count the trainer reports."""
    lines = real_run.first.results + real_run.second.results
    assert len(lines) == 3
    for epoch, line in zip((1, 2, 3), lines):
        assert line["epoch"] == epoch and line["num_samples"] == 16 and math.isfinite(line["clip_val_loss"])
        assert 0.0 <= line["image_to_text_R@1"] <= 1.0
    assert re.search(r"Eval Epoch: 1 \[8 / 12\]\tClip Loss: \d", real_run.first.log)
    assert re.search(r"Eval Epoch: 3 .*clip_val_loss: \d", real_run.second.log)
    forwards = real_run.first.hooks[0]["forwards"]
    assert forwards["val:guided"] == 2 * 16 and "val:unguided" not in forwards
    assert real_run.first.hooks[0]["checkpointed"][f"val:{TOKENS_PER_BLOCK[-1]}"] == 2 * 2  # pruned: 28 tokens


def test_checkpoint_files_with_save_most_recent_and_delete_previous(real_run):
    """epoch_N.pt every epoch (--save-frequency 1), the previous one deleted; epoch_latest.pt always there."""
    assert real_run.first.files == ["epoch_2.pt", "epoch_latest.pt", "results.jsonl"]
    assert real_run.second.files == ["epoch_3.pt", "epoch_latest.pt", "results.jsonl"]
    checkpoints = real_run.run / "checkpoints"
    latest, last = load(checkpoints / "epoch_latest.pt"), load(checkpoints / "epoch_3.pt")
    assert latest["epoch"] == last["epoch"] == 3
    for key, value in last["state_dict"].items():
        assert torch.equal(latest["state_dict"][key], value), key


def test_resume_latest_continues_from_epoch_latest(real_run):
    checkpoints = real_run.run / "checkpoints"
    log = real_run.second.log
    assert f"=> resuming checkpoint '{checkpoints / 'epoch_latest.pt'}' (epoch 2)" in log
    assert "Start epoch 2" in log and "Start epoch 0" not in log and "Start epoch 1" not in log
    epoch_2, epoch_3 = load(real_run.root / "epoch_2.pt"), load(checkpoints / "epoch_3.pt")
    resumed = load(real_run.root / "resumed.pt")  # the weights the third epoch started from
    for key, value in epoch_2["state_dict"].items():
        assert torch.equal(resumed[key], value), key
    assert adam_steps(epoch_2) == {4.0} and adam_steps(epoch_3) == {6.0}  # the optimizer state came back too


def test_lock_text_freezes_the_text_tower_only(real_run):
    initial = load(real_run.root / "initial.pt")
    final = unprefixed(load(real_run.run / "checkpoints" / "epoch_3.pt")["state_dict"])
    assert final.keys() == initial.keys()
    text = [key for key in initial if is_text_tower(key)]
    image = [key for key in initial if key.startswith("visual.")]
    assert "token_embedding.weight" in text and "text_projection" in text and len(image) > 20
    assert all(torch.equal(final[key], initial[key]) for key in text)
    assert [key for key in image if torch.equal(final[key], initial[key])] == []
    assert not torch.equal(final["logit_scale"], initial["logit_scale"])


def test_lock_text_alone_is_refused_by_open_clip(tiny_configs):
    """OpenCLIP 3.3: ``CLIP.lock_text_tower`` freezes the LayerNorms with the rest and asserts that it was asked
    to, but the trainer's --lock-text-freeze-layer-norm defaults to off: --lock-text alone stops the trainer, for
    the stock models as for ours (docs/training.md). The call below is the trainer's."""
    args = parse_args(["--lock-text"])
    model = open_clip.create_model(TINY_ELIP)
    with pytest.raises(AssertionError, match="Unfreezing LayerNorm is not supported"):
        model.lock_text_tower(unlocked_layers=args.lock_text_unlocked_layers,
                              freeze_layer_norm=args.lock_text_freeze_layer_norm)


def test_accum_freq_grad_checkpointing_and_bf16_in_training(real_run):
    """--accum-freq 2: 4 batches per rank and epoch, each encoded twice (without gradient to cache its
    features, then with), 2 optimizer steps; --grad-checkpointing: every layer of every training forward of
    the pruned image tower goes through activation checkpointing; --precision amp_bf16: bf16 features."""
    log = real_run.first.log
    assert [int(epoch) for epoch, _, _ in TRAIN_LINE.findall(log)] == [0, 0, 1, 1]
    assert all(math.isfinite(float(loss)) for _, _, loss in TRAIN_LINE.findall(log + real_run.second.log))
    for report in real_run.first.hooks:
        assert report["forwards"]["train:guided"] == 2 * 8 * 8 and "train:unguided" not in report["forwards"]
        assert {f"train:{n}": report["checkpointed"][f"train:{n}"] for n in TOKENS_PER_BLOCK} == {
            f"train:{n}": 2 * 8 for n in TOKENS_PER_BLOCK}
        assert set(report["out_dtypes"]["train"]) == {"torch.bfloat16"}
    assert load(real_run.root / "epoch_2.pt")["state_dict"]["module.visual.proj"].dtype == torch.float32


def test_local_loss_gathers_with_gradient_across_two_ranks(real_run):
    """--local-loss --gather-with-grad: each rank's logits are its own 16 rows (2 accumulated batches of 8)
    against all 32 captions, gathered with torch.distributed.nn.all_gather (autograd-aware)."""
    for report in real_run.first.hooks:
        assert report["loss"] == "ClipLoss"
        train_logits = [shapes for phase, _, shapes in report["logits"] if phase == "train"]
        assert train_logits == [[16, 32]] * 8  # 2 epochs x 2 optimizer steps x 2 accumulated batches
        assert report["grad_gathers"] == 2 * len(train_logits)  # image and text features


def test_sources_joined_resampled_with_upsampling_factors(real_run, setup):
    """``a::b`` with --train-data-upsampling-factors 1::3 and --dataset-resampled: shards drawn with replacement,
    the second three times as often; both sources reach the batches; the ranks' batches differ."""
    draws = [shard for report in real_run.first.hooks for shard in report["draws"]]
    photos, sketches = draws.count(setup.photos.name), draws.count(setup.sketches.name)
    assert photos + sketches == len(draws) and 0 < photos < sketches
    sketch_token = open_clip.tokenize(["sketch"])[0][1].item()  # after the start-of-text token
    rows = [row for report in real_run.first.hooks for batch in report["train_texts"] for row in batch]
    from_sketches = sum(sketch_token in row for row in rows)
    assert 0 < len(rows) - from_sketches < from_sketches
    first_batches = [report["train_texts"][0] for report in real_run.first.hooks]
    assert first_batches[0] != first_batches[1]


def test_upsampling_factors_need_resampled_shards(setup):
    """OpenCLIP's own check: per-source factors only make sense when sampling shards with replacement."""
    args = shuffle_args(f"{setup.photos}::{setup.sketches}", resampled=False)
    args.train_data_upsampling_factors = "1::3"
    with pytest.raises(AssertionError, match="only supported when sampling with replacement"):
        get_wds_dataset(args, lambda image: 0, is_train=True, tokenizer=lambda text: [text])


@pytest.fixture(scope="module")
def compiled_run(setup):
    """One process, 1 epoch of 4 batches, --torchcompile --siglip. Dynamo captures the graphs as on any device;
    the hooks compile with backend aot_eager instead of inductor, whose C++ code generation takes about 2-4
    minutes of a 2-core CPU (checked by hand; the GPU check uses inductor)."""
    return trainer(setup, [sys.executable], "compiled", "--train-data", str(setup.photos), "--train-num-samples",
                   "32", "--batch-size", "8", "--epochs", "1", "--precision", "fp32", "--torchcompile", "--siglip",
                   hooks={"HOOK_NO_MODULE_HOOKS": "1", "HOOK_COMPILE_BACKEND": "aot_eager"})


def test_torchcompile_compiles_the_elip_model(compiled_run):
    report = hooks_report(compiled_run)
    assert params(compiled_run)["torchcompile"] == "True"
    assert "Compiling model..." in (compiled_run / "out.log").read_text()
    assert report["compiled"] == "ElipCLIP"
    assert report["dynamo"]["frames_ok"] >= 1 and report["dynamo"]["graphs"] >= 1
    assert report["dynamo"]["graph_breaks"] == 0
    saved = load(compiled_run / "checkpoints" / "epoch_1.pt")["state_dict"]
    assert "visual.proj" in saved and not any(key.startswith("_orig_mod.") for key in saved)


def test_siglip_trains_with_the_sigmoid_loss(compiled_run):
    """--siglip: SigLipLoss, logit scale starting at 10 and a logit bias at -10 (CLIP: 1 / 0.07, none)."""
    assert hooks_report(compiled_run)["loss"] == "SigLipLoss"
    lines = TRAIN_LINE.findall((compiled_run / "out.log").read_text())
    assert len(lines) == 4 and all(math.isfinite(float(loss)) for _, _, loss in lines)
    assert abs(float(lines[0][1]) - 10.0) < 0.1
    assert float(lines[0][2]) > 4.0  # ~10 with the bias at -10; the CLIP loss of a batch of 8 starts near ln 8
    saved = load(compiled_run / "checkpoints" / "epoch_1.pt")["state_dict"]
    assert abs(saved["logit_bias"].item() + 10.0) < 0.1


# ---- the sample shuffle (patch 0002), on OpenCLIP's own webdataset pipeline

@pytest.fixture(scope="module")
def numbered_shard(tmp_path_factory):
    """64 tiny samples captioned 'sample 0' ... 'sample 63'."""
    image = Image.new("RGB", (4, 4))
    return write_shard(tmp_path_factory.mktemp("numbered") / "numbered-000000.tar",
                       [(image, f"sample {i}") for i in range(64)])


def shuffle_args(shards, seed=0, rank=0, workers=0, resampled=False):
    return types.SimpleNamespace(
        train_data=str(shards), val_data=None, train_num_samples=64, train_data_upsampling_factors=None,
        dataset_resampled=resampled, seed=seed, rank=rank, world_size=1, workers=workers, batch_size=8)


def sample_order(shards, epoch=0, **kwargs) -> list:
    """The captions of one training epoch, in the order the trainer's dataloader yields them."""
    data = get_wds_dataset(shuffle_args(shards, **kwargs), lambda image: 0, is_train=True, epoch=epoch,
                           tokenizer=lambda text: [text])
    return [caption for _, captions in data.dataloader for caption in captions]


def test_sample_order_follows_the_seed_and_the_epoch(numbered_shard):
    order = sample_order(numbered_shard, seed=0)
    assert sorted(order) == sorted(f"sample {i}" for i in range(64)) and order != [f"sample {i}" for i in range(64)]
    assert sample_order(numbered_shard, seed=0) == order  # the same seed: the same order, run after run
    assert sample_order(numbered_shard, seed=1) != order
    assert sample_order(numbered_shard, seed=0, epoch=1) != order


def test_sample_order_without_workers_is_the_seeded_shuffle_of_before(numbered_shard):
    """Rank 0 without dataloader workers (our demo and study) shuffles with seed + epoch, as the first version of
    the patch did for every worker: their committed results keep their sample order."""
    for seed, epoch in ((0, 0), (3, 1)):
        before = _shuffle(iter(range(64)), _SAMPLE_SHUFFLE_SIZE, _SAMPLE_SHUFFLE_INITIAL, random.Random(seed + epoch))
        assert sample_order(numbered_shard, seed=seed, epoch=epoch) == [f"sample {i}" for i in before]


def test_sample_order_differs_between_ranks_and_workers(numbered_shard):
    """Resampled shards, as in a multi-rank run: every rank and dataloader worker reads the same shard here, so
    only the sample shuffle can make their batches differ."""
    rank0 = sample_order(numbered_shard, rank=0, resampled=True)
    assert sample_order(numbered_shard, rank=0, resampled=True) == rank0
    assert sample_order(numbered_shard, rank=1, resampled=True) != rank0
    two_workers = sample_order(numbered_shard, workers=2, resampled=True)  # batches alternate between workers
    assert sample_order(numbered_shard, workers=2, resampled=True) == two_workers
    worker0 = [caption for b in range(0, 8, 2) for caption in two_workers[8 * b:8 * b + 8]]
    worker1 = [caption for b in range(1, 8, 2) for caption in two_workers[8 * b:8 * b + 8]]
    assert len(worker0) == len(worker1) == 32 and worker0 != worker1
