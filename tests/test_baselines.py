"""Tests for ctm_core.baselines: each estimator is a proper density whose CDF, quantile and draws agree."""

import sys

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from ctm_core.baselines import BASELINES, BaselineUnavailable, GaussianKDE, fit_baseline
from ctm_core.marron_wand import MARRON_WAND

GRID = np.linspace(-7.0, 7.0, 14_001)


@pytest.fixture(scope="module")
def normal_draws() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(5_000)


@pytest.fixture(scope="module", params=sorted(BASELINES))
def fitted(request: pytest.FixtureRequest, normal_draws: np.ndarray):
    if BASELINES[request.param].package == "KDEpy":
        pytest.importorskip("KDEpy")
    if BASELINES[request.param].package == "scikit-learn":
        pytest.importorskip("sklearn")
    estimator = fit_baseline(request.param, normal_draws)
    # Density and CDF on GRID, computed once for the tests below.
    estimator.on_grid = (estimator.pdf(GRID), estimator.cdf(GRID))
    return estimator


def test_the_table_names_its_baselines() -> None:
    assert sorted(BASELINES) == ["bic_mixture", "isj_kde", "scott_kde"]
    assert all(name == spec.name for name, spec in BASELINES.items())


def test_density_integrates_to_one(fitted) -> None:
    assert fitted.name in BASELINES
    assert np.trapezoid(fitted.on_grid[0], GRID) == pytest.approx(1.0, abs=1e-6)


def test_cdf_is_monotone_and_the_integral_of_the_density(fitted) -> None:
    pdf, f = fitted.on_grid
    assert np.all(np.diff(f) >= 0) and f[0] < 1e-9 and f[-1] > 1 - 1e-9
    integral = integrate.cumulative_trapezoid(pdf, GRID, initial=0.0) + f[0]
    assert np.abs(f - integral).max() < 1e-6


def test_quantile_inverts_the_cdf(fitted) -> None:
    p = np.array([1e-6, 0.01, 0.25, 0.5, 0.9, 0.999])
    assert fitted.cdf(fitted.quantile(p)) == pytest.approx(p, rel=1e-9, abs=1e-12)
    assert fitted.quantile(p.reshape(2, 3)).shape == (2, 3)


def test_w1_to_the_truth_is_small_and_draws_follow_the_cdf(fitted) -> None:
    # Exact W1 = ∫|F − Φ| dx (trapezoid on a 1e-3 grid).
    w1 = np.trapezoid(np.abs(fitted.on_grid[1] - special.ndtr(GRID)), GRID)
    assert w1 < 0.04
    draws = fitted.sample(5_000, np.random.default_rng(1))
    assert draws.shape == (5_000,) and stats.kstest(draws, fitted.cdf).pvalue > 1e-3


def test_scott_bandwidth_and_kde_values_are_scipys(normal_draws: np.ndarray) -> None:
    kde = fit_baseline("scott_kde", normal_draws)
    assert isinstance(kde, GaussianKDE)
    assert kde.bandwidth == pytest.approx(normal_draws.std(ddof=1) * normal_draws.size ** (-1 / 5))
    x = np.array([-3.0, 0.1, 2.0])
    assert kde.log_prob(x) == pytest.approx(stats.gaussian_kde(normal_draws).logpdf(x), rel=1e-12)
    # The windowed CDF sum equals the full one.
    full = special.ndtr((x[:, None] - normal_draws[None, :]) / kde.bandwidth).mean(axis=1)
    assert kde.cdf(x) == pytest.approx(full, rel=1e-12, abs=1e-15)


def test_isj_is_narrower_than_scott_on_a_bimodal_sample() -> None:
    kdepy = pytest.importorskip("KDEpy")
    values = MARRON_WAND["mw07_separated_bimodal"].sample(5_000, torch.Generator().manual_seed(0)).double()
    isj = fit_baseline("isj_kde", values.numpy())
    scott = fit_baseline("scott_kde", values.numpy())
    assert isj.bandwidth < 0.7 * scott.bandwidth
    # KDEpy's own ISJ on the values in units where they span over 12 (where its grid padding no
    # longer matters), scaled back.
    assert isj.bandwidth == pytest.approx(kdepy.FFTKDE(bw="ISJ").fit(10 * values.numpy()).bw / 10, rel=1e-6)


def test_isj_does_not_depend_on_the_units_of_the_values() -> None:
    """ISJ is scale-equivariant: values in other units get the bandwidth in those units. (KDEpy's
    own choice is not below a 12-unit span: 0.065 instead of 0.085 on these draws.)"""
    x = np.random.default_rng(4).standard_normal(10_000)
    reference = fit_baseline("isj_kde", x).bandwidth
    for scale in (0.001, 0.1, 30.0):
        assert fit_baseline("isj_kde", scale * x).bandwidth == pytest.approx(scale * reference, rel=1e-9)
    # Normal draws: a bandwidth of the order of the AMISE-optimal (4/(3n))^(1/5) = 0.17, not a third.
    assert 0.07 < reference < 0.2


def test_bic_picks_two_components_of_a_clear_two_component_mixture() -> None:
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(-2.0, 0.5, 3_000), rng.normal(2.0, 0.5, 2_000)])
    mixture = fit_baseline("bic_mixture", values)
    assert mixture.components == 2
    assert np.sort(mixture.mixture.means) == pytest.approx([-2.0, 2.0], abs=0.05)
    assert np.sort(mixture.mixture.weights) == pytest.approx([0.4, 0.6], abs=0.02)


@pytest.mark.parametrize(("name", "module"), [("isj_kde", "KDEpy"), ("bic_mixture", "sklearn.mixture")])
def test_a_missing_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, name: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(BaselineUnavailable, match=r"pip install -e '\.\[baselines\]'"):
        fit_baseline(name, np.arange(10.0))


def test_too_few_values_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        fit_baseline("scott_kde", np.array([1.0]))
