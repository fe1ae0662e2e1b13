"""OpenCLIP glue, all of it: every registered family's ``-<family>`` model configs (generated from OpenCLIP's own
stock configs), their pretrained tags, two hooks in ``open_clip.factory`` and one in ``open_clip.push_to_hf_hub``,
each reached through ``core.openclip``.

OpenCLIP 3.3 registers JSON configs (``add_model_config``) but picks the model class by
hard-coded rules (``model_class = CLIP`` in ``create_model``). ``register`` adds the configs,
points that ``CLIP`` name at ``build_clip`` (the family's model class for a config carrying a family's
block, ``elip_cfg``, ``evit_cfg``, ..., the stock ``CLIP`` otherwise), and wraps ``create_model`` so that a
per-call ``elip_cfg={...}`` (or any family's block) overrides only the options it names (OpenCLIP would
replace the whole block). It also gives each family config the pretrained tags of its stock twin
(``register_pretrained_tags``) and makes ``save_for_hf`` / ``push_to_hf_hub`` save a family model's current
options (``save_current_options``). ``register_family`` adds a family to the registry and to OpenCLIP.
"""
from __future__ import annotations

import copy
import functools
import importlib
import os
from pathlib import Path
from typing import Optional, Tuple

from . import fixes, openclip, registry
from .openclip import CLIP
from .registry import Family
from .towers import CREATED_FROM, FamilyCLIP

EXTRA_CONFIGS_ENV = "OPEN_CLIP_ELIP_CONFIGS"  # more config files or folders, os.pathsep-separated
FAMILY_MODULES_ENV = "OPEN_CLIP_ELIP_FAMILIES"  # modules that register a family of a user's, comma-separated
_TAGGED_TWINS: dict = {}  # family model name -> the stock twin whose pretrained tags it was given
_GENERATED: dict = {}  # generated family model name -> its config (a config file of the same name wins)


def register_family(family: Family) -> Family:
    """Register a token-reduction family: ``create_model``, OpenCLIP's trainer, clip_benchmark, the benchmark
    and the study then know it, and every stock ViT in ``family.twins`` gets a ``<twin>-<name>`` config.
    Registering a family of the same name again replaces it. Returns the family."""
    registry.add(family)
    if openclip.model_class() is build_clip:  # OpenCLIP registration done already: the new twins now
        add_twin_configs()
        register_pretrained_tags()
    return family


def add_twin_configs() -> None:
    """A ``<stock>-<family>`` config for each family and each of its stock twins, from OpenCLIP's own stock
    config (never over a config file of the same name)."""
    for family in registry.FAMILIES.values():
        for twin in family.twins:
            configs = openclip.model_configs()
            stock = configs.get(twin)
            name = f"{twin}-{family.name}"
            if stock is None or configs.get(name, _GENERATED.get(name)) is not _GENERATED.get(name):
                continue  # no such stock config here, or a config file of that name
            config = registry.twin_config(family, copy.deepcopy(stock))
            configs[name] = _GENERATED[name] = config
    configs = openclip.model_configs()
    openclip.set_model_configs(dict(sorted(configs.items(), key=lambda kv: openclip.natural_key(kv[0]))))


def build_clip(**model_cfg) -> CLIP:
    """``create_model``'s constructor for non-custom-text models: the model class of the family whose block
    the config carries, the stock ``CLIP`` otherwise. The model keeps the config it was built from
    (``model_config()`` of the family models reports it)."""
    blocks = registry.blocks_in(model_cfg)
    if len(blocks) > 1:
        raise ValueError(f"a model config takes one of {[f.config_block for f in registry.FAMILIES.values()]}, "
                         f"got {blocks}")
    model = (registry.by_block(blocks[0]).model_class if blocks else CLIP)(**model_cfg)
    setattr(model, CREATED_FROM, copy.deepcopy({k: v for k, v in model_cfg.items() if k != "cast_dtype"}))
    return model


def stock_twin(name: str) -> Tuple[Optional[str], str]:
    """The stock model whose pretrained tags the family config ``name`` (``-elip``, ``-evit``, ...) takes, or None
    and why not.

    The twin is the name without its family part (``ViT-B-16-elip`` and ``ViT-B-16-elip-first-layer`` ->
    ``ViT-B-16``; ``ViT-B-16-quickgelu-elip`` -> ``ViT-B-16-quickgelu``); its tags carry over only if the two
    configs are equal once the family block is dropped (so the weights, activation and preprocessing fit)."""
    configs = openclip.model_configs()
    config = configs.get(name) or {}
    blocks = registry.blocks_in(config)
    twin = registry.family_part().sub("", name)
    if not blocks or twin == name:
        return None, f"'{name}' is not a registered family model (-{'/-'.join(registry.FAMILIES)})"
    if twin not in configs:
        return None, f"there is no stock model '{twin}' to take them from"
    if {k: v for k, v in config.items() if k not in blocks} != configs[twin]:
        return None, (f"its config differs from stock '{twin}' beyond {blocks[0]}, so the stock weights need not fit "
                      "(pretrained tags carry over to an otherwise identical config only)")
    if not openclip.pretrained_table().get(twin):
        return None, f"stock '{twin}' has no pretrained tags either"
    return twin, ""


def register_pretrained_tags() -> None:
    """Give every registered family config the pretrained tags of its stock twin (same weights
    and preprocessing, see ``stock_twin``), so that ``pretrained='openai'`` etc. resolve as for the stock name."""
    table = openclip.pretrained_table()
    for name in list(openclip.model_configs()):
        if name in table and name not in _TAGGED_TWINS:
            continue  # tags of OpenCLIP's own
        twin, _ = stock_twin(name)
        if twin:
            table[name] = copy.deepcopy(table[twin])
            _TAGGED_TWINS[name] = twin
        elif name in _TAGGED_TWINS:
            del table[name], _TAGGED_TWINS[name]


def check_pretrained_tag(model_name: str, pretrained) -> None:
    """OpenCLIP's "not a known tag or valid file path" error, with the tags a family model does take."""
    schema, name = openclip.parse_model_name(model_name)
    name = name.replace("/", "-")
    if (not isinstance(pretrained, str) or not pretrained or schema or os.path.isfile(pretrained)
            or openclip.is_pretrained_cfg(name, pretrained)):
        return
    config = openclip.model_configs().get(name) or {}
    if not registry.blocks_in(config):
        return  # not ours: OpenCLIP's own error
    twin, why = stock_twin(name)
    tags = openclip.list_pretrained_tags_by_model(name)
    known = (f"it takes the tags of stock '{twin}': {tags}. Pass one of them or" if twin
             else f"it has no pretrained tags: {why}. Pass")
    raise RuntimeError(f"Pretrained value '{pretrained}' is not a known tag or valid file path for '{name}'; {known} "
                       "the path of a checkpoint file (a stock checkpoint of the same architecture loads as it is)")


def merge_elip_options(create_model):
    """Wrap ``create_model``: a family block given per call (``elip_cfg={...}``, ``tome_cfg={...}``, ...) is
    merged over the named config's own block, family configs know their stock twin's pretrained tags, and an
    unknown tag names the known ones."""

    @functools.wraps(create_model)
    def create_model_with_elip_options(model_name, *args, **kwargs):
        register_pretrained_tags()  # configs added since register() (open_clip.add_model_config) get theirs too
        check_pretrained_tag(model_name, args[0] if args else kwargs.get("pretrained"))
        for block in (family.config_block for family in registry.FAMILIES.values()):
            options = kwargs.get(block)
            if isinstance(options, dict):
                schema, name = openclip.parse_model_name(model_name)
                config = openclip.get_model_config(model_name if schema else name.replace("/", "-")) or {}
                kwargs[block] = {**(config.get(block) or {}), **options}
        return create_model(model_name, *args, **kwargs)

    create_model_with_elip_options.merges_elip_options = True
    return create_model_with_elip_options


def save_current_options(save_config_for_hf):
    """Wrap OpenCLIP's ``save_config_for_hf`` (behind ``save_for_hf`` and ``push_to_hf_hub``): a model config
    carrying the model's family block is saved with the model's current options, so that
    ``create_model('local-dir:...')`` / ``'hf-hub:...'`` rebuilds the model that was saved."""

    @functools.wraps(save_config_for_hf)
    def save_config_with_current_options(model, config_path, model_config=None):
        if isinstance(model, FamilyCLIP) and isinstance(model_config, dict) and model.config_block in model_config:
            model_config = {**model_config, model.config_block: model.options()}
        return save_config_for_hf(model, config_path, model_config=model_config)

    save_config_with_current_options.saves_current_options = True
    return save_config_with_current_options


def register() -> None:
    """Make ``open_clip`` know every registered family's models (idempotent). The modules named in
    ``OPEN_CLIP_ELIP_FAMILIES`` are imported first: a user's family registers there (``register_family``) and is
    then known in every process that imports ``open_clip``, the trainer's and clip_benchmark's included.
    On an OpenCLIP this package cannot serve (``openclip.usable()``), nothing is registered and one warning says
    so: ``open_clip`` then works exactly as without this package."""
    if not openclip.usable():
        return
    for module in filter(None, (m.strip() for m in os.environ.get(FAMILY_MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"{FAMILY_MODULES_ENV} names the module {module!r}, which cannot be imported ({exc}); "
                              "put it on PYTHONPATH (or install its package), or remove it from the variable") from exc
    add_twin_configs()
    paths = [Path(p) for p in os.environ.get(EXTRA_CONFIGS_ENV, "").split(os.pathsep) if p]
    for path in paths:
        if path not in openclip.config_paths():
            openclip.add_model_config(path)
    openclip.set_model_class(build_clip)
    if not getattr(openclip.create_model(), "merges_elip_options", False):
        openclip.set_create_model(merge_elip_options(openclip.create_model()))
    register_pretrained_tags()
    if not getattr(openclip.save_config_for_hf(), "saves_current_options", False):
        openclip.set_save_config_for_hf(save_current_options(openclip.save_config_for_hf()))
    fixes.warn_missing()
