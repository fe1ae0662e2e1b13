"""The study's methods as data: one row each. A row names its family and options (or none: the stock model),
its extra trainer flags, the run it continues, how its training cost is counted and how it is evaluated;
``plan`` turns rows into runs. Adding a method is adding a row; a registered family without a row gets one with
its defaults (``catalogue``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple, Union

from ..core.registry import FAMILIES

# how a row's training FLOPs per image are counted (plan.COSTS)
MODEL, SAMPLES, PATCH_DROPOUT, IMAGE_SIZE, CONTINUED = "model", "samples", "patch_dropout", "image_size", "continued"


@dataclass(frozen=True)
class Method:
    """One method of the study.

    family: a registered family (``core.registry``) whose model config (``<base>-<name>``: the family's defaults
        for the base model, then ``options``) is trained; None: the stock base model.
    flags: extra trainer flags; ``{drop_prob}``, ``{low_res_size}`` are filled from the plan's budgets.
    samples: ``full`` (the preset's samples per epoch), ``matched`` (ELIP's training FLOPs, whole batches) or a
        fraction of the preset's samples per epoch (whole batches: a rung of the stock compute ladder).
    continues: a method whose run (same seed) this one continues for its last epoch (``--resume``; a checkpoint
        of another image size is resized first, ``open_clip_elip.resize``).
    cost: how training FLOPs are counted: ``model`` (the model's cost model), ``samples`` (stock per sample),
        ``patch_dropout`` / ``image_size`` (a stock tower at the tokens its flags leave), ``continued`` (the run
        it continues, then this model for the last epoch).
    eval_image_size: evaluated by a stock config at this image size (``<base>-<name>``), not the trained one.
    leak: run the leak diagnostic on the checkpoint (an ELIP-family model: its own, or the continued run's); on
        scenes checkpoints the steering diagnostic too.
    steer: run the steering diagnostic on scenes checkpoints (without the leak diagnostic): a family whose kept
        patches ``open_clip_elip.steering`` reads (``-mask``), as its own model or the continued run's.
    """

    name: str
    description: str
    family: Optional[str] = None
    options: Mapping = field(default_factory=dict)
    flags: Tuple[str, ...] = ()
    samples: Union[str, float] = "full"
    continues: Optional[str] = None
    cost: str = MODEL
    eval_image_size: Optional[str] = None
    leak: bool = False
    steer: bool = False


METHODS: Tuple[Method, ...] = (
    Method("stock", "the plain model, full schedule"),
    Method("stock-matched", "the plain model, fewer samples: the training FLOPs of elip", samples="matched",
           cost=SAMPLES),
    Method("stock-0.67", "the plain model on 0.67x the samples (a rung of the stock compute ladder)", samples=2 / 3,
           cost=SAMPLES),
    Method("stock-0.5", "the plain model on half the samples (a rung of the stock compute ladder)", samples=0.5,
           cost=SAMPLES),
    Method("elip", "ELIP as in the paper (look-ahead scoring, lam 0.8, merge)", family="elip", leak=True),
    Method("elip-first-layer", "ELIP scored by the first layer of each block (no look-ahead)", family="elip",
           options={"scoring": "first_layer"}, leak=True),
    Method("elip-prune-only", "ELIP without the merged token (the paper's ablation)", family="elip",
           options={"merge": False}, leak=True),
    Method("elip+tune", "elip's run, its last epoch continued unpruned under the stock name", continues="elip",
           cost=CONTINUED, leak=True),
    Method("evit", "EViT, keep rate 0.7 at the 4th/7th/10th of 12 layers scaled to depth (prunes at inference too)",
           family="evit"),
    Method("flip-budget", "patch dropout keeping ELIP's average tokens per layer",
           flags=("--force-patch-dropout", "{drop_prob:.4f}"), cost=PATCH_DROPOUT),
    Method("flip-50", "patch dropout 0.5 (OpenCLIP's recommended setting)", flags=("--force-patch-dropout", "0.5"),
           cost=PATCH_DROPOUT),
    Method("flip-budget+tune", "flip-budget's run, its last epoch continued unmasked (FLIP's protocol)",
           continues="flip-budget", cost=CONTINUED),
    Method("low-res", "training and evaluation at a lower image size, about ELIP's token budget",
           flags=("--force-image-size", "{low_res_size}"), cost=IMAGE_SIZE, eval_image_size="{low_res_size}"),
    Method("low-res+tune", "low-res's run, its last epoch continued at full size (CLIPA's protocol; positional "
           "embedding resized as OpenCLIP does)", continues="low-res", cost=CONTINUED),
    Method("elip-vision-only", "ELIP scored by the image's own CLS only (lam 1)", family="elip",
           options={"lam": 1.0}, leak=True),
    Method("elip-random-caption", "ELIP guided by another row's caption of the batch (ablation)", family="elip",
           options={"caption_pairing": "other_row"}, leak=True),
    Method("elip-balanced", "ELIP with the text term rescaled to the CLS norm (ours, not the paper's)",
           family="elip", options={"fusion": "norm_matched"}, leak=True),
    Method("elip-text-only", "ELIP scored by the caption alone (lam 0, text term at the CLS norm; ours)",
           family="elip", options={"lam": 0.0, "fusion": "norm_matched"}, leak=True),
    Method("tome", "ToMe, r tokens merged per layer, r closest to ELIP's token-layer budget (merges at inference too)",
           family="tome"),
    Method("mask-random", "FLIP's random input mask: half the patches kept, in training only", family="mask",
           options={"strategy": "random"}, steer=True),
    Method("mask-random+tune", "mask-random's run, its last epoch unmasked (FLIP's tune)", family="mask",
           options={"strategy": "random", "keep_ratio": 1.0}, steer=True, continues="mask-random", cost=CONTINUED),
    Method("mask-center", "GLIP's centre-biased random input mask: half the patches kept, in training only",
           family="mask", options={"strategy": "center"}, steer=True),
    Method("mask-center+tune", "mask-center's run, its last epoch unmasked (FLIP's tune)", family="mask",
           options={"strategy": "center", "keep_ratio": 1.0}, steer=True, continues="mask-center", cost=CONTINUED),
    Method("mask-cluster", "E-CLIP's cluster input mask (a per-sample top-k): half the patches kept, in training only",
           family="mask", options={"strategy": "cluster"}, steer=True),
    Method("mask-cluster+tune", "mask-cluster's run, its last epoch unmasked (FLIP's tune)", family="mask",
           options={"strategy": "cluster", "keep_ratio": 1.0}, steer=True, continues="mask-cluster", cost=CONTINUED),
    Method("mask-attentive", "A-CLIP's attentive input mask (an EMA tower's CLS attention over 2x2 cells): about "
           "half the patches kept, in training only", family="mask", options={"strategy": "attentive"}, steer=True),
    Method("mask-attentive+tune", "mask-attentive's run, its last epoch unmasked (FLIP's tune; EMA tower resumed)",
           family="mask", options={"strategy": "attentive", "keep_ratio": 1.0}, steer=True, continues="mask-attentive",
           cost=CONTINUED),
    Method("mask-attentive-text", "the attentive input mask steered by the paired caption (ours)", family="mask",
           options={"strategy": "attentive_text"}, steer=True),
    Method("mask-attentive-text+tune", "mask-attentive-text's run, its last epoch unmasked (FLIP's tune; EMA tower "
           "resumed)", family="mask", options={"strategy": "attentive_text", "keep_ratio": 1.0}, steer=True,
           continues="mask-attentive-text", cost=CONTINUED),
)


# the stock compute ladder: the plain model at 1.0, elip's (about 0.83), 0.67 and 0.5 of its training FLOPs;
# the report reads every other method against it at equal FLOPs (interpolated between rungs, paired by seed)
LADDER = ("stock", "stock-matched", "stock-0.67", "stock-0.5")


def catalogue() -> Dict[str, Method]:
    """Every method by name: the table, then a row with its defaults for each registered family the table does
    not name (a user's family is a study method once it registers)."""
    named = {method.family for method in METHODS if method.family}
    extra = [Method(f.name, f.description or f"the {f.name} family, its defaults", family=f.name)
             for f in FAMILIES.values() if f.name not in named]
    return {method.name: method for method in (*METHODS, *extra)}


def descriptions() -> dict:
    """``{name: what it is}``, in the report's words and order."""
    return {name: method.description for name, method in catalogue().items()}
