"""Tests for ctm_core.tasks: exact densities, sampling, quantiles and denoisers."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ctm_core.tasks import (
    TASKS,
    EmpiricalTask,
    GaussianMixture,
    Mode,
    ScipyTask,
    get_task,
)

BUILTIN = sorted(TASKS)
N_SAMPLES = 20_000


def _samples(task_name: str, seed: int = 0, n: int = N_SAMPLES) -> np.ndarray:
    return TASKS[task_name].sample(n, torch.Generator().manual_seed(seed)).numpy()


def test_registry_has_all_tasks_and_get_task_lists_names():
    expected = {
        "two_gmm_1D",
        "uneven_two_gmm_1D",
        "three_gmm_1D",
        "single_gaussian_1D",
        "heavy_tailed_1D",
        "skewed_1D",
        "bounded_1D",
        "many_modes_1D",
    }
    assert set(TASKS) == expected
    assert get_task("two_gmm_1D") is TASKS["two_gmm_1D"]
    with pytest.raises(KeyError, match="two_gmm_1D"):
        get_task("nope")


def test_task_metadata():
    two = TASKS["two_gmm_1D"]
    assert two.kind == "gaussian_mixture"
    assert two.description == "equal mixture of N(-1.5, 0.3²) and N(1.5, 0.3²)"
    assert TASKS["uneven_two_gmm_1D"].description == "0.7·N(-1.5, 0.3²) + 0.3·N(1.5, 0.2²)"
    assert TASKS["heavy_tailed_1D"].kind == "scipy"
    assert TASKS["heavy_tailed_1D"].modes is None
    assert [m.center for m in TASKS["many_modes_1D"].modes] == pytest.approx(
        [-1.75 + 0.5 * i for i in range(8)]
    )


def test_mixture_modes_half_width_capped_by_neighbours():
    assert TASKS["two_gmm_1D"].modes == [
        Mode(-1.5, 0.5, pytest.approx(0.9)),
        Mode(1.5, 0.5, pytest.approx(0.9)),
    ]
    assert [m.half_width for m in TASKS["three_gmm_1D"].modes] == pytest.approx([0.6] * 3)
    # 3σ = 0.24 < half the 0.5 spacing.
    assert [m.half_width for m in TASKS["many_modes_1D"].modes] == pytest.approx([0.24] * 8)
    close = GaussianMixture("close", [0.5, 0.5], [0.0, 1.0], [1.0, 1.0])
    assert [m.half_width for m in close.modes] == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize("name", BUILTIN)
def test_pdf_integrates_to_one(name):
    task = TASKS[name]
    lo, hi = task.quantile(np.array([1e-10, 1 - 1e-10]))
    points = [m.center for m in task.modes] if task.modes else None
    total, _ = integrate.quad(lambda x: float(task.pdf(x)), lo, hi, points=points, limit=500)
    assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", BUILTIN)
def test_samples_match_cdf_and_moments(name):
    task = TASKS[name]
    x = _samples(name)
    assert x.dtype == np.float32 and x.shape == (N_SAMPLES,)
    assert stats.kstest(x.astype(np.float64), task.cdf).statistic < 0.015
    # 5 standard errors; Student-t(4) has no 4th moment, so its sample std converges slowly.
    assert x.mean() == pytest.approx(task.mean, abs=5 * task.std / np.sqrt(N_SAMPLES))
    rel = 0.1 if name == "heavy_tailed_1D" else 0.03
    assert x.std() == pytest.approx(task.std, rel=rel)


@pytest.mark.parametrize("name", BUILTIN)
def test_same_seed_same_samples(name):
    a, b, c = _samples(name, 7, 100), _samples(name, 7, 100), _samples(name, 8, 100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", BUILTIN)
def test_quantile_inverts_cdf(name):
    task = TASKS[name]
    x = task.quantile(np.linspace(1e-6, 1 - 1e-6, 2001))
    np.testing.assert_allclose(task.quantile(task.cdf(x)), x, atol=1e-8)
    assert task.quantile(np.array([0.0]))[0] <= x[0]


def test_known_values():
    single = TASKS["single_gaussian_1D"]
    np.testing.assert_allclose(single.quantile(np.array([0.5, 0.975])), [1.0, 1.0 + 0.2 * 1.96], atol=1e-4)
    np.testing.assert_allclose(single.log_prob(np.array([1.0])), stats.norm(1, 0.2).logpdf(1.0))
    two = TASKS["two_gmm_1D"]
    assert two.mean == pytest.approx(0.0)
    assert two.std == pytest.approx(np.sqrt(0.3**2 + 1.5**2))
    assert float(two.cdf(np.array(0.0))) == pytest.approx(0.5)
    assert TASKS["heavy_tailed_1D"].std == pytest.approx(0.5 * np.sqrt(2))


@pytest.mark.parametrize("name", [n for n in BUILTIN if TASKS[n].kind == "gaussian_mixture"])
def test_mixture_denoiser_limits(name):
    task = TASKS[name]
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    torch.testing.assert_close(task.denoise(x, 1e-6), x, atol=1e-6, rtol=0)
    big = task.denoise(x, 1e5)
    torch.testing.assert_close(big, torch.full_like(x, task.mean), atol=1e-4, rtol=0)


def test_single_gaussian_denoiser_closed_form():
    task = TASKS["single_gaussian_1D"]
    mu, var = 1.0, 0.2**2
    x = torch.linspace(-4, 4, 33, dtype=torch.float64)
    t = torch.tensor([0.0, 0.05, 0.3, 1.0, 10.0], dtype=torch.float64)[:, None]
    expected = mu + var / (var + t**2) * (x - mu)
    torch.testing.assert_close(task.denoise(x, t), expected)


def test_denoise_keeps_dtype_and_broadcasts():
    task = TASKS["two_gmm_1D"]
    x = torch.randn(5, generator=torch.Generator().manual_seed(0))
    out = task.denoise(x, torch.full((5,), 0.5))
    assert out.dtype == torch.float32 and out.shape == (5,)
    torch.testing.assert_close(out, task.denoise(x, 0.5))


def test_quadrature_denoiser_matches_closed_form_for_normal():
    mu, sd = 0.3, 0.7
    task = ScipyTask("normal", stats.norm(mu, sd), "N(0.3, 0.7²)")
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    # Both the local grid (t < 0.35) and the fixed grid (t ≥ 0.35) are exercised.
    t = torch.tensor([1e-3, 0.05, 0.1, 0.3, 0.4, 1.0, 5.0, 50.0], dtype=torch.float64)[:, None]
    expected = mu + sd**2 / (sd**2 + t**2) * (x - mu)
    torch.testing.assert_close(task.denoise(x, t), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(task.denoise(x, 0.0), x)


def _reference_posterior_mean(task, x: float, t: float) -> float:
    """∫x₀ p(x₀) N(x; x₀, t²) dx₀ / ∫p(x₀) N(x; x₀, t²) dx₀ by adaptive quadrature."""
    lo, hi = task.quantile(np.array([1e-12, 1 - 1e-12]))
    lo, hi = max(lo, x - 40 * t), min(hi, x + 40 * t)

    def weight(x0: float) -> float:
        return float(task.pdf(x0)) * np.exp(-((x - x0) ** 2) / (2 * t * t))

    points = [p for p in (x, task.mean) if lo < p < hi]
    num = integrate.quad(lambda x0: x0 * weight(x0), lo, hi, points=points, limit=500)[0]
    den = integrate.quad(weight, lo, hi, points=points, limit=500)[0]
    return num / den


@pytest.mark.parametrize("name", ["heavy_tailed_1D", "skewed_1D", "bounded_1D"])
def test_scipy_denoiser_matches_adaptive_quadrature(name):
    task = TASKS[name]
    xs = [-1.6, -1.0, -0.3, 0.0, 0.4, 1.2, 1.6]
    for t in (0.05, 0.3, 1.0, 5.0):
        got = task.denoise(torch.tensor(xs, dtype=torch.float64), t).numpy()
        want = [_reference_posterior_mean(task, x, t) for x in xs]
        np.testing.assert_allclose(got, want, atol=1e-3)
    big = task.denoise(torch.tensor(xs, dtype=torch.float64), 1e4)
    np.testing.assert_allclose(big.numpy(), task.mean, atol=1e-4)


def test_empirical_task():
    values = np.random.default_rng(0).normal(2.0, 0.5, size=3000)
    task = EmpiricalTask(values, name="mine")
    assert task.kind == "data" and task.modes is None
    assert task.mean == pytest.approx(values.mean()) and task.std == pytest.approx(values.std())
    assert float(task.cdf(np.array(np.sort(values)[99]))) == pytest.approx(100 / 3000)
    assert float(task.quantile(np.array(0.5))) == pytest.approx(np.median(values))
    s1 = task.sample(500, torch.Generator().manual_seed(3))
    s2 = task.sample(500, torch.Generator().manual_seed(3))
    torch.testing.assert_close(s1, s2)
    assert np.isin(s1.numpy(), values.astype(np.float32)).all()
    # KDE of N(2, 0.5²) data is close to the true density at the center.
    assert float(task.pdf(np.array(2.0))) == pytest.approx(stats.norm(2, 0.5).pdf(2.0), rel=0.1)
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(task.denoise(x, 1e4), torch.full_like(x, values.mean()), atol=1e-3, rtol=0)
    torch.testing.assert_close(task.denoise(x, 0.0), x)
    # Small t snaps to the nearest training value; moderate t ≈ Gaussian posterior mean.
    nearest = values[np.abs(values - 2.0).argmin()]
    assert float(task.denoise(torch.tensor([2.0], dtype=torch.float64), 1e-5)) == pytest.approx(nearest)
    gauss = 2.0 + 0.25 / (0.25 + 0.25) * (x - 2.0)
    torch.testing.assert_close(task.denoise(x, 0.5), gauss, atol=0.05, rtol=0)
