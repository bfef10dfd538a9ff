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
from typing import Literal

import torch

from ctm_core.config import NoiseConfig
from ctm_core.network import MonotoneNetwork
from ctm_core.parametrization import CTMParametrization
from ctm_core.runtime import Runtime
from ctm_core.samplers import Denoiser, Jumper, pf_ode_drift
from ctm_core.schedules import karras_sigmas

Prior = Callable[[torch.Tensor], torch.Tensor]
DensityName = Literal["onestep", "ode"]

# Runge–Kutta 4 steps of the served PF-ODE density: 3e-5 nats from the exact Gaussian density
# (docs/RESULTS.md, "Exact likelihood").
ODE_STEPS = 64
# Bisection halvings of the one-step density's inversion: 80 prior stds halved 48 times is far
# below float32's resolution.
ONESTEP_ITERATIONS = 48


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
    # ∂f/∂x of f = (x − D)/t is (1 − ∂D/∂x)/t.
    return pf_ode_drift(x, denoised, t).detach(), ((1 - d_denoised) / t).detach()


def log_prob(
    model: Denoiser,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    steps: int = ODE_STEPS,
    rho: float = 7.0,
    prior: Prior | None = None,
    data_mean: float = 0.0,
    prior_std: float | None = None,
) -> torch.Tensor:
    """log p(x) of the model's distribution at σ_min for points x, shape (n,) → (n,), float64.

    The classical 4th-order Runge–Kutta method on a Karras grid of `steps` steps from σ_min up to
    σ_max carries both x_t and the accumulated divergence (4 network evaluations a step); `prior`
    is log p at σ_max (default log N(x_T; data_mean, prior_std²), the prior the samplers draw
    from; pass `NoiseConfig.prior_std`, which defaults here to σ_max for a bare call). The network
    runs in x's dtype; the integral accumulates in float64.
    """
    if prior is None:
        std = sigma_max if prior_std is None else prior_std
        prior = lambda z: gaussian_log_prob(z, data_mean, std)  # noqa: E731
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


def ode_evaluations(steps: int = ODE_STEPS) -> int:
    """Network evaluations per point of `log_prob` with `steps` steps (each with its derivative)."""
    return 4 * steps


def onestep_evaluations(iterations: int = ONESTEP_ITERATIONS) -> int:
    """Network evaluations per point of `onestep_log_prob`: the bracket's two ends, the halvings and
    the slope."""
    return iterations + 3


def ode_log_prob(
    model: Denoiser, x: torch.Tensor, noise: NoiseConfig, steps: int = ODE_STEPS
) -> torch.Tensor:
    """`log_prob` of a model trained with `noise`: its σ range, Karras ρ, data mean and prior."""
    return log_prob(
        model,
        x,
        noise.sigma_min,
        noise.sigma_max,
        steps=steps,
        rho=noise.rho,
        data_mean=noise.data_mean or 0.0,
        prior_std=noise.prior_std,
    )


# Half-width of the inversion's bracket in prior standard deviations: the prior's density there
# (e^-800) is below float64's range, so no point of positive density lies beyond it.
_BRACKET_STDS = 40.0


def onestep_log_prob(
    model: Jumper, y: torch.Tensor, noise: NoiseConfig, iterations: int = ONESTEP_ITERATIONS
) -> torch.Tensor:
    """log p(y) of the one-step sampler's own law, shape (n,) → (n,), float64 (docs/CTM.md).

    y = G(z, σ_max, σ_min) with z from the prior; for a non-decreasing G (`MonotoneNetwork`),
    log p(y) = log p_prior(z) − log ∂G/∂z at z = G⁻¹(y). The inverse is a vectorised bisection
    on [μ − 40·std, μ + 40·std] (`iterations` halvings, each one network evaluation of the
    jump at fixed times), the slope one autograd derivative. Points outside the image of the
    bracket have density 0 (−inf); so do points where G is flat (slope 0).
    """
    mean, std = noise.data_mean or 0.0, noise.prior_std
    t = torch.tensor(noise.sigma_max, dtype=y.dtype, device=y.device)
    s = torch.tensor(noise.sigma_min, dtype=y.dtype, device=y.device)
    lo = torch.full_like(y, mean - _BRACKET_STDS * std)
    hi = torch.full_like(y, mean + _BRACKET_STDS * std)
    with torch.no_grad():
        outside = (y < model.jump(lo, t, s)) | (y > model.jump(hi, t, s))
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = model.jump(mid, t, s) < y
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    z = (0.5 * (lo + hi)).detach()
    with torch.enable_grad():
        z.requires_grad_(True)
        (slope,) = torch.autograd.grad(model.jump(z, t, s).sum(), z)
    with torch.no_grad():
        logp = gaussian_log_prob(z.double(), mean, std) - slope.double().log()
        return torch.where(outside, torch.tensor(-math.inf, dtype=torch.float64), logp)


def has_onestep_density(model: CTMParametrization) -> bool:
    """Whether the one-step map G(·, σ_max, σ_min) can be inverted: its network is monotone in x."""
    return isinstance(model.net, MonotoneNetwork)


def density_log_prob(
    model: CTMParametrization,
    y: torch.Tensor,
    noise: NoiseConfig,
    density: DensityName,
    evaluator: Runtime | None = None,
) -> torch.Tensor:
    """log p(y) of a trained model, float64: density "onestep", the one-step sampler's law
    (`onestep_log_prob`); "ode", the PF-ODE's law of its denoiser (`ode_log_prob`, ODE_STEPS
    steps). `evaluator` runs the network's jump and denoise instead of `model` (e.g. a wrapper
    that can stop the work); ValueError for an unknown density, or "onestep" of a model without one.
    """
    network = model if evaluator is None else evaluator
    if density == "onestep":
        if not has_onestep_density(model):
            raise ValueError(
                "this model has no onestep density: its network is not monotone in x, so its "
                "one-step map cannot be inverted; use the ode density"
            )
        return onestep_log_prob(network, y, noise)
    if density == "ode":
        return ode_log_prob(network, y, noise)
    raise ValueError(f"unknown density {density!r}; choose 'onestep' or 'ode'")
