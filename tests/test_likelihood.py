import math

import numpy as np
import pytest
import torch

from ctm_core.checkpoint import build_model
from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.evaluation import ExactDenoiser
from ctm_core.likelihood import (
    density_log_prob,
    gaussian_log_prob,
    log_prob,
    ode_evaluations,
    ode_log_prob,
    onestep_evaluations,
    onestep_log_prob,
)
from ctm_core.tasks import get_task


class GaussianDenoiser:
    def __init__(self, mu: float, sigma: float) -> None:
        self.mu, self.sigma = mu, sigma

    def denoise(self, x, t):
        return self.mu + self.sigma**2 / (self.sigma**2 + t**2) * (x - self.mu)


@pytest.mark.parametrize("sigma_max", [10.0, 80.0])
def test_gaussian_exact_denoiser_reproduces_the_true_log_density(sigma_max):
    """With the exact marginal as prior, log p = log N(x; μ, σ² + σ_min²) within 0.01 nats."""
    mu, sigma, sigma_min = 1.0, 0.2, 0.002
    x = torch.linspace(0.2, 1.8, 41, dtype=torch.float64)
    prior_std = math.sqrt(sigma**2 + sigma_max**2)
    got = log_prob(
        GaussianDenoiser(mu, sigma),
        x,
        sigma_min,
        sigma_max,
        prior=lambda z: gaussian_log_prob(z, mu, prior_std),
    )
    expected = gaussian_log_prob(x, mu, math.sqrt(sigma**2 + sigma_min**2))
    assert (got - expected).abs().max().item() < 0.01


@pytest.mark.parametrize(("sigma", "sigma_max"), [(0.2, 10.0), (3.0, 10.0), (0.2, 80.0)])
def test_prior_std_argument_is_the_exact_marginal_for_gaussian_data(sigma, sigma_max):
    """prior_std = √(σ_max² + σ²) with data_mean = μ is the exact marginal at σ_max: log p is
    log N(x; μ, σ² + σ_min²) to 1e-4 nats. The bare call's N(0, σ_max²) is off (0.35 nats at σ = 3)."""
    mu = 1.0
    x = torch.linspace(mu - 2 * sigma, mu + 2 * sigma, 21, dtype=torch.float64)
    expected = gaussian_log_prob(x, mu, math.sqrt(sigma**2 + 0.002**2))
    noise = NoiseConfig(sigma_max=sigma_max, sigma_data=sigma, data_mean=mu)
    assert noise.prior_std == pytest.approx(math.sqrt(sigma_max**2 + sigma**2), rel=1e-12)
    model = GaussianDenoiser(mu, sigma)
    got = log_prob(model, x, 0.002, sigma_max, data_mean=mu, prior_std=noise.prior_std)
    assert (got - expected).abs().max().item() < 1e-4
    bare = log_prob(model, x, 0.002, sigma_max)
    assert (bare - expected).abs().max().item() > 0.01


def test_default_prior_error_is_the_prior_mismatch_only():
    """The bare call's prior N(0, σ_max²) differs from the exact marginal; the gap is what that
    mismatch predicts."""
    mu, sigma, sigma_max = 1.0, 0.2, 80.0
    x = torch.tensor([0.8, 1.0, 1.2], dtype=torch.float64)
    exact_prior = log_prob(
        GaussianDenoiser(mu, sigma),
        x,
        0.002,
        sigma_max,
        prior=lambda z: gaussian_log_prob(z, mu, math.sqrt(sigma**2 + sigma_max**2)),
    )
    default = log_prob(GaussianDenoiser(mu, sigma), x, 0.002, sigma_max)
    assert 0 < (exact_prior - default).abs().max().item() < 0.1


def test_mixture_exact_denoiser_log_density_matches_the_task():
    task = get_task("two_gmm_1D")
    x = torch.linspace(-2.2, 2.2, 23, dtype=torch.float64)
    got = log_prob(ExactDenoiser(task), x, 0.002, 80.0).numpy()
    expected = task.log_prob(x.numpy())
    # σ_max = 80 keeps the N(0, σ_max²) prior's error small against the exact marginal.
    assert np.abs(got - expected).max() < 0.05


@pytest.mark.parametrize("name", ["two_gmm_1D", "uneven_two_gmm_1D"])
def test_mixture_log_density_with_the_wide_prior_at_sigma_max_10(name):
    """At σ_max = 10 the narrow prior is 0.07–0.2 nats off; N(μ, σ_max² + σ_d²) matches the
    mixture's marginal up to its higher moments (≈ 0.01 nats)."""
    task = get_task(name)
    noise = NoiseConfig(sigma_max=10.0, sigma_data=task.std, data_mean=task.mean)
    x = torch.linspace(-2.2, 2.2, 23, dtype=torch.float64)
    kwargs = {"data_mean": noise.data_mean, "prior_std": noise.prior_std}
    got = log_prob(ExactDenoiser(task), x, noise.sigma_min, noise.sigma_max, **kwargs).numpy()
    assert np.abs(got - task.log_prob(x.numpy())).max() < 0.02
    bare = log_prob(ExactDenoiser(task), x, noise.sigma_min, noise.sigma_max).numpy()
    assert np.abs(bare - task.log_prob(x.numpy())).max() > 0.05


class _GaussianFlowJump:
    """The exact jump of N(μ, σ²) data: G(x, t, s) = μ + (x − μ)·√(σ² + s²)/√(σ² + t²)."""

    def __init__(self, mu: float, sigma: float) -> None:
        self.mu, self.sigma = mu, sigma

    def jump(self, x, t, s):
        return self.mu + (x - self.mu) * torch.sqrt(self.sigma**2 + s**2) / torch.sqrt(self.sigma**2 + t**2)


@pytest.mark.parametrize("sigma", [0.2, 3.0])
def test_onestep_log_prob_of_the_exact_gaussian_jump(sigma):
    """y = G(z, σ_max, σ_min) with z ~ N(μ, σ_max² + σ²) is N(μ, σ² + σ_min²): the one-step density is
    the data's own (the prior, the inverse and the slope all enter)."""
    mu = 1.0
    noise = NoiseConfig(sigma_data=sigma, data_mean=mu)
    y = torch.linspace(mu - 4 * sigma, mu + 4 * sigma, 33, dtype=torch.float64)
    got = onestep_log_prob(_GaussianFlowJump(mu, sigma), y, noise)
    assert got.dtype == torch.float64 and got.shape == y.shape
    expected = gaussian_log_prob(y, mu, math.sqrt(sigma**2 + noise.sigma_min**2))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


class _ClampedJump(_GaussianFlowJump):
    """The Gaussian jump followed by a clamp to [0.5, 1.5]: flat outside, so its image is bounded."""

    def jump(self, x, t, s):
        return super().jump(x, t, s).clamp(0.5, 1.5)


def test_onestep_log_prob_is_minus_inf_outside_the_image():
    noise = NoiseConfig(sigma_data=0.2, data_mean=1.0)
    y = torch.tensor([-3.0, 0.3, 0.8, 1.2, 1.7, 40.0], dtype=torch.float64)
    got = onestep_log_prob(_ClampedJump(1.0, 0.2), y, noise)
    assert torch.isneginf(got[[0, 1, 4, 5]]).all()
    expected = gaussian_log_prob(y[2:4], 1.0, math.sqrt(0.04 + noise.sigma_min**2))
    torch.testing.assert_close(got[2:4], expected, rtol=0, atol=1e-6)


class _Counting:
    """A Gaussian's exact jump and denoiser (N(μ, σ²) data) that count their calls."""

    def __init__(self, mu: float = 1.0, sigma: float = 0.2) -> None:
        self.denoiser, self.jumper = GaussianDenoiser(mu, sigma), _GaussianFlowJump(mu, sigma)
        self.calls = 0

    def denoise(self, x, t):
        self.calls += 1
        return self.denoiser.denoise(x, t)

    def jump(self, x, t, s):
        self.calls += 1
        return self.jumper.jump(x, t, s)


@pytest.mark.parametrize("steps", [3, 8])
def test_the_ode_density_evaluates_the_network_four_times_a_step(steps):
    # RK4 on `steps` steps: 4 evaluations each, as the work budget counts them.
    model = _Counting()
    ode_log_prob(model, torch.linspace(0.5, 1.5, 5), NoiseConfig(sigma_data=0.2, data_mean=1.0), steps=steps)
    assert model.calls == ode_evaluations(steps) == 4 * steps


@pytest.mark.parametrize("iterations", [5, 20])
def test_the_onestep_density_evaluates_the_jump_iterations_plus_three_times(iterations):
    # Two bracket ends, one evaluation a halving, one for the slope, as the work budget counts them.
    model = _Counting()
    noise = NoiseConfig(sigma_data=0.2, data_mean=1.0)
    onestep_log_prob(model, torch.linspace(0.5, 1.5, 5), noise, iterations=iterations)
    assert model.calls == onestep_evaluations(iterations) == iterations + 3


def test_the_ode_density_uses_the_models_rho_and_log_prob_defaults_to_edms():
    x = torch.linspace(0.4, 1.6, 7, dtype=torch.float64)
    model, noise = GaussianDenoiser(1.0, 0.2), NoiseConfig(sigma_data=0.2, data_mean=1.0, rho=3.0)
    common = {"steps": 4, "data_mean": 1.0, "prior_std": noise.prior_std}
    rho3 = log_prob(model, x, noise.sigma_min, noise.sigma_max, rho=3.0, **common)
    rho7 = log_prob(model, x, noise.sigma_min, noise.sigma_max, rho=7.0, **common)
    assert (rho3 - rho7).abs().max() > 1e-3  # 4 steps: the grid matters
    torch.testing.assert_close(ode_log_prob(model, x, noise, steps=4), rho3, rtol=0, atol=0)
    torch.testing.assert_close(log_prob(model, x, noise.sigma_min, noise.sigma_max, **common), rho7)


def test_density_log_prob_runs_on_the_evaluator_and_explains_refusals():
    model = build_model(NetworkConfig(), sigma_data=0.5)  # monotone: it has a onestep density
    noise = NoiseConfig(sigma_data=0.5, data_mean=0.0)
    evaluator = _Counting(0.0, 0.5)  # stands in for the network: its answers are the exact jump's
    y = torch.linspace(-1.0, 1.0, 5)
    got = density_log_prob(model, y, noise, "onestep", evaluator)
    assert evaluator.calls == onestep_evaluations()
    torch.testing.assert_close(got, onestep_log_prob(_GaussianFlowJump(0.0, 0.5), y, noise))
    mlp = build_model(NetworkConfig(kind="mlp"), sigma_data=0.5)
    with pytest.raises(ValueError, match=r"no onestep density: its network is not monotone in x.*ode"):
        density_log_prob(mlp, y, noise, "onestep")
    with pytest.raises(ValueError, match="unknown density 'exact'; choose 'onestep' or 'ode'"):
        density_log_prob(model, y, noise, "exact")  # type: ignore[arg-type]
