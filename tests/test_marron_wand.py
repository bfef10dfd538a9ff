"""Tests for ctm_core.marron_wand: the densities against the paper's formulas written out (ell: its l)."""

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from ctm_core.marron_wand import MARRON_WAND
from ctm_core.tasks import TASKS, get_task

POINTS = np.array([-2.3, -1.0, -0.52, 0.0, 0.31, 1.0, 1.5, 2.6])


def _claw(x: np.ndarray) -> np.ndarray:
    """#10: ½N(0, 1) + Σ_{l=0}^{4} (1/10) N(l/2 − 1, (1/10)²)."""
    return 0.5 * norm.pdf(x, 0, 1) + sum(0.1 * norm.pdf(x, ell / 2 - 1, 0.1) for ell in range(5))


def _strongly_skewed(x: np.ndarray) -> np.ndarray:
    """#3: Σ_{l=0}^{7} (1/8) N(3((2/3)^l − 1), ((2/3)^l)²)."""
    return sum(norm.pdf(x, 3 * ((2 / 3) ** ell - 1), (2 / 3) ** ell) / 8 for ell in range(8))


def _asymmetric_claw(x: np.ndarray) -> np.ndarray:
    """#12: ½N(0, 1) + Σ_{l=−2}^{2} (2^{1−l}/31) N(l + ½, (2^{−l}/10)²)."""
    return 0.5 * norm.pdf(x) + sum(
        2 ** (1 - ell) / 31 * norm.pdf(x, ell + 0.5, 2.0**-ell / 10) for ell in range(-2, 3)
    )


def _asymmetric_double_claw(x: np.ndarray) -> np.ndarray:
    """#13: Σ_{l=0}^{1} (46/100) N(2l − 1, (2/3)²) + Σ_{l=1}^{3} (1/300) N(−l/2, (1/100)²)
    + Σ_{l=1}^{3} (7/300) N(l/2, (7/100)²)."""
    broad = sum(0.46 * norm.pdf(x, 2 * ell - 1, 2 / 3) for ell in range(2))
    left = sum(norm.pdf(x, -ell / 2, 0.01) / 300 for ell in range(1, 4))
    right = sum(7 / 300 * norm.pdf(x, ell / 2, 0.07) for ell in range(1, 4))
    return broad + left + right


def _smooth_comb(x: np.ndarray) -> np.ndarray:
    """#14: Σ_{l=0}^{5} (2^{5−l}/63) N((65 − 96(½)^l)/21, (32/63)²/2^{2l})."""
    return sum(
        2 ** (5 - ell) / 63 * norm.pdf(x, (65 - 96 * 0.5**ell) / 21, 32 / 63 / 2**ell) for ell in range(6)
    )


def _discrete_comb(x: np.ndarray) -> np.ndarray:
    """#15: Σ_{l=0}^{2} (2/7) N((12l − 15)/7, (2/7)²) + Σ_{l=8}^{10} (1/21) N(2l/7, (1/21)²)."""
    big = sum(2 / 7 * norm.pdf(x, (12 * ell - 15) / 7, 2 / 7) for ell in range(3))
    return big + sum(norm.pdf(x, 2 * ell / 7, 1 / 21) / 21 for ell in range(8, 11))


def _outlier(x: np.ndarray) -> np.ndarray:
    """#5: (1/10) N(0, 1) + (9/10) N(0, (1/10)²)."""
    return 0.1 * norm.pdf(x) + 0.9 * norm.pdf(x, 0, 0.1)


def _skewed_unimodal(x: np.ndarray) -> np.ndarray:
    """#2: (1/5) N(0, 1) + (1/5) N(½, (2/3)²) + (3/5) N(13/12, (5/9)²)."""
    return 0.2 * norm.pdf(x) + 0.2 * norm.pdf(x, 0.5, 2 / 3) + 0.6 * norm.pdf(x, 13 / 12, 5 / 9)


FORMULAS = {
    "mw02_skewed_unimodal": _skewed_unimodal,
    "mw03_strongly_skewed": _strongly_skewed,
    "mw05_outlier": _outlier,
    "mw10_claw": _claw,
    "mw12_asymmetric_claw": _asymmetric_claw,
    "mw13_asymmetric_double_claw": _asymmetric_double_claw,
    "mw14_smooth_comb": _smooth_comb,
    "mw15_discrete_comb": _discrete_comb,
}

# Local maxima of each density: the paper's figures (the claw's five claws, the combs' six teeth).
MODES = {
    "mw01_gaussian": 1,
    "mw02_skewed_unimodal": 1,
    "mw03_strongly_skewed": 1,
    "mw04_kurtotic_unimodal": 1,
    "mw05_outlier": 1,
    "mw06_bimodal": 2,
    "mw07_separated_bimodal": 2,
    "mw08_skewed_bimodal": 2,
    "mw09_trimodal": 3,
    "mw10_claw": 5,
    "mw11_double_claw": 7,
    "mw12_asymmetric_claw": 5,
    "mw13_asymmetric_double_claw": 6,
    "mw14_smooth_comb": 6,
    "mw15_discrete_comb": 6,
}


def test_fifteen_densities_whose_names_sort_in_the_papers_order() -> None:
    names = list(MARRON_WAND)
    assert len(names) == 15 and names == sorted(names) == sorted(MODES)
    assert [int(name[2:4]) for name in names] == list(range(1, 16))
    assert "Claw" in MARRON_WAND["mw10_claw"].description
    assert MARRON_WAND["mw15_discrete_comb"].description == "Marron & Wand (1992) density #15: Discrete comb"


def test_get_task_finds_them_but_the_shipped_set_is_unchanged() -> None:
    assert get_task("mw05_outlier") is MARRON_WAND["mw05_outlier"]
    assert not set(MARRON_WAND) & set(TASKS) and len(TASKS) == 8
    with pytest.raises(KeyError, match="mw10_claw"):
        get_task("mw99_nope")


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_density_matches_the_papers_formula(name: str) -> None:
    task = MARRON_WAND[name]
    assert task.pdf(POINTS) == pytest.approx(FORMULAS[name](POINTS), rel=1e-12, abs=1e-300)


def test_simple_densities_at_known_points() -> None:
    assert MARRON_WAND["mw01_gaussian"].pdf(np.array([0.0]))[0] == pytest.approx(1 / np.sqrt(2 * np.pi))
    # #7 at a mode: ½·N(0; 0, ½²) plus the far component's 6σ tail.
    expected = 0.5 * norm.pdf(1.5, 1.5, 0.5) + 0.5 * norm.pdf(1.5, -1.5, 0.5)
    assert MARRON_WAND["mw07_separated_bimodal"].pdf(np.array([1.5]))[0] == pytest.approx(expected, rel=1e-12)
    # #4 at 0: (2/3)·φ(0) + (1/3)·10·φ(0).
    kurtotic = (2 / 3 + 10 / 3) / np.sqrt(2 * np.pi)
    assert MARRON_WAND["mw04_kurtotic_unimodal"].pdf(np.array([0.0]))[0] == pytest.approx(kurtotic)


@pytest.mark.parametrize("name", sorted(MARRON_WAND))
def test_each_density_integrates_to_one(name: str) -> None:
    task = MARRON_WAND[name]
    # Break the range at every component mean, so quad sees each narrow spike.
    points = np.sort(task.means)
    total, _ = integrate.quad(lambda x: float(task.pdf(np.array(x))), -12, 12, points=points, limit=1000)
    assert total == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("name", sorted(MARRON_WAND))
def test_number_of_local_maxima(name: str) -> None:
    # Spacing 1e-5, far below the narrowest component (σ = 1/100).
    x = np.linspace(-4.0, 4.0, 800_001)
    slope = np.diff(MARRON_WAND[name].pdf(x))
    assert int(np.sum((slope[:-1] > 0) & (slope[1:] <= 0))) == MODES[name]
