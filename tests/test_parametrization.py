import math

import pytest
import torch

from ctm_core.checkpoint import build_model
from ctm_core.config import NetworkConfig
from ctm_core.network import CTMNetwork, MonotoneNetwork, build_network
from ctm_core.parametrization import CTMParametrization, c_noise, edm_scalings

KINDS = ["monotone", "mlp"]


def _model(sigma_data: float = 0.5, kind: str = "monotone", data_mean: float = 0.0) -> CTMParametrization:
    torch.manual_seed(0)
    return build_model(NetworkConfig(kind=kind, width=32, depth=2), sigma_data, data_mean)


def _perturbed(seed: int, data_mean: float = 0.0, kind: str = "monotone") -> CTMParametrization:
    """A model with every weight pushed off its initialisation (for a monotone one, so that the
    units' amplitudes, slopes and offsets and the gate vary with (t, s) as a trained model's do)."""
    torch.manual_seed(seed)
    model = build_model(NetworkConfig(kind=kind, width=32, depth=2, units=16), 0.5, data_mean)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model.requires_grad_(False)


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


@pytest.mark.parametrize("kind", KINDS)
def test_boundary_condition_jump_to_same_time_is_identity_exactly(kind: str):
    model = _model(kind=kind)
    x = torch.randn(1000) * 5
    for t in [0.002, 0.3, 10.0]:
        tt = torch.tensor(t)
        assert torch.equal(model.jump(x, tt, tt), x)


@pytest.mark.parametrize("kind", KINDS)
def test_jump_formula_and_denoiser(kind: str):
    model = _model(1.3, kind)
    x = torch.randn(64)
    t, s = torch.tensor(4.0), torch.tensor(0.5)
    g = model.g(x, t, s)
    torch.testing.assert_close(model.jump(x, t, s), (s / t) * x + (1 - s / t) * g)
    torch.testing.assert_close(model.denoise(x, t), model.g(x, t, t))


@pytest.mark.parametrize("kind", KINDS)
def test_network_sees_target_time(kind: str):
    model = _model(kind=kind)
    x = torch.randn(16)
    t = torch.tensor(5.0)
    assert not torch.allclose(model.g(x, t, torch.tensor(0.002)), model.g(x, t, torch.tensor(2.0)))


@pytest.mark.parametrize("kind", KINDS)
def test_jump_near_t_is_an_euler_step(kind: str):
    """G(x, t, t − h) = x + (−h)·(x − g(x, t, t − h))/t, and g(·, t, t − h) → D as h → 0."""
    model = _model(kind=kind).double()
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
    """MLP networks: PyTorch's default init shrinks the x-signal ~4-fold a layer (the plateau of
    docs/RESULTS.md section 5); He initialisation keeps it."""
    for seed in range(3):
        torch.manual_seed(seed)
        config = NetworkConfig(kind="mlp", depth=4, init=init)
        spreads = _hidden_x_spread(build_model(config, 1.0).net)
        assert len(spreads) == 4
        if init == "he":
            assert min(spreads) > 0.4 * spreads[0] > 0.05, spreads
        else:
            assert spreads[-1] < 0.1 * spreads[0], spreads


# ---- the network kinds ---------------------------------------------------------------------------


def test_defaults_and_build_network_picks_the_kind() -> None:
    config = NetworkConfig()
    assert (config.kind, config.depth, config.units, config.init) == ("monotone", 3, 64, "he")
    assert isinstance(build_network(config), MonotoneNetwork)
    assert isinstance(build_network(NetworkConfig(kind="mlp")), CTMNetwork)
    assert isinstance(build_model(NetworkConfig(kind="mlp"), 1.0).net, CTMNetwork)
    with pytest.raises(ValueError):
        NetworkConfig(kind="resnet")


def test_mlp_forward_is_f_and_no_gate() -> None:
    net = _model(kind="mlp").net
    x, noise = torch.randn(9), torch.full((9,), 0.1)
    out, gate = net(x, noise, noise)
    assert out.shape == (9,) and gate is None


@pytest.mark.parametrize("data_mean", [0.0, 0.7])
def test_monotone_g_is_the_gated_parametrisation_of_the_tanh_sum(data_mean: float) -> None:
    """g = μ + c_skip·(1 − ρ)·(x − μ) + c_out·F(c_in·(x − μ)), F = b + l·x + Σ_k a_k·tanh(w_k·(x − m_k)),
    recomputed here in float64 from the conditioner's coefficients and EDM's closed-form scalings."""
    model, sigma_data = _perturbed(3, data_mean), 0.5
    x = data_mean + 3 * torch.randn(40, generator=torch.Generator().manual_seed(0))
    for t_value, s_value in [(10.0, 0.002), (2.0, 0.5), (0.3, 0.3)]:
        t, s = torch.tensor(t_value), torch.tensor(s_value)
        co = model.net.coefficients(c_noise(t).reshape(1), c_noise(s).reshape(1))
        a, w, c = co.amplitude[0].double(), co.slope[0].double(), co.centre[0].double()
        b, lin, rho = float(co.bias[0]), float(co.linear[0]), float(co.gate[0])
        assert (a >= 0).all() and (w > 0).all() and lin >= 0 and 0 < rho < 1
        var = t_value**2 + sigma_data**2
        c_skip, c_out, c_in = sigma_data**2 / var, t_value * sigma_data / math.sqrt(var), 1 / math.sqrt(var)
        centred = x.double() - data_mean
        z = c_in * centred
        f = b + lin * z + sum(a[k] * torch.tanh(w[k] * (z - c[k])) for k in range(a.numel()))
        expected = data_mean + c_skip * (1 - rho) * centred + c_out * f
        torch.testing.assert_close(model.g(x, t, s).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_scalar_times_give_the_per_row_answer(kind: str) -> None:
    """A scalar t/s reaches the network as one row that it broadcasts: same values as (B,) times."""
    model = _model(kind=kind, data_mean=0.4)
    x = torch.randn(50, generator=torch.Generator().manual_seed(2))
    t, s = 3.0, 0.25
    rows = model.jump(x, torch.full((50,), t), torch.full((50,), s))
    torch.testing.assert_close(model.jump(x, torch.tensor(t), torch.tensor(s)), rows, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.jump(x, t, s), rows, rtol=1e-6, atol=1e-6)
    denoised = model.denoise(x, torch.full((50,), t))
    torch.testing.assert_close(model.denoise(x, torch.tensor(t)), denoised, rtol=1e-6, atol=1e-6)
    assert model.jump(x, torch.tensor(t), torch.tensor(s)).shape == (50,)


TIMES = [10.0, 3.0, 1.0, 0.3, 0.05, 0.002]
PAIRS = [(t, s) for i, t in enumerate(TIMES) for s in TIMES[i:]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monotone_jumps_are_non_decreasing_in_x(seed: int) -> None:
    """Freshly initialised and perturbed monotone models: G(·, t, s) and g(·, t, s) never fold,
    on a wide sorted grid and on a dense one, for every pair s ≤ t of the levels."""
    torch.manual_seed(seed)
    fresh = build_model(NetworkConfig(), 0.5, 0.3).requires_grad_(False)
    wide = torch.linspace(-60.0, 60.0, 4001)
    dense = 0.3 + torch.linspace(-0.05, 0.05, 2001)
    for model in (fresh, _perturbed(seed, 0.3)):
        for x in (wide, dense):
            for t, s in PAIRS:
                tt, ss = torch.tensor(t), torch.tensor(s)
                assert (model.jump(x, tt, ss).diff() >= 0).all(), (t, s)
                assert (model.g(x, tt, ss).diff() >= 0).all(), (t, s)
    # The check does see folds: the same perturbation of an MLP, which nothing constrains, folds.
    mlp = _perturbed(seed, 0.3, kind="mlp")
    assert any((mlp.jump(wide, torch.tensor(t), torch.tensor(s)).diff() < 0).any() for t, s in PAIRS)


@pytest.mark.parametrize("sigma_data", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_sigma_data_or_mean_is_refused_by_name(sigma_data: float) -> None:
    net = build_network(NetworkConfig(kind="mlp", width=8, depth=1))
    with pytest.raises(ValueError, match=rf"^sigma_data must be positive and finite, got {sigma_data}$"):
        CTMParametrization(net, sigma_data)
    with pytest.raises(ValueError, match=r"^data_mean must be finite, got nan$"):
        CTMParametrization(net, 0.5, data_mean=math.nan)


def test_the_data_mean_defaults_to_zero_and_centres_the_network_input() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(kind="mlp", width=8, depth=1))
    centred, shifted = CTMParametrization(net, 0.5), CTMParametrization(net, 0.5, data_mean=2.0)
    assert centred.data_mean == 0.0
    x, t, s = torch.linspace(-1, 1, 9), torch.tensor(3.0), torch.tensor(0.5)
    # g(x) = μ + g₀(x − μ): the shifted model is the centred one moved by μ.
    torch.testing.assert_close(shifted.jump(x + 2.0, t, s), centred.jump(x, t, s) + 2.0)


def test_times_take_the_precision_of_x() -> None:
    # float64 or Python-float levels must not promote a float32 batch (nor change its rounding).
    model = build_model(NetworkConfig(kind="mlp", width=8, depth=1), sigma_data=0.5)
    x = torch.linspace(-1, 1, 5)
    t64, s64 = torch.tensor(3.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    out = model.jump(x, t64, s64)
    assert out.dtype == torch.float32
    assert torch.equal(out, model.jump(x, torch.tensor(3.0), torch.tensor(0.5)))
