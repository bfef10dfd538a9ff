"""Posterior means E[x₀ | x_t = x] by quadrature: the denoisers of targets without a closed form.

For x_t = x₀ + t·ε, E[x₀ | x] = ∫x₀ p(x₀) N(x; x₀, t²) dx₀ / ∫p(x₀) N(x; x₀, t²) dx₀ (Tweedie's
posterior mean, the ideal denoiser D(x, t) of docs/CTM.md), evaluated as a softmax-weighted sum
over a grid of x₀. `ctm_core.tasks.Task.denoise` picks the grid by t.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

# Quantile range (widened by 3 std) and number of points of the fixed denoising grid.
_GRID_POINTS = 2000
_GRID_P_LO = 1e-7
_GRID_P_HI = 1.0 - 1e-7
# Rows of x per chunk: chunk × grid float64 stays in the tens of MB.
_CHUNK = 1024


class Density(Protocol):
    """What the fixed grid needs of a target."""

    std: float

    def log_prob(self, x: np.ndarray) -> np.ndarray: ...

    def quantile(self, p: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class QuadratureGrid:
    """Fixed denoising grid: points (G,), log(p(x₀)·Δx₀) (G,), and the t below which it is unused."""

    points: torch.Tensor
    log_w: torch.Tensor
    local_t_max: float

    @classmethod
    def of(cls, target: Density) -> "QuadratureGrid":
        """A uniform grid over F⁻¹(1e-7)..F⁻¹(1 − 1e-7) widened by 3 std, trapezoid weights."""
        lo, hi = target.quantile(np.array([_GRID_P_LO, _GRID_P_HI]))
        # A uniform grid: the trapezoid rule is spectrally accurate on it for smooth p.
        # 3 std of margin, so x beyond the bulk still sees its posterior at moderate t.
        points = np.linspace(lo - 3 * target.std, hi + 3 * target.std, _GRID_POINTS)
        with np.errstate(divide="ignore"):
            log_w = target.log_prob(points) + np.log(points[1] - points[0])
        keep = np.isfinite(log_w)
        return cls(
            points=torch.from_numpy(points[keep]),
            log_w=torch.from_numpy(log_w[keep]),
            # The fixed grid's error ~exp(−2π²t²/h²) is negligible once t ≥ 2h; below 0.5·std the
            # local grid still resolves p and also reaches x beyond the range.
            local_t_max=max(2.0 * float(points[1] - points[0]), 0.5 * target.std),
        )


def grid_posterior_mean(
    x: torch.Tensor, t: torch.Tensor, points: torch.Tensor, log_w: torch.Tensor
) -> torch.Tensor:
    """Σ_j x₀_j·softmax_j(log w_j − (x − x₀_j)²/(2t²)); x, t (m,) float64, t > 0; points (G,)."""
    out = torch.empty_like(x)
    for start in range(0, x.numel(), _CHUNK):
        sl = slice(start, start + _CHUNK)
        # (Δ/t)² rather than Δ²/t²: t² underflows for tiny t.
        scaled = (x[sl, None] - points[None, :]) / t[sl, None]
        logits = log_w[None, :] - scaled.square() / 2
        out[sl] = (torch.softmax(logits, dim=1) * points[None, :]).sum(dim=1)
    return out


def local_posterior_mean(
    log_prob: Callable[[np.ndarray], np.ndarray], x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """E[x₀ | x] on x₀ = x + t·z, z ∈ [−10, 10] in steps of 0.1: Σ_z x₀·softmax(log p(x₀) − z²/2);
    x, t (m,) float64. A row that sees no support (all log p = −inf) comes out NaN."""
    z = torch.linspace(-10.0, 10.0, 201, dtype=torch.float64)
    out = torch.empty_like(x)
    for start in range(0, x.numel(), _CHUNK):
        sl = slice(start, start + _CHUNK)
        x0 = (x[sl, None] + t[sl, None] * z.to(x.device)).cpu()
        with np.errstate(divide="ignore"):
            logits = torch.from_numpy(log_prob(x0.numpy())) - z.square() / 2
        out[sl] = (torch.softmax(logits, dim=1) * x0).sum(dim=1).to(x.device)
    return out
