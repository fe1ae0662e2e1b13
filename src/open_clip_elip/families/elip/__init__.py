"""ELIP: text-guided vision-token pruning and merging (docs/method.md). ``config`` holds its options, ``tokens``
its maths as pure functions, ``model`` the OpenCLIP classes, ``family`` its registry entry."""
from .config import ElipConfig
from .family import FAMILY, elip_layer_tokens, predict_elip
from .model import BlockTrace, ElipCLIP, ElipVisionTransformer, apply_elip

__all__ = ["ElipConfig", "ElipCLIP", "ElipVisionTransformer", "BlockTrace", "apply_elip", "FAMILY",
           "elip_layer_tokens", "predict_elip"]
