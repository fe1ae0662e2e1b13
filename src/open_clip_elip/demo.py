"""A real ELIP pre-training run on offline data: ``python -m open_clip_elip.demo`` (``make demo``).

Fashion-MNIST images captioned from their class names and prompt templates train a small stock
ViT CLIP and its ``-elip`` twin with OpenCLIP's own trainer (``python -m open_clip_train.main``,
same seed, data and steps); clip_benchmark then evaluates both, zero-shot and by linear probe, on
the 10,000 test images. The table compares accuracy, the trainer's time per step and the tokens
entering each block of the image tower.

Stages: 1. data: training shards (webdataset, jpg/txt, sizes.json) and the clip_benchmark
``wds/fashion_mnist`` set, built once under ``OUT/data`` and reused by later runs; 2. training;
3. evaluation; 4. results, printed and written to ``OUT/run-NNN/results.{md,csv,json}``. Every run
gets a new numbered folder, so earlier results and checkpoints are never overwritten.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Sequence
from unittest import mock

import open_clip
import pandas as pd

from . import fashion_mnist
from .core.registration import EXTRA_CONFIGS_ENV
from .core.registry import FAMILIES, twin_config
from .evaluate import clip_benchmark_eval, export_wds
from .results import load_results, results_table, to_markdown

DATASET = "wds/fashion_mnist"
TASKS = ("zeroshot_classification", "linear_probe")
BATCH_TIME = re.compile(r"Batch \(t\): ([0-9.]+)")
SHOWN = re.compile(r"Train Epoch|Start epoch|Error|error|Traceback")  # trainer lines streamed
LOG_PREFIX = re.compile(r"^\S+ \| \w+ \| ")  # the trainer's "date,time | INFO | "
TRAIN_SECONDS = "train s/step"
TIME_RATIO = "train time vs stock"
TOKENS = "tokens per block"
TOKEN_LAYERS = "token-layers vs stock"


def model_configs(image_size: int, patch_size: int = 4, width: int = 128, layers: int = 6,
                  head_width: int = 64) -> dict:
    """``{name: OpenCLIP model config}``: a small stock ViT CLIP and its ``-elip`` twin.

    ELIP takes its family defaults: the paper's layout scaled to 6 layers (1/1/3/1), keep ratios 0.9/0.65/0.4.
    """
    if image_size % patch_size:
        raise ValueError(f"--image-size {image_size} is not a multiple of the patch size {patch_size}")
    stock = {
        "embed_dim": width,
        "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": width, "head_width": head_width,
                       "layers": layers},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": width, "heads": 2, "layers": 3},
    }
    name = f"ViT-FMNIST-{image_size}px"
    return {name: stock, f"{name}-elip": twin_config(FAMILIES["elip"], stock)}


def train_shards(out: Path, samples: int, seed: int, source: "Path | None" = None) -> Path:
    """The training shards of the first ``samples`` training images (built unless already there)."""
    folder = out / "data" / f"fashion-mnist-train-{samples}-seed{seed}"
    if (folder / "sizes.json").exists():
        print(f"reusing training shards in {folder}")
        return folder
    images, labels = fashion_mnist.load_split("train", source)
    if not 0 < samples <= len(images):
        raise ValueError(f"--samples must lie in 1..{len(images)} (the training split), got {samples}")
    started = time.time()
    fashion_mnist.write_train_shards(images[:samples], labels[:samples], folder, seed=seed)
    print(f"wrote {samples} captioned training images to {folder} in {time.time() - started:.0f} s")
    return folder


def eval_set(out: Path, test_samples: int, probe_samples: int, source: "Path | None" = None) -> Path:
    """clip_benchmark's ``wds/fashion_mnist``: the test split and a linear-probe train split (built once)."""
    folder = out / "data" / f"fashion-mnist-wds-test{test_samples}-probe{probe_samples}"
    if folder.exists():
        print(f"reusing evaluation set in {folder}")
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted export left
    for split, count in (("test", test_samples), ("train", probe_samples)):
        images, labels = fashion_mnist.load_split(split, source)
        if not 0 < count <= len(images):
            raise ValueError(f"{count} {split} images asked for; the {split} split has {len(images)}")
        export_wds(fashion_mnist.to_pil(images[:count]), labels[:count], fashion_mnist.CLASSNAMES,
                   fashion_mnist.TEMPLATES, partial, split)
    partial.rename(folder)
    print(f"wrote {test_samples} test and {probe_samples} linear-probe images to {folder}")
    return folder


def new_run_folder(out: Path) -> Path:
    """``OUT/run-NNN``, one number past the highest there; created here, so never one that exists."""
    numbers = [int(p.name[4:]) for p in out.glob("run-*") if p.name[4:].isdigit()]
    folder = out / f"run-{max(numbers, default=0) + 1:03d}"
    folder.mkdir(parents=True)
    return folder


def stream(command: Sequence[str]) -> None:
    """Run ``command``, showing its progress lines; on failure raise with the end of its output."""
    tail = deque(maxlen=40)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            tail.append(line)
            if SHOWN.search(line):
                print("  " + LOG_PREFIX.sub("", line.rstrip())[:150], flush=True)
    if proc.returncode:
        raise RuntimeError(f"command failed (exit status {proc.returncode}): {' '.join(command)}\n{''.join(tail)}")


def step_seconds(log: Path) -> float:
    """Median of the trainer's logged seconds per step, its first (warm-up) log window left out."""
    times = [float(t) for t in BATCH_TIME.findall(log.read_text())]
    if not times:
        raise ValueError(f"no 'Batch (t)' lines in {log}: did the training run?")
    return statistics.median(times[1:] or times)


def train(name: str, run: Path, shards: Path, args) -> dict:
    """Train ``name`` with ``open_clip_train.main``; its checkpoint and timings."""
    steps = math.ceil(args.samples / args.batch_size) * args.epochs
    command = [
        sys.executable, "-m", "open_clip_train.main", "--model", name,
        "--train-data", fashion_mnist.shard_pattern(shards), "--train-num-samples", str(args.samples),
        "--dataset-type", "webdataset", "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
        "--lr", str(args.lr), "--wd", "0.1", "--warmup", str(max(1, steps // 10)), "--precision", "fp32",
        "--workers", str(args.workers), "--device", "cpu", "--seed", str(args.seed),
        "--logs", str(run / "train"), "--name", name, "--log-every-n-steps", str(args.log_every)]
    started = time.time()
    stream(command)
    wall = time.time() - started
    folder = run / "train" / name
    return {"checkpoint": str(folder / "checkpoints" / f"epoch_{args.epochs}.pt"), "steps": steps,
            "train_wall_seconds": round(wall, 1), "train_seconds_per_step": round(step_seconds(folder / "out.log"), 4)}


def evaluate(name: str, checkpoint: str, run: Path, eval_root: Path, tasks: Sequence[str]) -> list:
    """clip_benchmark results files of ``name`` for ``tasks``."""
    paths = []
    for task in tasks:
        started = time.time()
        paths.append(clip_benchmark_eval(name, checkpoint, DATASET, task, eval_root,
                                         run / "eval" / f"{name}_{task}.json", batch_size=256))
        print(f"  {name} {task}: {time.time() - started:.0f} s")
    return paths


def tokens_per_block(configs: dict) -> dict:
    """``{name: (tokens entering each block in training, layers per block)}``, the stock model counted
    in the blocks of its ``-elip`` twin (it keeps all its tokens)."""
    elip_name = next(name for name in configs if name.endswith("-elip"))
    logging.disable(logging.WARNING)  # "No pretrained weights loaded": none are wanted here
    try:
        visual = open_clip.create_model(elip_name).visual
    finally:
        logging.disable(logging.NOTSET)
    tokens, layout = list(visual.tokens_per_block()), list(visual.elip_cfg.layout)
    return {name: (tokens if name == elip_name else [tokens[0]] * len(tokens), layout) for name in configs}


def summary_table(results: list, timings: dict, tokens: dict) -> pd.DataFrame:
    """Accuracy (clip_benchmark, through ``results.results_table``) beside training time and tokens."""
    table = pd.DataFrame(index=pd.Index(list(timings), name="model"))
    if results:
        frame, errors = load_results(results)
        if errors:
            raise RuntimeError("unreadable clip_benchmark results: " + "; ".join(errors))
        table = results_table(frame)
    stock = next(name for name in timings if not name.endswith("-elip"))
    table[TRAIN_SECONDS] = [timings[name]["train_seconds_per_step"] for name in table.index]
    table[TIME_RATIO] = table[TRAIN_SECONDS] / table.loc[stock, TRAIN_SECONDS]
    token_layers = {name: sum(t * n for t, n in zip(*tokens[name])) for name in table.index}
    table[TOKENS] = ["/".join(map(str, tokens[name][0])) for name in table.index]
    table[TOKEN_LAYERS] = [token_layers[name] / token_layers[stock] for name in table.index]
    return table


def describe(args, configs: dict) -> str:
    """What this run trains and evaluates, in three lines."""
    (name, stock), elip = configs.items()
    vision, elip_cfg = stock["vision_cfg"], elip[1]["elip_cfg"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    steps = math.ceil(args.samples / args.batch_size) * args.epochs
    evaluation = "none (--skip-eval)" if args.skip_eval else (
        f"zero-shot{'' if args.skip_probe else f' and linear probe ({args.probe_samples} training images)'} "
        f"on {args.test_samples} test images, with clip_benchmark")
    return (f"Fashion-MNIST, {args.samples} captioned training images x {args.epochs} epoch(s) = {steps} steps of "
            f"batch {args.batch_size}, lr {args.lr}, wd 0.1, seed {args.seed}, CPU fp32.\n"
            f"Models: {name} (ViT {vision['layers']} layers, width {vision['width']}, {vision['image_size']} px, "
            f"patch {vision['patch_size']}: {patches} patches + CLS) and {elip[0]} (blocks of "
            f"{'/'.join(map(str, elip_cfg['layout']))} layers, keep ratios "
            f"{'/'.join(map(str, elip_cfg['keep_ratios']))}).\n"
            f"Evaluation: {evaluation}.")


def run_demo(args) -> Path:
    """All four stages; returns the run folder."""
    started = time.time()
    out = Path(args.out)
    configs = model_configs(args.image_size)
    print("== 1/4 data")
    shards = train_shards(out, args.samples, args.seed, args.fashion_mnist)
    eval_root = None if args.skip_eval else eval_set(out, args.test_samples, args.probe_samples, args.fashion_mnist)
    run = new_run_folder(out)
    (run / "configs").mkdir()
    for name, cfg in configs.items():
        (run / "configs" / f"{name}.json").write_text(json.dumps(cfg, indent=1))
    env = {EXTRA_CONFIGS_ENV: os.pathsep.join(filter(None, [str(run / "configs"), os.environ.get(EXTRA_CONFIGS_ENV)])),
           # idle OpenMP threads sleep rather than spin: spinning threads make a step up to 10 times slower
           # whenever another process wants the CPU (seen on 2 cores)
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    open_clip.add_model_config(run / "configs")
    print(f"run folder: {run}\n{describe(args, configs)}")

    with mock.patch.dict(os.environ, env):  # for the trainer and clip_benchmark subprocesses
        timings = {}
        for i, name in enumerate(configs):
            print(f"== 2/4 training {name} ({i + 1}/{len(configs)})")
            timings[name] = train(name, run, shards, args)
            print(f"  {name}: {timings[name]['train_seconds_per_step']:.3f} s/step (median), "
                  f"{timings[name]['train_wall_seconds']:.0f} s in all")
        results = []
        if not args.skip_eval:
            print("== 3/4 evaluation (clip_benchmark)")
            tasks = TASKS[:1] if args.skip_probe else TASKS
            for name in configs:
                results += evaluate(name, timings[name]["checkpoint"], run, eval_root, tasks)

    print("== 4/4 results")
    tokens = tokens_per_block(configs)
    table = summary_table(results, timings, tokens)
    markdown = to_markdown(table)
    (run / "results.md").write_text(f"{describe(args, configs)}\n\n{markdown}")
    table.round(4).to_csv(run / "results.csv")
    numbers = table.drop(columns=[TRAIN_SECONDS, TOKENS]).round(4).astype(object)  # both given below
    numbers = numbers.where(numbers.notna(), None)  # JSON null, not NaN
    models = {name: {**timings[name], "tokens_per_block": tokens[name][0], "layers_per_block": tokens[name][1],
                     **numbers.loc[name].to_dict()} for name in configs}
    record = {"settings": vars(args), "run": str(run), "models": models}
    (run / "results.json").write_text(json.dumps(record, indent=1, default=str))
    print(markdown, end="")
    print(f"wrote {run / 'results.md'}, results.csv and results.json ({time.time() - started:.0f} s in all)")
    return run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="data and run folders go here (default: runs/demo)")
    parser.add_argument("--fashion-mnist", type=Path, metavar="DIR",
                        help="folder of the four Fashion-MNIST *-ubyte[.gz] files (default: the Debian package's "
                             f"{fashion_mnist.DEBIAN_DIR}, else a torchvision download)")
    parser.add_argument("--samples", type=int, default=30000, help="training images (of 60,000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=32, help="pixels (28 px images are resized; patch 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="trainer data-loading processes")
    parser.add_argument("--threads", type=int, help="torch threads of the trainer and clip_benchmark "
                                                    "(default: one per core)")
    parser.add_argument("--log-every", type=int, default=10, help="trainer log line every this many steps")
    parser.add_argument("--test-samples", type=int, default=10000, help="test images evaluated (of 10,000)")
    parser.add_argument("--probe-samples", type=int, default=10000, help="training images for the linear probe")
    parser.add_argument("--skip-eval", action="store_true", help="train only (no clip_benchmark evaluation)")
    parser.add_argument("--skip-probe", action="store_true", help="zero-shot evaluation only")
    args = parser.parse_args(argv)
    for option in ("samples", "epochs", "batch_size", "image_size", "log_every", "test_samples", "probe_samples",
                   "threads"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    run_demo(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
