"""Samplers, likelihood and the stable DSM target against closed forms, never against their own output.

For data N(μ, σ²) everything is known exactly (docs/CTM.md):
- the marginal at level τ is N(μ, σ² + τ²);
- the PF-ODE jump is G*(x, t, s) = μ + (x − μ)·√(σ² + s²)/√(σ² + t²);
- the denoiser is D*(x, t) = μ + σ²/(σ² + t²)·(x − μ);
- the model's log-density at σ_min is log N(x; μ, σ² + σ_min²).
`ExactGaussian` below is a "model" with the samplers' interface (`jump`, `denoise`) built from these
formulas, so whatever the samplers and the likelihood do to it can be checked against them.
"""

import math

import numpy as np
import pytest
import torch

from ctm_core.config import NoiseConfig
from ctm_core.likelihood import log_prob, ode_log_prob
from ctm_core.losses import DSMLoss, stable_target
from ctm_core.samplers import generate

MU, SIGMA = 1.0, 0.2  # the data mean is not 0 on purpose: a prior or a path that drops μ is seen
SIGMA_MIN = 0.002


class ExactGaussian:
    """The exact CTM of N(μ, σ²) data: G(x, t, s) = G*(x, t, s) and D(x, t) = D*(x, t)."""

    def __init__(self, mu: float = MU, sigma: float = SIGMA) -> None:
        self.mu, self.sigma = mu, sigma

    def jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t, s = torch.as_tensor(t, dtype=x.dtype), torch.as_tensor(s, dtype=x.dtype)
        return self.mu + (x - self.mu) * torch.sqrt(self.sigma**2 + s**2) / torch.sqrt(self.sigma**2 + t**2)

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype)
        return self.mu + self.sigma**2 / (self.sigma**2 + t**2) * (x - self.mu)


def _noise(mu: float = MU, sigma: float = SIGMA, sigma_max: float = 10.0) -> NoiseConfig:
    return NoiseConfig(sigma_min=SIGMA_MIN, sigma_max=sigma_max, sigma_data=sigma, data_mean=mu)


def _normal_quantiles(n: int) -> np.ndarray:
    """Φ⁻¹((i + ½)/n), i = 0…n−1, float64."""
    return torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).numpy()


def _gaussian_logpdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


# ---- deterministic jump samplers land exactly ---------------------------------------------------


@pytest.mark.parametrize(("sampler", "steps"), [("onestep", 1), ("multistep", 1), ("multistep", 5)])
def test_jump_samplers_of_the_exact_model_visit_the_exact_marginal_quantiles(
    sampler: str, steps: int
) -> None:
    """Quantile latents of the prior N(μ, σ_max² + σ²) are the marginal's quantiles at σ_max; the
    exact jumps carry them onto the quantiles μ + √(σ² + τ²)·Φ⁻¹((i + ½)/n) at every level τ."""
    n, noise = 2001, _noise()
    traj = generate(ExactGaussian(), sampler, steps, n, noise="quantile", **noise.sampling_kwargs())
    z = _normal_quantiles(n)
    sigmas = traj.sigmas.double().numpy()
    assert sigmas[0] == 10.0 and sigmas[-1] == SIGMA_MIN
    for level, state in zip(sigmas, traj.states.double().numpy(), strict=True):
        expected = MU + math.sqrt(SIGMA**2 + level**2) * z
        # float32 states: the latent's rounding (~1e-6 of |x_T| ≲ 40) shrinks with the level.
        tolerance = 2e-6 * math.sqrt(SIGMA**2 + level**2) / SIGMA + 1e-6
        np.testing.assert_allclose(state, expected, rtol=0, atol=tolerance, err_msg=f"level {level}")


# ---- γ-sampling restores each level's marginal ---------------------------------------------------


@pytest.mark.parametrize(
    ("gamma", "sigmas"),
    [
        (0.5, None),  # the default linear schedule: 10, 7.5, 5, 2.5, σ_min
        (0.5, (10.0, 1.0, 0.3, 0.1, SIGMA_MIN)),  # levels where σ and the fresh noise are comparable
        (0.3, (10.0, 2.0, 0.5, 0.15, SIGMA_MIN)),
        (1.0, (10.0, 1.0, 0.3, 0.1, SIGMA_MIN)),  # γ = 1: the jump goes to σ_min, the noise is all of it
    ],
)
def test_gamma_sampling_states_follow_the_marginal_at_every_level(
    gamma: float, sigmas: tuple[float, ...] | None
) -> None:
    """With the exact jump, each γ-sampling state is a draw from the marginal N(μ, σ² + τ_i²): the
    jump to s = √(1 − γ²)·τ_{i+1} gives N(μ, σ² + s²), and the fresh noise of std √(τ_{i+1}² − s²)
    restores τ_{i+1}. A wrong noise std (τ − s, 3× too much) misses the spread by 2 % or more at the
    levels below; n = 200,000 measures a std to 0.16 %."""
    n, noise = 200_000, _noise()
    traj = generate(
        ExactGaussian(), "gamma", 4, n, seed=7, gamma=gamma, sigmas=sigmas, **noise.sampling_kwargs()
    )
    for level, state in zip(traj.sigmas.tolist(), traj.states.double(), strict=True):
        std = math.sqrt(SIGMA**2 + level**2)
        assert state.std().item() == pytest.approx(std, rel=0.01), f"level {level}"
        assert state.mean().item() == pytest.approx(MU, abs=5 * std / math.sqrt(n)), f"level {level}"


# ---- the PF-ODE likelihood -----------------------------------------------------------------------

# Why 1e-4 nats: RK4 on 64 Karras steps is within 2e-5 of the closed form on the exact Gaussian
# model. RK4 with equal weights (h/4 each) is off by 8e-4 nats in the divergence integral and
# 2e-3 in the state at (μ, σ, σ_max) = (1, 0.2, 10); a prior that drops the data mean is off by
# 0.005 to 0.3 nats.
LIKELIHOOD_ATOL = 1e-4


@pytest.mark.parametrize(
    ("mu", "sigma", "sigma_max"), [(1.0, 0.2, 10.0), (-2.0, 0.3, 10.0), (1.0, 1.0, 10.0), (1.0, 0.5, 2.0)]
)
def test_ode_log_prob_of_the_exact_gaussian_is_the_gaussian_log_density(
    mu: float, sigma: float, sigma_max: float
) -> None:
    noise = _noise(mu, sigma, sigma_max)
    model = ExactGaussian(mu, sigma)
    x = torch.linspace(mu - 3 * sigma, mu + 3 * sigma, 25, dtype=torch.float64)
    expected = _gaussian_logpdf(x.numpy(), mu, math.sqrt(sigma**2 + SIGMA_MIN**2))
    got = ode_log_prob(model, x, noise)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=LIKELIHOOD_ATOL)
    # The same through log_prob's own arguments (the prior N(μ, σ_max² + σ²) given explicitly).
    prior_std = math.sqrt(sigma_max**2 + sigma**2)
    direct = log_prob(model, x, SIGMA_MIN, sigma_max, data_mean=mu, prior_std=prior_std)
    np.testing.assert_allclose(direct.numpy(), expected, rtol=0, atol=LIKELIHOOD_ATOL)


# ---- the stable DSM target -----------------------------------------------------------------------


def test_stable_target_of_two_points_is_tanh() -> None:
    """x₀ uniform on {−1, +1}, x_t = x₀ + t·ε: P(+1 | x_t) ∝ exp(−(x_t − 1)²/(2t²)), so
    E[x₀ | x_t] = tanh(x_t/t²) exactly. (A likelihood exp(−(x − p)²/t²) would give tanh(2x/t²).)"""
    points = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    x = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64).repeat(5)
    t = torch.tensor([0.3, 0.7, 1.0, 2.0, 5.0], dtype=torch.float64).repeat_interleave(41)
    torch.testing.assert_close(stable_target(x, t, points), torch.tanh(x / t**2), rtol=0, atol=1e-12)


def test_stable_target_of_normal_quantiles_is_the_gaussian_denoiser() -> None:
    """Uniform over n quantiles of N(μ, σ²) approximates N(μ, σ²): the posterior mean is then
    μ + σ²/(σ² + t²)·(x − μ) up to the discretisation, where t is many point spacings wide."""
    points = torch.from_numpy(MU + SIGMA * _normal_quantiles(20_001))
    x = torch.linspace(MU - 2 * SIGMA, MU + 2 * SIGMA, 21, dtype=torch.float64).repeat(4)
    t = torch.tensor([0.05, 0.2, 0.5, 2.0], dtype=torch.float64).repeat_interleave(21)
    expected = MU + SIGMA**2 / (SIGMA**2 + t**2) * (x - MU)
    torch.testing.assert_close(stable_target(x, t, points), expected, rtol=0, atol=2e-4)


class _TwoPointPosterior:
    """The exact denoiser of x₀ uniform on {−1, +1}: D(x, t) = tanh(x/t²), computed in float64."""

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.double() / t.double() ** 2).to(x.dtype)


def test_dsm_loss_with_references_regresses_on_the_posterior_mean() -> None:
    """DSMLoss with `reference` samples trains towards E[x₀ | x_t] under their empirical law: for
    equally many −1s and +1s the exact posterior mean tanh(x/t²) scores ~0, the data point x₀ itself
    does not (its variance around the mean is what the stable target removes)."""
    x0 = torch.tensor([-1.0, 1.0]).repeat(256)
    loss_fn = DSMLoss(-1.2, 1.2, 0.5, SIGMA_MIN, 10.0)
    stable = loss_fn(_TwoPointPosterior(), x0, torch.Generator().manual_seed(0), reference=x0)
    plain = loss_fn(_TwoPointPosterior(), x0, torch.Generator().manual_seed(0))
    assert stable.item() < 1e-6
    assert plain.item() > 0.1
