"""1D target distributions with exact densities, CDFs, quantiles and denoisers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special, stats

from ctm_core.posterior import QuadratureGrid, grid_posterior_mean, local_posterior_mean

# Largest number of training points used by the empirical KDE and denoiser.
_KDE_MAX_POINTS = 20_000
_EMPIRICAL_DENOISE_MAX_POINTS = 5_000


@dataclass(frozen=True)
class Mode:
    """One mode of a target: its center, its probability mass and a window half-width."""

    center: float
    weight: float
    half_width: float


def _as_f64(x: np.ndarray | float) -> np.ndarray:
    """Input as a float64 array (scalars become 0-d arrays)."""
    return np.asarray(x, dtype=np.float64)


def _open_unit(u: torch.Tensor) -> np.ndarray:
    """Uniform [0, 1) draws moved into the open interval (0, 1), so no quantile is ±inf."""
    return np.clip(u.numpy(), 2.0**-54, 1.0 - 2.0**-53)


def _broadcast_t(x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """x and t as float64 tensors broadcast to one shape."""
    t64 = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    return torch.broadcast_tensors(x.to(torch.float64), t64)


class Task(ABC):
    """A 1D target distribution: sampling with torch RNG, exact density/CDF/quantile, denoiser."""

    name: str
    description: str
    kind: str
    mean: float
    std: float
    modes: list[Mode] | None

    @abstractmethod
    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log p(x), float64, same shape as x."""

    @abstractmethod
    def cdf(self, x: np.ndarray) -> np.ndarray:
        """F(x) = P(X ≤ x), float64, same shape as x."""

    @abstractmethod
    def quantile(self, p: np.ndarray) -> np.ndarray:
        """F⁻¹(p), float64, same shape as p."""

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """p(x) = exp(log p(x)), float64."""
        return np.exp(self.log_prob(x))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws by inverse-CDF sampling x = F⁻¹(u), u ~ U(0, 1); shape (n,), float32."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.from_numpy(self.quantile(_open_unit(u))).to(torch.float32)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """E[x₀ | x_t = x] for x_t = x₀ + t·ε by quadrature of ∫x₀ p(x₀) N(x; x₀, t²) dx₀.

        Two grids, since no one grid suits every t. Small t (below max(0.5·std, 2h)): a local
        grid x₀ = x + t·z, z ∈ [−10, 10] in steps of 0.1, accurate when p is smooth on the
        scale 0.1·t. Larger t: a fixed grid of 2,000 points, uniform with spacing h over
        F⁻¹(1e-7)..F⁻¹(1 − 1e-7) widened by 3·std, trapezoid weights p(x₀)·h, accurate while
        t ≥ 2h (error ~exp(−2π²t²/h²) for smooth p). Errors are ≲1e-5 on smooth densities and
        up to ~1e-3 near a kink such as a support edge; at large t, x₀ beyond the fixed grid is
        ignored, which matters only for x many std outside the bulk. t = 0 returns x.
        """
        grid = self._quadrature_grid()
        x64, t64 = _broadcast_t(x, t)
        flat_x, flat_t = x64.reshape(-1), t64.reshape(-1)
        out = flat_x.clone()
        wide = flat_t >= grid.local_t_max
        local = (flat_t > 0) & ~wide
        if local.any():
            local_mean = local_posterior_mean(self.log_prob, flat_x[local], flat_t[local])
            out[local] = local_mean
            # NaN rows saw no support on the local grid (x far outside a bounded support).
            wide[local.nonzero().squeeze(1)[torch.isnan(local_mean)]] = True
        if wide.any():
            points, log_w = grid.points.to(x.device), grid.log_w.to(x.device)
            out[wide] = grid_posterior_mean(flat_x[wide], flat_t[wide], points, log_w)
        return out.reshape(x64.shape).to(x.dtype)

    def _quadrature_grid(self) -> QuadratureGrid:
        """The cached fixed x₀ grid for denoise."""
        cached = getattr(self, "_grid_cache", None)
        if cached is None:
            cached = self._grid_cache = QuadratureGrid.of(self)
        return cached

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}: {self.description})"


def _fmt(v: float) -> str:
    """Compact number for descriptions: 1.5, 0.3, 0.08."""
    return f"{v:g}"


def _mixture_description(weights: np.ndarray, means: np.ndarray, stds: np.ndarray) -> str:
    """Human line such as 'equal mixture of N(-1.5, 0.3²) and N(1.5, 0.3²)'."""
    comps = [f"N({_fmt(m)}, {_fmt(s)}²)" for m, s in zip(means, stds, strict=True)]
    if len(comps) == 1:
        return comps[0]
    if np.allclose(weights, weights[0]):
        if len(comps) > 3 and np.allclose(stds, stds[0]):
            return (
                f"equal mixture of {len(comps)} Gaussians with std {_fmt(stds[0])} at "
                f"{_fmt(means[0])}, {_fmt(means[1])}, …, {_fmt(means[-1])}"
            )
        return "equal mixture of " + ", ".join(comps[:-1]) + " and " + comps[-1]
    return " + ".join(f"{_fmt(w)}·{c}" for w, c in zip(weights, comps, strict=True))


class GaussianMixture(Task):
    """Σ_k w_k·N(μ_k, σ_k²): exact density, CDF, quantile (bisection) and denoiser."""

    kind = "gaussian_mixture"

    def __init__(
        self,
        name: str,
        weights: list[float],
        means: list[float],
        stds: list[float],
        description: str | None = None,
    ) -> None:
        w = np.asarray(weights, dtype=np.float64)
        mu = np.asarray(means, dtype=np.float64)
        sd = np.asarray(stds, dtype=np.float64)
        if not (w.shape == mu.shape == sd.shape and w.ndim == 1 and w.size > 0):
            raise ValueError("weights, means and stds must be 1-D and of equal length")
        if np.any(w <= 0) or np.any(sd <= 0):
            raise ValueError("weights and stds must be positive")
        self.weights = w / w.sum()
        self.means = mu
        self.stds = sd
        self.name = name
        self.description = description or _mixture_description(self.weights, mu, sd)
        self.mean = float(np.sum(self.weights * mu))
        second_moment = float(np.sum(self.weights * (sd**2 + mu**2)))
        self.std = float(np.sqrt(second_moment - self.mean**2))
        self.modes = self._component_modes()

    def _component_modes(self) -> list[Mode]:
        """Each component as a Mode; half-width 3σ, capped at half the gap to a neighbour."""
        order = np.argsort(self.means)
        centers = self.means[order]
        modes = []
        for rank, k in enumerate(order):
            half_width = 3.0 * self.stds[k]
            if rank > 0:
                half_width = min(half_width, (centers[rank] - centers[rank - 1]) / 2)
            if rank < len(order) - 1:
                half_width = min(half_width, (centers[rank + 1] - centers[rank]) / 2)
            modes.append(Mode(float(self.means[k]), float(self.weights[k]), float(half_width)))
        return modes

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log Σ_k w_k N(x; μ_k, σ_k²) by log-sum-exp."""
        x = _as_f64(x)
        comp = stats.norm.logpdf(x[..., None], self.means, self.stds) + np.log(self.weights)
        return special.logsumexp(comp, axis=-1)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Σ_k w_k Φ((x − μ_k)/σ_k)."""
        x = _as_f64(x)
        return np.sum(self.weights * special.ndtr((x[..., None] - self.means) / self.stds), -1)

    def quantile(self, p: np.ndarray) -> np.ndarray:
        """F⁻¹(p) by vectorised bisection to |Δx| < 1e-12, bracketed by component quantiles."""
        p = _as_f64(p)
        raw = p.reshape(-1)
        # Solve on (0, 1) so no bracket is infinite; p ≤ 0 and p ≥ 1 are set to ∓inf at the end.
        flat = np.clip(raw, 2.0**-1074, 1.0 - 2.0**-53)
        # F⁻¹(p) lies between the smallest and largest component quantile at p.
        comp_q = self.means + self.stds * special.ndtri(flat[:, None])
        lo, hi = comp_q.min(axis=1), comp_q.max(axis=1)
        # Compare in the tail that keeps precision: F below the median, 1 − F above it.
        upper = flat > 0.5
        target = np.where(upper, 1.0 - flat, flat)
        sign = np.where(upper, -1.0, 1.0)[:, None]
        for _ in range(200):
            active = (hi - lo) > 1e-12 * np.maximum(1.0, np.abs(lo))
            if not active.any():
                break
            mid = 0.5 * (lo + hi)
            # F(mid) for the lower half, 1 − F(mid) = Σ w_k Φ((μ_k − mid)/σ_k) for the upper.
            tail = np.sum(self.weights * special.ndtr(sign * (mid[:, None] - self.means) / self.stds), -1)
            below = np.where(upper, tail > target, tail < target)
            lo = np.where(active & below, mid, lo)
            hi = np.where(active & ~below, mid, hi)
        out = 0.5 * (lo + hi)
        out = np.where(raw <= 0, -np.inf, np.where(raw >= 1, np.inf, out))
        return out.reshape(p.shape)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Component k ~ Categorical(w), then x = μ_k + σ_k·ε; shape (n,), float32."""
        w = torch.from_numpy(self.weights)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        eps = torch.randn(n, generator=generator, dtype=torch.float64)
        x = torch.from_numpy(self.means)[k] + torch.from_numpy(self.stds)[k] * eps
        return x.to(torch.float32)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Closed-form E[x₀ | x_t = x] = Σ_k r_k(x)·(μ_k + σ_k²/(σ_k² + t²)·(x − μ_k)).

        r_k(x) ∝ w_k N(x; μ_k, σ_k² + t²) are the posterior component weights.
        """
        x64, t64 = _broadcast_t(x, t)
        w = torch.from_numpy(self.weights).to(x.device)
        mu = torch.from_numpy(self.means).to(x.device)
        var = torch.from_numpy(self.stds).to(x.device).square()
        xe, te = x64[..., None], t64[..., None]
        total_var = var + te.square()
        log_r = w.log() - 0.5 * (xe - mu).square() / total_var - 0.5 * total_var.log()
        r = torch.softmax(log_r, dim=-1)
        comp_mean = mu + var / total_var * (xe - mu)
        return (r * comp_mean).sum(dim=-1).to(x.dtype)


class ScipyTask(Task):
    """A frozen scipy.stats continuous distribution; quadrature denoiser (see Task.denoise)."""

    kind = "scipy"

    def __init__(
        self,
        name: str,
        dist: stats.rv_continuous,
        description: str,
        modes: list[Mode] | None = None,
    ) -> None:
        self.name = name
        self.dist = dist
        self.description = description
        self.mean = float(dist.mean())
        self.std = float(dist.std())
        self.modes = modes

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log p(x) from scipy (−inf outside the support)."""
        return np.asarray(self.dist.logpdf(_as_f64(x)), dtype=np.float64)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """F(x) from scipy."""
        return np.asarray(self.dist.cdf(_as_f64(x)), dtype=np.float64)

    def quantile(self, p: np.ndarray) -> np.ndarray:
        """F⁻¹(p) from scipy's ppf."""
        return np.asarray(self.dist.ppf(_as_f64(p)), dtype=np.float64)


def _even_subsample(sorted_values: np.ndarray, max_points: int) -> np.ndarray:
    """At most max_points values evenly spaced in rank: a deterministic quantile subsample."""
    if sorted_values.size <= max_points:
        return sorted_values
    idx = np.round(np.linspace(0, sorted_values.size - 1, max_points)).astype(np.int64)
    return sorted_values[idx]


class EmpiricalTask(Task):
    """The empirical distribution of user data; log_prob is a KDE of the training data, not exact.

    sample resamples the training values; cdf is the empirical CDF; quantile interpolates
    linearly (numpy); log_prob/pdf are a Gaussian KDE (Scott's rule) fitted on at most 20,000
    rank-evenly subsampled values; denoise is the exact posterior mean under the point masses
    of at most 5,000 rank-evenly subsampled values.
    """

    kind = "data"

    def __init__(self, values: np.ndarray, name: str = "data") -> None:
        v = np.sort(_as_f64(values).reshape(-1))
        if v.size < 2 or not np.all(np.isfinite(v)):
            raise ValueError("EmpiricalTask needs at least 2 finite values")
        self.values = v
        self.name = name
        self.description = f"empirical distribution of {v.size} training values"
        self.mean = float(v.mean())
        self.std = float(v.std())
        self.modes = None
        self._kde: stats.gaussian_kde | None = None

    @property
    def kde(self) -> stats.gaussian_kde:
        """Gaussian KDE (Scott's rule) of the (subsampled) training values, built on first use."""
        if self._kde is None:
            self._kde = stats.gaussian_kde(_even_subsample(self.values, _KDE_MAX_POINTS))
        return self._kde

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log of the KDE density at x (an estimate, not exact)."""
        x = _as_f64(x)
        return self.kde.logpdf(x.reshape(-1)).reshape(x.shape)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Empirical CDF F_n(x) = #{x_i ≤ x}/n."""
        x = _as_f64(x)
        return np.searchsorted(self.values, x, side="right") / self.values.size

    def quantile(self, p: np.ndarray) -> np.ndarray:
        """Empirical quantile with linear interpolation between order statistics."""
        return np.quantile(self.values, _as_f64(p))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n training values drawn uniformly with replacement; shape (n,), float32."""
        idx = torch.randint(self.values.size, (n,), generator=generator)
        return torch.from_numpy(self.values)[idx].to(torch.float32)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """E[x₀ | x_t = x] = Σ_i x_i·softmax_i(−(x − x_i)²/(2t²)) over the point masses x_i."""
        points = torch.from_numpy(_even_subsample(self.values, _EMPIRICAL_DENOISE_MAX_POINTS))
        x64, t64 = _broadcast_t(x, t)
        flat_x, flat_t = x64.reshape(-1), t64.reshape(-1)
        points = points.to(x.device)
        # t = 0 would divide by zero; there the posterior mean is x itself.
        safe_t = flat_t.clamp_min(1e-300)
        out = grid_posterior_mean(flat_x, safe_t, points, torch.zeros_like(points))
        return torch.where(flat_t > 0, out, flat_x).reshape(x64.shape).to(x.dtype)


def _builtin_tasks() -> dict[str, Task]:
    """The registry of built-in targets."""
    many_centers = [-1.75 + 0.5 * i for i in range(8)]
    tasks: list[Task] = [
        GaussianMixture("two_gmm_1D", [0.5, 0.5], [-1.5, 1.5], [0.3, 0.3]),
        GaussianMixture("uneven_two_gmm_1D", [0.7, 0.3], [-1.5, 1.5], [0.3, 0.2]),
        GaussianMixture("three_gmm_1D", [1 / 3] * 3, [-1.5, 0.0, 1.5], [0.2] * 3),
        GaussianMixture("single_gaussian_1D", [1.0], [1.0], [0.2]),
        ScipyTask(
            "heavy_tailed_1D",
            stats.t(df=4, loc=0.0, scale=0.5),
            "Student-t with 4 degrees of freedom, loc 0, scale 0.5 (heavy tails)",
        ),
        ScipyTask(
            "skewed_1D",
            stats.skewnorm(a=5, loc=-1.0, scale=1.5),
            "skew-normal with shape a=5, loc -1, scale 1.5 (right-skewed)",
        ),
        ScipyTask(
            "bounded_1D",
            stats.beta(2, 2, loc=-1.5, scale=3.0),
            "Beta(2, 2) scaled to [-1.5, 1.5] (bounded support)",
        ),
        GaussianMixture("many_modes_1D", [1 / 8] * 8, many_centers, [0.08] * 8),
    ]
    return {task.name: task for task in tasks}


TASKS: dict[str, Task] = _builtin_tasks()


def get_task(name: str) -> Task:
    """The built-in task or Marron–Wand density called name; KeyError listing the valid names otherwise."""
    # Imported here, not at the top: ctm_core.marron_wand builds on this module's GaussianMixture.
    from ctm_core.marron_wand import MARRON_WAND

    known = TASKS | MARRON_WAND
    try:
        return known[name]
    except KeyError:
        valid = ", ".join(sorted(known))
        raise KeyError(f"unknown task {name!r}; valid tasks: {valid}") from None
