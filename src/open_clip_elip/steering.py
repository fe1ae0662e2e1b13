"""Steering diagnostic: does the caption move the kept tokens onto the item it names?

On held-out scenes canvases (``open_clip_elip.scenes``: two items of different classes, their boxes known),
each image's kept patches are chosen twice by a model that chooses tokens from the caption: guided by a caption
naming its first item, then by the same template naming its second item. A patch belongs to an item when its
centre lies in the item's box, else to the background. Per pruned block this reports the share of the kept patch
tokens (merged tokens left out) on the item the caption names, on the other item and on the background, averaged
over both captions, and the steering: how far the kept share moves toward whichever item the caption names,

    steering = ((share_1 | caption names 1) - (share_1 | caption names 2)
                + (share_2 | caption names 2) - (share_2 | caption names 1)) / 2,

in percentage points of the kept tokens. A model whose choice does not read the caption keeps the same tokens
under both captions: its steering is exactly 0 (random choices draw the same numbers under both captions).

    python -m open_clip_elip.steering --model ViT-Scenes-64px-elip --pretrained ckpt.pt \\
        --data 'heldout/{000000..000000}.tar' --samples 512 --out steering.json
    python -m open_clip_elip.steering --model ViT-Scenes-64px-mask --pretrained stock.pt --data ... \\
        --options '{"strategy": "attentive_text", "text_scoring": "fused", "lam": 0}'

Models (``KEPT_PATCHES``: one small function per model class, the kept patches under given captions): the ELIP
family (``ElipCLIP``, blocks 2..K, read off ``visual.trace``) and the ``-mask`` family (``MaskCLIP``, block 1: the
patches entering the first layer as a training forward chooses them, ``visual.trace``; ``attentive_text`` reads
the caption, the other strategies do not).
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from . import fashion_mnist
from .core.registry import blocks_in
from .families.elip.model import ElipCLIP
from .families.mask.model import MaskCLIP
from .leak import id_sets, kept_patch_ids

BACKGROUND = -1
BLOCK_KEY = re.compile(r"_b(\d+)$")
REGIONS = ("named", "other", "background")


def patch_regions(boxes: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """``B x grid*grid`` (row-major patches): the index of the item whose box (``B x K x 4``: left, top, right,
    bottom in pixels of the model's image, right and bottom exclusive) holds the patch's centre, ``BACKGROUND``
    where none does (boxes do not overlap)."""
    centres = (torch.arange(grid, dtype=boxes.dtype, device=boxes.device) + 0.5) * patch
    y, x = centres.repeat_interleave(grid), centres.repeat(grid)  # row-major: y slow, x fast
    left, top, right, bottom = (boxes[..., i].unsqueeze(-1) for i in range(4))  # B x K x 1
    inside = (x >= left) & (x < right) & (y >= top) & (y < bottom)  # B x K x P
    item = torch.arange(boxes.shape[1], device=boxes.device).view(1, -1, 1)
    return torch.where(inside, item, BACKGROUND).amax(dim=1)


def region_shares(kept: torch.Tensor, regions: torch.Tensor, named: int) -> Dict[str, torch.Tensor]:
    """Per row, the shares (0-1) of the kept patches (``kept``: ``B x P`` bool) on item ``named``, on the other
    items and on the background."""
    count = kept.sum(1).clamp_min(1).double()
    on_named = (kept & (regions == named)).sum(1) / count
    on_background = (kept & (regions == BACKGROUND)).sum(1) / count
    return {"named": on_named, "other": 1 - on_named - on_background, "background": on_background}


def steering_of(kept_first: torch.Tensor, kept_second: torch.Tensor, regions: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per row: the region shares averaged over the two captions (``kept_first``: kept under the caption naming
    item 0, ``kept_second``: naming item 1) and the steering (module docstring), all 0-1."""
    first, second = region_shares(kept_first, regions, 0), region_shares(kept_second, regions, 1)
    on_0_when_1 = region_shares(kept_second, regions, 0)["named"]
    on_1_when_0 = region_shares(kept_first, regions, 1)["named"]
    shares = {name: (first[name] + second[name]) / 2 for name in REGIONS}
    shares["steering"] = ((first["named"] - on_0_when_1) + (second["named"] - on_1_when_0)) / 2
    return shares


def elip_kept(model: ElipCLIP, images: torch.Tensor, text_features: torch.Tensor) -> Dict[int, torch.Tensor]:
    """ELIP: per pruned block (2..K), the ``B x P`` mask of the patches it keeps (merged tokens left out)."""
    _, trace = model.visual.trace(images, text_features)
    num_patches = model.visual.grid_size[0] * model.visual.grid_size[1]
    return {b: id_sets(ids, num_patches) for b, ids in enumerate(kept_patch_ids(trace), start=2)}


def mask_kept(model: MaskCLIP, images: torch.Tensor, text_features: torch.Tensor) -> Dict[int, torch.Tensor]:
    """``-mask``: block 1, the ``B x P`` mask of the patches a training forward keeps at the input (the EMA tower
    scores them whatever the model's mode)."""
    num_patches = model.visual.grid_size[0] * model.visual.grid_size[1]
    return {1: id_sets(model.visual.trace(images, text_features), num_patches)}


# model class -> (model, images, L2-normalised caption embeddings) -> {block: B x P mask of the kept patches}
KEPT_PATCHES: Dict[type, Callable[..., Dict[int, torch.Tensor]]] = {ElipCLIP: elip_kept, MaskCLIP: mask_kept}


def kept_patches_of(model) -> Callable[..., Dict[int, torch.Tensor]]:
    """The ``KEPT_PATCHES`` function of ``model``'s class (or a base class); ValueError if it has none."""
    for cls, function in KEPT_PATCHES.items():
        if isinstance(model, cls):
            return function
    raise ValueError(f"the steering diagnostic needs a model that chooses tokens from the caption and reports them "
                     f"(an ELIP or -mask model: a config with an elip_cfg or mask_cfg block), got "
                     f"{type(model).__name__}")


def diagnose(model, images: torch.Tensor, boxes: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
             batch_size: int = 128) -> dict:
    """The diagnostic on preprocessed ``images`` (``N x 3 x H x W``) with their items' ``boxes`` (``N x 2 x 4``,
    pixels of the model's image) and tokenized captions naming the ``first`` and the ``second`` item. Returns a
    flat dict, percentages 0-100: per pruned block b (ELIP 2..K, ``-mask`` 1) ``kept_named_b{b}``,
    ``kept_other_b{b}``, ``kept_background_b{b}``, ``steering_b{b}``, and the same names without the block,
    averaged over blocks. Both captions of a batch see the same random numbers (seeded by the batch's start, the
    caller's random state untouched), so a choice that draws them but does not read the caption steers 0."""
    kept_patches = kept_patches_of(model)
    if not len(images) == len(boxes) == len(first) == len(second):
        raise ValueError(f"images, boxes and the two caption sets differ in number: {len(images)}, {len(boxes)}, "
                         f"{len(first)}, {len(second)}")
    visual = model.visual
    grid, patch = visual.grid_size[0], visual.patch_size[0]
    device, dtype = visual.conv1.weight.device, visual.conv1.weight.dtype
    devices = [device] if device.type == "cuda" else []
    sums: Dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            rows = slice(start, start + batch_size)
            image = images[rows].to(device=device, dtype=dtype)
            regions = patch_regions(boxes[rows].to(device=device, dtype=torch.float64), grid, patch)
            kept = []
            for texts in (first[rows], second[rows]):
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(start)
                    kept.append(kept_patches(model, image, model.encode_text(texts.to(device), normalize=True)))
            for b in kept[0]:
                for name, values in steering_of(kept[0][b], kept[1][b], regions).items():
                    key = f"{'kept_' if name in REGIONS else ''}{name}_b{b}"
                    sums[key] = sums.get(key, 0.0) + float(values.sum())
    report = {key: 100.0 * value / len(images) for key, value in sums.items()}
    blocks = block_numbers(report)
    for name in (*(f"kept_{r}" for r in REGIONS), "steering"):
        report[name] = sum(report[f"{name}_b{b}"] for b in blocks) / len(blocks)
    return report


def read_canvases(data: str, samples: int, preprocess, tokenizer, image_size: int, seed: int = 0):
    """The first ``samples`` scenes canvases of a webdataset (``jpg`` and ``json`` with ``labels`` and ``boxes``,
    as ``scenes.write_scene_shards`` writes them): preprocessed images, boxes scaled to ``image_size``, and the
    tokenized captions naming the first and the second item (one template per canvas, the same for both)."""
    import webdataset as wds

    dataset = wds.WebDataset(data, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "json")
    images, boxes, labels = [], [], []
    for image, meta in itertools.islice(dataset, samples):
        if len(meta.get("boxes", ())) < 2:
            raise ValueError(f"{data}: a sample without two item boxes: the steering diagnostic reads scenes canvases "
                             "of two items (python -m open_clip_elip.scenes --heldout N)")
        images.append(preprocess(image))
        boxes.append(np.asarray(meta["boxes"][:2], float) * image_size / image.width)
        labels.append(meta["labels"][:2])
    if not images:
        raise ValueError(f"no scenes canvases (jpg and json) in {data}")
    labels = np.asarray(labels)
    texts = [tokenizer(fashion_mnist.captions(labels[:, k], seed=seed)) for k in (0, 1)]
    return torch.stack(images), torch.as_tensor(np.stack(boxes)), texts[0], texts[1]


def steering_report(model_name: str, pretrained: str, data: str, samples: int = 512, batch_size: int = 128,
                    seed: int = 0, device: Optional[str] = None, options: Optional[dict] = None) -> dict:
    """``diagnose`` on the first ``samples`` canvases of ``data`` with ``model_name`` built by OpenCLIP
    (``pretrained``: a checkpoint or tag; empty for random weights; ``options``: family options over those of
    the model's config block), its validation preprocess, in eval mode."""
    import open_clip

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {}
    if options:
        config = open_clip.get_model_config(model_name) or {}
        blocks = blocks_in(config)
        if not blocks:
            raise ValueError(f"--options {json.dumps(options)}: model {model_name!r} has no family config block to "
                             "set them in; name a family model, e.g. ViT-Scenes-64px-mask")
        overrides = {blocks[0]: {**config[blocks[0]], **options}}
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None,
                                                                 device=device, **overrides)
    kept_patches_of(model)
    model.eval()
    images, boxes, first, second = read_canvases(data, samples, preprocess, open_clip.get_tokenizer(model_name),
                                                 model.visual.image_size[0], seed)
    return diagnose(model, images, boxes, first, second, batch_size)


def block_numbers(report: dict) -> list:
    """The pruned blocks a report has keys of (``..._b<k>``), ascending."""
    return sorted({int(match.group(1)) for match in map(BLOCK_KEY.search, report) if match})


def format_report(report: dict) -> str:
    blocks = block_numbers(report)
    lines = [f"{'block':<6} {'named %':>8} {'other %':>8} {'backgr. %':>10} {'steering':>9}"]
    for suffix, label in [*((f"_b{b}", str(b)) for b in blocks), ("", "mean")]:
        lines.append(f"{label:<6} {report['kept_named' + suffix]:8.2f} {report['kept_other' + suffix]:8.2f} "
                     f"{report['kept_background' + suffix]:10.2f} {report['steering' + suffix]:+9.2f}")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.steering", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an ELIP or -mask model name, e.g. ViT-Scenes-64px-elip")
    parser.add_argument("--pretrained", default="", help="checkpoint file or OpenCLIP tag (default: random weights)")
    parser.add_argument("--data", required=True, help="scenes shards of two-item canvases (jpg + json with boxes)")
    parser.add_argument("--samples", type=int, default=512, help="canvases read from the start (default 512)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="seed of the caption templates (default 0)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--options", type=json.loads, default=None,
                        help='family options as JSON over the model config\'s, e.g. \'{"strategy": "attentive_text", '
                             '"lam": 0}\' for a -mask model')
    parser.add_argument("--out", type=Path, help="write the report (a flat JSON object of numbers) here")
    args = parser.parse_args(argv)
    if args.options is not None and not isinstance(args.options, dict):
        parser.error(f"--options must be a JSON object, got {json.dumps(args.options)}")
    for option in ("samples", "batch_size"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        report = steering_report(args.model, args.pretrained, args.data, args.samples, args.batch_size, args.seed,
                                 args.device, args.options)
    except ValueError as error:
        print(f"python -m open_clip_elip.steering: error: {error}", file=sys.stderr)
        return 2
    print(f"steering diagnostic: {args.model} ({args.pretrained or 'random weights'}), {args.data}")
    print(format_report(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
