"""The data-chosen σ_min: likelihood cross-validation against the bandwidths theory gives."""

import numpy as np
import pytest

from ctm_core.bandwidth import cv_bandwidth, scott_bandwidth


def amise_normal(sd: float, n: int) -> float:
    """The AMISE-optimal Gaussian-kernel bandwidth for a normal law, (4/3n)^(1/5)·sd (Silverman 1986)."""
    return (4 / (3 * n)) ** 0.2 * sd


@pytest.mark.parametrize(("n", "seeds"), [(300, 5), (2_000, 1), (20_000, 1)])
def test_normal_sample_gets_the_optimal_bandwidth(n: int, seeds: int) -> None:
    # Likelihood CV is consistent for the KL-optimal bandwidth, within ~10 % of AMISE's for a normal
    # law; the sample's own noise allows the rest (20,000 is judged on a rescaled subsample).
    ratios = [
        cv_bandwidth(np.random.default_rng(seed).normal(3.0, 2.0, n)) / amise_normal(2.0, n)
        for seed in range(seeds)
    ]
    assert 0.75 < float(np.median(ratios)) < 1.3


def test_narrow_modes_get_their_own_scale_not_the_spread() -> None:
    # Two modes of sd 0.05 at ±2: the right bandwidth is each mode's (≈ 0.017 at 300 values a mode),
    # while Scott's rule, driven by the overall sd of 2, is ~0.6.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.05, 300), rng.normal(2, 0.05, 300)])
    h = cv_bandwidth(x)
    assert h is not None and h < 0.1 * scott_bandwidth(x)
    assert 0.5 < h / amise_normal(0.05, 300) < 2.0


@pytest.mark.parametrize("unit", [0.1, 0.5])
def test_rounded_values_do_not_collapse_to_spikes(unit: float) -> None:
    # Values rounded to a unit have many ties; plain leave-one-out would pick h → 0 (spikes on the
    # grid). Dequantised, the choice stays near the continuous law's optimum.
    x = np.round(np.random.default_rng(1).normal(0, 1, 1_000) / unit) * unit
    assert 0.6 < cv_bandwidth(x) / amise_normal(1.0, 1_000) < 1.6


def test_one_wild_value_does_not_move_the_bandwidth() -> None:
    x = np.random.default_rng(2).normal(0, 1, 500)
    alone, with_outlier = cv_bandwidth(x), cv_bandwidth(np.append(x, 1e6))
    assert with_outlier == pytest.approx(alone, rel=0.15)


@pytest.mark.parametrize("values", [[1.0, 1.0, 2.0, 2.0], [5.0] * 10, [1.0, 2.0]])
def test_too_few_distinct_values_give_no_bandwidth(values: list[float]) -> None:
    assert cv_bandwidth(np.array(values)) is None


def test_scott_bandwidth_is_the_textbook_rule() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert scott_bandwidth(x) == pytest.approx(1.059 * np.std(x, ddof=1) * 5 ** (-0.2), rel=1e-12)


def test_a_sample_of_a_larger_population_is_rescaled_to_it() -> None:
    # 800 values standing for 80,000: the bandwidth of the whole, (1/100)^(1/5) of the sample's own.
    x = np.random.default_rng(3).normal(0, 1, 800)
    assert cv_bandwidth(x, population=80_000) == pytest.approx(cv_bandwidth(x) * 0.01**0.2, rel=1e-12)
