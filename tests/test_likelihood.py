import math

import numpy as np
import pytest
import torch

from ctm_core.evaluation import ExactDenoiser
from ctm_core.likelihood import gaussian_log_prob, log_prob
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


def test_default_prior_error_is_the_prior_mismatch_only():
    """The N(0, σ_max²) prior differs from the exact marginal; the gap is what that mismatch predicts."""
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
