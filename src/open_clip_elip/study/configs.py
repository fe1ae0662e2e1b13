"""The study's model configs, one JSON each in ``OUT/configs``: the stock base model, each family method's
config (the family's defaults for the base, then the row's options) and each evaluation-only config."""
from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..core.registry import FAMILIES
from ..demo import model_configs
from .data import REGIMES
from .methods import Method
from .plan import Preset


@dataclass(frozen=True)
class StudyConfigs:
    base: str  # the stock model every method starts from
    configs: Dict[str, dict]  # name -> OpenCLIP model config
    low_res_size: int

    def trained(self, method: Method) -> str:
        """The trainer's ``--model`` of ``method``."""
        return f"{self.base}-{method.name}" if method.family else self.base

    def evaluated(self, method: Method) -> str:
        """The model name clip_benchmark scores ``method``'s checkpoint as."""
        return f"{self.base}-{method.name}" if method.eval_image_size else self.trained(method)

    def pruned(self, method: Method) -> Optional[str]:
        """The model name clip_benchmark scores ``method``'s checkpoint pruned as (None: it cannot be)."""
        options = FAMILIES[method.family].scored_pruned if method.family else None
        if options is None:
            return None
        return f"{self.base}-{method.name}-pruned" if options else self.evaluated(method)

    @property
    def stock(self) -> dict:
        return self.configs[self.base]


def build_configs(args: argparse.Namespace, preset: Preset, methods: Sequence[Method], out: Path,
                  regime: str = "fashion") -> StudyConfigs:
    """Write the configs of ``methods`` in ``regime`` to ``OUT/configs``; an existing file with other contents is
    refused (its runs were made with another model)."""
    if args.model_config:
        stock = json.loads(Path(args.model_config).read_text())
        base = Path(args.model_config).stem
    else:
        shape = REGIMES[regime]
        image_size = shape.image_size or args.image_size
        _, stock = next(iter(model_configs(image_size, patch_size=shape.patch_size, width=preset.width,
                                           head_width=preset.width // 2).items()))
        base = shape.base.format(image_size=image_size)
    vision = stock["vision_cfg"]
    low_res_size = args.low_res_size or _low_res_size(vision["image_size"], vision["patch_size"])
    overrides = {"elip": {"layout": args.layout}} if args.layout else {}  # family -> options from the command line
    configs = {base: stock}
    for method in methods:
        if method.family:
            family = FAMILIES[method.family]
            block = {**family.default_options(stock), **overrides.get(method.family, {}), **method.options}
            configs[f"{base}-{method.name}"] = {**stock, family.config_block: block}
            if family.pruned_at_inference:
                configs[f"{base}-{method.name}-pruned"] = {**stock, family.config_block: {
                    **block, **family.pruned_at_inference}}
        if method.eval_image_size:
            resized = copy.deepcopy(stock)
            resized["vision_cfg"]["image_size"] = int(method.eval_image_size.format(low_res_size=low_res_size))
            configs[f"{base}-{method.name}"] = resized
    folder = out / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        path = folder / f"{name}.json"
        text = json.dumps(cfg, indent=1)
        if path.exists() and path.read_text() != text:
            raise FileExistsError(
                f"{path} holds another model config than this study's: its runs were made with other models. "
                f"Use another --out, or remove {out} to start over")
        path.write_text(text)
    return StudyConfigs(base, configs, low_res_size)


def _low_res_size(image_size: int, patch_size: int) -> int:
    """The largest image size below ``image_size`` whose token count is at most 0.77x (about ELIP's budget)."""
    grid = image_size // patch_size
    target = int(math.sqrt(0.77 * grid * grid))
    return max(1, target) * patch_size
