"""The family registry: each token-reduction family (ELIP, EViT, ToMe, or one of a user's) declares itself
once, as a ``Family``; OpenCLIP's registration, the generated ``-<family>`` configs, the benchmark's rows and
the study's methods are all derived from this table. ``open_clip_elip.register_family`` adds one."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

from .costs import TowerCost
from .openclip import CLIP, VisionTransformer
from .towers import FamilyCLIP

STOCK = "stock"  # the output equals the stock model's (same weights)
REDUCES = "reduces"  # tokens are reduced
BEHAVIOURS = (STOCK, REDUCES)
TRAIN, INFERENCE = "train", "inference"
# OpenCLIP's ViTs a family gets a -<family> twin of, generated from their stock configs
STOCK_TWINS = ("ViT-S-16", "ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-B-16-quickgelu", "ViT-B-32-quickgelu",
               "ViT-L-14-quickgelu")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Variant:
    """A named setting of a family's options that the benchmark shows as a row of its own."""

    name: str
    options: Mapping
    mode: str = TRAIN  # TRAIN: a training step, guided if the family takes captions; INFERENCE: forward only


@dataclass(frozen=True)
class Family:
    """One token-reduction family, declared in one place.

    name: model names end in ``-<name>`` (``ViT-B-16-tome``); lower case.
    model_class: a ``FamilyCLIP`` subclass; its ``config_block`` (e.g. ``tome_cfg``) selects it in a model config.
    apply: ``apply(model, **options)`` turns a stock OpenCLIP ``CLIP`` into ``model_class`` in place.
    default_options: a stock model config -> the config block of its ``-<name>`` twin (the family's defaults,
        sized to that architecture).
    without_caption / at_inference: ``STOCK`` if the model's output then equals the stock model's, ``REDUCES``
        if tokens are reduced (without a caption in training mode; in eval mode).
    takes_caption: the image tower's forward takes the paired captions' embeddings (``text_features=``).
    layer_tokens: the image tower -> tokens entering each layer's attention on the training path.
    flops: ``(image tower, TowerCost, train)`` -> FLOPs per image of the tower (training step or inference
        forward), in ``costs.TowerCost``'s counting.
    variants: settings the benchmark shows besides the defaults.
    pruned_at_inference: options under which a model that keeps every token at inference (``at_inference``
        ``STOCK``) reduces them without a caption, for scoring a checkpoint pruned (the study's
        ``zeroshot_top1_pruned``); None: no such mode, or none needed (``at_inference`` is ``REDUCES``).
    twins: stock configs that get a generated ``-<name>`` twin.
    """

    name: str
    model_class: type
    apply: Callable[..., CLIP]
    default_options: Callable[[dict], dict]
    without_caption: str
    at_inference: str
    layer_tokens: Callable[[VisionTransformer], Tuple[int, ...]]
    flops: Callable[[VisionTransformer, TowerCost, bool], int]
    takes_caption: bool = False
    variants: Tuple[Variant, ...] = ()
    pruned_at_inference: Optional[Mapping] = None
    twins: Tuple[str, ...] = STOCK_TWINS
    description: str = ""

    @property
    def config_block(self) -> str:
        return self.model_class.config_block

    def check(self) -> None:
        """ValueError naming what is wrong with this declaration."""
        if not NAME.match(self.name):
            raise ValueError(f"family name {self.name!r}: use lower case letters, digits and '_' (it becomes the "
                             f"model-name suffix '-{self.name}')")
        if not (isinstance(self.model_class, type) and issubclass(self.model_class, FamilyCLIP)):
            raise ValueError(f"family {self.name!r}: model_class must subclass open_clip_elip.FamilyCLIP")
        if not self.config_block.endswith("_cfg"):
            raise ValueError(f"family {self.name!r}: {self.model_class.__name__}.config_block must be set, e.g. "
                             f"'{self.name}_cfg'")
        for field, value in (("without_caption", self.without_caption), ("at_inference", self.at_inference)):
            if value not in BEHAVIOURS:
                raise ValueError(f"family {self.name!r}: {field} must be one of {list(BEHAVIOURS)}, got {value!r}")
        if self.pruned_at_inference is not None and self.at_inference == REDUCES:
            raise ValueError(f"family {self.name!r}: pruned_at_inference is for families whose models keep every "
                             "token at inference (at_inference STOCK); this one reduces them already")

    @property
    def scored_pruned(self) -> Optional[Mapping]:
        """Options to score a checkpoint with tokens reduced at inference: ``{}`` (as it is), those of
        ``pruned_at_inference``, or None (it cannot be)."""
        return {} if self.at_inference == REDUCES else self.pruned_at_inference


FAMILIES: Dict[str, Family] = {}  # name -> family, in registration order


def add(family: Family) -> Family:
    """Put ``family`` in the table (``registration.register_family`` also tells OpenCLIP); a family of the same
    name is replaced, another family's config block is refused."""
    family.check()
    for other in FAMILIES.values():
        if other.name != family.name and other.config_block == family.config_block:
            raise ValueError(f"family {family.name!r}: config block '{family.config_block}' is family "
                             f"{other.name!r}'s already; give {family.model_class.__name__} another config_block")
    FAMILIES[family.name] = family
    return family


def by_block(config_block: str) -> Family:
    return next(f for f in FAMILIES.values() if f.config_block == config_block)


def blocks_in(config: Mapping) -> list:
    """The family config blocks a model config carries."""
    return [f.config_block for f in FAMILIES.values() if f.config_block in config]


def family_part() -> re.Pattern:
    """``-<family>`` and anything after it at the end of a model name (``ViT-B-16-elip-first-layer``)."""
    names = "|".join(re.escape(name) for name in sorted(FAMILIES, key=len, reverse=True))
    return re.compile(rf"-({names})(-.*)?$")


def twin_config(family: Family, stock: dict) -> dict:
    """The ``-<family>`` twin of a stock model config: the same config plus the family's default block."""
    return {**stock, family.config_block: family.default_options(stock)}
