"""OpenCLIP glue, all of it: the ``-elip`` model configs and two hooks in ``open_clip.factory``.

OpenCLIP 3.3 registers JSON configs (``add_model_config``) but picks the model class by
hard-coded rules (``model_class = CLIP`` in ``create_model``). ``register`` adds our configs,
points that ``CLIP`` name at ``build_clip`` (an ``ElipCLIP`` for any config carrying an
``elip_cfg`` block, the stock ``CLIP`` otherwise), and wraps ``create_model`` so that a per-call
``elip_cfg={...}`` overrides only the options it names (OpenCLIP would replace the whole block).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import open_clip
from open_clip import factory
from open_clip.model import CLIP

from .model import ElipCLIP

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
EXTRA_CONFIGS_ENV = "OPEN_CLIP_ELIP_CONFIGS"  # more config files or folders, os.pathsep-separated


def build_clip(**model_cfg) -> CLIP:
    """``create_model``'s constructor for non-custom-text models: ``ElipCLIP`` if ``elip_cfg`` is given."""
    model_class = ElipCLIP if "elip_cfg" in model_cfg else CLIP
    return model_class(**model_cfg)


def merge_elip_options(create_model):
    """Wrap ``create_model`` so that ``elip_cfg={...}`` is merged over the named config's own block."""

    @functools.wraps(create_model)
    def create_model_with_elip_options(model_name, *args, **kwargs):
        options = kwargs.get("elip_cfg")
        if isinstance(options, dict):
            config = factory.get_model_config(model_name.replace("/", "-")) or {}
            kwargs["elip_cfg"] = {**(config.get("elip_cfg") or {}), **options}
        return create_model(model_name, *args, **kwargs)

    create_model_with_elip_options.merges_elip_options = True
    return create_model_with_elip_options


def register() -> None:
    """Make ``open_clip`` know the ELIP models (idempotent)."""
    paths = [MODEL_CONFIG_DIR] + [Path(p) for p in os.environ.get(EXTRA_CONFIGS_ENV, "").split(os.pathsep) if p]
    for path in paths:
        if path not in factory._MODEL_CONFIG_PATHS:
            factory.add_model_config(path)
    factory.CLIP = build_clip
    if not getattr(factory.create_model, "merges_elip_options", False):
        factory.create_model = open_clip.create_model = merge_elip_options(factory.create_model)
