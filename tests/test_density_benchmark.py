"""benchmarks.density's pure pieces: exact W1, the KL quadrature, and skipping finished fits."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import density
from ctm_core.baselines import MixtureEstimator
from ctm_core.marron_wand import MARRON_WAND

ROOT = Path(__file__).resolve().parents[1]

GAUSSIAN = MARRON_WAND["mw01_gaussian"]


def test_exact_w1_of_a_shifted_and_a_scaled_normal() -> None:
    shifted = MixtureEstimator(np.array([1.0]), np.array([0.3]), np.array([1.0]), "shifted")
    assert density.exact_w1(shifted, GAUSSIAN) == pytest.approx(0.3, rel=1e-4)
    # Between N(0, 2²) and N(0, 1), W1 = E|2Z − Z| = E|Z| = √(2/π).
    wide = MixtureEstimator(np.array([1.0]), np.array([0.0]), np.array([2.0]), "wide")
    assert density.exact_w1(wide, GAUSSIAN) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-4)


def test_kl_quadrature_of_two_gaussians_against_the_closed_form() -> None:
    mu, s = 0.5, 1.5
    q = MixtureEstimator(np.array([1.0]), np.array([mu]), np.array([s]), "q")
    # KL(N(0, 1) ‖ N(μ, s²)) = log s + (1 + μ²)/(2s²) − ½.
    closed = math.log(s) + (1 + mu**2) / (2 * s**2) - 0.5
    coarse = density.kl_by_quadrature(q.log_prob, GAUSSIAN, density.KL_POINTS)
    fine = density.kl_by_quadrature(q.log_prob, GAUSSIAN, density.KL_CHECK_POINTS)
    assert coarse == pytest.approx(closed, abs=1e-6)
    assert abs(fine - closed) < abs(coarse - closed)
    assert density.kl_by_quadrature(GAUSSIAN.log_prob, GAUSSIAN, 100) == 0.0


def test_values_are_seeded_by_density_size_and_repetition() -> None:
    a = density.draw_values(GAUSSIAN, 1000, 0)
    assert a.dtype == np.float64 and a.shape == (1000,)
    assert np.array_equal(a, density.draw_values(GAUSSIAN, 1000, 0))
    assert not np.array_equal(a, density.draw_values(GAUSSIAN, 1000, 1))
    assert not np.array_equal(a[:100], density.draw_values(MARRON_WAND["mw06_bimodal"], 1000, 0)[:100])


def _record(method: str) -> dict:
    """A finished result file's content for mw01_gaussian, n = 1000, r = 0."""
    record = {"part": "marron_wand", "density": "mw01_gaussian", "size": 1000, "rep": 0}
    record |= {"method": method, "machine": "test", "fit_seconds": 1.0, "eval_seconds": 0.5}
    record |= {"w1": 0.02, "kl": 0.01, "kl_check": 0.0101, "pdf": [0.1] * density.PLOT_POINTS}
    if method == "ctm":
        record |= {"w1": 0.03, "kl_ode": 0.02, "kl_ode_check": 0.0201, "kl_ode_seconds": 9.0}
    return record


def test_finished_fits_are_skipped_and_the_report_is_built_from_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"
    for method in density.METHODS:
        path = density.density_path(results, "mw01_gaussian", 1000, 0, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_record(method)))
    assert list(density.density_jobs(results, ["mw01_gaussian"], [1000], 1)) == []
    assert list(density.density_jobs(results, ["mw01_gaussian"], [1000], 2)) == [
        ("mw01_gaussian", 1000, 1, list(density.METHODS))
    ]
    density.density_path(results, "mw01_gaussian", 1000, 0, "isj_kde").unlink()
    assert list(density.density_jobs(results, ["mw01_gaussian"], [1000], 1)) == [
        ("mw01_gaussian", 1000, 0, ["isj_kde"])
    ]
    density.density_path(results, "mw01_gaussian", 1000, 0, "isj_kde").write_text(
        json.dumps(_record("isj_kde"))
    )

    def refuse(*args: object) -> None:
        raise AssertionError("a finished fit was run again")

    monkeypatch.setattr(density, "train_ctm", refuse)
    monkeypatch.setattr(density, "fit_timed", refuse)
    report = tmp_path / "docs" / "density.md"
    argv = ["--densities", "mw01_gaussian", "--sizes", "1000", "--reps", "1"]
    assert density.main([*argv, "--results", str(results), "--report", str(report)]) == 0
    text = report.read_text()
    assert "| mw01_gaussian | 1 | 0.0300 | 0.0200 | 0.0200 | 0.0200 | 1.50 (Scott KDE) |" in text
    assert "on **0 of 1** densities" in text
    assert (tmp_path / "docs" / "density" / "mw01_gaussian.png").stat().st_size > 0
