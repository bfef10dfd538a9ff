"""Classical 1D density estimators to compare a CTM with: Scott's and ISJ Gaussian KDEs, a BIC mixture.

Each is fitted by `fit_baseline(name, values)` and answers `log_prob`, `cdf`, `quantile` and
`sample` exactly for the density it estimates (no grid): a Gaussian KDE is the mixture
(1/n) Σ_i N(x_i, h²), its CDF (1/n) Σ_i Φ((x − x_i)/h); the mixture's formulas are those of
`ctm_core.tasks.GaussianMixture`. KDEpy (ISJ) and scikit-learn (mixture) are imported on first
use; without them `BaselineUnavailable` says `pip install -e '.[baselines]'`.
"""

from __future__ import annotations

import importlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from scipy import special, stats

from ctm_core.tasks import GaussianMixture

# Kernels farther than this many bandwidths from x add Φ = 0 or 1 to the CDF (Φ(−10) ≈ 8e-24).
_KERNEL_REACH = 10.0
# Query points per block in the windowed CDF sum: block × window float64 stays small.
_CDF_BLOCK = 256
# `quantile`: points of its starting table of F, and most steps after it (Newton's converge in a
# few; a bisection step halves a table interval, 1/2048 of the bracket).
_TABLE_POINTS = 2049
_MAX_STEPS = 60
# The mixture's search: k = 1..10 components, best of 3 k-means starts each, a fixed seed.
MAX_COMPONENTS = 10
MIXTURE_INITS = 3
MIXTURE_SEED = 0

# The span (max − min) on which the ISJ bandwidth is chosen (`fit_isj_kde`): past KDEpy's fixed
# 12-unit padding, where its choice no longer depends on the data's units.
ISJ_SPAN = 100.0


class BaselineUnavailable(ImportError):
    """A baseline's optional package is not installed."""


def _require(module: str, baseline: str) -> ModuleType:
    """Import `module` for `baseline`, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BaselineUnavailable(
            f"the {baseline} baseline needs the {module} package: pip install -e '.[baselines]'"
        ) from None


def _values(values: np.ndarray) -> np.ndarray:
    """Training values as a sorted float64 vector; ValueError unless ≥ 2 finite values."""
    v = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if v.size < 2 or not np.all(np.isfinite(v)):
        raise ValueError("a density estimate needs at least 2 finite values")
    return v


class Estimator(ABC):
    """A fitted 1D density: exact log p, F and F⁻¹ of the estimate, and draws from it."""

    name: str

    @abstractmethod
    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log p(x), float64, same shape as x."""

    @abstractmethod
    def cdf(self, x: np.ndarray) -> np.ndarray:
        """F(x), float64, same shape as x."""

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n independent draws, float64, shape (n,)."""

    @abstractmethod
    def bracket(self) -> tuple[float, float]:
        """An interval outside of which F is 0 or 1 to float64 precision."""

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """p(x) = exp(log p(x))."""
        return np.exp(self.log_prob(x))

    def quantile(self, p: np.ndarray) -> np.ndarray:
        """F⁻¹(p), same shape as p: bracketed by a table of F on 2,049 points of `bracket`, then
        safeguarded Newton steps (bisection where Newton leaves the bracket) to |Δx| ≤ 1e-12·max(1, |x|)."""
        p = np.asarray(p, dtype=np.float64)
        target = p.reshape(-1)
        grid = np.linspace(*self.bracket(), _TABLE_POINTS)
        table = self.cdf(grid)
        j = np.clip(np.searchsorted(table, target, side="left"), 1, grid.size - 1)
        lo, hi = grid[j - 1], grid[j]
        x = np.interp(target, table, grid)
        active = np.arange(target.size)
        for _ in range(_MAX_STEPS):
            xa, ta = x[active], target[active]
            f = self.cdf(xa)
            below = f < ta
            lo[active] = np.where(below, xa, lo[active])
            hi[active] = np.where(below, hi[active], xa)
            with np.errstate(divide="ignore", invalid="ignore"):
                newton = xa - (f - ta) / self.pdf(xa)
            inside = np.isfinite(newton) & (newton > lo[active]) & (newton < hi[active])
            step = np.where(inside, newton, 0.5 * (lo[active] + hi[active]))
            x[active] = step
            moving = np.abs(step - xa) > 1e-12 * np.maximum(1.0, np.abs(xa))
            active = active[moving & (hi[active] - lo[active] > 0)]
            if active.size == 0:
                break
        return x.reshape(p.shape)


class GaussianKDE(Estimator):
    """(1/n) Σ_i N(x; x_i, h²): a Gaussian kernel density estimate with bandwidth h (the kernel's std)."""

    def __init__(self, values: np.ndarray, bandwidth: float, name: str) -> None:
        if not bandwidth > 0:
            raise ValueError(f"the bandwidth must be positive, got {bandwidth}")
        self.values = _values(values)
        self.bandwidth = float(bandwidth)
        self.name = name
        # scipy's kernel std is its factor times the values' std (ddof=1): the factor that gives h.
        self._kde = stats.gaussian_kde(self.values, bw_method=self.bandwidth / self.values.std(ddof=1))

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log (1/n) Σ_i φ((x − x_i)/h)/h, in log space (scipy's gaussian_kde.logpdf)."""
        x = np.asarray(x, dtype=np.float64)
        return self._kde.logpdf(x.reshape(-1)).reshape(x.shape)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """(1/n) Σ_i Φ((x − x_i)/h), summing Φ only over kernels within 10h of x (the rest are 0 or 1)."""
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(-1)
        order = np.argsort(flat)
        out = np.empty(flat.size)
        reach = _KERNEL_REACH * self.bandwidth
        for start in range(0, flat.size, _CDF_BLOCK):
            idx = order[start : start + _CDF_BLOCK]
            block = flat[idx]
            # The values whose kernels are neither 0 nor 1 anywhere in this sorted block.
            first = np.searchsorted(self.values, block[0] - reach, side="left")
            last = np.searchsorted(self.values, block[-1] + reach, side="right")
            window = self.values[first:last]
            partial = special.ndtr((block[:, None] - window[None, :]) / self.bandwidth).sum(axis=1)
            out[idx] = (first + partial) / self.values.size
        return out.reshape(x.shape)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A training value drawn uniformly, plus h·ε."""
        return rng.choice(self.values, size=n) + self.bandwidth * rng.standard_normal(n)

    def bracket(self) -> tuple[float, float]:
        reach = 2 * _KERNEL_REACH * self.bandwidth
        return float(self.values[0] - reach), float(self.values[-1] + reach)


class MixtureEstimator(Estimator):
    """A fitted Σ_k w_k N(μ_k, σ_k²), with the exact formulas of `ctm_core.tasks.GaussianMixture`."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, stds: np.ndarray, name: str) -> None:
        self.mixture = GaussianMixture(name, list(weights), list(means), list(stds))
        self.name = name

    @property
    def components(self) -> int:
        return int(self.mixture.weights.size)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        return self.mixture.log_prob(x)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return self.mixture.cdf(x)

    def quantile(self, p: np.ndarray) -> np.ndarray:
        """F⁻¹(p) by the mixture's own bisection (bracketed by the component quantiles)."""
        return self.mixture.quantile(p)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Component k ~ Categorical(w), then μ_k + σ_k·ε."""
        m = self.mixture
        k = rng.choice(m.weights.size, size=n, p=m.weights)
        return m.means[k] + m.stds[k] * rng.standard_normal(n)

    def bracket(self) -> tuple[float, float]:
        m = self.mixture
        return float(np.min(m.means - 40 * m.stds)), float(np.max(m.means + 40 * m.stds))


def fit_scott_kde(values: np.ndarray) -> GaussianKDE:
    """Gaussian KDE with Scott's rule, h = n^(−1/5)·std (scipy.stats.gaussian_kde's default)."""
    v = _values(values)
    return GaussianKDE(v, float(np.sqrt(stats.gaussian_kde(v).covariance[0, 0])), "scott_kde")


def fit_isj_kde(values: np.ndarray) -> GaussianKDE:
    """Gaussian KDE with the Improved Sheather–Jones bandwidth (Botev et al. 2010), chosen by KDEpy.

    ValueError (KDEpy's "Root finding did not converge") when ISJ finds no bandwidth, e.g. on a
    handful of values.
    """
    v = _values(values)
    kdepy = _require("KDEpy", "ISJ KDE")
    # ISJ is scale-equivariant, KDEpy's grid is not: it pads the data's range by at least 6 units,
    # so data spanning less than 12 units gets a bandwidth biased low (2.6 × too small for 10,000
    # normal draws). Choose it on the values rescaled to span ISJ_SPAN units, then scale it back.
    span = float(np.ptp(v))
    scale = ISJ_SPAN / span if span > 0 else 1.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # On degenerate data ISJ's fixed-point search divides by zero before its ValueError says so.
        bandwidth = float(kdepy.FFTKDE(kernel="gaussian", bw="ISJ").fit(v * scale).bw) / scale
    return GaussianKDE(v, bandwidth, "isj_kde")


def fit_bic_mixture(values: np.ndarray) -> MixtureEstimator:
    """Gaussian mixture with k = 1..10 components fitted by EM (scikit-learn, 3 starts, seed 0); the
    k of least BIC = −2 log L + (3k − 1) log n. At most n − 1 components for n values."""
    v = _values(values)
    mixture = _require("sklearn.mixture", "BIC mixture")
    exceptions = _require("sklearn.exceptions", "BIC mixture")
    column = v[:, None]
    best, best_bic = None, np.inf
    for k in range(1, min(MAX_COMPONENTS, v.size - 1) + 1):
        with warnings.catch_warnings():
            # Tied values give k-means fewer distinct clusters than k: that k's BIC says so.
            warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
            model = mixture.GaussianMixture(k, n_init=MIXTURE_INITS, random_state=MIXTURE_SEED).fit(column)
        bic = model.bic(column)
        if bic < best_bic:
            best, best_bic = model, bic
    assert best is not None
    stds = np.sqrt(best.covariances_.reshape(-1))
    return MixtureEstimator(best.weights_, best.means_.reshape(-1), stds, "bic_mixture")


@dataclass(frozen=True)
class BaselineSpec:
    """One baseline: its name, what a report calls it, how it is fitted, the package it needs."""

    name: str
    label: str
    fit: Callable[[np.ndarray], Estimator]
    package: str | None


BASELINES: dict[str, BaselineSpec] = {
    spec.name: spec
    for spec in (
        BaselineSpec("scott_kde", "Scott KDE", fit_scott_kde, None),
        BaselineSpec("isj_kde", "ISJ KDE", fit_isj_kde, "KDEpy"),
        BaselineSpec("bic_mixture", "BIC mixture", fit_bic_mixture, "scikit-learn"),
    )
}


def fit_baseline(name: str, values: np.ndarray) -> Estimator:
    """Fit the baseline called `name` (a key of BASELINES) to `values`."""
    return BASELINES[name].fit(values)
