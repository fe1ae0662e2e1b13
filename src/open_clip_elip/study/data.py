"""The study's data: training shards, the clip_benchmark evaluation set and held-out pairs for the leak
diagnostic, built once under ``OUT/data`` (Fashion-MNIST) or taken from the command line."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import fashion_mnist
from ..demo import eval_set
from .plan import Preset

DATASET = "wds/fashion_mnist"


@dataclass(frozen=True)
class StudyData:
    train_data: str  # OpenCLIP's --train-data
    eval_dataset: str  # clip_benchmark's --dataset
    eval_root: Path  # and its --dataset_root
    heldout: Optional[str]  # image-caption shards for the leak diagnostic (None: no diagnostic)


def prepare_data(args: argparse.Namespace, preset: Preset, out: Path) -> StudyData:
    """Build what is missing (reused when it exists) and say where everything is."""
    data = out / "data"
    if args.train_data:
        train_data = args.train_data
        if args.train_num_samples < preset.samples_per_epoch:
            raise ValueError(
                f"--train-num-samples {args.train_num_samples}: the {args.preset} preset reads "
                f"{preset.samples_per_epoch} samples per epoch; give data with at least that many")
    else:
        folder = data / f"fashion-mnist-train-{preset.train_images}-shards{preset.shard_size}"
        train_data = fashion_mnist.shard_pattern(
            _fashion_shards(folder, "train", preset.train_images, preset.shard_size, args.fashion_mnist))
    if args.eval_root:
        eval_dataset, eval_root = args.eval_dataset, Path(args.eval_root)
    else:
        eval_dataset = DATASET
        eval_root = eval_set(out, preset.test_samples, preset.probe_samples, args.fashion_mnist)
    if args.heldout_data:
        heldout = args.heldout_data
    elif args.train_data:
        heldout = None
    else:
        folder = data / f"fashion-mnist-heldout-{preset.leak_samples}"
        heldout = fashion_mnist.shard_pattern(
            _fashion_shards(folder, "test", preset.leak_samples, preset.shard_size, args.fashion_mnist, last=True))
    return StudyData(train_data, eval_dataset, eval_root, heldout)


def _fashion_shards(folder: Path, split: str, count: int, shard_size: int, source: Optional[Path],
                    last: bool = False) -> Path:
    if (folder / "sizes.json").exists():
        return folder
    images, labels = fashion_mnist.load_split(split, source)
    if count > len(images):
        raise ValueError(f"{count} {split} images asked for; Fashion-MNIST's {split} split has {len(images)}")
    chosen = slice(len(images) - count, None) if last else slice(0, count)
    print(f"writing {count} captioned {split} images to {folder}", flush=True)
    return fashion_mnist.write_train_shards(images[chosen], labels[chosen], folder, seed=0, shard_size=shard_size)
