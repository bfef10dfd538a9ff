"""The exact probability-flow ODE in 1D: marginals at any noise level and the flow between levels.

In one dimension every continuous flow preserves order, so the PF-ODE map from level t to level s
is the monotone rearrangement G*(x, t, s) = F_s⁻¹(F_t(x)), where F_σ is the CDF of the data
convolved with N(0, σ²) (docs/CTM.md, "The exact flow in 1D"). For a Gaussian mixture the
marginal is the same mixture with every variance increased by σ²; for the other tasks it is a
quadrature of F_σ(x) = E[F(x − σ·Z)], Z ~ N(0, 1). These are references for measurement only:
training never sees them.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import signal

from ctm_core.tasks import EmpiricalTask, GaussianMixture, Task, _even_subsample

# The tabulated convolution resolves σ ≥ 4 grid steps; below that the marginal is the data law
# itself up to a shift O(σ²·score) (≲1e-5 at σ_min = 0.002 on the built-in tasks).
_GRID_POINTS = 2**18
_TAIL_P = 1e-9
_EMPIRICAL_MAX_POINTS = 5_000


def prior_std(sigma_max: float, sigma_data: float) -> float:
    """Std of the marginal at σ_max: √(σ_max² + σ_d²) (docs/CTM.md, "The prior")."""
    return math.sqrt(sigma_max**2 + sigma_data**2)


class ConvolvedTask(Task):
    """A task's law convolved with N(0, σ²), tabulated once on a fine uniform grid.

    The density p is sampled on 2¹⁸ points over [F⁻¹(1e-9) − 12σ, F⁻¹(1 − 1e-9) + 12σ] and
    convolved with the N(0, σ²) kernel by FFT (trapezoid rule, accurate while the grid step h
    is below σ/4); the CDF is its running trapezoid integral, and cdf, quantile and log_prob
    interpolate the tables linearly (errors O(h²), ~1e-8 here). Mass beyond the 1e-9 tails is
    ignored.
    """

    kind = "convolved"

    def __init__(self, base: Task, sigma: float) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.base, self.sigma = base, float(sigma)
        self.name = f"{base.name}@{sigma:g}"
        self.description = f"{base.name} convolved with N(0, {sigma:g}²)"
        self.mean = base.mean
        self.std = math.sqrt(base.std**2 + sigma**2)
        self.modes = None
        lo, hi = base.quantile(np.array([_TAIL_P, 1 - _TAIL_P]))
        self.x = np.linspace(lo - 12 * sigma, hi + 12 * sigma, _GRID_POINTS)
        h = self.x[1] - self.x[0]
        half = min(int(12 * sigma / h), _GRID_POINTS - 1)
        offsets = np.arange(-half, half + 1) * h
        kernel = np.exp(-0.5 * (offsets / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi)) * h
        density = signal.fftconvolve(base.pdf(self.x), kernel, mode="same")
        self.density = np.maximum(density, 0.0)
        steps = 0.5 * (self.density[1:] + self.density[:-1]) * h
        table = np.concatenate([[0.0], np.cumsum(steps)])
        self.table = table / table[-1]

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(x, dtype=np.float64), self.x, self.table, left=0.0, right=1.0)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(np.interp(np.asarray(x, dtype=np.float64), self.x, self.density, 0.0, 0.0))

    def quantile(self, p: np.ndarray) -> np.ndarray:
        # Keep the strictly increasing part of the table (the far tails can be flat in float64).
        keep = np.concatenate([[True], np.diff(self.table) > 0])
        return np.interp(np.asarray(p, dtype=np.float64), self.table[keep], self.x[keep])


@functools.lru_cache(maxsize=128)
def marginal(task: Task, sigma: float) -> Task:
    """The law of x_σ = x₀ + σ·ε: the task convolved with N(0, σ²), with cdf, quantile, log_prob.

    Gaussian mixtures (and user data, as a mixture of N(x_i, σ²) over at most 5,000 rank-evenly
    subsampled values) stay closed form; other tasks use `ConvolvedTask`'s tables, or the task
    itself where σ is too small for them to resolve.
    """
    if isinstance(task, GaussianMixture):
        stds = np.sqrt(task.stds**2 + sigma**2)
        return GaussianMixture(f"{task.name}@{sigma:g}", task.weights, task.means, stds)
    if isinstance(task, EmpiricalTask):
        points = _even_subsample(task.values, _EMPIRICAL_MAX_POINTS)
        weights = np.full(points.size, 1.0 / points.size)
        return GaussianMixture(f"{task.name}@{sigma:g}", weights, points, np.full(points.size, sigma))
    convolved = ConvolvedTask(task, sigma)
    return task if convolved.x[1] - convolved.x[0] > sigma / 4 else convolved


def exact_flow(task: Task, x: np.ndarray, t: float, s: float) -> np.ndarray:
    """G*(x, t, s) = F_s⁻¹(F_t(x)): where the exact PF-ODE takes x from level t to level s.

    Shapes follow x; float64. Accurate to ~1e-9 relative within ±6 std of the marginal at t;
    points so far out that F_t(x) rounds to 0 or 1 map to ∓inf.
    """
    x = np.asarray(x, dtype=np.float64)
    if t == s:
        return x.copy()
    return marginal(task, s).quantile(marginal(task, t).cdf(x))


def exact_path(task: Task, x_T: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """The exact flow's states of latents x_T (at sigmas[0]) at every level, shape (len(sigmas), n).

    Each state is mapped from x_T directly (the flow composes exactly), so no error accumulates.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    u = marginal(task, float(sigmas[0])).cdf(np.asarray(x_T, dtype=np.float64))
    states = [np.asarray(x_T, dtype=np.float64)]
    states += [marginal(task, float(s)).quantile(u) for s in sigmas[1:]]
    return np.stack(states)
