import pytest
import torch
from torch import nn

from ctm_core.ema import ema_update


def _pair():
    ema, model = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        for p in ema.parameters():
            p.fill_(0.0)
        for p in model.parameters():
            p.fill_(1.0)
    return ema, model


def test_ema_moves_a_small_step_towards_the_weights():
    ema, model = _pair()
    ema_update(ema, model, rate=0.9)
    # ema ← 0.9·ema + 0.1·θ: the inverted update of the original would give 0.9.
    assert all(torch.allclose(p, torch.tensor(0.1)) for p in ema.parameters())
    ema_update(ema, model, rate=0.9)
    assert all(torch.allclose(p, torch.tensor(0.19)) for p in ema.parameters())


def test_rate_zero_copies_and_model_is_untouched():
    ema, model = _pair()
    ema_update(ema, model, rate=0.0)
    assert all(torch.equal(p, torch.ones_like(p)) for p in ema.parameters())
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.parameters())


def test_bad_rate():
    ema, model = _pair()
    with pytest.raises(ValueError):
        ema_update(ema, model, rate=1.0)


def test_mismatched_models_and_bad_rates_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"EMA rate must be in \[0, 1\), got 1.0"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2), 1.0)
    with pytest.raises(ValueError, match=r"shorter|longer"):  # zip(strict=True): not silently partial
        ema_update(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 2), 0.5)
