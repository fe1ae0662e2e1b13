"""The study's data regimes: training shards, the clip_benchmark evaluation set and held-out pairs for the leak
diagnostic, built once under ``OUT/data`` from Fashion-MNIST (or any MNIST-format folder), or taken from the
command line (the ``custom`` regime).

- ``fashion``: the Fashion-MNIST images themselves (32 px, patch 4: 64 patches); each item fills its frame.
- ``scenes``: a captioned item and an unmentioned distractor at half its size on a 64 px canvas (patch 8: 64
  patches), scored on single-item canvases (``open_clip_elip.scenes``); trained at lr 2e-3, warm-up 0.2,
  gradients clipped at 1 (the pilot's choice).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

from .. import fashion_mnist, scenes
from ..demo import eval_set
from .plan import Preset

DATASET = "wds/fashion_mnist"
CUSTOM = "custom"  # the regime of --train-data / --eval-dataset


@dataclass(frozen=True)
class StudyData:
    train_data: str  # OpenCLIP's --train-data
    eval_dataset: str  # clip_benchmark's --dataset
    eval_root: Path  # and its --dataset_root
    heldout: Optional[str]  # image-caption shards for the leak diagnostic (None: no diagnostic)
    preview: Optional[Path] = None  # a picture of training samples with their captions
    boxes: bool = False  # the held-out pairs are two-item scenes canvases with their boxes (steering diagnostic)


@dataclass(frozen=True)
class Regime:
    """A data regime: what the images show, the stock model's image and patch size (64 patches in both built-in
    regimes) and how its data are built."""

    name: str
    description: str
    base: str  # the stock model's name, of {image_size}
    patch_size: int
    image_size: Optional[int]  # None: --image-size
    build: Callable[[argparse.Namespace, Preset, Path], StudyData]
    layout: Mapping = field(default_factory=dict)  # the scenes generator's knobs (distractor_scale, classes)
    training: Mapping = field(default_factory=dict)  # trainer settings over the study's (TRAINING)

    @property
    def tag(self) -> str:
        """The layout in data folder names (``-d0.5-0.5-k5``: distractors scaled by 0.5 to 0.5, 5 classes; empty:
        the generator's defaults)."""
        parts = {"distractor_scale": "d", "classes": "k"}
        return "".join(f"-{parts[k]}{'-'.join(f'{x:g}' for x in v) if isinstance(v, tuple) else v}"
                       for k, v in self.layout.items())


# the study's trainer settings (the committed fashion runs'); a regime's ``training`` and the command line's
# --lr, --warmup, --grad-clip-norm go over them (--grad-clip-norm 0: none)
TRAINING = {"lr": 1e-3, "warmup": 0.1, "grad_clip_norm": None}


def training_settings(args: argparse.Namespace, regime: str) -> dict:
    """The trainer settings of ``regime``'s runs: the study's, the regime's, then the command line's."""
    chosen = {**TRAINING, **(REGIMES[regime].training if regime in REGIMES else {})}
    chosen.update({k: getattr(args, k) for k in TRAINING if getattr(args, k, None) is not None})
    chosen["grad_clip_norm"] = chosen["grad_clip_norm"] or None
    return chosen


def _fashion(args: argparse.Namespace, preset: Preset, out: Path) -> StudyData:
    data = out / "data"
    folder = data / f"fashion-mnist-train-{preset.train_images}-shards{preset.shard_size}"
    train = _fashion_shards(folder, "train", preset.train_images, preset.shard_size, args.fashion_mnist)
    heldout = _fashion_shards(data / f"fashion-mnist-heldout-{preset.leak_samples}", "test", preset.leak_samples,
                              preset.shard_size, args.fashion_mnist, last=True)
    return StudyData(fashion_mnist.shard_pattern(train), *_fashion_eval(args, preset, out),
                     fashion_mnist.shard_pattern(heldout))


def _scenes(args: argparse.Namespace, preset: Preset, out: Path) -> StudyData:
    """Training canvases of the train split less its last ``probe_samples`` items (the probe's); held-out
    canvases of the test split's last items; single-item evaluation canvases (seed 0 throughout)."""
    data, regime = out / "data", REGIMES["scenes"]
    layout, tag = dict(regime.layout), regime.tag
    train = data / f"scenes{tag}-train-{preset.train_images}-shards{preset.shard_size}"
    if not train.exists():
        print(f"writing {preset.train_images} scenes training canvases to {train}", flush=True)
        scenes.write_scene_shards(train, "train", preset.train_images, 0, args.fashion_mnist,
                                  skip_last=preset.probe_samples, shard_size=preset.shard_size, **layout)
    heldout = data / f"scenes{tag}-heldout-{preset.leak_samples}"
    if not heldout.exists():
        scenes.write_scene_shards(heldout, "test", preset.leak_samples, 1, args.fashion_mnist,
                                  shard_size=preset.shard_size, **layout)
    evaluation = data / f"scenes{tag}-eval-test{preset.test_samples}-probe{preset.probe_samples}"
    if not evaluation.exists():
        print(f"writing the scenes evaluation canvases to {evaluation}", flush=True)
        scenes.write_scene_eval_set(evaluation, preset.test_samples, preset.probe_samples, 0, args.fashion_mnist,
                                    classes=layout.get("classes"))
    preview = out / f"scenes{tag}-preview.png"
    if not preview.exists():
        scenes.save_preview(fashion_mnist.shard_pattern(train), preview)
    return StudyData(fashion_mnist.shard_pattern(train), scenes.DATASET, evaluation,
                     fashion_mnist.shard_pattern(heldout), preview, boxes=True)


def _custom(args: argparse.Namespace, preset: Preset, out: Path) -> StudyData:
    if args.train_num_samples < preset.samples_per_epoch:
        raise ValueError(
            f"--train-num-samples {args.train_num_samples}: the {args.preset} preset reads "
            f"{preset.samples_per_epoch} samples per epoch at this schedule; give data with at least that many")
    return StudyData(args.train_data, *_fashion_eval(args, preset, out), args.heldout_data)


def _fashion_eval(args: argparse.Namespace, preset: Preset, out: Path) -> tuple:
    """``--eval-dataset`` and ``--eval-root`` if given, else Fashion-MNIST's test and probe images."""
    if args.eval_root:
        return args.eval_dataset, Path(args.eval_root)
    return DATASET, eval_set(out, preset.test_samples, preset.probe_samples, args.fashion_mnist)


REGIMES: Dict[str, Regime] = {regime.name: regime for regime in (
    Regime("fashion", "Fashion-MNIST: one item filling the frame, its class named by the caption",
           "ViT-FMNIST-{image_size}px", 4, None, _fashion),
    # the pilot's choice (docs/study/pilot/pilot.md): distractors at half size, as clutter is on web images, and a
    # higher learning rate with a longer warm-up and clipping; stock's seeds train and agree in 480 steps
    Regime("scenes", "scenes: a captioned 28 px item and an unmentioned 14 px distractor of another class on a 64 px "
           "canvas, scored on single-item canvases", "ViT-Scenes-{image_size}px", 8, 64, _scenes,
           layout={"distractor_scale": (0.5, 0.5)}, training={"lr": 2e-3, "warmup": 0.2, "grad_clip_norm": 1.0}),
    Regime(CUSTOM, "the command line's --train-data (evaluation: --eval-dataset, else Fashion-MNIST's)",
           "ViT-FMNIST-{image_size}px", 4, None, _custom),
)}


def prepare_data(args: argparse.Namespace, preset: Preset, out: Path, regime: str = "fashion") -> StudyData:
    """Build what ``regime`` lacks (reused when it exists) and say where everything is."""
    return REGIMES[regime].build(args, preset, out)


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
