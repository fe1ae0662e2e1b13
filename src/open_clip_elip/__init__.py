"""ELIP (text-guided vision-token pruning and merging) for OpenCLIP.

Importing ``open_clip`` is enough once the package is installed (its start-up hook registers
the ``-elip`` models); ``import open_clip_elip`` does the same explicitly.
"""
from .config import ElipConfig
from .model import BlockTrace, ElipCLIP, ElipVisionTransformer, apply_elip
from .registration import register

__all__ = ["ElipConfig", "ElipCLIP", "ElipVisionTransformer", "BlockTrace", "apply_elip", "register"]
__version__ = "0.1.0"

register()
