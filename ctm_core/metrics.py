"""Sample-quality metrics against a task's exact distribution (see docs/CTM.md)."""

from __future__ import annotations

import numpy as np
import torch

from ctm_core.tasks import EmpiricalTask, Task

# Per-point floor on log p in the NLL: a sample outside the support (log p = −inf) costs 1,000
# nats instead of making the mean infinite.
NLL_LOG_PROB_FLOOR = -1e3
# Grid used to integrate |F_n − F|: uniform quantiles and x, plus log-spaced tail quantiles.
_W1_GRID_POINTS = 20_001
_W1_TAIL_POINTS = 1_000
_W1_TAIL_P = 1e-12


def _sorted_samples(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    """Samples as a sorted float64 vector; ValueError if empty or not finite."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    x = np.sort(np.asarray(samples, dtype=np.float64).reshape(-1))
    if x.size == 0:
        raise ValueError("no samples")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise ValueError(f"{bad} of {x.size} samples are NaN or infinite")
    return x


def mid_probabilities(n: int) -> np.ndarray:
    """p_i = (i + ½)/n, i = 0…n−1, float64."""
    return (np.arange(n, dtype=np.float64) + 0.5) / n


def quantile_w1(samples: np.ndarray | torch.Tensor, task: Task) -> float:
    """qW1 = mean_i |x_(i) − F⁻¹((i + ½)/n)| over the sorted samples x_(i)."""
    x = _sorted_samples(samples)
    return float(np.mean(np.abs(x - task.quantile(mid_probabilities(x.size)))))


def _abs_integral_linear(c: np.ndarray, f_a: np.ndarray, f_b: np.ndarray, h: np.ndarray) -> float:
    """Σ ∫ |c − F| over intervals of width h on which F is linear from f_a to f_b (exact)."""
    d_a, d_b = c - f_a, c - f_b
    same_sign = d_a * d_b >= 0
    # With a sign change the integrand is two triangles meeting at the crossing.
    denom = np.where(same_sign, 1.0, np.abs(d_a) + np.abs(d_b))
    crossing = (d_a**2 + d_b**2) / (2 * denom)
    per_interval = h * np.where(same_sign, (np.abs(d_a) + np.abs(d_b)) / 2, crossing)
    return float(per_interval.sum())


def _cdf_grid(task: Task) -> np.ndarray:
    """Points where F is sampled for W1: quantiles (uniform and log-spaced tails) and uniform x."""
    tail = np.logspace(np.log10(_W1_TAIL_P), np.log10(0.5), _W1_TAIL_POINTS)
    p = np.concatenate([tail, np.linspace(0, 1, _W1_GRID_POINTS)[1:-1], 1 - tail])
    lo, hi = task.quantile(np.array([1e-6, 1 - 1e-6]))
    # Uniform x points cover low-density gaps (between modes) that quantiles jump across.
    grid = np.concatenate([task.quantile(p), np.linspace(lo, hi, _W1_GRID_POINTS)])
    return grid[np.isfinite(grid)]


def w1_to_cdf(samples: np.ndarray | torch.Tensor, task: Task) -> float:
    """W1 = ∫|F_n(x) − F(x)| dx against the task's CDF F.

    F_n is constant between consecutive points of a grid holding every sample, ~22,000
    quantiles of F (tails down to 1e-12) and 20,001 uniform points; F is taken as linear on
    each interval and |F_n − F| integrated exactly there. Against fine reference integration
    the error is ~1e-9 at n = 20,000 on the built-in tasks; mass beyond the 1e-12 tails is
    ignored. For an EmpiricalTask F is a step function: this is the exact two-sample W1.
    """
    x = _sorted_samples(samples)
    if isinstance(task, EmpiricalTask):
        return w1_two_sample(x, task.values)
    grid = np.unique(np.concatenate([x, _cdf_grid(task)]))
    f = task.cdf(grid)
    # F_n on [grid_j, grid_{j+1}) is the right-continuous value at grid_j.
    fn = np.searchsorted(x, grid[:-1], side="right") / x.size
    return _abs_integral_linear(fn, f[:-1], f[1:], np.diff(grid))


def ks_to_cdf(samples: np.ndarray | torch.Tensor, task: Task) -> float:
    """KS = sup_x |F_n(x) − F(x)|, checking both sides of every step of F_n."""
    x = _sorted_samples(samples)
    n = x.size
    if isinstance(task, EmpiricalTask):
        return _ks_two_sample(x, task.values)
    f = task.cdf(x)
    # Just after x_(i), F_n ≥ (i+1)/n; just before, F_n ≤ i/n (ties handled by the last copy).
    above = np.arange(1, n + 1) / n - f
    below = f - np.arange(n) / n
    return float(max(above.max(), below.max()))


def _ks_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    """sup_x |F_a(x) − F_b(x)| for two sorted sample sets (exact: both are step functions)."""
    points = np.concatenate([a, b])
    fa = np.searchsorted(a, points, side="right") / a.size
    fb = np.searchsorted(b, points, side="right") / b.size
    return float(np.abs(fa - fb).max())


def nll(samples: np.ndarray | torch.Tensor, task: Task) -> float:
    """NLL = −mean_i log p(x_i), with log p floored at NLL_LOG_PROB_FLOOR per point."""
    x = _sorted_samples(samples)
    return float(-np.mean(np.maximum(task.log_prob(x), NLL_LOG_PROB_FLOOR)))


def mode_coverage(samples: np.ndarray | torch.Tensor, task: Task) -> list[dict] | None:
    """Per mode: true weight against the fraction of samples within its half-width."""
    if task.modes is None:
        return None
    x = _sorted_samples(samples)
    return [
        {
            "center": mode.center,
            "true_weight": mode.weight,
            "model_weight": float(np.mean(np.abs(x - mode.center) <= mode.half_width)),
        }
        for mode in task.modes
    ]


def w1_two_sample(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Exact W1 = ∫|F_a − F_b| dx between two empirical 1D distributions."""
    xa, xb = _sorted_samples(a), _sorted_samples(b)
    points = np.concatenate([xa, xb])
    points.sort()
    fa = np.searchsorted(xa, points[:-1], side="right") / xa.size
    fb = np.searchsorted(xb, points[:-1], side="right") / xb.size
    return float(np.sum(np.abs(fa - fb) * np.diff(points)))


def evaluate_samples(
    samples: np.ndarray | torch.Tensor, task: Task, quantile: bool
) -> dict[str, float | None]:
    """{"qW1", "W1", "KS", "NLL"}; qW1 only when samples came from quantile noise, else None.

    qW1 is meaningful only for a deterministic sampler fed quantile latents (a monotone map of
    stratified latents, `ctm_core.samplers.latent` with "quantile"); for random latents it is
    not a distance and is reported as None.
    """
    x = _sorted_samples(samples)
    return {
        "qW1": quantile_w1(x, task) if quantile else None,
        "W1": w1_to_cdf(x, task),
        "KS": ks_to_cdf(x, task),
        "NLL": nll(x, task),
    }
