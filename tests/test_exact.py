"""Tests for ctm_core.exact against closed forms: Gaussian flows and convolutions."""

import math

import numpy as np
import pytest
from scipy import stats

from ctm_core.exact import ConvolvedTask, exact_flow, exact_path, marginal, prior_std
from ctm_core.tasks import TASKS, GaussianMixture, ScipyTask

GAUSS = GaussianMixture("g", [1.0], [1.0], [0.2])
X = np.linspace(-30, 30, 101)


def test_prior_std_is_the_marginal_std_at_sigma_max():
    assert prior_std(10.0, 1.5) == pytest.approx(math.sqrt(100 + 2.25), rel=1e-15)


@pytest.mark.parametrize(("t", "s"), [(10.0, 0.002), (10.0, 5.0), (2.0, 0.5), (0.3, 0.01), (1.0, 1.0)])
def test_gaussian_flow_is_the_affine_closed_form(t, s):
    # For N(μ, σ²) the PF-ODE map is μ + (x − μ)·√(σ² + s²)/√(σ² + t²).
    x = 1.0 + math.sqrt(0.04 + t * t) * np.linspace(-6, 6, 101)  # ±6 std of the marginal at t
    want = 1.0 + (x - 1.0) * math.sqrt(0.04 + s * s) / math.sqrt(0.04 + t * t)
    np.testing.assert_allclose(exact_flow(GAUSS, x, t, s), want, rtol=1e-7, atol=1e-9)


def test_mixture_marginal_widens_every_component():
    task = TASKS["two_gmm_1D"]
    got = marginal(task, 0.7).cdf(X)
    want = 0.5 * stats.norm.cdf(X, -1.5, math.hypot(0.3, 0.7)) + 0.5 * stats.norm.cdf(
        X, 1.5, math.hypot(0.3, 0.7)
    )
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0, 10.0])
def test_convolved_table_matches_a_closed_form_convolution(sigma):
    # A scipy normal goes through the generic tables; its convolution is N(0.3, 0.5² + σ²).
    base = ScipyTask("normal", stats.norm(0.3, 0.5), "N(0.3, 0.5²)")
    convolved = ConvolvedTask(base, sigma)
    scale = math.hypot(0.5, sigma)
    x = np.linspace(0.3 - 5 * scale, 0.3 + 5 * scale, 201)
    np.testing.assert_allclose(convolved.cdf(x), stats.norm.cdf(x, 0.3, scale), atol=2e-7)
    p = np.array([1e-4, 0.1, 0.5, 0.9, 1 - 1e-4])
    np.testing.assert_allclose(convolved.quantile(p), stats.norm.ppf(p, 0.3, scale), atol=1e-5 * scale)
    np.testing.assert_allclose(
        convolved.log_prob(x[50:150]), stats.norm.logpdf(x[50:150], 0.3, scale), atol=1e-5
    )


def test_wide_prior_reaches_the_data_quantiles_and_narrow_one_does_not():
    # docs/CTM.md: with N(μ, σ_max² + σ_d²) the exact flow lands within ~1e-5 of the data's
    # quantiles on two_gmm_1D; with N(μ, σ_max²) it is 0.004 off.
    task = TASKS["two_gmm_1D"]
    p = (np.arange(20_000) + 0.5) / 20_000
    quantiles = task.quantile(p)
    for std, low, high in ((prior_std(10.0, task.std), 0.0, 1e-4), (10.0, 3e-3, 5e-3)):
        z = task.mean + std * stats.norm.ppf(p)
        error = np.mean(np.abs(np.sort(exact_flow(task, z, 10.0, 0.002)) - quantiles))
        assert low <= error <= high


def test_path_states_compose_and_are_ordered():
    task = TASKS["three_gmm_1D"]
    sigmas = np.array([10.0, 2.0, 0.5, 0.002])
    z = np.linspace(-25, 25, 501)
    path = exact_path(task, z, sigmas)
    assert path.shape == (4, 501)
    assert np.all(np.diff(path, axis=1) >= 0)  # the exact flow never folds
    # Two exact jumps equal the direct one.
    np.testing.assert_allclose(exact_flow(task, path[1], 2.0, 0.002), path[3], atol=1e-8)
