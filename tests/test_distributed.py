"""OpenCLIP's trainer (open_clip_train.main, unmodified) with an -elip model, on CPU: two ranks under
torchrun (gloo), ``--resume latest``, and ``--accum-freq`` / ``--grad-checkpointing`` / ``--precision amp_bf16``.

The trainer runs under ``tests/probe_run.py`` (counts the guided forwards of each rank) and, through
``probe_run.py -m``, under ``HOOKS`` below, which only observe. Two ranks on CPU need
``patches/open_clip_torch-0001-ddp-cpu-device-ids.patch`` (applied by ``make install``): OpenCLIP 3.3
passes ``device_ids=[device]`` to DistributedDataParallel, which torch refuses for a CPU model.
"""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_ELIP
from open_clip import create_model

PROBE_RUN = Path(__file__).with_name("probe_run.py")
LOSS = re.compile(r" Loss: (\S+) ")
HOOKS = '''"""open_clip_train.main with test hooks: start-of-epoch weights, checkpointed layers."""
import atexit
import json
import os
import runpy

import torch
from open_clip_train import train

from open_clip_elip.core import towers

train_one_epoch = train.train_one_epoch
start_weights = os.environ.get("HOOK_START_WEIGHTS")


def recording_train_one_epoch(model, data, loss, epoch, *args, **kwargs):
    if start_weights and not os.path.exists(start_weights):
        torch.save({"epoch": epoch, "state_dict": model.state_dict()}, start_weights)
    return train_one_epoch(model, data, loss, epoch, *args, **kwargs)


checkpoint = towers.checkpoint
calls = {"checkpointed_layers": 0}


def counting_checkpoint(*args, **kwargs):
    calls["checkpointed_layers"] += 1
    return checkpoint(*args, **kwargs)


def write_report():
    if os.environ.get("HOOK_REPORT"):
        with open(os.environ["HOOK_REPORT"], "w") as f:
            json.dump(calls, f)


train.train_one_epoch = recording_train_one_epoch
towers.checkpoint = counting_checkpoint
atexit.register(write_report)
runpy.run_module("open_clip_train.main", run_name="__main__", alter_sys=True)
'''


@pytest.fixture(scope="module")
def hooks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "trainer_hooks.py").write_text(HOOKS)
    return folder


def train(launcher, tiny_shard, folder: Path, hooks: Path, *args: str, name="run", env=None):
    """Run the trainer on the tiny shard (4 batches of 8 per epoch, fp32 unless ``args`` say otherwise)."""
    command = [
        *launcher, str(PROBE_RUN), "-m", "trainer_hooks", "--model", TINY_ELIP, "--train-data", str(tiny_shard),
        "--train-num-samples", "32", "--dataset-type", "webdataset", "--batch-size", "8", "--workers", "0",
        "--device", "cpu", "--logs", str(folder / "logs"), "--name", name, "--lr", "1e-3", "--warmup", "1",
        "--seed", "0", "--precision", "fp32", "--log-every-n-steps", "1", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
           "ELIP_PROBE_DIR": str(folder / "probe"), "HOOK_REPORT": str(folder / "hooks.json"),
           "OMP_NUM_THREADS": "1", **(env or {})}  # one thread: tiny model, steadier on a busy CPU
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return folder / "logs" / name


def params(run: Path) -> dict:
    """The trainer's params.txt (``name: value`` lines) as strings."""
    return dict(line.split(": ", 1) for line in (run / "params.txt").read_text().splitlines())


def losses(run: Path) -> list:
    return [float(value) for value in LOSS.findall((run / "out.log").read_text())]


def probe(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / "probe" / f"rank{rank}.json").read_text())


def adam_steps(checkpoint) -> set:
    return {float(state["step"]) for state in checkpoint["optimizer"]["state"].values()}


def tiny_tokens_per_block():
    return list(create_model(TINY_ELIP).visual.tokens_per_block())


def test_torchrun_two_ranks_both_prune(tiny_configs, tiny_shard, hooks, tmp_path):
    """gloo is what open_clip_train picks for --device cpu; resampled shards give both ranks data."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--"]
    run = train(torchrun, tiny_shard, tmp_path, hooks, "--epochs", "1", "--dataset-resampled")
    assert params(run)["world_size"] == "2"
    assert params(run)["distributed"] == "True"
    expected = tiny_tokens_per_block()
    for rank in (0, 1):
        report = probe(tmp_path, rank)
        assert report["guided_forwards"] == 2  # 32 samples / (2 ranks x batch 8)
        assert report["tokens_per_block"] == expected
    assert expected[-1] < expected[0]
    assert all(math.isfinite(loss) for loss in losses(run)) and losses(run)
    assert (run / "checkpoints" / "epoch_1.pt").exists()


def test_resume_latest_continues_from_the_last_checkpoint(tiny_configs, tiny_shard, hooks, tmp_path):
    python = [sys.executable]
    run = train(python, tiny_shard, tmp_path, hooks, "--epochs", "1", "--save-frequency", "1")
    first_log = (run / "out.log").read_text()
    assert "Start epoch 0" in first_log and (run / "checkpoints" / "epoch_1.pt").exists()

    start = tmp_path / "start.pt"
    train(python, tiny_shard, tmp_path, hooks, "--epochs", "2", "--save-frequency", "1", "--resume", "latest",
          env={"HOOK_START_WEIGHTS": str(start)})
    second_log = (run / "out.log").read_text()[len(first_log):]
    assert f"=> resuming checkpoint '{run / 'checkpoints' / 'epoch_1.pt'}' (epoch 1)" in second_log
    assert "Start epoch 1" in second_log and "Start epoch 0" not in second_log
    assert (run / "checkpoints" / "epoch_2.pt").exists()

    epoch_1 = torch.load(run / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=False)
    epoch_2 = torch.load(run / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=False)
    resumed = torch.load(start, map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 1 and epoch_2["epoch"] == 2
    for key, value in epoch_1["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert any(not torch.equal(epoch_2["state_dict"][k], v) for k, v in epoch_1["state_dict"].items())
    assert adam_steps(epoch_1) == {4.0} and adam_steps(epoch_2) == {8.0}  # the optimizer state came back too


def test_accum_freq_grad_checkpointing_bf16(tiny_configs, tiny_shard, hooks, tmp_path):
    run = train([sys.executable], tiny_shard, tmp_path, hooks, "--epochs", "1", "--accum-freq", "2",
                "--grad-checkpointing", "--precision", "amp_bf16")
    settings = params(run)
    assert (settings["accum_freq"], settings["grad_checkpointing"], settings["precision"]) == ("2", "True", "amp_bf16")
    logged = losses(run)
    assert len(logged) == 2 and all(math.isfinite(loss) for loss in logged)  # 4 batches = 2 accumulated steps
    # accumulation: every batch is encoded twice, once without gradient to cache its features
    assert probe(tmp_path)["guided_forwards"] == 8
    layers = len(create_model(TINY_ELIP).visual.transformer.resblocks)
    report = json.loads((tmp_path / "hooks.json").read_text())
    assert report["checkpointed_layers"] == 8 * layers
