"""``python -m open_clip_elip.study``: the command line, and the study from data to report."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import open_clip

from ..core.registration import EXTRA_CONFIGS_ENV
from . import __doc__ as STUDY_DOC
from .configs import build_configs
from .data import prepare_data
from .methods import catalogue, descriptions
from .plan import PRESETS, plan
from .report import write_report
from .runner import Runner


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.study", description=STUDY_DOC.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="default",
                        help="scale: 'default' (about an hour on 2 cores) or 'tiny' (the tests)")
    parser.add_argument("--out", default="runs/study", help="data, runs and report go here (default: runs/study)")
    methods = catalogue()
    parser.add_argument("--methods", default=",".join(methods),
                        help=f"comma-separated, from: {', '.join(methods)} (default: all)")
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
    unknown = [m for m in args.methods if m not in methods]
    if unknown or not args.methods:
        parser.error(f"--methods: unknown method(s) {unknown}; choose from {', '.join(methods)}")
    for name in list(args.methods):  # a run that continues another needs that one first
        earlier = methods[name].continues
        if earlier and earlier not in args.methods:
            args.methods.insert(args.methods.index(name), earlier)
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
    out, preset = Path(args.out), PRESETS[args.preset]
    data = prepare_data(args, preset, out)
    methods = catalogue()
    configs = build_configs(args, preset, list(methods.values()), out)
    os.environ[EXTRA_CONFIGS_ENV] = os.pathsep.join(  # for the trainer and clip_benchmark subprocesses
        filter(None, [str(out / "configs"), os.environ.get(EXTRA_CONFIGS_ENV)]))
    open_clip.add_model_config(out / "configs")
    runs, budgets = plan([methods[name] for name in args.methods], args.seeds, configs, preset)
    print(f"study in {out}: {len(args.methods)} methods x {len(args.seeds)} seeds = {len(runs)} runs, "
          f"{args.jobs} at a time, {args.threads} thread(s) each\n"
          f"training: {data.train_data}, {preset.epochs} epochs x {preset.samples_per_epoch} samples, batch "
          f"{preset.batch_size}, lr {args.lr}; evaluation: {data.eval_dataset} (clip_benchmark)", flush=True)
    Runner(out, args, preset, data).run_all(runs)
    settings = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "preset_values": asdict(preset), "train_data": data.train_data, "eval_dataset": data.eval_dataset,
                "stock_matched_fraction": budgets.matched_fraction, "flip_budget_drop": budgets.drop_prob,
                "low_res_size": budgets.low_res_size, "image_size": configs.stock["vision_cfg"]["image_size"],
                "base_model": configs.base}
    written = write_report(out, settings, descriptions())
    print("wrote " + ", ".join(str(p) for p in written), flush=True)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    run_study(parse_args(argv))
    return 0
