"""``open_clip_elip.resize``: a low-resolution training checkpoint resumed at full size. The positional embedding
against a plain re-computation of OpenCLIP's resizing (bicubic, antialiased, the class row kept), the optimizer
state (only the resized tensor's moments dropped), and the trainer's own resume path on the result."""
import copy
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from open_clip_elip import resize
from open_clip_elip.demo import model_configs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 24 px and a 32 px model of one config (patch 4: 6 x 6 and 8 x 8 patches)."""
    folder = tmp_path_factory.mktemp("configs")
    _, config = next(iter(model_configs(32, width=32, layers=2, head_width=16).items()))
    for size in (24, 32):
        config = copy.deepcopy(config)
        config["vision_cfg"]["image_size"] = size
        (folder / f"resize-test-{size}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return open_clip.create_model("resize-test-24"), open_clip.create_model("resize-test-32")


def trainer_checkpoint(model, prefix=""):
    """What open_clip_train saves after a step of AdamW over its two parameter groups."""
    torch.manual_seed(0)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "ln" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "ln" not in n)]
    optimizer = torch.optim.AdamW([{"params": other, "weight_decay": 0.0}, {"params": decay}], lr=1e-3)
    loss = sum((p.float() ** 2).sum() for p in model.parameters())
    loss.backward()
    optimizer.step()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    return {"epoch": 9, "name": "low", "state_dict": state, "optimizer": optimizer.state_dict()}


def plain_resize(pos: torch.Tensor, old: int, new: int) -> torch.Tensor:
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1)])


@pytest.mark.parametrize("prefix", ["", "module."])
def test_resized_checkpoint_resumes_at_full_size(models, prefix):
    low, full = models
    checkpoint = trainer_checkpoint(low, prefix)
    before = copy.deepcopy(checkpoint)
    resized = resize.resize_checkpoint(checkpoint, full)
    for key in before["state_dict"]:  # the checkpoint itself is untouched
        assert torch.equal(checkpoint["state_dict"][key], before["state_dict"][key])
    pos = resized["state_dict"][prefix + resize.KEY]
    old = before["state_dict"][prefix + resize.KEY]
    assert pos.shape == full.visual.positional_embedding.shape == (8 * 8 + 1, 32)
    torch.testing.assert_close(pos, plain_resize(old, 6, 8))
    assert torch.equal(pos[0], old[0])  # the class token's row is kept
    others = [k for k in before["state_dict"] if not k.endswith(resize.KEY)]
    assert all(torch.equal(resized["state_dict"][k], before["state_dict"][k]) for k in others)
    # the optimizer: the old embedding's moments alone are gone; the rest and the epoch as they were
    dropped = set(before["optimizer"]["state"]) - set(resized["optimizer"]["state"])
    assert [tuple(before["optimizer"]["state"][i]["exp_avg"].shape) for i in dropped] == [tuple(old.shape)]
    assert resized["epoch"] == 9 and resized["optimizer"]["param_groups"] == before["optimizer"]["param_groups"]
    # what the trainer's --resume does with it: a strict load, then a step with fresh moments for that tensor
    state = {k[len(prefix):]: v for k, v in resized["state_dict"].items()}
    full.load_state_dict(state)
    decay = [p for n, p in full.named_parameters() if p.ndim >= 2 and "ln" not in n]
    other = [p for n, p in full.named_parameters() if not (p.ndim >= 2 and "ln" not in n)]
    optimizer = torch.optim.AdamW([{"params": other, "weight_decay": 0.0}, {"params": decay}], lr=1e-3)
    optimizer.load_state_dict(resized["optimizer"])
    sum((p ** 2).sum() for p in full.parameters()).backward()
    optimizer.step()
    assert optimizer.state[full.visual.positional_embedding]["exp_avg"].shape == pos.shape


def test_same_size_is_left_alone(models):
    low, _ = models
    checkpoint = trainer_checkpoint(low)
    again = resize.resize_checkpoint(checkpoint, low)
    assert again["optimizer"] is checkpoint["optimizer"]
    assert torch.equal(again["state_dict"][resize.KEY], checkpoint["state_dict"][resize.KEY])


def test_bad_checkpoints_are_named(models):
    low, full = models
    with pytest.raises(ValueError, match="not a training checkpoint"):
        resize.resize_checkpoint(low.state_dict(), full)
    checkpoint = trainer_checkpoint(low)
    state = checkpoint["optimizer"]["state"]
    twin = next(i for i, s in state.items() if s["exp_avg"].shape == low.visual.positional_embedding.shape)
    state[max(state) + 1] = copy.deepcopy(state[twin])  # a second tensor of the embedding's shape
    with pytest.raises(ValueError, match="cannot tell which to drop"):
        resize.resize_checkpoint(checkpoint, full)


def test_the_command_writes_a_copy_and_refuses_to_overwrite(models, tmp_path, capsys):
    low, full = models
    source = tmp_path / "epoch_9.pt"
    torch.save(trainer_checkpoint(low), source)
    target = tmp_path / "full" / "epoch_9.pt"
    assert resize.main(["--model", "resize-test-32", "--checkpoint", str(source), "--out", str(target)]) == 0
    saved = torch.load(target, weights_only=False)
    assert saved["state_dict"][resize.KEY].shape == (65, 32)
    with pytest.raises(SystemExit):
        resize.main(["--model", "resize-test-32", "--checkpoint", str(source), "--out", str(source)])
    assert "the original is kept" in capsys.readouterr().err
