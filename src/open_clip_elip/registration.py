"""OpenCLIP glue, all of it: the ``-elip`` model configs and the model-class hook.

OpenCLIP 3.3 registers JSON configs (``add_model_config``) but picks the model class by
hard-coded rules (``model_class = CLIP`` in ``open_clip.factory.create_model``). ``register``
adds our configs and points that ``CLIP`` name at ``build_clip``, which builds an ``ElipCLIP``
for any config that carries an ``elip_cfg`` block and a stock ``CLIP`` otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

from open_clip import factory
from open_clip.model import CLIP

from .model import ElipCLIP

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
EXTRA_CONFIGS_ENV = "OPEN_CLIP_ELIP_CONFIGS"  # more config files or folders, os.pathsep-separated


def build_clip(**model_cfg) -> CLIP:
    """``create_model``'s constructor for non-custom-text models: ``ElipCLIP`` if ``elip_cfg`` is given."""
    model_class = ElipCLIP if "elip_cfg" in model_cfg else CLIP
    return model_class(**model_cfg)


def register() -> None:
    """Make ``open_clip`` know the ELIP models (idempotent)."""
    paths = [MODEL_CONFIG_DIR] + [Path(p) for p in os.environ.get(EXTRA_CONFIGS_ENV, "").split(os.pathsep) if p]
    for path in paths:
        if path not in factory._MODEL_CONFIG_PATHS:
            factory.add_model_config(path)
    factory.CLIP = build_clip
