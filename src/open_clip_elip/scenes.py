"""Scenes: Fashion-MNIST items on a larger blank canvas, each caption naming one of them.

ELIP's premise is that web images hold background and content their caption does not mention, so the
caption should choose which vision tokens to keep. Fashion-MNIST items fill their 28 px frame; here every
training canvas (64 px, black, RGB once decoded) holds the target item and a distractor of another class at
random, non-overlapping positions, and its caption names the target alone, from ``fashion_mnist``'s templates
("a photo of a sandal."). Each sample's json holds the target's ``label``, the ``labels``, split indices
(``items``) and ``boxes`` (left, top, right, bottom in pixels) of all its items, target first, and its
``coverage``.

Coverage is the union of the items' boxes over the canvas area. A box is the whole pasted item, black border
included, so it bounds the item's nonzero pixels; boxes never overlap, so the union is their summed area. It
stays under half the canvas: two 28 px items cover 1568 / 4096 = 38% of 64 px. Settings whose largest items
could reach half are refused before anything is drawn.

Token count: the Fashion-MNIST regime trains on 32 px images with patch 4, 8 x 8 = 64 patches; the scenes
regime's model config takes 64 px images with patch 8 (``demo.model_configs(64, patch_size=8)``), again 64
patches, so the two regimes prune the same number of tokens and differ only in what the images show.

Evaluation (clip_benchmark's ``wds/fashion_mnist_scenes``, zero-shot and linear probe) uses canvases of ONE
item at a random position: the first test-split items for ``test``, the last train-split items (kept out of
every training canvas) for the probe's ``train`` split. The same seed writes the same data; training shards
are byte-identical (their tar entries carry a fixed time).
"""
from __future__ import annotations

import argparse
import itertools
import math
import shlex
import shutil
import textwrap
import time
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw, ImageFont

from . import fashion_mnist
from .evaluate import export_wds
from .shards import write_sizes

DATASET = "wds/fashion_mnist_scenes"
MAX_COVERAGE = 0.5  # the items' boxes cover less than this share of the canvas
MAX_ROUNDS = 1000  # rejection-sampling rounds for non-overlapping positions


def load_items(split: str, root: "Path | None" = None) -> Tuple[np.ndarray, np.ndarray]:
    """``fashion_mnist.load_split``, its missing-files error saying what to give instead."""
    try:
        return fashion_mnist.load_split(split, root)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}: give a folder holding MNIST-format (idx) files, e.g. "
                                f"{fashion_mnist.DEBIAN_DIR}, or none for the Debian package") from None


def check_layout(shape: Tuple[int, int], canvas: int, items: int, scale: Tuple[float, float],
                 distractor_scale: "Tuple[float, float] | None" = None) -> None:
    """Refuse settings whose items cannot fit the canvas, or whose largest items could cover half of it (the
    target scaled by ``scale``, the others by ``distractor_scale``, default ``scale``)."""
    ranges = [scale] + [distractor_scale or scale] * (items - 1)
    if items < 1 or not all(0 < low <= high for low, high in ranges):
        raise ValueError(f"need at least one item ({items} asked for) and a scale range 0 < low <= high for the "
                         f"target and the distractors, got {scale} and {distractor_scale or scale}")
    sizes = [tuple(round(side * high) for side in shape) for _, high in ranges]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    if max(height, width) > canvas:
        raise ValueError(f"a canvas of {canvas} px is too small for items of up to {height}x{width} px: use a "
                         f"canvas of at least {max(height, width)} px or a smaller scale")
    area = sum(h * w for h, w in sizes)
    if area >= MAX_COVERAGE * canvas**2:
        smallest = math.isqrt(int(area / MAX_COVERAGE)) + 1
        raise ValueError(f"{items} items of up to {height}x{width} px could cover {area / canvas**2:.0%} of a "
                         f"{canvas} px canvas, not under {MAX_COVERAGE:.0%}: use a canvas of at least {smallest} px, "
                         "fewer items or a smaller scale")


def first_classes(images: np.ndarray, labels: np.ndarray, classes: "int | None") -> Tuple[np.ndarray, np.ndarray]:
    """The items of the first ``classes`` classes (labels below it; None: all)."""
    if classes is None:
        return images, labels
    if not 2 <= classes <= int(labels.max()) + 1:
        raise ValueError(f"--classes {classes}: need at least 2 (a distractor of another class) and at most the "
                         f"{int(labels.max()) + 1} classes of the items")
    chosen = labels < classes
    return images[chosen], labels[chosen]


def place(heights: np.ndarray, widths: np.ndarray, canvas: int, rng: np.random.Generator):
    """Top-left corners ``(ys, xs)`` (canvases x items) of non-overlapping boxes, by rejection sampling:
    canvases with a clash draw all their positions again."""
    count, items = heights.shape
    ys, xs = np.zeros_like(heights), np.zeros_like(heights)
    todo = np.arange(count)
    for _ in range(MAX_ROUNDS):
        h, w = heights[todo], widths[todo]
        y = ys[todo] = rng.integers(canvas - h + 1)
        x = xs[todo] = rng.integers(canvas - w + 1)
        clash = np.zeros(len(todo), bool)
        for i, j in itertools.combinations(range(items), 2):
            clash |= ((y[:, i] < y[:, j] + h[:, j]) & (y[:, j] < y[:, i] + h[:, i])
                      & (x[:, i] < x[:, j] + w[:, j]) & (x[:, j] < x[:, i] + w[:, i]))
        todo = todo[clash]
        if not len(todo):
            return ys, xs
    raise ValueError(f"{len(todo)} of {count} canvases of {canvas} px found no place for {items} items without "
                     f"overlap in {MAX_ROUNDS} tries: use a larger canvas, fewer items or a smaller scale")


def make_canvases(images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator, canvas: int = 64,
                  items: int = 2, scale: Tuple[float, float] = (1.0, 1.0),
                  distractor_scale: "Tuple[float, float] | None" = None):
    """``count`` canvases of ``items`` items each at random non-overlapping positions, the first the target.

    Targets run through ``images`` in random order (each once per pass); the other items are drawn at random
    from other classes than their target's. The target is scaled by a factor drawn from ``scale``, the others
    from ``distractor_scale`` (default: ``scale``; bilinear).
    Returns ``(canvases count x canvas x canvas uint8, target labels, metadata)``, metadata a dict of arrays:
    ``items`` (count x items indices into ``images``, target first), their ``labels``, their ``boxes``
    (count x items x 4: left, top, right, bottom in pixels, the last two exclusive) and ``coverage`` (count:
    share of the canvas inside the boxes).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or len(images) != len(labels) or not len(images):
        raise ValueError(f"need N x height x width item images and N labels, got {images.shape} and {labels.shape}")
    if count < 1:
        raise ValueError(f"need at least one canvas, got {count}")
    check_layout(images.shape[1:], canvas, items, scale, distractor_scale)
    if items > 1 and len(np.unique(labels)) < 2:
        raise ValueError("distractors need items of a second class: give images of at least two classes")
    index = np.empty((count, items), np.int64)
    index[:, 0] = np.concatenate([rng.permutation(len(images)) for _ in range(-(-count // len(images)))])[:count]
    others = index[:, 1:]
    others[:] = rng.integers(len(images), size=others.shape)
    same = labels[others] == labels[index[:, :1]]
    while same.any():
        others[same] = rng.integers(len(images), size=int(same.sum()))
        same = labels[others] == labels[index[:, :1]]
    factors = rng.uniform(*scale, size=(count, items))
    if distractor_scale is not None:  # drawn after the targets', so distractor_scale None keeps the bytes
        factors[:, 1:] = rng.uniform(*distractor_scale, size=(count, items - 1))
    heights, widths = (np.rint(side * factors).astype(np.int64) for side in images.shape[1:])
    ys, xs = place(heights, widths, canvas, rng)
    canvases = np.zeros((count, canvas, canvas), np.uint8)
    for c, k in itertools.product(range(count), range(items)):
        item, h, w = images[index[c, k]], heights[c, k], widths[c, k]
        if item.shape != (h, w):
            item = np.asarray(Image.fromarray(item).resize((int(w), int(h)), Image.BILINEAR))
        canvases[c, ys[c, k]:ys[c, k] + h, xs[c, k]:xs[c, k] + w] = item
    coverage = (heights * widths).sum(1) / canvas**2
    assert (coverage < MAX_COVERAGE).all(), "check_layout bounds the coverage"
    metadata = {"items": index, "labels": labels[index], "boxes": np.stack([xs, ys, xs + widths, ys + heights], -1),
                "coverage": coverage}
    return canvases, labels[index[:, 0]], metadata


def write_scene_shards(folder, split: str, count: int, seed: int, root: "Path | None" = None, skip_last: int = 0,
                       canvas: int = 64, items: int = 2, scale: Tuple[float, float] = (1.0, 1.0),
                       shard_size: int = 5000, distractor_scale: "Tuple[float, float] | None" = None,
                       classes: "int | None" = None) -> Path:
    """OpenCLIP training shards (``jpg``, ``txt``, ``json``) and ``sizes.json`` of ``count`` captioned canvases
    made from the items of ``split`` less its last ``skip_last`` (kept for the linear probe), of its first
    ``classes`` classes (None: all).

    Built in a sibling ``.partial`` folder renamed into place once complete, as ``fashion_mnist`` does.
    """
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists already: use its shards, or remove it to rebuild them")
    images, labels = load_items(split, root)
    if not 0 <= skip_last < len(images):
        raise ValueError(f"the {split} split has {len(images)} items: cannot keep its last {skip_last} out of the "
                         "training canvases for the linear probe; ask for fewer probe canvases")
    rng = np.random.default_rng(seed)
    kept = len(images) - skip_last
    canvases, targets, metadata = make_canvases(*first_classes(images[:kept], labels[:kept], classes), count, rng,
                                                canvas, items, scale, distractor_scale)
    texts = fashion_mnist.captions(targets, seed=int(rng.integers(2**63)))
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with wds.ShardWriter(str(partial / "train-%06d.tar"), maxcount=shard_size, verbose=0, mtime=0) as sink:
        for i, (image, text) in enumerate(zip(canvases, texts)):
            record = {"label": int(targets[i]), "labels": metadata["labels"][i].tolist(),
                      "items": metadata["items"][i].tolist(), "boxes": metadata["boxes"][i].tolist(),
                      "coverage": round(float(metadata["coverage"][i]), 4)}
            sink.write({"__key__": f"{i:06d}", "jpg": fashion_mnist.jpeg_bytes(image), "txt": text, "json": record})
    write_sizes(partial)
    partial.rename(folder)
    return folder


def write_scene_eval_set(folder, test_samples: int, probe_samples: int, seed: int, root: "Path | None" = None,
                         canvas: int = 64, scale: Tuple[float, float] = (1.0, 1.0),
                         classes: "int | None" = None) -> Path:
    """clip_benchmark's ``wds/fashion_mnist_scenes`` at ``folder``: single-item canvases of the first
    ``test_samples`` test items (``test``) and of the last ``probe_samples`` train items (``train``); with
    ``classes``, those of them of the first ``classes`` classes (the zero-shot classifier then knows those class
    names alone)."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists already: use it, or remove it to rebuild it")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for number, (split, count) in enumerate((("test", test_samples), ("train", probe_samples))):
        images, labels = load_items(split, root)
        if not 0 < count <= len(images):
            raise ValueError(f"{count} {split} canvases asked for; the {split} split has {len(images)} items")
        chosen = slice(0, count) if split == "test" else slice(len(images) - count, None)
        images, labels = first_classes(images[chosen], labels[chosen], classes)  # the probe's stay out of training
        canvases, targets, _ = make_canvases(images, labels, len(images), np.random.default_rng([seed, number]),
                                             canvas, 1, scale)
        export_wds(fashion_mnist.to_pil(canvases), targets, fashion_mnist.CLASSNAMES[:classes],
                   fashion_mnist.TEMPLATES, partial, split)
    partial.rename(folder)
    return folder


def save_preview(shards: str, path, count: int = 8, columns: int = 4, zoom: int = 3) -> Path:
    """A PNG grid of the first ``count`` samples of training ``shards`` (a pattern), zoomed, the captioned
    item outlined in green and the caption under each."""
    samples = list(itertools.islice(wds.WebDataset(shards, shardshuffle=False).decode("pil"), count))
    font = ImageFont.load_default(size=13)
    side = samples[0]["jpg"].width * zoom
    wrapped = [textwrap.wrap(s["txt"], max(8, int(side / font.getlength("x")))) for s in samples]
    line = font.getbbox("Ag")[3] + 3
    cell = (side + 12, side + 10 + line * max(map(len, wrapped)))
    header = line + 6
    rows = -(-len(samples) // columns)
    grid = Image.new("RGB", (cell[0] * min(columns, len(samples)), header + cell[1] * rows), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((6, 6), "green: the item its caption names", fill=(0, 140, 0), font=font)
    for i, (sample, lines) in enumerate(zip(samples, wrapped)):
        left, top = cell[0] * (i % columns) + 6, header + cell[1] * (i // columns) + 6
        grid.paste(sample["jpg"].convert("RGB").resize((side, side), Image.NEAREST), (left, top))
        x0, y0, x1, y1 = (zoom * v for v in sample["json"]["boxes"][0])
        draw.rectangle((left + x0, top + y0, left + x1 - 1, top + y1 - 1), outline=(0, 200, 0))
        for n, text in enumerate(lines):
            draw.text((left, top + side + 4 + n * line), text, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.scenes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="writes OUT/train (training shards), OUT/eval (clip_benchmark set), OUT/heldout")
    parser.add_argument("--train", type=int, default=30000, help="training canvases (default: 30000)")
    parser.add_argument("--test", type=int, default=10000, help="zero-shot test canvases, one test item each")
    parser.add_argument("--probe", type=int, default=10000,
                        help="linear-probe training canvases, one each of the last train items (never in training)")
    parser.add_argument("--heldout", type=int, default=0,
                        help="captioned test-item canvases kept out of training, for the study's leak diagnostic "
                             "(default: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fashion-mnist", type=Path, metavar="DIR",
                        help="folder of MNIST-format *-ubyte[.gz] files (default: the Debian package's "
                             f"{fashion_mnist.DEBIAN_DIR})")
    parser.add_argument("--canvas", type=int, default=64, help="canvas side in pixels (default: 64)")
    parser.add_argument("--items", type=int, default=2, help="items per training canvas, the target first")
    parser.add_argument("--scale", type=float, nargs=2, default=(1.0, 1.0), metavar=("LOW", "HIGH"),
                        help="item scale factors drawn from this range (default: 1 1, native size)")
    parser.add_argument("--distractor-scale", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="scale factors of the items the caption does not name (default: --scale): smaller "
                             "distractors are less salient, like the clutter of web images")
    parser.add_argument("--classes", type=int, help="use the items of the first N classes only (default: all)")
    parser.add_argument("--shard-size", type=int, default=5000, help="samples per training shard")
    parser.add_argument("--preview", type=Path, metavar="PNG", help="save a grid of the first training canvases")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fashion_mnist and not args.fashion_mnist.is_dir():
        parser.error(f"--fashion-mnist: no folder {args.fashion_mnist}")
    for option in ("train", "test", "probe", "shard_size"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.heldout < 0:
        parser.error("--heldout must be at least 0")
    layout = {"canvas": args.canvas, "scale": tuple(args.scale), "classes": args.classes}
    shapes = {**layout, "distractor_scale": tuple(args.distractor_scale) if args.distractor_scale else None,
              "items": args.items}
    try:
        started = time.time()
        train = write_scene_shards(args.out / "train", "train", args.train, args.seed, args.fashion_mnist,
                                   skip_last=args.probe, shard_size=args.shard_size, **shapes)
        print(f"wrote {args.train} training canvases to {train} in {time.time() - started:.0f} s")
        evaluation = write_scene_eval_set(args.out / "eval", args.test, args.probe, args.seed, args.fashion_mnist,
                                          **layout)
        print(f"wrote {args.test} test and {args.probe} linear-probe canvases (one item each) to {evaluation}")
        options = [f"--train-data {shlex.quote(fashion_mnist.shard_pattern(train))}",
                   f"--train-num-samples {args.train}", f"--eval-dataset {DATASET}",
                   f"--eval-root {shlex.quote(str(evaluation))}"]
        if args.heldout:
            heldout = write_scene_shards(args.out / "heldout", "test", args.heldout, args.seed, args.fashion_mnist,
                                         shard_size=args.shard_size, **shapes)
            print(f"wrote {args.heldout} held-out canvases to {heldout}")
            options.append(f"--heldout-data {shlex.quote(fashion_mnist.shard_pattern(heldout))}")
        if args.preview:
            print(f"wrote a preview to {save_preview(fashion_mnist.shard_pattern(train), args.preview)}")
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        parser.error(str(error))
    print("study options: " + " ".join(options))


if __name__ == "__main__":
    main()
