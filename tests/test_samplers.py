import math

import pytest
import torch

from ctm_core.checkpoint import build_model
from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.samplers import SAMPLERS, generate, latent, nfe_of, quantile_latent, sampling_sigmas
from ctm_core.schedules import karras_sigmas

RANGE = {"sigma_min": 0.002, "sigma_max": 10.0, "rho": 7.0}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(NetworkConfig(width=32, depth=2), 1.5).eval()


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


def test_latent_first_row_is_the_noise(model):
    traj = generate(model, "multistep", 2, 1000, seed=5, **RANGE)
    expected = 10.0 * torch.randn(1000, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(traj.states[0], expected)
    assert abs(traj.states[0].std().item() - 10.0) < 0.6


def test_quantile_latent_is_stratified():
    z = quantile_latent(4, 2.0)
    expected = [
        2.0 * math.sqrt(2) * torch.erfinv(torch.tensor(2 * p - 1)).item()
        for p in (0.125, 0.375, 0.625, 0.875)
    ]
    torch.testing.assert_close(z, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert torch.equal(latent(4, 2.0, "quantile", torch.Generator()), z)


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
    traj = generate(GaussianDenoiser(mu, sigma), sampler, steps, 200, seed=0, **RANGE)
    scale = math.sqrt(sigma**2 + 0.002**2) / math.sqrt(sigma**2 + 100.0)
    expected = mu + (traj.states[0] - mu) * scale
    assert (traj.samples - expected).abs().max().item() < tol


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="onestep"):
        generate(model, "onestep", 2, 5, **RANGE)
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(model, "ddim", 2, 5, **RANGE)
    with pytest.raises(ValueError, match="steps"):
        generate(model, "multistep", 0, 5, **RANGE)
    with pytest.raises(ValueError, match="gamma"):
        generate(model, "gamma", 2, 5, gamma=1.5, **RANGE)


@pytest.mark.parametrize("sampler", ["multistep", "gamma"])
def test_jump_samplers_land_first_at_the_landing_level(model, sampler):
    traj = generate(model, sampler, 4, 5, seed=0, landing=0.02, **RANGE)
    assert traj.sigmas[:2].tolist() == [10.0, 0.02]
    torch.testing.assert_close(traj.sigmas[1:], karras_sigmas(4, 0.002, 0.02), rtol=0, atol=0)
    without = generate(model, sampler, 4, 5, seed=0, **RANGE)
    torch.testing.assert_close(without.sigmas, karras_sigmas(5, 0.002, 10.0), rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_ode_solvers_ignore_the_landing_level(sampler):
    sigmas = sampling_sigmas(sampler, 4, landing=0.02, **RANGE)
    torch.testing.assert_close(sigmas, karras_sigmas(5, 0.002, 10.0), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("ratio", "sigma_data", "landing"),
    [(0.013, 1.0, 0.013), (0.02, 0.5, 0.01), (None, 1.0, None), (0.013, None, None), (0.013, 0.1, None)],
)
def test_noise_config_landing_level(ratio, sigma_data, landing):
    noise = NoiseConfig(landing_ratio=ratio, sigma_data=sigma_data)
    assert noise.landing == (None if landing is None else pytest.approx(landing))
    assert noise.sampling_kwargs()["landing"] == noise.landing
