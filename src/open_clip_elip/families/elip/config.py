"""ELIP options: the model JSON's ``elip_cfg`` block, typed by ``ELIP_OPTIONS`` (``core.options``) and checked
against the tower when the model is built."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

from ...core.options import Boolean, Choice, Count, Default, ListOf, Ratio, check_options

SCORINGS = ("lookahead", "first_layer")
FUSIONS = ("paper", "norm_matched")
CAPTION_PAIRINGS = ("paired", "other_row")
PAPER_KEEP_RATIOS = (0.9, 0.65, 0.4)
ELIP_OPTIONS = {
    "layout": Default(ListOf(Count(1))),
    "keep_ratios": ListOf(Ratio()),
    "lam": Ratio(closed_low=True),
    "merge": Boolean(),
    "scoring": Choice(SCORINGS),
    "prune_without_text": Boolean(),
    "fusion": Choice(FUSIONS),
    "caption_pairing": Choice(CAPTION_PAIRINGS),
}


@dataclass(frozen=True)
class ElipConfig:
    """Options of ELIP's text-guided token pruning and merging.

    layout: layers per block; ``None`` scales the paper's 2/2/6/2 to the depth (4/4/12/4 for 24).
    keep_ratios: per pruned block (II, III, ...), share of the original token count kept.
    lam: weight of the vision CLS in the fused scoring query (1 = vision only, 0 = text only).
    merge: merge the pruned tokens into one attention-weighted token (False: prune only).
    scoring: ``lookahead`` (the paper's: CLS attention at the block's last layer after a
        no-grad pass through the block) or ``first_layer`` (CLS attention of its first layer).
    prune_without_text: also prune when no caption is given, vision-only (``lam = 1``);
        an inference-time option, off by default so that unguided outputs equal the stock model's.
    fusion: ``paper`` (the paper's ``(1 - lam) * text + lam * CLS``) or ``norm_matched`` (ours: the
        projected text term is rescaled to the CLS token's norm first, so that ``lam`` weighs the two
        equally sized terms).
    caption_pairing: ``paired`` (image i guided by caption i) or ``other_row`` (an ablation: image i
        guided by caption ``(i + 1) mod B`` of the same batch, never its own; needs a batch of 2 or more).
    """

    layout: Optional[Tuple[int, ...]] = None
    keep_ratios: Tuple[float, ...] = PAPER_KEEP_RATIOS
    lam: float = 0.8
    merge: bool = True
    scoring: str = "lookahead"
    prune_without_text: bool = False
    fusion: str = "paper"
    caption_pairing: str = "paired"

    def __post_init__(self):
        """Every field checked against ``ELIP_OPTIONS`` (ValueError naming it), lists stored as tuples."""
        for name, value in check_options("elip_cfg", ELIP_OPTIONS, dataclasses.asdict(self)).items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_options(cls, options: "ElipConfig | Mapping[str, Any] | None" = None, **overrides) -> "ElipConfig":
        """Build from a config, a JSON dict (``elip_cfg``) or keywords; unknown keys raise ValueError."""
        if isinstance(options, ElipConfig):
            options = dataclasses.asdict(options)
        return cls(**check_options("elip_cfg", ELIP_OPTIONS, {**(options or {}), **overrides}))

    def resolved(self, depth: int, num_tokens: Sequence[int]) -> "ElipConfig":
        """Check against a ViT of ``depth`` layers whose transformer sees ``num_tokens``
        tokens (CLS included; one count per mode, e.g. with and without patch dropout),
        and return the config with its layout filled in."""
        layout = self.layout if self.layout is not None else scaled_paper_layout(depth)
        if sum(layout) != depth:
            raise ValueError(
                f"elip_cfg.layout {list(layout)} sums to {sum(layout)} layers but the vision tower has "
                f"{depth}; give layers per block that sum to {depth}")
        ratios = self.keep_ratios
        if len(ratios) != len(layout) - 1:
            raise ValueError(
                f"elip_cfg.keep_ratios needs one ratio per pruned block ({len(layout) - 1} for layout "
                f"{list(layout)}), got {list(ratios)}")
        if any(later > earlier for earlier, later in zip(ratios, ratios[1:])):
            raise ValueError(f"elip_cfg.keep_ratios must not increase from block to block, got {list(ratios)}")
        for n in num_tokens:
            if int(n * ratios[-1]) < 1:
                raise ValueError(
                    f"elip_cfg.keep_ratios: {ratios[-1]} of {n} tokens keeps fewer than 1 token; "
                    f"use a last ratio of at least {1 / n:.4f}")
        return dataclasses.replace(self, layout=tuple(layout), keep_ratios=tuple(ratios))


def scaled_paper_layout(depth: int) -> Tuple[int, ...]:
    if depth % 6:
        raise ValueError(
            f"elip_cfg.layout: no default layout for a {depth}-layer ViT (the paper's 2/2/6/2 scales to "
            f"depths divisible by 6); give one, e.g. \"layout\": [...] summing to {depth}")
    unit = depth // 6  # the paper's 2/2/6/2 is 1/6, 1/6, 1/2, 1/6 of 12 layers
    return (unit, unit, 3 * unit, unit)
