"""Leak diagnostic: how much does ELIP's caption-guided token selection tell an image about its own caption?

In training, which tokens image i keeps depends on caption i, so image i's embedding may carry information
about its own caption into the contrastive loss (evaluation never prunes, so it cannot profit from it). On
held-out image-caption pairs this encodes every image three ways: (a) ``unguided`` (no caption, the stock
forward), (b) ``own`` (guided by its own caption; the model's options apply, e.g. ``caption_pairing``) and
(c) ``shuffled`` (guided by another caption of the batch, a seeded random derangement), and reports
in-batch image-to-text top-1 and the contrastive loss of each, the leak (``own`` vs ``unguided``), how far
the kept tokens of ``own`` agree with ``shuffled`` and with vision-only scoring, and the sizes of the two
terms of the fused scoring query, ``(1 - lam) * t_w`` and ``lam * CLS``.

    python -m open_clip_elip.leak --model ViT-B-16-elip --pretrained ckpt.pt \\
        --data 'heldout/{000000..000003}.tar' --samples 1024 --batch-size 128 --out leak.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip import ClipLoss

from .core.openclip import blocks
from .families.elip.model import BlockTrace, ElipCLIP
from .families.elip.tokens import text_term

CONDITIONS = ("unguided", "own", "shuffled")


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` with no fixed point (rejection sampling, ~e draws)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 rows, got {n}")
    rows = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not torch.any(perm == rows):
            return perm


def kept_patch_ids(trace: Sequence[BlockTrace]) -> List[torch.Tensor]:
    """Per pruned block, ``B x k``: the original patch id of each token the block keeps (-1: a merged token).

    ``keep_index`` indexes the patch tokens entering the block, an earlier merged token (if any) last;
    the ids are carried through each step, merged tokens get -1."""
    ids, kept = None, []
    for step in trace:
        batch, num_out, num_patches = step.provenance.shape
        if ids is None:
            ids = torch.arange(num_patches, device=step.keep_index.device).expand(batch, num_patches)
        ids = ids.gather(1, step.keep_index)
        kept.append(ids)
        if num_out > ids.shape[1]:  # the block's merged token follows the kept ones
            ids = torch.cat([ids, ids.new_full((batch, num_out - ids.shape[1]), -1)], dim=1)
    return kept


def id_sets(ids: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``B x num_patches`` mask of the original patch ids in each row of ``ids`` (-1 left out)."""
    mask = torch.zeros(ids.shape[0], num_patches + 1, dtype=torch.bool, device=ids.device)
    return mask.scatter(1, ids + 1, True)[:, 1:]


def overlap(ids_a: torch.Tensor, ids_b: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Per row, ``|A & B| / |A|`` of the patch-id sets (a fraction)."""
    a, b = id_sets(ids_a, num_patches), id_sets(ids_b, num_patches)
    return (a & b).sum(1).double() / a.sum(1).clamp_min(1).double()


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _check_model(model) -> None:
    if not isinstance(model, ElipCLIP):
        raise ValueError(
            f"the leak diagnostic needs an ELIP model (ElipCLIP: a config with an elip_cfg block, e.g. "
            f"ViT-B-16-elip), got {type(model).__name__}")


def diagnose(model, images: torch.Tensor, texts: torch.Tensor, captions: List[str], batch_size: int = 128,
             seed: int = 0) -> dict:
    """The leak diagnostic on preprocessed ``images`` (``N x 3 x H x W``), tokenized ``texts`` (``N x L``) and
    their ``captions`` (the strings: a retrieval counts as right when the retrieved caption equals the image's
    own, as captions repeat). Uses the ``N // batch_size`` full batches, in order; the model's train/eval mode
    is left as it is (``leak_report`` sets eval). Returns a flat dict of floats, percentages in 0-100:
    ``top1_{c}``, ``loss_{c}`` for c in ``unguided``/``own``/``shuffled``, ``leak_top1``, ``leak_loss``, and per
    pruned block b (2..K) ``overlap_own_shuffled_b{b}``, ``overlap_own_vision_b{b}``, ``norm_text_term_b{b}``,
    ``norm_cls_term_b{b}``, plus ``norm_text_term`` and ``norm_cls_term`` averaged over the blocks."""
    _check_model(model)
    if not len(images) == len(texts) == len(captions):
        raise ValueError(f"images, texts and captions differ in number: {len(images)}, {len(texts)}, {len(captions)}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (the shuffled captions are a derangement), got {batch_size}")
    num_batches = len(images) // batch_size
    if num_batches == 0:
        raise ValueError(f"{len(images)} samples make no full batch of {batch_size}: give more samples or a "
                         "smaller batch size")
    visual = model.visual
    cfg = visual.elip_cfg
    lam = cfg.lam
    pruned = [(b + 1, start) for b, (start, _) in enumerate(visual._elip_blocks) if b > 0]  # block numbers 2..K
    device, dtype = visual.conv1.weight.device, visual.conv1.weight.dtype
    caption_index = {caption: i for i, caption in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([caption_index[c] for c in captions], device=device)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = ClipLoss()
    logit_bias = getattr(model, "logit_bias", None)

    correct = {c: 0 for c in CONDITIONS}
    loss = {c: 0.0 for c in CONDITIONS}
    sums = {f"{name}_b{b}": 0.0 for b, _ in pruned
            for name in ("overlap_own_shuffled", "overlap_own_vision", "norm_text_term", "norm_cls_term")}
    with torch.no_grad():
        for start in range(0, num_batches * batch_size, batch_size):
            rows = slice(start, start + batch_size)
            image = images[rows].to(device=device, dtype=dtype)
            text = model.encode_text(texts[rows].to(device), normalize=True)
            shuffled = text[derangement(batch_size, generator).to(device)]

            cls_in = {}  # the CLS entering each pruned block's first layer; the last call is the real one
            hooks = [blocks(visual)[first].register_forward_pre_hook(
                lambda module, args, b=b, store=cls_in: store.__setitem__(b, args[0][:, 0].detach()))
                for b, first in pruned]
            try:
                own_out, own_trace = visual.trace(image, text)  # the trace's forward is the forward
            finally:
                for hook in hooks:
                    hook.remove()
            shuffled_out, shuffled_trace = visual.trace(image, shuffled)
            _, vision_trace = visual.trace(image, None)  # scored with the plain CLS (no text fused)
            features = {"unguided": model.encode_image(image, normalize=True),
                        "own": F.normalize(_first(own_out), dim=-1),
                        "shuffled": F.normalize(_first(shuffled_out), dim=-1)}

            ids = caption_ids[rows]
            scale = model.logit_scale.exp()
            for condition, image_features in features.items():
                retrieved = (image_features @ text.T).argmax(dim=1)
                correct[condition] += int((ids[retrieved] == ids).sum())
                loss[condition] += float(loss_fn(image_features, text, scale, logit_bias))

            num_patches = own_trace[0].provenance.shape[-1]
            own_ids = kept_patch_ids(own_trace)
            for (b, _), own, other, vision in zip(pruned, own_ids, kept_patch_ids(shuffled_trace),
                                                   kept_patch_ids(vision_trace)):
                sums[f"overlap_own_shuffled_b{b}"] += float(overlap(own, other, num_patches).sum())
                sums[f"overlap_own_vision_b{b}"] += float(overlap(own, vision, num_patches).sum())

            t_w = visual.project_text(text)  # the guiding text, paired and projected as the forward does
            for b, _ in pruned:
                cls = cls_in[b].to(t_w.dtype)
                term = text_term(t_w, cls, cfg.fusion == "norm_matched")
                sums[f"norm_text_term_b{b}"] += float(((1.0 - lam) * term).norm(dim=-1).sum())
                sums[f"norm_cls_term_b{b}"] += float((lam * cls).norm(dim=-1).sum())

    count = num_batches * batch_size
    report: Dict[str, float] = {}
    for condition in CONDITIONS:
        report[f"top1_{condition}"] = 100.0 * correct[condition] / count
    for condition in CONDITIONS:
        report[f"loss_{condition}"] = loss[condition] / num_batches
    report["leak_top1"] = report["top1_own"] - report["top1_unguided"]
    report["leak_loss"] = report["loss_unguided"] - report["loss_own"]
    for name in ("overlap_own_shuffled", "overlap_own_vision"):
        for b, _ in pruned:
            report[f"{name}_b{b}"] = 100.0 * sums[f"{name}_b{b}"] / count
    for name in ("norm_text_term", "norm_cls_term"):
        per_block = [sums[f"{name}_b{b}"] / count for b, _ in pruned]
        report[name] = sum(per_block) / len(per_block)
        for (b, _), value in zip(pruned, per_block):
            report[f"{name}_b{b}"] = value
    return report


def read_pairs(data: str, samples: int, preprocess, tokenizer):
    """The first ``samples`` image-caption pairs of a webdataset (``jpg``/``png`` and ``txt`` keys), in order:
    preprocessed images, tokenized captions and the caption strings."""
    import webdataset as wds

    dataset = wds.WebDataset(data, shardshuffle=False).decode("pilrgb").to_tuple("jpg;png", "txt")
    images, captions = [], []
    for image, caption in itertools.islice(dataset, samples):
        images.append(preprocess(image))
        captions.append(caption)
    if not images:
        raise ValueError(f"no image-caption pairs (jpg or png, and txt) in {data}")
    return torch.stack(images), tokenizer(captions), captions


def leak_report(model_name: str, pretrained: str, data: str, samples: int = 1024, batch_size: int = 128,
                seed: int = 0, device: Optional[str] = None) -> dict:
    """``diagnose`` on the first ``samples`` pairs of ``data`` (a webdataset pattern, OpenCLIP's training
    format), with ``model_name`` built by OpenCLIP (``pretrained``: a tag or a checkpoint file; empty or None
    for random weights), its validation preprocess and tokenizer, in eval mode."""
    import open_clip

    if samples < batch_size:
        raise ValueError(f"{samples} samples make no full batch of {batch_size}: give more samples or a smaller "
                         "batch size")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None,
                                                                 device=device)
    if not isinstance(model, ElipCLIP):
        raise ValueError(
            f"{model_name} is not an ELIP model: it builds a {type(model).__name__}, and the leak diagnostic needs "
            f"an ElipCLIP (a config with an elip_cfg block, e.g. ViT-B-16-elip)")
    usable = samples // batch_size * batch_size
    images, texts, captions = read_pairs(data, usable, preprocess, open_clip.get_tokenizer(model_name))
    if len(captions) < usable:
        warnings.warn(f"{data} holds {len(captions)} pairs, fewer than the {usable} asked for: using "
                      f"{len(captions) // batch_size} full batch(es) of {batch_size}", stacklevel=2)
    model.eval()
    with torch.no_grad():
        return diagnose(model, images, texts, captions, batch_size=batch_size, seed=seed)


def format_report(report: dict) -> str:
    """The report as a readable plain-text table."""
    lines = [f"{'condition':<10} {'top-1 %':>8} {'loss':>8}"]
    for condition in CONDITIONS:
        lines.append(f"{condition:<10} {report[f'top1_{condition}']:8.2f} {report[f'loss_{condition}']:8.4f}")
    lines.append(f"leak: top-1 own - unguided {report['leak_top1']:+.2f} points, "
                 f"loss unguided - own {report['leak_loss']:+.4f}")
    blocks = sorted(int(key.rsplit("_b", 1)[1]) for key in report if key.startswith("overlap_own_shuffled_b"))
    lines.append("")
    lines.append(f"{'block':<6} {'kept own=shuffled %':>20} {'kept own=vision %':>18} "
                 f"{'|(1-lam) t_w|':>14} {'|lam CLS|':>10}")
    for b in blocks:
        lines.append(f"{b:<6} {report[f'overlap_own_shuffled_b{b}']:20.2f} {report[f'overlap_own_vision_b{b}']:18.2f} "
                     f"{report[f'norm_text_term_b{b}']:14.4f} {report[f'norm_cls_term_b{b}']:10.4f}")
    lines.append(f"{'mean':<6} {'':>20} {'':>18} {report['norm_text_term']:14.4f} {report['norm_cls_term']:10.4f}")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.leak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an ELIP model name, e.g. ViT-B-16-elip")
    parser.add_argument("--pretrained", default="", help="checkpoint file or OpenCLIP tag (default: random weights)")
    parser.add_argument("--data", required=True,
                        help="webdataset shards of held-out jpg/png + txt pairs, e.g. 'heldout/{000000..000003}.tar'")
    parser.add_argument("--samples", type=int, default=1024, help="pairs read from the start (default 1024)")
    parser.add_argument("--batch-size", type=int, default=128, help="in-batch retrieval batch (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled captions (default 0)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, help="write the report (a flat JSON object of numbers) here")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        report = leak_report(args.model, args.pretrained, args.data, samples=args.samples,
                             batch_size=args.batch_size, seed=args.seed, device=args.device)
    except ValueError as error:
        print(f"python -m open_clip_elip.leak: error: {error}", file=sys.stderr)
        return 2
    print(f"leak diagnostic: {args.model} ({args.pretrained or 'random weights'}), {args.data}, "
          f"{args.samples // args.batch_size} batch(es) of {args.batch_size}, seed {args.seed}")
    print(format_report(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
