import math

import pytest
import torch

from ctm_core.checkpoint import build_model
from ctm_core.config import NetworkConfig
from ctm_core.parametrization import c_noise, edm_scalings


def _model(sigma_data: float = 0.5):
    torch.manual_seed(0)
    return build_model(NetworkConfig(width=32, depth=2), sigma_data)


def test_scalings_match_edm_table():
    t = torch.tensor([0.002, 0.5, 10.0], dtype=torch.float64)
    c_skip, c_out, c_in = edm_scalings(t, 0.5)
    for i, ti in enumerate(t.tolist()):
        assert math.isclose(c_skip[i].item(), 0.25 / (ti**2 + 0.25), rel_tol=1e-12)
        assert math.isclose(c_out[i].item(), ti * 0.5 / math.sqrt(ti**2 + 0.25), rel_tol=1e-12)
        assert math.isclose(c_in[i].item(), 1 / math.sqrt(ti**2 + 0.25), rel_tol=1e-12)
    # At t → 0 the skip path carries x and the network's share vanishes: D(x, 0) = x.
    assert math.isclose(c_skip[0].item(), 1.0, rel_tol=1e-4)


def test_c_noise_is_quarter_log():
    t = torch.tensor([0.002, 1.0, 10.0])
    torch.testing.assert_close(c_noise(t), 0.25 * t.log())


def test_boundary_condition_jump_to_same_time_is_identity_exactly():
    model = _model()
    x = torch.randn(1000) * 5
    for t in [0.002, 0.3, 10.0]:
        tt = torch.tensor(t)
        assert torch.equal(model.jump(x, tt, tt), x)


def test_jump_formula_and_denoiser():
    model = _model(1.3)
    x = torch.randn(64)
    t, s = torch.tensor(4.0), torch.tensor(0.5)
    g = model.g(x, t, s)
    torch.testing.assert_close(model.jump(x, t, s), (s / t) * x + (1 - s / t) * g)
    torch.testing.assert_close(model.denoise(x, t), model.g(x, t, t))


def test_network_sees_target_time():
    model = _model()
    x = torch.randn(16)
    t = torch.tensor(5.0)
    assert not torch.allclose(model.g(x, t, torch.tensor(0.002)), model.g(x, t, torch.tensor(2.0)))


def test_jump_near_t_is_an_euler_step():
    """G(x, t, t − h) = x + (−h)·(x − g(x, t, t − h))/t, and g(·, t, t − h) → D as h → 0."""
    model = _model().double()
    x = torch.randn(32, dtype=torch.float64)
    t = torch.tensor(2.0, dtype=torch.float64)
    h = 1e-4
    euler = x - h * (x - model.denoise(x, t)) / t
    torch.testing.assert_close(model.jump(x, t, t - h), euler, rtol=1e-6, atol=1e-7)


def _hidden_x_spread(net: torch.nn.Module) -> list[float]:
    """Per SiLU layer: the mean over units of the activations' spread across x ∈ [−3, 3] at t = s = 0.1."""
    x = torch.linspace(-3, 3, 61)
    noise = c_noise(torch.full_like(x, 0.1))
    h = torch.cat([x[:, None], net.embed(noise), net.embed(noise)], dim=1)
    spreads = []
    for layer in net.mlp:
        h = layer(h)
        if isinstance(layer, torch.nn.SiLU):
            spreads.append(h.std(dim=0).mean().item())
    return spreads


@pytest.mark.parametrize("init", ["pytorch", "he"])
def test_initial_signal_through_the_layers(init: str) -> None:
    """PyTorch's default init shrinks the x-signal ~4-fold a layer (the plateau of docs/RESULTS.md
    section 5); He initialisation keeps it."""
    for seed in range(3):
        torch.manual_seed(seed)
        spreads = _hidden_x_spread(build_model(NetworkConfig(init=init), 1.0).net)
        assert len(spreads) == 4
        if init == "he":
            assert min(spreads) > 0.4 * spreads[0] > 0.05, spreads
        else:
            assert spreads[-1] < 0.1 * spreads[0], spreads
