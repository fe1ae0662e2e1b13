"""OpenCLIP's own trainer (open_clip_train.main, unmodified) trains an -elip model with guided pruning."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_ELIP
from open_clip import create_model

from open_clip_elip import ElipCLIP

PROBE_RUN = Path(__file__).with_name("probe_run.py")


@pytest.fixture(scope="module")
def training_run(tiny_configs, tiny_shard, tmp_path_factory):
    """Two steps (32 samples, batch 16, 1 epoch) on the tiny shard; the folder it wrote to."""
    root = tmp_path_factory.mktemp("training")
    command = [
        sys.executable, str(PROBE_RUN), "--model", TINY_ELIP, "--train-data", str(tiny_shard),
        "--train-num-samples", "32", "--dataset-type", "webdataset", "--batch-size", "16", "--epochs", "1",
        "--workers", "0", "--device", "cpu", "--logs", str(root / "logs"), "--name", "run1",
        "--lr", "1e-3", "--warmup", "1", "--seed", "0"]
    env = {**os.environ, "ELIP_PROBE_DIR": str(root / "probe")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


def test_trainer_prunes_guided_by_the_captions(training_run):
    probe = json.loads((training_run / "probe" / "rank0.json").read_text())
    assert probe["guided_forwards"] >= 2
    assert probe["tokens_per_block"] == [65, 60, 44, 28]


def test_trainer_checkpoint_loads_with_create_model(training_run):
    path = training_run / "logs" / "run1" / "checkpoints" / "epoch_1.pt"
    saved = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    saved = {k.removeprefix("module."): v for k, v in saved.items()}
    model = create_model(TINY_ELIP, pretrained=str(path))
    assert type(model) is ElipCLIP
    assert model.state_dict().keys() == saved.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
