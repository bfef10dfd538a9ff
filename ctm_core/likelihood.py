"""Exact 1D log-likelihood of a diffusion model by the instantaneous change of variables.

For the PF-ODE drift f(x, t) = (x − D(x, t))/t (see docs/CTM.md),
    log p_σmin(x) = log p_prior(x_T) + ∫_{σmin}^{σmax} ∂f/∂x (x_t, t) dt,
integrating x_t from x at σ_min up to x_T at σ_max (Chen et al. 2018; Song et al. 2021, eq. 39).
In 1D the divergence ∂f/∂x = (1 − ∂D/∂x)/t is one exact autograd derivative, so the result is
exact up to the ODE solver's error (Runge–Kutta 4 on a Karras grid; see docs/RESULTS.md for its accuracy).
"""

import itertools
import math
from collections.abc import Callable

import torch

from ctm_core.samplers import Denoiser
from ctm_core.schedules import karras_sigmas

Prior = Callable[[torch.Tensor], torch.Tensor]


def gaussian_log_prob(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """log N(x; mean, std²), elementwise."""
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def _drift_and_divergence(
    model: Denoiser, x: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x, t) and ∂f/∂x, elementwise (the batch elements are independent, so the gradient of Σf
    with respect to x is the diagonal of the Jacobian)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        denoised = model.denoise(x, t)
        (d_denoised,) = torch.autograd.grad(denoised.sum(), x)
    return ((x - denoised) / t).detach(), ((1 - d_denoised) / t).detach()


def log_prob(
    model: Denoiser,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    steps: int = 64,
    rho: float = 7.0,
    prior: Prior | None = None,
    data_mean: float = 0.0,
) -> torch.Tensor:
    """log p(x) of the model's distribution at σ_min for points x, shape (n,) → (n,), float64.

    The classical 4th-order Runge–Kutta method on a Karras grid of `steps` steps from σ_min up to
    σ_max carries both x_t and the accumulated divergence (4 network evaluations a step); `prior`
    is log p at σ_max (default log N(x_T; data_mean, σ_max²), the prior the samplers draw from). The network
    runs in x's dtype; the integral accumulates in float64.
    """
    if prior is None:
        prior = lambda z: gaussian_log_prob(z, data_mean, sigma_max)  # noqa: E731
    ts = karras_sigmas(steps + 1, sigma_min, sigma_max, rho).flip(0).to(x.device)
    integral = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for t0, t1 in itertools.pairwise(ts):
        h = float(t1 - t0)
        mid = (t0 + t1) / 2
        f1, d1 = _drift_and_divergence(model, x, t0.to(x.dtype))
        f2, d2 = _drift_and_divergence(model, x + 0.5 * h * f1, mid.to(x.dtype))
        f3, d3 = _drift_and_divergence(model, x + 0.5 * h * f2, mid.to(x.dtype))
        f4, d4 = _drift_and_divergence(model, x + h * f3, t1.to(x.dtype))
        x = x + h / 6 * (f1 + 2 * f2 + 2 * f3 + f4)
        integral += h / 6 * (d1.double() + 2 * d2.double() + 2 * d3.double() + d4.double())
    return prior(x.double()) + integral
