import math

import pytest
import torch

from ctm_core.checkpoint import build_model
from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.samplers import (
    JUMP_SAMPLERS,
    SAMPLERS,
    explicit_sigmas,
    generate,
    latent,
    nfe_of,
    quantile_latent,
    sampling_sigmas,
)
from ctm_core.schedules import karras_sigmas

SIGMA_DATA = 1.5
# The prior N(μ, σ_max² + σ_d²): the law of x₀ + σ_max·ε when x₀ has std σ_d.
PRIOR_STD = math.sqrt(10.0**2 + SIGMA_DATA**2)
SCHEDULE = {"sigma_min": 0.002, "sigma_max": 10.0, "rho": 7.0}
RANGE = {**SCHEDULE, "prior_std": PRIOR_STD}


@pytest.fixture(scope="module", params=["monotone", "mlp"])
def model(request):
    torch.manual_seed(0)
    return build_model(NetworkConfig(kind=request.param, width=32, depth=2), SIGMA_DATA).eval()


class GaussianDenoiser:
    """Exact denoiser of N(μ, σ²): D(x, t) = μ + σ²/(σ² + t²)·(x − μ)."""

    def __init__(self, mu: float, sigma: float) -> None:
        self.mu, self.sigma = mu, sigma

    def denoise(self, x, t):
        return self.mu + self.sigma**2 / (self.sigma**2 + t**2) * (x - self.mu)


@pytest.mark.parametrize(
    ("sampler", "steps"), [("onestep", 1), ("multistep", 3), ("gamma", 4), ("euler", 5), ("heun", 6)]
)
def test_shapes_nfe_and_sigmas(model, sampler, steps):
    traj = generate(model, sampler, steps, 7, seed=3, **RANGE)
    assert traj.states.shape == (steps + 1, 7)
    assert traj.sigmas.shape == (steps + 1,)
    assert traj.sigmas[0].item() == 10.0 and traj.sigmas[-1].item() == 0.002
    assert traj.nfe == nfe_of(sampler, steps) == (2 * steps - 1 if sampler == "heun" else steps)
    assert torch.equal(traj.samples, traj.states[-1])
    assert torch.isfinite(traj.states).all()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_seed_reproducible_and_seeds_differ(model, sampler):
    steps = 1 if sampler == "onestep" else 3
    a = generate(model, sampler, steps, 50, seed=11, **RANGE)
    b = generate(model, sampler, steps, 50, seed=11, **RANGE)
    c = generate(model, sampler, steps, 50, seed=12, **RANGE)
    assert torch.equal(a.states, b.states)
    assert not torch.equal(a.samples, c.samples)


@pytest.mark.parametrize("data_mean", [0.0, 0.7])
def test_latent_first_row_is_the_noise(model, data_mean):
    """x_T = μ + √(σ_max² + σ_d²)·z with z from the seeded generator (not the narrow σ_max·z)."""
    traj = generate(model, "multistep", 2, 1000, seed=5, data_mean=data_mean, **RANGE)
    z = torch.randn(1000, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(traj.states[0], data_mean + PRIOR_STD * z)
    assert not torch.allclose(traj.states[0], data_mean + 10.0 * z)
    assert abs(traj.states[0].std().item() - PRIOR_STD) < 0.6


def test_quantile_latent_is_stratified():
    z = quantile_latent(4, 2.0)
    expected = [
        2.0 * math.sqrt(2) * torch.erfinv(torch.tensor(2 * p - 1)).item()
        for p in (0.125, 0.375, 0.625, 0.875)
    ]
    torch.testing.assert_close(z, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert torch.equal(latent(4, 0.0, 2.0, "quantile", torch.Generator()), z)
    torch.testing.assert_close(latent(4, 0.5, 2.0, "quantile", torch.Generator()), 0.5 + z)
    # The default std is 1: the standard normal's quantiles.
    torch.testing.assert_close(quantile_latent(4) * 2.0, z)


def test_random_latent_and_bad_noise_mode():
    got = latent(6, -1.0, 3.0, "random", torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, -1.0 + 3.0 * torch.randn(6, generator=torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="noise mode"):
        latent(6, 0.0, 1.0, "sobol", torch.Generator())


def test_gamma_zero_is_multistep_and_onestep_is_one_jump(model):
    a = generate(model, "gamma", 4, 100, seed=1, gamma=0.0, **RANGE)
    b = generate(model, "multistep", 4, 100, seed=1, **RANGE)
    torch.testing.assert_close(a.states, b.states)
    one = generate(model, "onestep", 1, 100, seed=1, **RANGE)
    torch.testing.assert_close(one.states, generate(model, "multistep", 1, 100, seed=1, **RANGE).states)


def test_gamma_is_stochastic_and_gamma_one_never_asks_for_time_zero(model):
    a = generate(model, "gamma", 4, 100, seed=1, gamma=1.0, **RANGE)
    b = generate(model, "gamma", 4, 100, seed=1, gamma=0.0, **RANGE)
    assert torch.isfinite(a.states).all()
    assert not torch.allclose(a.samples, b.samples)


@pytest.mark.parametrize(("sampler", "steps", "tol"), [("heun", 80, 2e-3), ("euler", 400, 2e-2)])
def test_ode_solvers_reach_the_exact_gaussian_flow(sampler, steps, tol):
    """For N(μ, σ²) the PF-ODE is linear: x_σmin = μ + (x_T − μ)·√(σ² + σ_min²)/√(σ² + σ_max²)."""
    mu, sigma = 1.0, 0.2
    traj = generate(GaussianDenoiser(mu, sigma), sampler, steps, 200, seed=0, data_mean=mu, **RANGE)
    scale = math.sqrt(sigma**2 + 0.002**2) / math.sqrt(sigma**2 + 100.0)
    expected = mu + (traj.states[0] - mu) * scale
    assert (traj.samples - expected).abs().max().item() < tol


@pytest.mark.parametrize(("sigma", "tol"), [(0.2, 2e-3), (3.0, 1e-2)])
def test_quantile_latents_of_the_prior_land_on_the_data_quantiles(sigma, tol):
    """With the prior N(μ, σ_max² + σ²) the exact Gaussian flow maps the quantile latents onto
    N(μ, σ² + σ_min²)'s quantiles μ + √(σ² + σ_min²)·Φ⁻¹((i + ½)/n). The narrow prior N(μ, σ_max²)
    misses them by the factor σ_max/√(σ_max² + σ²) (4 % at σ = 3)."""
    mu, n = 1.0, 400
    noise = NoiseConfig(sigma_data=sigma, data_mean=mu)
    assert noise.prior_std == pytest.approx(math.sqrt(100.0 + sigma**2), rel=1e-12)
    kwargs = noise.sampling_kwargs()
    traj = generate(GaussianDenoiser(mu, sigma), "heun", 80, n, noise="quantile", **kwargs)
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    expected = mu + math.sqrt(sigma**2 + 0.002**2) * torch.special.ndtri(p)
    assert (traj.samples.double() - expected).abs().max().item() < tol  # Heun-80's own error
    if sigma > 1:
        narrow = {**kwargs, "prior_std": 10.0}
        narrow_samples = generate(
            GaussianDenoiser(mu, sigma), "heun", 80, n, noise="quantile", **narrow
        ).samples
        assert (narrow_samples.double() - expected).abs().max().item() > 10 * tol


def test_bad_arguments(model):
    with pytest.raises(TypeError, match="prior_std"):
        generate(model, "multistep", 2, 5, sigma_min=0.002, sigma_max=10.0)
    with pytest.raises(ValueError, match="onestep"):
        generate(model, "onestep", 2, 5, **RANGE)
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(model, "ddim", 2, 5, **RANGE)
    with pytest.raises(ValueError, match="steps"):
        generate(model, "multistep", 0, 5, **RANGE)
    with pytest.raises(ValueError, match="gamma"):
        generate(model, "gamma", 2, 5, gamma=1.5, **RANGE)


def _linear(n: int, lo: float, hi: float) -> torch.Tensor:
    """σ_i = σ_max + i/(n − 1)·(σ_min − σ_max)."""
    return hi + torch.arange(n, dtype=torch.float64) / (n - 1) * (lo - hi)


def _karras(n: int, lo: float, hi: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5."""
    i = torch.arange(n, dtype=torch.float64)
    return (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


@pytest.mark.parametrize("sampler", ["multistep", "gamma"])
def test_jump_samplers_follow_the_jump_schedule(model, sampler):
    """The jump samplers space their levels by `jump_schedule` (default linear) over the whole range."""
    traj = generate(model, sampler, 4, 5, seed=0, **RANGE)
    torch.testing.assert_close(traj.sigmas, _linear(5, 0.002, 10.0), rtol=1e-12, atol=1e-12)
    karras = generate(model, sampler, 4, 5, seed=0, jump_schedule="karras", **RANGE)
    torch.testing.assert_close(karras.sigmas, _karras(5, 0.002, 10.0), rtol=1e-12, atol=1e-12)
    # The ODE schedule does not move them.
    other = generate(model, sampler, 4, 5, seed=0, schedule="exponential", **RANGE)
    torch.testing.assert_close(other.sigmas, traj.sigmas, rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_ode_solvers_follow_the_schedule_not_the_jump_schedule(sampler):
    sigmas = sampling_sigmas(sampler, 4, jump_schedule="linear", **SCHEDULE)
    torch.testing.assert_close(sigmas, _karras(5, 0.002, 10.0), rtol=1e-12, atol=1e-12)
    linear = sampling_sigmas(sampler, 4, schedule="linear", jump_schedule="karras", **SCHEDULE)
    torch.testing.assert_close(linear, _linear(5, 0.002, 10.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_default_noise_config_schedules(model, sampler):
    """NoiseConfig's defaults: Karras for the ODE solvers, linear for the jump samplers, each over
    the whole range from σ_max to σ_min."""
    noise = NoiseConfig(sigma_data=SIGMA_DATA)
    assert (noise.schedule, noise.jump_schedule) == ("karras", "linear")
    steps = 1 if sampler == "onestep" else 4
    traj = generate(model, sampler, steps, 5, **noise.sampling_kwargs())
    lo, hi = noise.sigma_min, noise.sigma_max
    expected = _linear(steps + 1, lo, hi) if sampler in JUMP_SAMPLERS else _karras(steps + 1, lo, hi)
    torch.testing.assert_close(traj.sigmas, expected, rtol=1e-12, atol=1e-12)
    assert traj.sigmas[0].item() == hi and traj.sigmas[-1].item() == lo


@pytest.mark.parametrize(
    ("sigma_data", "data_mean", "std"), [(1.5, 0.3, math.sqrt(20.0**2 + 2.25)), (None, None, 20.0)]
)
def test_sampling_kwargs_carry_the_prior(sigma_data, data_mean, std):
    """prior_std = √(σ_max² + σ_d²); σ_max alone until σ_d is measured."""
    kwargs = NoiseConfig(sigma_max=20.0, sigma_data=sigma_data, data_mean=data_mean).sampling_kwargs()
    assert kwargs["prior_std"] == pytest.approx(std, rel=1e-12)
    assert kwargs["data_mean"] == (data_mean or 0.0)


# ---- explicit noise levels -----------------------------------------------------------------------


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_explicit_sigmas_override_steps_and_schedule(model, sampler):
    levels = [10.0, 0.5, 0.002] if sampler != "onestep" else [10.0, 0.002]
    traj = generate(model, sampler, 1 if sampler == "onestep" else 7, 6, sigmas=levels, **RANGE)
    assert traj.sigmas.tolist() == levels
    assert traj.states.shape == (len(levels), 6)
    assert traj.nfe == nfe_of(sampler, len(levels) - 1)


def test_explicit_sigmas_drive_an_exact_solve():
    """Heun on user-given levels reaches the closed-form Gaussian flow at each of them."""
    mu, sigma = 0.5, 1.0
    levels = torch.cat([karras_sigmas(60, 2.0, 10.0), karras_sigmas(60, 0.002, 2.0)[1:]])
    traj = generate(GaussianDenoiser(mu, sigma), "heun", 1, 50, sigmas=levels, data_mean=mu, **RANGE)
    assert torch.equal(traj.sigmas, levels)
    scale = torch.sqrt(sigma**2 + levels[:, None] ** 2) / math.sqrt(sigma**2 + 100)
    expected = mu + (traj.states[0].double() - mu) * scale
    assert (traj.states.double() - expected).abs().max().item() < 5e-3  # Heun's own error: 2e-3


def test_explicit_sigmas_snap_the_ends_and_check_the_rules():
    levels = explicit_sigmas([10.0 * (1 + 5e-10), 1.0, 0.002 * (1 - 5e-10)], sigma_min=0.002, sigma_max=10.0)
    assert levels.dtype == torch.float64 and levels.tolist() == [10.0, 1.0, 0.002]
    bad = [
        ([10.0], "at least 2"),
        ([10.0, 1.0, 1.0, 0.002], "strictly decreasing"),
        ([10.0, 0.002, 1.0], "strictly decreasing"),
        ([10.0, float("nan"), 0.002], "finite"),
        ([9.0, 0.002], "first sigma"),
        ([10.0, 0.003], "last sigma"),
    ]
    for sigmas, message in bad:
        with pytest.raises(ValueError, match=message):
            explicit_sigmas(sigmas, sigma_min=0.002, sigma_max=10.0)
    with pytest.raises(ValueError, match="at most 3"):
        explicit_sigmas([10.0, 5.0, 1.0, 0.002], sigma_min=0.002, sigma_max=10.0, max_levels=3)
    with pytest.raises(ValueError, match="first sigma"):
        generate(GaussianDenoiser(0.0, 1.0), "euler", 2, 4, sigmas=[5.0, 0.002], **RANGE)


@pytest.mark.parametrize(
    ("levels", "max_levels", "message"),
    [
        ([10.0], None, r"^sigmas needs at least 2 levels \(σ_max and σ_min\), got 1$"),
        ([10.0, 5.0, 1.0, 0.002], 3, r"^sigmas has 4 levels; at most 3 are allowed$"),
        ([10.0, float("nan"), 0.002], None, r"^every sigma must be a finite number$"),
        ([10.0, 1.0, 1.0, 0.002], None, r"^sigmas must be strictly decreasing$"),
        ([9.0, 0.002], None, r"^the first sigma must be the model's sigma_max = 10, got 9$"),
        ([10.0, 0.003], None, r"^the last sigma must be the model's sigma_min = 0.002, got 0.003$"),
    ],
)
def test_explicit_sigmas_say_which_rule_they_break(
    levels: list[float], max_levels: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        explicit_sigmas(levels, sigma_min=0.002, sigma_max=10.0, max_levels=max_levels)
