"""Token-reduction families for OpenCLIP: ELIP (text-guided vision-token pruning and merging), EViT, ToMe and the
input-masking methods (``-mask``: FLIP, GLIP, E-CLIP, A-CLIP and a caption-guided mask).

Importing ``open_clip`` is enough once the package is installed (its start-up hook registers the families'
models); ``import open_clip_elip`` does the same explicitly. Layout: ``core`` (shared pieces, the family
registry, the OpenCLIP glue), ``families`` (one module or subpackage per family), and the tools beside them
(``demo``, ``study``, ``bench``, ``shards``, ``evaluate``, ``results``, ``leak``, ``visualize``, ...). The core
imports neither families nor tools; a family imports only the core.
"""
from .core.registration import register, register_family
from .core.registry import FAMILIES, Family, Variant
from .core.towers import FamilyCLIP
from .families.elip import BlockTrace, ElipCLIP, ElipConfig, ElipVisionTransformer, apply_elip
from .families.evit import EvitCLIP, EvitVisionTransformer, apply_evit
from .families.mask import MaskCLIP, MaskVisionTransformer, apply_mask
from .families.tome import TomeCLIP, TomeVisionTransformer, apply_tome

__all__ = ["ElipConfig", "ElipCLIP", "ElipVisionTransformer", "BlockTrace", "apply_elip", "EvitCLIP",
           "EvitVisionTransformer", "apply_evit", "TomeCLIP", "TomeVisionTransformer", "apply_tome", "MaskCLIP",
           "MaskVisionTransformer", "apply_mask", "FamilyCLIP", "Family", "Variant", "FAMILIES", "register",
           "register_family"]
__version__ = "0.1.0"

register()
