"""Noise-level schedules from σ_max down to σ_min (time = noise level, EDM convention)."""

from collections.abc import Callable
from typing import Literal

import torch

ScheduleName = Literal["karras", "exponential", "linear"]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: t_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ.

    Returns shape (n,), float64, t_0 = σ_max > … > t_{n−1} = σ_min.
    """
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    # Pin the ends exactly: the power round trip is off by an ulp or two.
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Log-linear schedule from σ_max to σ_min, shape (n,), float64 (ρ is ignored)."""
    _check(n, sigma_min, sigma_max)
    log_sigmas = torch.linspace(
        torch.tensor(sigma_max, dtype=torch.float64).log().item(),
        torch.tensor(sigma_min, dtype=torch.float64).log().item(),
        n,
        dtype=torch.float64,
    )
    sigmas = log_sigmas.exp()
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


def linear_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Linear schedule from σ_max to σ_min, shape (n,), float64 (ρ is ignored)."""
    _check(n, sigma_min, sigma_max)
    return torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64)


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "linear": linear_sigmas,
}


def get_sigmas(name: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The named schedule with n points (n − 1 steps) from σ_max to σ_min."""
    try:
        schedule = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None
    return schedule(n, sigma_min, sigma_max, rho)


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 2:
        raise ValueError(f"a schedule needs at least 2 points, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
