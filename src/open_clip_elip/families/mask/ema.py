"""The EMA image tower of ``attentive`` / ``attentive_text`` (A-CLIP): its momentum schedule, its update after
each optimizer step, and the export of a ``-mask`` state dict to its stock twin.

The model never sees the optimizer, so the update rides on one global ``torch.optim`` step post-hook: after any
optimizer step, every live EMA tower (held weakly) whose masked tower is in training mode and whose parameters
that optimizer holds is moved towards the masked tower once. So it is once per optimizer step whatever
``--accum-freq`` is (the trainer's extra forward passes step nothing), never in eval mode, skipped with the step
when AMP's GradScaler skips it, and the same on every DDP rank (the same weights and step count everywhere).
The step count is a buffer, saved in checkpoints, so that ``--resume`` continues the schedule."""
from __future__ import annotations

import math
import weakref
from typing import Mapping, Optional

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

EMA_MODULE = "ema"  # the EMA tower's name inside the masked tower (state-dict keys ``visual.ema.*``)
EMA_STEPS = "ema_steps"  # the step-count buffer of the masked tower (``visual.ema_steps``)
BASE_MOMENTUM = 0.996  # A-CLIP's
_TOWERS: "weakref.WeakSet" = weakref.WeakSet()  # masked towers with an EMA tower
_HOOK = []  # the global step hook's handle, registered once


def momentum(steps: torch.Tensor, base: float, total_steps: Optional[int]) -> torch.Tensor:
    """A-CLIP's momentum after ``steps`` updates: ``1 - (1 - base) (cos(pi t / T) + 1) / 2`` rising from ``base``
    to 1 over ``total_steps`` (then 1); ``base`` throughout when ``total_steps`` is None. A tensor (no host sync)."""
    if total_steps is None:
        return torch.full_like(steps, base, dtype=torch.float32)
    progress = steps.float().clamp(max=total_steps) / total_steps
    return 1.0 - (1.0 - base) * (torch.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(ema: torch.nn.Module, online: torch.nn.Module, m: torch.Tensor) -> None:
    """``ema = m ema + (1 - m) online`` for every parameter; buffers copied. ``online``'s own submodule ``ema``
    (if any) is not part of the pairing: parameters are paired by name."""
    online_parameters = dict(online.named_parameters())
    for name, parameter in ema.named_parameters():
        parameter.lerp_(online_parameters[name].to(parameter.dtype), (1.0 - m).to(parameter.device, parameter.dtype))
    online_buffers = dict(online.named_buffers())
    for name, buffer in ema.named_buffers():
        buffer.copy_(online_buffers[name])


def track(tower) -> None:
    """Update ``tower.ema`` after every optimizer step that holds ``tower``'s parameters (weakly held)."""
    _TOWERS.add(tower)
    if not _HOOK:
        _HOOK.append(register_optimizer_step_post_hook(_after_step))


def _after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for tower in list(_TOWERS):
        ema = getattr(tower, EMA_MODULE, None)
        if ema is None or not tower.training:
            continue
        if any(id(p) in held for p in tower.parameters() if p.requires_grad):
            tower.step_ema()


def stock_state_dict(state_dict: Mapping) -> dict:
    """A ``-mask`` state dict (or a trainer checkpoint's ``state_dict``, ``module.`` prefix or not) as its stock
    twin loads it: without the EMA tower's weights (``visual.ema.*``) and step count (``visual.ema_steps``)."""
    def ours(key: str) -> bool:
        parts = key.split(".")
        return any(parts[i] == "visual" and parts[i + 1] in (EMA_MODULE, EMA_STEPS) for i in range(len(parts) - 1))

    return {key: value for key, value in state_dict.items() if not ours(key)}
