"""Tests for ctm_core.metrics against closed-form distances."""

import itertools

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ctm_core.metrics import (
    NLL_LOG_PROB_FLOOR,
    _abs_integral_linear,
    evaluate_samples,
    ks_to_cdf,
    mode_coverage,
    nll,
    quantile_w1,
    w1_to_cdf,
    w1_two_sample,
)
from ctm_core.samplers import latent
from ctm_core.tasks import TASKS, EmpiricalTask, GaussianMixture

N = 20_000
STANDARD_NORMAL = GaussianMixture("std_normal", [1.0], [0.0], [1.0])


def _mid_p(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def test_quantile_w1_of_quantile_latents():
    """The samplers' quantile latents (float32) are N(μ, std²)'s midpoint quantiles: qW1 ≈ 0 against
    that law, and |std − b|·E|Z| = |std − b|·√(2/π) against N(μ, b²)."""
    z = latent(N, 0.5, 2.5, "quantile", torch.Generator())
    assert z.dtype == torch.float32 and z.shape == (N,)
    assert quantile_w1(z, GaussianMixture("prior", [1.0], [0.5], [2.5])) < 1e-5
    narrow = GaussianMixture("narrow", [1.0], [0.5], [2.0])
    assert quantile_w1(z, narrow) == pytest.approx(0.5 * np.sqrt(2 / np.pi), rel=1e-3)


@pytest.mark.parametrize("name", ["two_gmm_1D", "heavy_tailed_1D", "many_modes_1D"])
def test_quantile_w1_of_exact_quantiles_is_zero_and_of_shift_is_shift(name):
    task = TASKS[name]
    exact = task.quantile(_mid_p(N))
    assert quantile_w1(exact, task) < 1e-9
    # Order of the samples must not matter, and a shift of 0.1 costs exactly 0.1.
    shuffled = np.random.default_rng(0).permutation(exact + 0.1)
    assert quantile_w1(shuffled, task) == pytest.approx(0.1, abs=1e-9)
    assert quantile_w1(torch.from_numpy(exact - 0.25), task) == pytest.approx(0.25, abs=1e-9)


def test_w1_and_ks_against_cdf_for_shifted_normal():
    # Quantile samples of N(0.1, 1) against N(0, 1): W1 = 0.1, KS = 2Φ(0.05) − 1.
    samples = stats.norm.ppf(_mid_p(N), loc=0.1)
    assert w1_to_cdf(samples, STANDARD_NORMAL) == pytest.approx(0.1, abs=1e-4)
    ks = 2 * stats.norm.cdf(0.05) - 1
    assert ks_to_cdf(samples, STANDARD_NORMAL) == pytest.approx(ks, abs=1e-4)


def test_w1_and_ks_against_cdf_for_scaled_normal():
    # N(0, 1.2²) against N(0, 1): W1 = |1.2 − 1|·E|Z| = 0.2·√(2/π).
    samples = stats.norm.ppf(_mid_p(N), scale=1.2)
    assert w1_to_cdf(samples, STANDARD_NORMAL) == pytest.approx(0.2 * np.sqrt(2 / np.pi), abs=1e-4)


def test_ks_matches_scipy_on_random_samples():
    task = TASKS["three_gmm_1D"]
    x = task.sample(5000, torch.Generator().manual_seed(0)).numpy()
    assert ks_to_cdf(x, task) == pytest.approx(stats.kstest(x.astype(float), task.cdf).statistic)


def test_w1_to_cdf_of_exact_quantiles_is_tiny():
    task = TASKS["two_gmm_1D"]
    # Midpoint quantiles are the best n-point approximation: W1 ~ 1/(4n·p) ≪ 1e-3.
    assert w1_to_cdf(task.quantile(_mid_p(N)), task) < 1e-4


def test_w1_to_cdf_single_sample_far_away():
    # One point at c against N(0, 1): W1 = E|Z − c| = c(2Φ(c) − 1) + 2φ(c).
    c = 3.0
    expected = c * (2 * stats.norm.cdf(c) - 1) + 2 * stats.norm.pdf(c)
    assert w1_to_cdf(np.array([c]), STANDARD_NORMAL) == pytest.approx(expected, abs=1e-6)


def test_w1_two_sample():
    a = np.random.default_rng(1).normal(size=1000)
    assert w1_two_sample(a, a) == 0.0
    assert w1_two_sample(a, a + 0.3) == pytest.approx(0.3)
    assert w1_two_sample(a, a[::-1] - 0.3) == pytest.approx(0.3)
    b = np.random.default_rng(2).normal(size=700)
    assert w1_two_sample(a, b) == pytest.approx(stats.wasserstein_distance(a, b))


def test_empirical_task_metrics_are_two_sample():
    values = np.random.default_rng(3).normal(size=2000)
    task = EmpiricalTask(values)
    assert w1_to_cdf(values + 0.2, task) == pytest.approx(0.2)
    assert ks_to_cdf(values, task) == 0.0
    assert quantile_w1(task.quantile(_mid_p(500)), task) < 1e-12


def test_nll_matches_entropy_and_is_finite_outside_support():
    x = STANDARD_NORMAL.quantile(_mid_p(N))
    assert nll(x, STANDARD_NORMAL) == pytest.approx(0.5 * np.log(2 * np.pi * np.e), abs=1e-3)
    bounded = TASKS["bounded_1D"]
    assert nll(np.array([0.0, 5.0]), bounded) == pytest.approx(
        -(float(bounded.log_prob(np.array(0.0))) + NLL_LOG_PROB_FLOOR) / 2
    )


def test_metrics_reject_non_finite_samples():
    with pytest.raises(ValueError, match="1 of 3"):
        quantile_w1(np.array([0.0, np.nan, 1.0]), TASKS["two_gmm_1D"])


def test_mode_coverage():
    task = TASKS["uneven_two_gmm_1D"]
    x = task.sample(N, torch.Generator().manual_seed(0)).numpy()
    cover = mode_coverage(x, task)
    assert [c["center"] for c in cover] == [-1.5, 1.5]
    assert [c["true_weight"] for c in cover] == pytest.approx([0.7, 0.3])
    assert [c["model_weight"] for c in cover] == pytest.approx([0.7, 0.3], abs=0.01)
    assert sum(c["model_weight"] for c in cover) <= 1.0
    # All samples in one mode: that mode gets everything, the other nothing.
    collapsed = mode_coverage(np.full(100, -1.5), task)
    assert [c["model_weight"] for c in collapsed] == [1.0, 0.0]
    assert mode_coverage(x, TASKS["skewed_1D"]) is None


def test_evaluate_samples():
    task = TASKS["two_gmm_1D"]
    exact = task.quantile(_mid_p(N))
    result = evaluate_samples(exact + 0.05, task, quantile=True)
    assert set(result) == {"qW1", "W1", "KS", "NLL"}
    assert result["qW1"] == pytest.approx(0.05)
    assert result["W1"] == pytest.approx(0.05, abs=1e-3)
    assert result["NLL"] == pytest.approx(nll(exact + 0.05, task))
    assert evaluate_samples(exact, task, quantile=False)["qW1"] is None


def test_the_exact_segment_integral_matches_quadrature() -> None:
    # ∫|c − F| on segments where F is linear, with and without a sign change, against a fine sum.
    rng = np.random.default_rng(0)
    c, f_a, f_b = rng.uniform(0, 1, 200), rng.uniform(0, 1, 200), rng.uniform(0, 1, 200)
    h = rng.uniform(0.1, 2.0, 200)
    u = (np.arange(20_000) + 0.5) / 20_000  # midpoint rule inside each segment
    reference = sum(
        hj * np.mean(np.abs(cj - (aj + u * (bj - aj)))) for cj, aj, bj, hj in zip(c, f_a, f_b, h, strict=True)
    )
    assert _abs_integral_linear(c, f_a, f_b, h) == pytest.approx(reference, rel=1e-7)
    crossing = (c - f_a) * (c - f_b) < 0
    assert 50 < crossing.sum() < 150  # both cases are exercised


def test_w1_to_a_normal_cdf_matches_quadrature_to_1e_9() -> None:
    # ∫|F_n − Φ| for 5 fixed points, by scipy's quad between the points, split where Φ crosses
    # each step of F_n (Φ⁻¹(k/n)), so every piece is smooth: accurate to ~1e-12.
    task = GaussianMixture("n", np.array([1.0]), np.array([0.0]), np.array([1.0]))
    x = np.sort(np.array([-1.3, -0.2, 0.05, 0.4, 2.2]))
    edges = np.concatenate([[-np.inf], x, [np.inf]])
    reference = 0.0
    for k in range(x.size + 1):
        level = k / x.size
        cut = stats.norm.ppf(level)
        pieces = [edges[k], *([cut] if edges[k] < cut < edges[k + 1] else []), edges[k + 1]]
        for lo, hi in itertools.pairwise(pieces):
            gap = lambda t, c=level: abs(c - stats.norm.cdf(t))  # noqa: E731
            reference += integrate.quad(gap, lo, hi, epsabs=1e-13)[0]
    assert w1_to_cdf(x, task) == pytest.approx(reference, abs=1e-9)
