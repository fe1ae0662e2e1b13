"""Input masking (docs/masking.md): the patch tokens chosen once, before the first layer, in training only, by
FLIP's random mask, GLIP's centre prior, E-CLIP's cluster mask, A-CLIP's attentive mask (an EMA tower) or the
caption-guided ``attentive_text``. ``select`` holds its maths as pure functions, ``ema`` the EMA tower's upkeep,
``model`` the OpenCLIP classes, ``family`` its registry entry."""
from .ema import stock_state_dict
from .family import FAMILY, predict_mask
from .model import MaskCLIP, MaskConfig, MaskVisionTransformer, apply_mask

__all__ = ["MaskCLIP", "MaskConfig", "MaskVisionTransformer", "apply_mask", "stock_state_dict", "FAMILY",
           "predict_mask"]
