"""``python -m open_clip_elip.study``: the command line, and the study from data to report."""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import open_clip

from ..core.registration import EXTRA_CONFIGS_ENV
from . import __doc__ as STUDY_DOC
from .configs import build_configs
from .data import CUSTOM, REGIMES, TRAINING, prepare_data, training_settings
from .methods import catalogue, descriptions
from .plan import PRESETS, plan
from .report import write_report
from .runner import Runner


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.study", description=STUDY_DOC.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="default",
                        help="scale and cells: 'default' (about 5 hours on 2 cores) or 'tiny' (the tests)")
    built_in = [name for name in REGIMES if name != CUSTOM]
    parser.add_argument("--regimes", help=f"comma-separated, from: {', '.join(built_in)} (default: the preset's; "
                                          "with --train-data the one regime is 'custom')")
    parser.add_argument("--schedules", help="comma-separated multiples of the preset's samples (default: the "
                                            "preset's, e.g. 1,4)")
    parser.add_argument("--out", default="runs/study", help="data, runs and report go here (default: runs/study)")
    methods = catalogue()
    parser.add_argument("--methods", help=f"comma-separated, from: {', '.join(methods)} (default: each cell's, "
                                          "see --list)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0..N-1 with N from each cell)")
    parser.add_argument("--list", action="store_true", help="print the preset's cells (regime, schedule, methods, "
                                                            "seeds) and exit")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite OUT's report from its finished runs and settings.json, running nothing")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: reproducible)")
    defaults = ", ".join(f"{r.name} {', '.join(f'{k} {v}' for k, v in r.training.items())}"
                         for r in REGIMES.values() if r.training)
    parser.add_argument("--lr", type=float, help=f"learning rate (default: the regime's; {TRAINING['lr']} unless "
                                                 f"it says otherwise: {defaults})")
    parser.add_argument("--warmup", type=float, help=f"warm-up share of each run's steps (default: the regime's; "
                                                     f"{TRAINING['warmup']} unless it says otherwise)")
    parser.add_argument("--grad-clip-norm", type=float, help="the trainer's gradient clipping (default: the "
                                                             "regime's; none unless it says otherwise; 0: none)")
    parser.add_argument("--image-size", type=int, default=32, help="Fashion-MNIST model's image size (patch 4)")
    parser.add_argument("--low-res-size", type=int, help="image size of low-res (default: about 0.77x the tokens)")
    parser.add_argument("--layout", type=lambda s: [int(n) for n in s.split(",")],
                        help="ELIP layers per block, e.g. 1,1,3,1 (default: the paper's scaled to the depth)")
    parser.add_argument("--probe", action="store_true",
                        help="add clip_benchmark's linear probe (off by default: the study's verdicts are zero-shot, "
                             "and the probe's cost buys seeds instead)")
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
    if args.methods is not None:
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in args.methods if m not in methods]
        if unknown or not args.methods:
            parser.error(f"--methods: unknown method(s) {unknown}; choose from {', '.join(methods)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        schedules = [int(s) for s in args.schedules.split(",")] if args.schedules else None
    except ValueError:
        parser.error("--seeds and --schedules take comma-separated integers, e.g. 0,1,2")
    for option, values in (("--seeds", args.seeds), ("--schedules", schedules), ("--methods", args.methods)):
        repeated = [v for i, v in enumerate(values or ()) if v in (values or ())[:i]]
        if repeated:
            parser.error(f"{option}: {option[2:-1]} {repeated[0]} given twice; give each once")
    regimes = [r.strip() for r in args.regimes.split(",")] if args.regimes else None
    if regimes and (set(regimes) - set(built_in) or not regimes):
        parser.error(f"--regimes: unknown regime(s) {sorted(set(regimes) - set(built_in))}; choose from "
                     f"{', '.join(built_in)}")
    if regimes and args.train_data:
        parser.error("--regimes and --train-data exclude each other: --train-data is the study's one regime")
    args.cells = matching_cells(parser, args.preset, regimes, schedules)
    if args.train_data:  # the other data replace the built-in regimes, once per schedule
        args.cells = list({c.schedule: replace(c, regime=CUSTOM) for c in args.cells}.values())
    args.cells = [replace(c, methods=with_earlier(args.methods or c.methods, methods)) for c in args.cells]
    for option in ("jobs", "threads"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    if args.warmup is not None and not 0 <= args.warmup < 1:
        parser.error(f"--warmup is a share of the steps in [0, 1), got {args.warmup}")
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


def matching_cells(parser: argparse.ArgumentParser, preset_name: str, regimes: Optional[Sequence[str]],
                   schedules: Optional[Sequence[int]]) -> list:
    """The preset's cells of ``regimes`` and ``schedules`` (None: any). Each value must match a cell with the
    other option's values, so that a value matching none is refused in a list as it is alone (``--schedules 1,2``
    does not silently run the 1x cell only)."""
    cells = PRESETS[preset_name].cells

    def chosen(regime_values, schedule_values):
        return [c for c in cells if (regime_values is None or c.regime in regime_values)
                and (schedule_values is None or c.schedule in schedule_values)]

    for option, values, alone in (("--regimes", regimes, lambda v: chosen([v], schedules)),
                                  ("--schedules", schedules, lambda v: chosen(regimes, [v]))):
        for value in values or ():
            if not alone(value):
                parser.error(f"no cell of the {preset_name} preset matches {option} {value} (with --regimes "
                             f"{','.join(regimes) if regimes else '(any)'} --schedules "
                             f"{','.join(map(str, schedules)) if schedules else '(any)'}); its cells: "
                             + ", ".join(c.name for c in cells))
    return chosen(regimes, schedules)


def seeds_of(args: argparse.Namespace, cell) -> Callable[[str], list]:
    """A method's seeds in ``cell``: --seeds, else 0..N-1 with N the cell's for that method."""
    return lambda name: args.seeds or list(range(cell.seeds_of(name)))


def with_earlier(names: Sequence[str], methods: dict) -> Tuple[str, ...]:
    """``names`` with each run's earlier one (the run it continues) put before it when missing."""
    names = list(names)
    for name in list(names):
        earlier = methods[name].continues
        if earlier and earlier not in names:
            names.insert(names.index(name), earlier)
    return tuple(names)


def run_study(args: argparse.Namespace) -> Path:
    """Prepare, run what is not done yet, and write the report; returns the output folder."""
    out, preset = Path(args.out), PRESETS[args.preset]
    methods = catalogue()
    regimes = list(dict.fromkeys(cell.regime for cell in args.cells))
    data = {regime: prepare_data(args, preset, out, regime) for regime in regimes}
    configs = {regime: build_configs(args, preset, list(methods.values()), out, regime) for regime in regimes}
    os.environ[EXTRA_CONFIGS_ENV] = os.pathsep.join(  # for the trainer and clip_benchmark subprocesses
        filter(None, [str(out / "configs"), os.environ.get(EXTRA_CONFIGS_ENV)]))
    open_clip.add_model_config(out / "configs")
    runs, cells = [], {}
    for cell in args.cells:
        scaled = preset.scaled(cell.schedule)
        planned, budgets = plan([methods[name] for name in cell.methods], seeds_of(args, cell), configs[cell.regime],
                                scaled, cell.regime, cell.schedule)
        seeds = sorted({run.seed for run in planned})
        runs += planned
        stock, regime_data = configs[cell.regime].stock, data[cell.regime]
        steps = scaled.epochs * math.ceil(scaled.samples_per_epoch / scaled.batch_size)
        print(f"{cell.name}: {len(cell.methods)} methods x up to {len(seeds)} seeds = {len(planned)} runs of "
              f"{configs[cell.regime].base} on {regime_data.train_data}, {scaled.epochs} epochs x "
              f"{scaled.samples_per_epoch} samples ({steps} steps of {scaled.batch_size}); evaluation: "
              f"{regime_data.eval_dataset} (clip_benchmark)", flush=True)
        cells[cell.name] = {
            "regime": cell.regime, "schedule": cell.schedule, "regime_description": REGIMES[cell.regime].description,
            "preset_values": {k: v for k, v in asdict(scaled).items() if k != "cells"},
            "train_data": regime_data.train_data, "eval_dataset": regime_data.eval_dataset,
            "base_model": configs[cell.regime].base, "image_size": stock["vision_cfg"]["image_size"],
            "stock_matched_fraction": budgets.matched_fraction, "flip_budget_drop": budgets.drop_prob,
            "low_res_size": budgets.low_res_size, "training": training_settings(args, cell.regime)}
    print(f"study in {out}: {len(runs)} runs, {args.jobs} at a time, {args.threads} thread(s) each", flush=True)
    Runner(out, args, preset, data).run_all(runs)
    settings = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "cells"},
                "cells": _merged_cells(out, cells)}
    previews = [d.preview for d in data.values() if d.preview]
    if previews:
        settings["preview"] = str(previews[0].relative_to(out))
    written = write_report(out, settings, descriptions())
    print("wrote " + ", ".join(str(p) for p in written), flush=True)
    return out


def _merged_cells(out: Path, cells: dict) -> dict:
    """This invocation's cells' settings over those an earlier one saved in ``OUT/settings.json`` (the report
    covers every run under OUT)."""
    path = out / "settings.json"
    earlier = json.loads(path.read_text()).get("cells", {}) if path.exists() else {}
    return {**earlier, **cells}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        for cell in args.cells:
            groups = {}  # seeds -> methods
            for name in cell.methods:
                groups.setdefault(tuple(seeds_of(args, cell)(name)), []).append(name)
            print(f"{cell.name}: " + "; ".join(f"seeds {','.join(map(str, seeds))}: methods {','.join(names)}"
                                               for seeds, names in groups.items()))
        return 0
    if args.report_only:
        print("wrote " + ", ".join(str(p) for p in rewrite_report(Path(args.out))), flush=True)
        return 0
    run_study(args)
    return 0


def rewrite_report(out: Path) -> list:
    """The report of ``out``'s finished runs, with the settings its study saved (``OUT/settings.json``)."""
    path = out / "settings.json"
    if not path.exists():
        raise SystemExit(f"python -m open_clip_elip.study: error: --report-only: no {path}; run the study into "
                         f"{out} first")
    return write_report(out, json.loads(path.read_text()), descriptions())
