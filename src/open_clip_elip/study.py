"""The study: is ELIP worth it? ``python -m open_clip_elip.study`` (``make study``).

Trains every method (ELIP, its variants and controls, and the token-reduction choices an OpenCLIP
user already has) with OpenCLIP's own trainer on the same shards, several seeds each; scores each
run with clip_benchmark (zero-shot and linear probe); runs the leak diagnostic on every ELIP-family
checkpoint; and writes ``results.csv``, ``results.md``, ``pareto.png`` and ``curves.png``.

Every run lives in ``OUT/runs/<method>/seed<k>/``: the trainer's output (``trainer.log``), its
checkpoints, clip_benchmark's JSON files, ``leak.json`` and, written last, ``result.json``. A run with
a ``result.json`` of status ``ok`` is never repeated; an unfinished or failed one is moved aside
(``*.attempt-N``) and started again. The report is rebuilt from all ``result.json`` files, so a new
invocation merges its runs into the earlier ones.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import logging
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import open_clip
import pandas as pd

from . import fashion_mnist
from .bench import (
    TowerCost,
    elip_layer_tokens,
    predict_elip,
    predict_evit,
    predict_plain,
    random_drop_prob,
    text_train_flops,
)
from .demo import eval_set, model_configs, step_seconds
from .evaluate import clip_benchmark_eval
from .registration import EXTRA_CONFIGS_ENV
from .study_report import write_report

# name -> what it is, in the report's words
METHODS = {
    "stock": "the plain model, full schedule",
    "stock-matched": "the plain model, fewer samples: the training FLOPs of elip",
    "elip": "ELIP as in the paper (look-ahead scoring, lam 0.8, merge)",
    "elip-first-layer": "ELIP scored by the first layer of each block (no look-ahead)",
    "elip-prune-only": "ELIP without the merged token (the paper's ablation)",
    "elip+tune": "elip's run, its last epoch continued unpruned under the stock name",
    "evit": "EViT, keep rate 0.7 at the 4th/7th/10th of 12 layers scaled to depth (prunes at inference too)",
    "flip-budget": "patch dropout keeping ELIP's average tokens per layer",
    "flip-50": "patch dropout 0.5 (OpenCLIP's recommended setting)",
    "low-res": "training and evaluation at a lower image size, about ELIP's token budget",
    "elip-vision-only": "ELIP scored by the image's own CLS only (lam 1)",
    "elip-random-caption": "ELIP guided by another row's caption of the batch (ablation)",
    "elip-balanced": "ELIP with the text term rescaled to the CLS norm (ours, not the paper's)",
}
ELIP_OPTIONS = {  # ELIP-family method -> elip_cfg options over the paper's
    "elip": {},
    "elip-first-layer": {"scoring": "first_layer"},
    "elip-prune-only": {"merge": False},
    "elip-vision-only": {"lam": 1.0},
    "elip-random-caption": {"caption_pairing": "other_row"},
    "elip-balanced": {"fusion": "norm_matched"},
}
LEAK_METHODS = (*ELIP_OPTIONS, "elip+tune")
DATASET = "wds/fashion_mnist"
LOSS_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+).*?Contrastive_loss: ([0-9.]+)")


@dataclass(frozen=True)
class Preset:
    """The scale of a study: data, schedule, evaluation and seeds."""

    samples_per_epoch: int
    epochs: int
    batch_size: int
    train_images: int
    shard_size: int
    test_samples: int
    probe_samples: int
    leak_samples: int
    seeds: int
    width: int
    log_every: int


PRESETS = {
    # the tests: the real trainer and clip_benchmark, a few steps
    "tiny": Preset(samples_per_epoch=256, epochs=2, batch_size=64, train_images=512, shard_size=128,
                   test_samples=200, probe_samples=200, leak_samples=128, seeds=1, width=32, log_every=1),
    # about an hour on 2 cores: see docs/study/README.md for why this scale
    "default": Preset(samples_per_epoch=1536, epochs=10, batch_size=128, train_images=20000, shard_size=250,
                      test_samples=2500, probe_samples=2500, leak_samples=512, seeds=5, width=64, log_every=3),
}


@dataclass
class Run:
    """One (method, seed) training run and what it needs."""

    method: str
    seed: int
    model: str  # the trainer's --model
    eval_model: str  # the name clip_benchmark and the leak diagnostic build
    flags: List[str] = field(default_factory=list)  # extra trainer flags
    samples_per_epoch: int = 0
    train_flops: float = 0.0  # per image of the full schedule
    after: Optional[str] = None  # a method whose run (same seed) this one continues

    @property
    def key(self) -> str:
        return f"{self.method}/seed{self.seed}"


class Study:
    """Paths, models and settings of one study."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.preset: Preset = PRESETS[args.preset]
        self.lock = threading.Lock()

    # --- data and models -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Training shards, evaluation set, held-out pairs and the model configs (built once, reused)."""
        args, preset = self.args, self.preset
        data = self.out / "data"
        if args.train_data:
            self.train_data = args.train_data
            if args.train_num_samples < preset.samples_per_epoch:
                raise ValueError(
                    f"--train-num-samples {args.train_num_samples}: the {args.preset} preset reads "
                    f"{preset.samples_per_epoch} samples per epoch; give data with at least that many")
        else:
            folder = data / f"fashion-mnist-train-{preset.train_images}-shards{preset.shard_size}"
            self.train_data = fashion_mnist.shard_pattern(self._fashion_shards(folder, "train", preset.train_images))
        if args.eval_root:
            self.eval_dataset, self.eval_root = args.eval_dataset, Path(args.eval_root)
        else:
            self.eval_dataset = DATASET
            self.eval_root = eval_set(self.out, preset.test_samples, preset.probe_samples, args.fashion_mnist)
        if args.heldout_data:
            self.heldout = args.heldout_data
        elif args.train_data:
            self.heldout = None
        else:
            folder = data / f"fashion-mnist-heldout-{preset.leak_samples}"
            self.heldout = fashion_mnist.shard_pattern(
                self._fashion_shards(folder, "test", preset.leak_samples, last=True))
        self.configs = self._write_configs()
        os.environ[EXTRA_CONFIGS_ENV] = os.pathsep.join(
            filter(None, [str(self.out / "configs"), os.environ.get(EXTRA_CONFIGS_ENV)]))
        open_clip.add_model_config(self.out / "configs")

    def _fashion_shards(self, folder: Path, split: str, count: int, last: bool = False) -> Path:
        if (folder / "sizes.json").exists():
            return folder
        images, labels = fashion_mnist.load_split(split, self.args.fashion_mnist)
        if count > len(images):
            raise ValueError(f"{count} {split} images asked for; Fashion-MNIST's {split} split has {len(images)}")
        chosen = slice(len(images) - count, None) if last else slice(0, count)
        print(f"writing {count} captioned {split} images to {folder}", flush=True)
        return fashion_mnist.write_train_shards(images[chosen], labels[chosen], folder, seed=0,
                                                shard_size=self.preset.shard_size)

    def _write_configs(self) -> Dict[str, dict]:
        """The study's model configs, one JSON each in ``OUT/configs`` (a stock config, its family)."""
        args = self.args
        if args.model_config:
            stock = json.loads(Path(args.model_config).read_text())
            base = Path(args.model_config).stem
        else:
            width = self.preset.width
            base, stock = next(iter(model_configs(args.image_size, width=width, head_width=width // 2).items()))
        vision = stock["vision_cfg"]
        depth, size = vision["layers"], vision["image_size"]
        layout = args.layout or _default_layout(depth)
        paper = {"layout": layout, "keep_ratios": [0.9, 0.65, 0.4], "lam": 0.8, "merge": True, "scoring": "lookahead"}
        configs = {base: stock}
        for method, options in ELIP_OPTIONS.items():
            configs[self.family_name(base, method)] = {**stock, "elip_cfg": {**paper, **options}}
        configs[f"{base}-evit"] = {**stock, "evit_cfg": {"keep_rate": 0.7, "fuse": True}}
        low = copy.deepcopy(stock)
        low["vision_cfg"]["image_size"] = args.low_res_size or _low_res_size(size, vision["patch_size"])
        configs[f"{base}-lowres"] = low
        self.base = base
        folder = self.out / "configs"
        folder.mkdir(parents=True, exist_ok=True)
        for name, cfg in configs.items():
            path = folder / f"{name}.json"
            text = json.dumps(cfg, indent=1)
            if path.exists() and path.read_text() != text:
                raise FileExistsError(
                    f"{path} holds another model config than this study's: its runs were made with other models. "
                    f"Use another --out, or remove {self.out} to start over")
            path.write_text(text)
        return configs

    @staticmethod
    def family_name(base: str, method: str) -> str:
        return f"{base}-{method}" if method != "elip" else f"{base}-elip"

    # --- the plan --------------------------------------------------------------------------------------

    def plan(self, methods: Sequence[str], seeds: Sequence[int]) -> List[Run]:
        """Every (method, seed) run, seed by seed, with its model, flags and training FLOPs per image."""
        base, preset = self.base, self.preset
        logging.disable(logging.WARNING)  # "No pretrained weights loaded": none are wanted here
        try:
            costs = self._flops(base)
        finally:
            logging.disable(logging.NOTSET)
        stock_flops = costs["stock"]
        matched = round(preset.samples_per_epoch * costs["elip"] / stock_flops / preset.batch_size) * preset.batch_size
        self.matched_fraction = matched / preset.samples_per_epoch
        self.drop_prob = costs["drop_prob"]
        tune = 1 / preset.epochs
        runs = []
        for seed in seeds:
            for method in methods:
                run = Run(method, seed, base, base, samples_per_epoch=preset.samples_per_epoch,
                          train_flops=costs.get(method, stock_flops))
                if method in ELIP_OPTIONS:
                    run.model = run.eval_model = self.family_name(base, method)
                elif method == "stock-matched":
                    run.samples_per_epoch = max(preset.batch_size, matched)
                    run.train_flops = stock_flops * run.samples_per_epoch / preset.samples_per_epoch
                elif method == "elip+tune":
                    run.after = "elip"
                    run.train_flops = (1 - tune) * costs["elip"] + tune * stock_flops
                elif method == "evit":
                    run.model = run.eval_model = f"{base}-evit"
                elif method == "flip-budget":
                    run.flags = ["--force-patch-dropout", f"{costs['drop_prob']:.4f}"]
                elif method == "flip-50":
                    run.flags = ["--force-patch-dropout", "0.5"]
                elif method == "low-res":
                    size = self.configs[f"{base}-lowres"]["vision_cfg"]["image_size"]
                    run.flags = ["--force-image-size", str(size)]
                    run.eval_model = f"{base}-lowres"
                runs.append(run)
        return runs

    def _flops(self, base: str) -> Dict[str, float]:
        """Training FLOPs per image of each method, from token counts (the benchmark's cost model),
        the text tower included."""
        stock = open_clip.create_model(base)
        text = text_train_flops(stock)
        cost = TowerCost.of(stock.visual)
        depth = len(stock.visual.transformer.resblocks)
        n0 = cost.num_patches + 1
        flops = {"stock": predict_plain(cost, (n0,) * depth, True)}
        elip_towers = {method: open_clip.create_model(self.family_name(base, method)).visual for method in ELIP_OPTIONS}
        for method, visual in elip_towers.items():
            flops[method] = predict_elip(visual, cost, True)
        flops["evit"] = predict_evit(open_clip.create_model(f"{base}-evit").visual, cost)
        elip_tokens = elip_layer_tokens(elip_towers["elip"])
        prob, patches = random_drop_prob(cost.num_patches, sum(elip_tokens) / depth)
        flops["flip-budget"] = predict_plain(cost, (patches + 1,) * depth, True)
        half = int(cost.num_patches * 0.5)
        flops["flip-50"] = predict_plain(cost, (half + 1,) * depth, True)
        low = open_clip.create_model(f"{base}-lowres").visual
        low_cost = TowerCost.of(low)
        flops["low-res"] = predict_plain(low_cost, (low_cost.num_patches + 1,) * depth, True)
        flops = {name: float(value + text) for name, value in flops.items()}
        flops["drop_prob"] = prob
        return flops

    # --- one run ---------------------------------------------------------------------------------------

    def folder(self, run: Run) -> Path:
        return self.out / "runs" / run.method / f"seed{run.seed}"

    def finished(self, run: Run) -> Optional[dict]:
        path = self.folder(run) / "result.json"
        if path.exists():
            record = json.loads(path.read_text())
            if record.get("status") == "ok":
                return record
        return None

    def execute(self, run: Run, before: Optional[dict]) -> dict:
        """Train, evaluate and diagnose one run; its ``result.json`` record (status ok or failed)."""
        folder = self.folder(run)
        if folder.exists():  # an interrupted or failed attempt: kept aside, never deleted
            attempt = 1
            while folder.with_name(f"{folder.name}.attempt-{attempt}").exists():
                attempt += 1
            folder.rename(folder.with_name(f"{folder.name}.attempt-{attempt}"))
        folder.mkdir(parents=True)
        record = {"method": run.method, "seed": run.seed, "model": run.model, "eval_model": run.eval_model,
                  "trainer_flags": " ".join(run.flags), "train_gflops_per_image": run.train_flops / 1e9}
        started = time.time()
        try:
            if run.after and (before is None or before.get("status") != "ok"):
                raise RuntimeError(f"{run.method} continues the {run.after} run of seed {run.seed}, which failed")
            record.update(self.train(run, folder, before))
            checkpoint = record.pop("checkpoint")
            record.update(self.evaluate(run, folder, checkpoint))
            if run.method in LEAK_METHODS and self.heldout:
                record.update(self.leak(run, folder, checkpoint))
            record["status"] = "ok"
        except Exception as exc:  # reported as failed in the table; the other runs go on
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        record["wall_seconds"] = round(time.time() - started, 1)
        tmp = folder / "result.json.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.rename(folder / "result.json")
        return record

    def env(self) -> dict:
        threads = str(self.args.threads)
        return dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OMP_WAIT_POLICY="PASSIVE",
                    CUDA_VISIBLE_DEVICES="")

    def trainer_command(self, run: Run, folder: Path, before: Optional[dict]) -> List[str]:
        preset, epochs = self.preset, self.preset.epochs
        steps = math.ceil(run.samples_per_epoch / preset.batch_size) * epochs
        command = [
            sys.executable, "-m", "open_clip_train.main", "--model", run.model,
            "--train-data", self.train_data, "--train-num-samples", str(run.samples_per_epoch),
            "--dataset-type", "webdataset", "--batch-size", str(preset.batch_size), "--epochs", str(epochs),
            "--lr", str(self.args.lr), "--wd", "0.1", "--warmup", str(max(1, steps // 10)),
            "--precision", "fp32", "--workers", "0", "--device", "cpu", "--seed", str(run.seed),
            "--logs", str(folder / "train"), "--name", run.method, "--log-every-n-steps", str(preset.log_every),
            "--save-frequency", str(max(1, epochs - 1)), *run.flags]
        if run.after:  # continue the earlier run's second-to-last checkpoint: same schedule, last epoch
            command += ["--resume", before["resume_from"]]
        return command

    def train(self, run: Run, folder: Path, before: Optional[dict]) -> dict:
        command = self.trainer_command(run, folder, before)
        (folder / "command.txt").write_text(" ".join(command) + "\n")
        started = time.time()
        with open(folder / "trainer.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=self.env()).returncode
        seconds = time.time() - started
        checkpoints = folder / "train" / run.method / "checkpoints"
        final = checkpoints / f"epoch_{self.preset.epochs}.pt"
        if code or not final.exists():
            tail = (folder / "trainer.log").read_text()[-1500:]
            raise RuntimeError(f"the trainer failed (exit status {code}); see {folder / 'trainer.log'}:\n{tail}")
        out_log = folder / "train" / run.method / "out.log"
        curve = loss_curve(out_log.read_text(), run.samples_per_epoch)
        curve.to_csv(folder / "curve.csv", index=False)
        record = {"checkpoint": str(final), "samples_seen": run.samples_per_epoch * self.preset.epochs,
                  "seconds_per_step": step_seconds(out_log), "train_seconds": round(seconds, 1),
                  "resume_from": str(checkpoints / f"epoch_{self.preset.epochs - 1}.pt")}
        if run.after:  # the earlier run's epochs count too
            tune = 1 / self.preset.epochs
            record["train_seconds"] = round(before["train_seconds"] * (1 - tune) + seconds, 1)
            record["seconds_per_step"] = before["seconds_per_step"] * (1 - tune) + record["seconds_per_step"] * tune
            earlier = pd.read_csv(self.folder(Run(run.after, run.seed, "", "")) / "curve.csv")
            curve = pd.concat([earlier[earlier.epoch < self.preset.epochs - 1], curve])
            curve.to_csv(folder / "curve.csv", index=False)
        return record

    def evaluate(self, run: Run, folder: Path, checkpoint: str) -> dict:
        tasks = {"zeroshot_classification": {"acc1": "zeroshot_top1", "acc5": "zeroshot_top5"}}
        if self.args.probe:
            tasks["linear_probe"] = {"lp_acc1": "linear_probe_top1"}
        record = {}
        for task, metrics in tasks.items():
            path = clip_benchmark_eval(run.eval_model, checkpoint, self.eval_dataset, task, self.eval_root,
                                       folder / "eval" / f"{task}.json", batch_size=256)
            found = json.loads(path.read_text())["metrics"]
            for metric, column in metrics.items():
                key = metric if metric in found else metric.removeprefix("lp_")
                record[column] = round(100 * found[key], 4)
        return record

    def leak(self, run: Run, folder: Path, checkpoint: str) -> dict:
        model = run.eval_model if run.method != "elip+tune" else self.family_name(self.base, "elip")
        command = [sys.executable, "-m", "open_clip_elip.leak", "--model", model, "--pretrained", checkpoint,
                   "--data", self.heldout, "--samples", str(self.preset.leak_samples),
                   "--batch-size", str(self.preset.batch_size), "--seed", str(run.seed), "--out",
                   str(folder / "leak.json")]
        with open(folder / "leak.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=self.env()).returncode
        if code:
            raise RuntimeError(f"the leak diagnostic failed (exit status {code}); see {folder / 'leak.log'}")
        return {f"leak_{key}" if not key.startswith("leak_") else key: value
                for key, value in json.loads((folder / "leak.json").read_text()).items()}

    # --- all runs --------------------------------------------------------------------------------------

    def run_all(self, runs: List[Run]) -> List[dict]:
        """Every run, ``--jobs`` at a time; finished ones are found and not repeated."""
        total, done, durations = len(runs), [0], []
        started = time.time()
        records: Dict[str, concurrent.futures.Future] = {}

        position = {run.key: i + 1 for i, run in enumerate(runs)}

        def report(run: Run, record: dict, found: bool) -> None:
            with self.lock:
                done[0] += 1
                if not found:
                    durations.append(record["wall_seconds"])
                left = total - done[0]
                estimate = statistics.mean(durations) * left / self.args.jobs if durations and left else 0
                if found:
                    what = "found (not repeated)"
                elif record["status"] == "ok":
                    what = (f"finished in {record['wall_seconds']:.0f} s: zero-shot top-1 "
                            f"{record.get('zeroshot_top1', float('nan')):.2f}")
                else:
                    what = f"FAILED after {record['wall_seconds']:.0f} s: {record['error'].splitlines()[0][:200]}"
                print(f"[run {position[run.key]} of {total}] {run.key} {what}; {done[0]} of {total} done, "
                      f"about {estimate / 60:.0f} min left ({time.time() - started:.0f} s so far)", flush=True)

        def task(run: Run) -> dict:
            before = records[f"{run.after}/seed{run.seed}"].result() if run.after else None
            record = self.finished(run)
            if record is not None:
                report(run, record, found=True)
                return record
            with self.lock:
                print(f"[run {position[run.key]} of {total}] {run.key} started: {run.model} "
                      f"{' '.join(run.flags)}".rstrip(), flush=True)
            record = self.execute(run, before)
            report(run, record, found=False)
            return record

        with concurrent.futures.ThreadPoolExecutor(self.args.jobs) as pool:
            for run in runs:  # a run that continues another is queued after it
                records[run.key] = pool.submit(task, run)
            return [records[run.key].result() for run in runs]


def loss_curve(log_text: str, samples_per_epoch: int) -> pd.DataFrame:
    """The trainer's logged contrastive loss against samples seen (``epoch``, ``samples``, ``loss``)."""
    rows = [(int(epoch), int(epoch) * samples_per_epoch + int(seen), float(loss))
            for epoch, seen, _, loss in LOSS_LINE.findall(log_text)]
    if not rows:
        raise ValueError("no 'Train Epoch ... Contrastive_loss' lines in the trainer's log")
    return pd.DataFrame(rows, columns=["epoch", "samples", "loss"])


def _default_layout(depth: int) -> List[int]:
    if depth % 6 == 0:
        unit = depth // 6
        return [unit, unit, 3 * unit, unit]
    raise ValueError(f"no default ELIP layout for a {depth}-layer ViT: give --layout (4 numbers summing to {depth})")


def _low_res_size(image_size: int, patch_size: int) -> int:
    """The largest image size below ``image_size`` whose token count is at most 0.77x (about ELIP's budget)."""
    grid = image_size // patch_size
    target = int(math.sqrt(0.77 * grid * grid))
    return max(1, target) * patch_size


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="default",
                        help="scale: 'default' (about an hour on 2 cores) or 'tiny' (the tests)")
    parser.add_argument("--out", default="runs/study", help="data, runs and report go here (default: runs/study)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from: {', '.join(METHODS)} (default: all)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0..N-1 with N from the preset)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: reproducible)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=32, help="Fashion-MNIST model's image size (patch 4)")
    parser.add_argument("--low-res-size", type=int, help="image size of low-res (default: about 0.77x the tokens)")
    parser.add_argument("--layout", type=lambda s: [int(n) for n in s.split(",")],
                        help="ELIP layers per block, e.g. 1,1,3,1 (default: the paper's scaled to the depth)")
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="zero-shot evaluation only")
    parser.add_argument("--fashion-mnist", type=Path, metavar="DIR",
                        help="folder of the Fashion-MNIST *-ubyte[.gz] files (default: the Debian package's)")
    data = parser.add_argument_group("other data (default: Fashion-MNIST, built under OUT/data)")
    data.add_argument("--train-data", help="webdataset training shards (OpenCLIP's --train-data pattern)")
    data.add_argument("--train-num-samples", type=int, help="samples in --train-data")
    data.add_argument("--eval-dataset", help="clip_benchmark dataset name (e.g. wds/imagenet1k)")
    data.add_argument("--eval-root", help="clip_benchmark --dataset_root of --eval-dataset")
    data.add_argument("--heldout-data", help="webdataset image-caption pairs kept out of training, for the leak "
                                             "diagnostic (skipped without them when --train-data is given)")
    data.add_argument("--model-config", help="a stock OpenCLIP model config JSON (default: a small ViT for 32 px)")
    args = parser.parse_args(argv)
    args.command_line = shlex.join(sys.argv[1:] if argv is None else argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods: unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if "elip+tune" in args.methods and "elip" not in args.methods:
        args.methods.insert(args.methods.index("elip+tune"), "elip")  # it continues elip's run
    preset = PRESETS[args.preset]
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(preset.seeds))
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {args.seeds!r}")
    for option in ("jobs", "threads"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    if bool(args.train_data) != bool(args.train_num_samples):
        parser.error("--train-data and --train-num-samples go together")
    if bool(args.eval_dataset) != bool(args.eval_root):
        parser.error("--eval-dataset and --eval-root go together")
    if args.fashion_mnist and not args.fashion_mnist.is_dir():
        parser.error(f"--fashion-mnist: no folder {args.fashion_mnist}")
    if args.eval_root and not Path(args.eval_root).is_dir():
        parser.error(f"--eval-root: no folder {args.eval_root}")
    if args.model_config and not Path(args.model_config).is_file():
        parser.error(f"--model-config: no file {args.model_config}")
    return args


def run_study(args: argparse.Namespace) -> Path:
    """Prepare, run what is not done yet, and write the report; returns the output folder."""
    study = Study(args)
    study.prepare()
    runs = study.plan(args.methods, args.seeds)
    preset = study.preset
    print(f"study in {study.out}: {len(args.methods)} methods x {len(args.seeds)} seeds = {len(runs)} runs, "
          f"{args.jobs} at a time, {args.threads} thread(s) each\n"
          f"training: {study.train_data}, {preset.epochs} epochs x {preset.samples_per_epoch} samples, batch "
          f"{preset.batch_size}, lr {args.lr}; evaluation: {study.eval_dataset} (clip_benchmark)", flush=True)
    study.run_all(runs)
    settings = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "preset_values": asdict(preset), "train_data": study.train_data, "eval_dataset": study.eval_dataset,
                "stock_matched_fraction": study.matched_fraction, "flip_budget_drop": study.drop_prob,
                "low_res_size": study.configs[f"{study.base}-lowres"]["vision_cfg"]["image_size"],
                "image_size": study.configs[study.base]["vision_cfg"]["image_size"], "base_model": study.base}
    written = write_report(study.out, settings, METHODS)
    print("wrote " + ", ".join(str(p) for p in written), flush=True)
    return study.out


def main(argv: Optional[Sequence[str]] = None) -> int:
    run_study(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
