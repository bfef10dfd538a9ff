"""Exponential moving averages of network weights."""

import torch
from torch import nn


def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """ema ← r·ema + (1 − r)·θ, in place (r = 0 copies θ; r → 1 freezes the average).

    The original toy implementation had this inverted, (1 − r)·ema + r·θ, so its "EMA" chased θ.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
    # The context in the body, not a decorator: mutation testing (docs/TESTING.md) skips decorated functions.
    with torch.no_grad():
        for avg, param in zip(ema.parameters(), model.parameters(), strict=True):
            avg.lerp_(param, 1.0 - rate)
