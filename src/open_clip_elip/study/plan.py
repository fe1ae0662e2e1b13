"""The plan: every (method, seed) run with its model, trainer flags, samples and training FLOPs per image.
The budgets some methods are sized by (patch dropout and samples at ELIP's cost) come from the families' cost
models (``core.registry``) on the study's own model."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import open_clip

from ..bench import random_drop_prob
from ..core import openclip, registry
from ..core.costs import TowerCost, predict_plain, text_train_flops
from . import methods as m

# the methods every cell of the default study runs: the stock compute ladder (every method's equal-FLOPs
# reference), the key comparisons (elip against each) and what they continue; the other rows of
# ``methods`` run when named (--methods)
KEY_METHODS = (*m.LADDER, "elip", "elip-balanced", "elip-vision-only", "evit", "tome", "flip-budget",
               "flip-budget+tune", "low-res", "low-res+tune")
CORE_METHODS = (*m.LADDER, "elip", "low-res", "low-res+tune")  # the longer schedule's
MASKS = ("mask-random", "mask-center", "mask-cluster", "mask-attentive", "mask-attentive-text")  # no +tune: budget
# the scenes cell's: where ELIP's premise holds, the ladder, ELIP's variants, the token-choosing rivals and the
# attentive masks (the caption-steered one ours); cut for the budget: flip-budget(+tune), low-res+tune, the other
# masks and the +tunes (fashion-x1 runs them)
SCENES_METHODS = (*m.LADDER, "elip", "elip-balanced", "elip-text-only", "elip-vision-only", "evit", "tome", "low-res",
                  "mask-attentive", "mask-attentive-text")


@dataclass(frozen=True)
class Cell:
    """One part of a study: a data regime (``data.REGIMES``) at a schedule (the preset's samples per epoch times
    ``schedule``), its methods and number of seeds."""

    regime: str
    schedule: int
    methods: Tuple[str, ...]
    seeds: int
    method_seeds: Tuple[Tuple[str, int], ...] = ()  # (method, seeds) where it differs from the cell's

    @property
    def name(self) -> str:
        return cell_name(self.regime, self.schedule)

    def seeds_of(self, method: str) -> int:
        return dict(self.method_seeds).get(method, self.seeds)


def cell_name(regime: str, schedule: int) -> str:
    """The folder of a cell's runs (``OUT/runs/<cell>/``), e.g. ``fashion-x1``."""
    return f"{regime}-x{schedule}"


@dataclass(frozen=True)
class Preset:
    """The scale of a study: data, the base schedule, evaluation, and its cells."""

    samples_per_epoch: int
    epochs: int
    batch_size: int
    train_images: int
    shard_size: int
    test_samples: int
    probe_samples: int
    leak_samples: int
    width: int
    log_every: int
    cells: Tuple[Cell, ...]

    def scaled(self, schedule: int) -> "Preset":
        """This preset at ``schedule`` times the samples per epoch (same epochs: the +tune methods' last epoch
        stays a tenth)."""
        return replace(self, samples_per_epoch=self.samples_per_epoch * schedule)


PRESETS = {
    # the tests: the real trainer and clip_benchmark, a few steps
    "tiny": Preset(samples_per_epoch=256, epochs=2, batch_size=64, train_images=512, shard_size=128,
                   test_samples=200, probe_samples=200, leak_samples=128, width=32, log_every=1,
                   cells=(Cell("fashion", 1, KEY_METHODS, 1), Cell("scenes", 1, KEY_METHODS, 1),
                          Cell("fashion", 2, CORE_METHODS, 1))),
    # see docs/study/README.md for why this scale: 240 steps of batch 128, stock's seed-to-seed sd under 2 points
    # in fashion; scenes at 480 steps (its pilot's choice: docs/study/pilot/); five seeds where a key paired
    # interval needs them, three elsewhere
    "default": Preset(samples_per_epoch=3072, epochs=10, batch_size=128, train_images=30000, shard_size=500,
                      test_samples=10000, probe_samples=5000, leak_samples=512, width=64, log_every=6,
                      cells=(Cell("fashion", 1, (*KEY_METHODS, "elip-text-only", *MASKS), 5,
                                  tuple((name, 3) for name in MASKS)),
                             Cell("scenes", 2, SCENES_METHODS, 3, (("stock", 5), ("elip", 5))),
                             Cell("fashion", 4, CORE_METHODS, 3))),
}
BUDGET_FAMILY = "elip"  # the method whose cost the budgets match


@dataclass
class Run:
    """One (regime, schedule, method, seed) training run and what it needs."""

    method: str
    seed: int
    model: str  # the trainer's --model
    eval_model: str  # the name clip_benchmark builds
    regime: str = ""
    schedule: int = 1
    flags: List[str] = field(default_factory=list)  # extra trainer flags
    samples_per_epoch: int = 0
    train_flops: float = 0.0  # per image of the full schedule
    after: Optional[str] = None  # a method whose run (same seed) this one continues
    leak_model: Optional[str] = None  # the model the leak diagnostic builds, if it runs
    steer_model: Optional[str] = None  # the model the steering diagnostic builds (scenes), if it runs
    pruned_model: Optional[str] = None  # the name clip_benchmark scores it pruned as (eval_model: as it is)
    image_size: int = 0  # the size it trains at

    @property
    def cell(self) -> str:
        return cell_name(self.regime, self.schedule)

    @property
    def key(self) -> str:
        return self.key_of(self.method)

    def key_of(self, method: str) -> str:
        """The key of ``method``'s run in this one's cell, with this seed."""
        return f"{self.cell}/{method}/seed{self.seed}"


@dataclass(frozen=True)
class Budgets:
    """What some methods are sized by (their flags' ``{...}`` fields)."""

    drop_prob: float  # patch dropout keeping ELIP's average tokens per layer
    matched_samples: int  # samples per epoch at ELIP's training FLOPs, whole batches
    matched_fraction: float
    low_res_size: int


class Planner:
    """Runs of the study's models, with their training FLOPs per image (text tower included; each model built
    once) and the budgets, computed at construction."""

    def __init__(self, configs, preset: Preset, regime: str = "", schedule: int = 1):
        self.configs, self.preset, self.regime, self.schedule = configs, preset, regime, schedule
        stock = self.build(configs.base)
        self.text = text_train_flops(stock)
        self.stock_cost, self.depth = TowerCost.of(stock.visual), len(openclip.blocks(stock.visual))
        self.model = lru_cache(maxsize=None)(self._model)
        self.budgets = self._budgets()

    @staticmethod
    def build(name: str):
        logging.disable(logging.WARNING)  # "No pretrained weights loaded": none are wanted here
        try:
            return open_clip.create_model(name)
        finally:
            logging.disable(logging.NOTSET)

    def _model(self, name: str) -> float:
        """A training step of ``name``: its family's cost model, or a stock tower's."""
        visual = self.build(name).visual
        cost = TowerCost.of(visual)
        blocks = registry.blocks_in(self.configs.configs[name])
        if blocks:
            return float(registry.by_block(blocks[0]).flops(visual, cost, True) + self.text)
        return self.tokens(cost, cost.num_patches + 1, len(openclip.blocks(visual)))

    def tokens(self, cost: TowerCost, tokens: int, depth: int) -> float:
        return float(predict_plain(cost, (tokens,) * depth, True) + self.text)

    def _budgets(self) -> Budgets:
        """ELIP's cost on the study's model, as a patch-dropout rate and as a number of samples."""
        configs, preset = self.configs, self.preset
        reference = configs.trained(m.catalogue()[BUDGET_FAMILY])
        visual = self.build(reference).visual
        depth = len(openclip.blocks(visual))
        tokens = registry.FAMILIES[BUDGET_FAMILY].layer_tokens(visual)
        prob, _ = random_drop_prob(TowerCost.of(visual).num_patches, sum(tokens) / depth)
        ratio = self.model(reference) / self.model(configs.base)
        matched = round(preset.samples_per_epoch * ratio / preset.batch_size) * preset.batch_size
        return Budgets(drop_prob=prob, matched_samples=max(preset.batch_size, matched),
                       matched_fraction=matched / preset.samples_per_epoch, low_res_size=configs.low_res_size)

    def samples(self, method: m.Method) -> int:
        """Samples per epoch of ``method``: the preset's, elip's budget, or a fraction of the preset's in whole
        batches (at least one)."""
        preset = self.preset
        if method.samples == "full":
            return preset.samples_per_epoch
        if method.samples == "matched":
            return self.budgets.matched_samples
        if isinstance(method.samples, (int, float)) and 0 < method.samples <= 1:
            return max(1, round(preset.samples_per_epoch * method.samples / preset.batch_size)) * preset.batch_size
        raise ValueError(f"method {method.name}: samples must be 'full', 'matched' or a fraction in (0, 1], got "
                         f"{method.samples!r}")

    def run(self, method: m.Method, seed: int) -> Run:
        configs, fields = self.configs, asdict(self.budgets)
        leak_source = method if method.family else m.catalogue().get(method.continues or "")
        steer_source = m.catalogue()[method.continues] if method.continues else method  # the selecting model
        run = Run(method.name, seed, configs.trained(method), configs.evaluated(method), self.regime, self.schedule,
                  flags=[flag.format(**fields) for flag in method.flags],
                  samples_per_epoch=self.samples(method),
                  after=method.continues,
                  leak_model=configs.trained(leak_source) if method.leak and leak_source else None,
                  steer_model=(configs.trained(leak_source) if method.leak and leak_source else
                               configs.trained(steer_source) if method.steer else None),
                  pruned_model=configs.pruned(method))
        run.train_flops = COSTS[method.cost](self, method, run)
        forced = "--force-image-size" in run.flags
        run.image_size = int(_flag(run, "--force-image-size")) if forced else \
            configs.configs[run.model]["vision_cfg"]["image_size"]
        return run


def _flag(run: Run, name: str) -> str:
    return run.flags[run.flags.index(name) + 1]


def _patch_dropout(planner: Planner, method: m.Method, run: Run) -> float:
    cost = planner.stock_cost
    patches = max(1, int(cost.num_patches * (1 - float(_flag(run, "--force-patch-dropout")))))
    return planner.tokens(cost, patches + 1, planner.depth)


def _continued(planner: Planner, method: m.Method, run: Run) -> float:
    tune = 1 / planner.preset.epochs
    earlier = planner.run(m.catalogue()[method.continues], run.seed)
    return (1 - tune) * earlier.train_flops + tune * planner.model(run.model)


COSTS: Dict[str, Callable[[Planner, m.Method, Run], float]] = {
    m.MODEL: lambda planner, method, run: planner.model(run.model),
    m.SAMPLES: lambda planner, method, run: (planner.model(run.model) * run.samples_per_epoch
                                             / planner.preset.samples_per_epoch),
    m.PATCH_DROPOUT: _patch_dropout,
    m.IMAGE_SIZE: lambda planner, method, run: planner.model(run.eval_model),
    m.CONTINUED: _continued,
}


def plan(methods: Sequence[m.Method], seeds: "Sequence[int] | Callable[[str], Sequence[int]]", configs,
         preset: Preset, regime: str = "", schedule: int = 1) -> tuple:
    """Every (method, seed) run of one cell, seed by seed; and the budgets. ``seeds``: every method's, or a
    method name's. ``preset`` is already scaled to the schedule."""
    planner = Planner(configs, preset, regime, schedule)
    seeds_of = seeds if callable(seeds) else (lambda name: seeds)
    every = sorted({seed for method in methods for seed in seeds_of(method.name)})
    return [planner.run(method, seed) for seed in every for method in methods
            if seed in seeds_of(method.name)], planner.budgets
