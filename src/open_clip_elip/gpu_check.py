"""GPU check (``make gpu-check``): ELIP's training speed and memory against the stock model, on CUDA.

    python -m open_clip_elip.gpu_check [--quick] [--report results.json]

1. Training steps (bf16 autocast, batch 128, random images and random token captions, AdamW, OpenCLIP's
   ``ClipLoss``) of ViT-B-16-elip (look-ahead scoring, the default), ViT-B-16-elip with
   ``elip_cfg={"scoring": "first_layer"}`` and the stock ViT-B-16, eager and under ``torch.compile``: images
   per second (median over repetitions interleaved between the models, after warm-up) and peak memory
   (``torch.cuda.max_memory_allocated`` of one step above what was allocated before it, plus the model's
   weights and optimizer state: the peak with only that model on the device), with ratios to stock.
2. OpenCLIP's own trainer (``python -m open_clip_train.main``, a subprocess per model) for one epoch over
   synthetic webdataset shards written first (random images and captions, 4096 samples: 32 steps of 128):
   it must exit 0; its samples/s (from its log, the median after warm-up; includes data loading) is reported.

Without a CUDA device it says so, prints what it would have measured, and exits 0. ``--device cpu`` with a tiny
model pair (``--stock ViT-Tiny-4 --elip ViT-Tiny-4-elip --batch-size 2``, configs of your own through
``OPEN_CLIP_ELIP_CONFIGS``) runs the same code on the CPU, as a smoke test of this script: numbers that mean
nothing. Only OpenCLIP's public API and the top-level ``open_clip_elip`` package are used.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import open_clip
import torch

import open_clip_elip  # noqa: F401  (registers the -elip models, as importing open_clip does once installed)

CONFIGS_ENV = "OPEN_CLIP_ELIP_CONFIGS"  # more model configs, os.pathsep-separated (docs/registration.md)
SAMPLES_PER_SECOND = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Batch \(t\): [\d.]+, ([\d.eE+-]+)/s,")
GIB = 2 ** 30
WORDS = ("red", "blue", "green", "small", "large", "old", "new", "dog", "cat", "car", "tree", "house", "boat",
         "bird", "photo", "drawing", "of", "a", "the", "on", "in", "near", "with")


@dataclass
class Variant:
    """One model measured: ``label``, the config ``model`` and per-call ``elip_cfg`` options."""

    label: str
    model: str
    elip_cfg: Optional[dict] = None
    trainer_model: str = ""  # the name the trainer gets (a config written for elip_cfg options)
    results: Dict[str, dict] = field(default_factory=dict)  # "eager" / "compiled" -> images_per_s, peak_bytes


def variants(args: argparse.Namespace) -> List[Variant]:
    return [Variant("stock", args.stock, trainer_model=args.stock),
            Variant("elip (look-ahead)", args.elip, trainer_model=args.elip),
            Variant("elip (first_layer)", args.elip, {"scoring": "first_layer"}, f"{args.elip}-first-layer")]


def plan(args: argparse.Namespace) -> str:
    """What the check measures, in words."""
    names = ", ".join(f"{v.label} = {v.model}" + (f" with elip_cfg={v.elip_cfg}" if v.elip_cfg else "")
                      for v in variants(args))
    compiled = "eager and torch.compile" if args.compile else "eager only"
    return (f"  1. training steps of {names}: batch {args.batch_size}, bf16 autocast, random images and captions, "
            f"AdamW, ClipLoss, {compiled}; images/s (median of {args.repeats} interleaved repetitions of "
            f"{args.steps} steps after {args.warmup} warm-up steps) and peak memory, with ratios to stock\n"
            f"  2. OpenCLIP's trainer (python -m open_clip_train.main) on {args.trainer_samples} synthetic "
            f"webdataset samples per model: exit status and samples/s")


def random_captions(batch: int, context_length: int, generator: torch.Generator) -> torch.Tensor:
    """Token rows as the tokenizer makes them: start, random tokens, end (where the text tower pools), padding."""
    tokens = torch.zeros(batch, context_length, dtype=torch.long)
    lengths = torch.randint(4, context_length - 1, (batch,), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        tokens[row, 0] = 49406
        tokens[row, 1:length] = torch.randint(1, 49405, (length - 1,), generator=generator)
        tokens[row, length] = 49407
    return tokens


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights and optimizer state, what stays allocated between steps."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


class Bench:
    """A model with its optimizer, inputs and training step (eager, and compiled if asked)."""

    def __init__(self, variant: Variant, args: argparse.Namespace, device: torch.device):
        self.variant, self.device = variant, device
        options = {"elip_cfg": variant.elip_cfg} if variant.elip_cfg else {}
        self.model = open_clip.create_model(variant.model, output_dict=True, **options).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.2)
        self.loss = open_clip.ClipLoss()
        generator = torch.Generator().manual_seed(0)
        size = self.model.visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.images = torch.randn(args.batch_size, 3, *size, generator=generator).to(device)
        self.texts = random_captions(args.batch_size, self.model.context_length, generator).to(device)
        self.forward = {"eager": self.model}
        if args.compile:
            self.forward["compiled"] = torch.compile(self.model, backend=args.compile_backend)

    def step(self, mode: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            loss = self.loss(**self.forward[mode](self.images, self.texts))
        loss.backward()
        self.optimizer.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_bytes(self, mode: str) -> Optional[int]:
        """Peak memory of one step with only this model on the device (None off CUDA)."""
        if self.device.type != "cuda":
            return None
        self.sync()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step(mode)
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) - before + state_bytes(self.model, self.optimizer)

    def images_per_second(self, mode: str, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step(mode)
        self.sync()
        return steps * self.images.shape[0] / (time.perf_counter() - start)


def measure(args: argparse.Namespace, device: torch.device) -> List[Variant]:
    """Part 1: every variant and mode, warmed up, then timed in interleaved repetitions."""
    benches = []
    for variant in variants(args):
        torch.manual_seed(0)
        benches.append(Bench(variant, args, device))
    runs = []
    for bench in benches:
        for mode in bench.forward:
            start = time.perf_counter()
            try:
                for _ in range(max(args.warmup, 1)):  # the first compiled step compiles
                    bench.step(mode)
                bench.sync()
            except Exception as exc:  # e.g. a compiler error: report it, measure the rest
                bench.variant.results[mode] = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())}
                print(f"  {bench.variant.label}, {mode}: FAILED ({type(exc).__name__}: {exc})", flush=True)
                continue
            bench.variant.results[mode] = {"warmup_s": time.perf_counter() - start, "rates": [],
                                           "peak_bytes": bench.peak_bytes(mode)}
            runs.append((bench, mode))
            print(f"  warmed up {bench.variant.label}, {mode}: {time.perf_counter() - start:.1f} s", flush=True)
    for repeat in range(args.repeats if runs else 0):
        shift = repeat % len(runs)  # rotate the order: no model always runs first
        for bench, mode in runs[shift:] + runs[:shift]:
            bench.variant.results[mode]["rates"].append(bench.images_per_second(mode, args.steps))
    for bench, mode in runs:
        result = bench.variant.results[mode]
        result["images_per_s"] = statistics.median(result["rates"])
    return [bench.variant for bench in benches]


def ratio(value, reference) -> str:
    return f"{value / reference:.2f}" if value is not None and reference else ""


def measure_table(measured: List[Variant]) -> str:
    stock = measured[0].results
    lines = ["| model | mode | images/s | x stock | peak memory (GiB) | x stock |", "|---|---|---:|---:|---:|---:|"]
    for variant in measured:
        for mode, result in variant.results.items():
            if "error" in result:
                lines.append(f"| {variant.label} | {mode} | failed: {result['error'][:120]} | | | |")
                continue
            reference = stock.get(mode, {})
            peak = result["peak_bytes"]
            memory = "n/a (no CUDA)" if peak is None else f"{peak / GIB:.2f}"
            lines.append(f"| {variant.label} | {mode} | {result['images_per_s']:.1f} | "
                         f"{ratio(result['images_per_s'], reference.get('images_per_s'))} | {memory} | "
                         f"{ratio(peak, reference.get('peak_bytes'))} |")
    return "\n".join(lines)


def write_shards(folder: Path, samples: int, shards: int, image_size: int, seed: int = 0) -> str:
    """Synthetic webdataset shards (jpg + txt per sample): smooth random images, random captions; their url."""
    from PIL import Image  # a dependency of open_clip (through torchvision)

    folder.mkdir(parents=True, exist_ok=True)
    generator, words = torch.Generator().manual_seed(seed), random.Random(seed)
    per_shard = math.ceil(samples / shards)
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:06d}.tar", "w") as tar:
            for i in range(s * per_shard, min(samples, (s + 1) * per_shard)):
                coarse = torch.rand(1, 3, 8, 8, generator=generator)
                pixels = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear")
                array = (pixels[0].permute(1, 2, 0) * 255).to(torch.uint8).numpy()
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="JPEG", quality=90)
                caption = " ".join(words.choice(WORDS) for _ in range(words.randint(4, 12)))
                for suffix, payload in (("jpg", buffer.getvalue()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder / f"shard-{{{0:06d}..{shards - 1:06d}}}.tar")


def trainer_env(args: argparse.Namespace, folder: Path) -> dict:
    """The environment for the trainer: our configs' folder added for the first-layer variant."""
    config = open_clip.get_model_config(args.elip)
    if config is None:
        raise ValueError(f"unknown model {args.elip!r}: not in open_clip.list_models()")
    config["elip_cfg"] = {**config.get("elip_cfg", {}), "scoring": "first_layer"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{args.elip}-first-layer.json").write_text(json.dumps(config))
    paths = [p for p in os.environ.get(CONFIGS_ENV, "").split(os.pathsep) if p] + [str(folder)]
    return {**os.environ, CONFIGS_ENV: os.pathsep.join(paths)}


def trainer_command(args: argparse.Namespace, model: str, shards: str, logs: Path) -> List[str]:
    return [sys.executable, "-m", "open_clip_train.main", "--model", model, "--train-data", shards,
            "--train-num-samples", str(args.trainer_samples), "--dataset-type", "webdataset",
            "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", str(args.workers),
            "--precision", "amp_bf16", "--device", args.device, "--lr", "1e-4", "--warmup", "5",
            "--log-every-n-steps", "1", "--seed", "0", "--logs", str(logs), "--name", model]


def trainer_rate(log: str) -> Optional[float]:
    """Median samples/s of the trainer's step lines, the first quarter (at least one step) left out as warm-up."""
    rates = [float(rate) for _, rate in SAMPLES_PER_SECOND.findall(log)]
    kept = rates[max(1, len(rates) // 4):]
    return statistics.median(kept) if kept else None


def run_trainer(args: argparse.Namespace, folder: Path) -> List[dict]:
    """Part 2: the trainer for one epoch over synthetic shards, one subprocess per model."""
    image_size = open_clip.get_model_config(args.stock)["vision_cfg"]["image_size"]
    start = time.perf_counter()
    shards = write_shards(folder / "shards", args.trainer_samples, max(args.workers, 1), image_size)
    print(f"  wrote {args.trainer_samples} samples in {max(args.workers, 1)} shards "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    env = trainer_env(args, folder / "configs")
    rows = []
    for variant in variants(args):
        start = time.perf_counter()
        command = trainer_command(args, variant.trainer_model, shards, folder / "logs")
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.trainer_timeout)
        log_path = folder / "logs" / variant.trainer_model / "out.log"
        log = log_path.read_text() if log_path.exists() else ""
        rows.append({"label": variant.label, "model": variant.trainer_model, "exit": result.returncode,
                     "steps": len(SAMPLES_PER_SECOND.findall(log)), "samples_per_s": trainer_rate(log),
                     "seconds": time.perf_counter() - start})
        if result.returncode != 0:
            rows[-1]["error"] = (result.stdout[-2000:] + result.stderr[-3000:]).strip()
        print(f"  trainer {variant.trainer_model}: exit {result.returncode}, {rows[-1]['steps']} steps, "
              f"{rows[-1]['seconds']:.0f} s", flush=True)
    return rows


def trainer_table(rows: List[dict]) -> str:
    stock = rows[0]["samples_per_s"]
    lines = ["| model | trainer exit | steps | samples/s | x stock |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        rate = row["samples_per_s"]
        lines.append(f"| {row['label']} ({row['model']}) | {row['exit']} | {row['steps']} | "
                     f"{'' if rate is None else f'{rate:.1f}'} | {ratio(rate, stock)} |")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (3 x 10 steps after 3 warm-up steps): fits a 15-minute GPU session")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test of this script)")
    parser.add_argument("--stock", default="ViT-B-16", help="the stock model (default ViT-B-16)")
    parser.add_argument("--elip", default="ViT-B-16-elip", help="its ELIP twin (default ViT-B-16-elip)")
    parser.add_argument("--batch-size", type=int, default=128, help="per step, also in the trainer (default 128)")
    parser.add_argument("--repeats", type=int, help="timed repetitions per model and mode (default 7; quick 3)")
    parser.add_argument("--steps", type=int, help="steps per timed repetition (default 20; quick 10)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per model and mode (default 5; quick 3)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager only")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--no-trainer", dest="trainer", action="store_false", help="skip part 2 (the trainer)")
    parser.add_argument("--trainer-samples", type=int, default=4096, help="synthetic samples (default 4096)")
    parser.add_argument("--workers", type=int, default=8, help="trainer dataloader workers, one shard each (default 8)")
    parser.add_argument("--trainer-timeout", type=int, default=600, help="seconds per trainer run (default 600)")
    parser.add_argument("--work-dir", type=Path, help="shards and trainer logs (default: a temporary folder)")
    parser.add_argument("--report", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    defaults = (3, 10, 3) if args.quick else (7, 20, 5)
    for name, default in zip(("repeats", "steps", "warmup"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(f"No CUDA device is available (torch {torch.__version__}, {build}): nothing was measured. "
              "On a CUDA device this check measures:\n" + plan(args))
        return 0
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (a smoke test: numbers mean nothing)"
    print(f"GPU check on {where}, torch {torch.__version__}, open_clip {open_clip.__version__}\n{plan(args)}",
          flush=True)
    report = {"device": where, "torch": torch.__version__, "open_clip": open_clip.__version__, "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    print("== 1/2 training steps", flush=True)
    measured = measure(args, device)
    print(measure_table(measured), flush=True)
    report["steps"] = [{"label": v.label, "model": v.model, "elip_cfg": v.elip_cfg, **v.results} for v in measured]
    failed = any("error" in result for v in measured for result in v.results.values())
    if args.report:  # now too: what was measured survives a failure or a timeout in part 2
        args.report.write_text(json.dumps(report, indent=1))
    if args.trainer:
        print("== 2/2 OpenCLIP's trainer", flush=True)
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
            rows = run_trainer(args, args.work_dir or Path(scratch))
        print(trainer_table(rows), flush=True)
        for row in rows:
            if row["exit"] != 0:
                failed = True
                print(f"trainer failed for {row['model']}:\n{row['error']}", file=sys.stderr)
        report["trainer"] = rows
        if args.report:
            args.report.write_text(json.dumps(report, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
