"""Resume a training checkpoint at another image size: the low-resolution-then-tune protocol (CLIPA, RECLIP)
with OpenCLIP's own trainer. Train at a low ``--force-image-size``, then continue the checkpoint at full size:

    python -m open_clip_elip.resize --model ViT-B-16 --checkpoint low/epoch_29.pt --out full/epoch_29.pt
    python -m open_clip_train.main --model ViT-B-16 --resume full/epoch_29.pt ...

The image tower's positional embedding is resized as OpenCLIP resizes it when it loads weights for another
grid (``open_clip.model.resize_pos_embed``: bicubic, antialiased, the class token's row kept). Adam's moments
of that tensor belong to the old positions and have no counterpart at the new size: they are dropped, so the
optimizer starts that one tensor afresh; every other tensor's state, the epoch and the step count are kept.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Optional, Sequence

import open_clip
import torch
from open_clip.model import resize_pos_embed

KEY = "visual.positional_embedding"


def resize_checkpoint(checkpoint: dict, model: torch.nn.Module) -> dict:
    """A copy of a trainer checkpoint (``epoch``, ``state_dict``, ``optimizer``) that ``model``, built at the new
    image size, resumes from; the checkpoint itself is left as it was."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError("not a training checkpoint of open_clip_train (no 'state_dict'): resize_checkpoint is for "
                         "resuming training; a bare state dict loads at any size with open_clip.load_checkpoint")
    state = checkpoint["state_dict"]
    prefix = "module." if next(iter(state)).startswith("module.") else ""
    weights = {key[len(prefix):]: value for key, value in state.items()}
    if KEY not in weights or not hasattr(model.visual, "grid_size"):
        raise ValueError(f"no '{KEY}' in the checkpoint or no patch grid in the model: only ViT image towers "
                         "with a learned positional embedding can be resized")
    old = weights[KEY]
    resize_pos_embed(weights, model)
    new = weights[KEY]
    if new.shape != model.visual.positional_embedding.shape:
        raise ValueError(f"'{KEY}' of shape {tuple(old.shape)} cannot become the model's "
                         f"{tuple(model.visual.positional_embedding.shape)}: not a square grid plus a class token")
    resized = copy.copy(checkpoint)
    resized["state_dict"] = {prefix + key: value for key, value in weights.items()}
    if new.shape != old.shape and "optimizer" in checkpoint:
        resized["optimizer"] = _drop_state(checkpoint["optimizer"], old.shape)
    return resized


def _drop_state(optimizer: dict, shape: torch.Size) -> dict:
    """The optimizer state dict without the state of the one tensor of ``shape`` (the old positional
    embedding); a tensor of that shape is looked up by its moments, and two are refused as ambiguous."""
    found = [index for index, state in optimizer["state"].items()
             if isinstance(state.get("exp_avg"), torch.Tensor) and state["exp_avg"].shape == shape]
    if len(found) > 1:
        raise ValueError(f"{len(found)} optimizer states have the positional embedding's shape {tuple(shape)}: "
                         "cannot tell which to drop; resume without the optimizer state instead")
    return {**optimizer, "state": {i: s for i, s in optimizer["state"].items() if i not in found}}


def resize_file(model_name: str, source: Path, target: Path) -> Path:
    """``resize_checkpoint`` of the file ``source`` for ``open_clip.create_model(model_name)``, saved at
    ``target`` (written whole, then renamed into place)."""
    model = open_clip.create_model(model_name)
    resized = resize_checkpoint(torch.load(source, map_location="cpu", weights_only=False), model)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    torch.save(resized, partial)
    partial.replace(target)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.resize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the model name to resume as, at its new image size")
    parser.add_argument("--checkpoint", type=Path, required=True, help="open_clip_train's epoch_<n>.pt")
    parser.add_argument("--out", type=Path, required=True, help="where the resized checkpoint goes")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint: no file {args.checkpoint}")
    if args.out.resolve() == args.checkpoint.resolve():
        parser.error("--out is --checkpoint: write the resized checkpoint elsewhere, the original is kept")
    try:
        print(f"wrote {resize_file(args.model, args.checkpoint, args.out)}")
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
