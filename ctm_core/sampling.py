"""Sampling requests: what a caller may ask of a model, its defaults and rules, and the one path
from requests to trajectories.

`sample_request` turns a caller's arguments into a `SampleRequest` (steps default to the
sampler's own, γ only for γ-sampling, explicit `sigmas` checked against the model's noise range);
`run_requests` runs requests that share a sampler, steps, γ and levels as one sampler call. The
Python API (`ctm_core.model`), the offline CLI (`ctm_core.sample`) and the service's batches all
go through these two, so a request gives the same numbers, bit for bit, wherever it is made.

Each request's latent x_T and γ-noise come from its own generator seeded with its seed, drawn in
the order `ctm_core.samplers.generate` draws them; rows are padded to the runtime's alignment
(`ctm_core.runtime`), which computes a row the same way whatever else is in the batch.
"""

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ctm_core.config import MAX_SEED, NoiseConfig
from ctm_core.rows import aligned
from ctm_core.samplers import (
    DEFAULT_GAMMA,
    Denoiser,
    Jumper,
    NoiseMode,
    SamplerName,
    SamplerSpec,
    check_steps,
    explicit_sigmas,
    latent,
    sampler_spec,
    sampling_sigmas,
)
from ctm_core.seeding import seeded_generator


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """One checked request: n samples from `seed`, with `steps` steps of the model's schedule, or
    exactly the levels `sigmas` (from σ_max down to σ_min; then steps = len(sigmas) − 1)."""

    sampler: SamplerName
    steps: int
    n: int
    seed: int
    noise: NoiseMode = "random"
    gamma: float = DEFAULT_GAMMA
    sigmas: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SampledTrajectory:
    """The states of a request: sigmas (K + 1,) float64, states (K + 1, n) float32, on the CPU."""

    sigmas: np.ndarray
    states: np.ndarray
    nfe: int

    @property
    def samples(self) -> np.ndarray:
        """The final states, shape (n,)."""
        return self.states[-1]

    @property
    def paths(self) -> np.ndarray:
        """One row of K + 1 states per sample, shape (n, K + 1), C-contiguous."""
        return np.ascontiguousarray(self.states.T)


def sample_request(
    noise_config: NoiseConfig,
    *,
    n: int,
    sampler: str = "onestep",
    steps: int | None = None,
    sigmas: Sequence[float] | None = None,
    seed: int | None = None,
    noise: str = "random",
    gamma: float | None = None,
    max_steps: int | None = None,
    max_levels: int | None = None,
) -> SampleRequest:
    """The request these arguments make of a model with this noise range; ValueError naming the
    first rule they break.

    Omitted steps are the sampler's default (at most `max_steps`), an omitted seed is drawn, and an
    omitted γ is `DEFAULT_GAMMA` for γ-sampling. A parameter the sampler would ignore is refused
    rather than dropped: γ with a deterministic sampler, steps beside sigmas.
    """
    spec = sampler_spec(sampler)
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if noise not in ("random", "quantile"):
        raise ValueError(f"unknown noise mode {noise!r}; choose 'random' or 'quantile'")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
    if gamma is not None and not spec.stochastic:
        raise ValueError(
            f"gamma applies to sampler=gamma only; the {sampler} sampler would ignore it: drop it"
        )
    if gamma is not None and not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if sigmas is not None and steps is not None:
        raise ValueError("give either steps or sigmas, not both: the sigmas fix the steps")
    levels = None
    if sigmas is None:
        default = spec.default_steps if max_steps is None else min(spec.default_steps, max_steps)
        steps = default if steps is None else steps
        check_steps(sampler, steps)
    else:
        checked = explicit_sigmas(
            sigmas, sigma_min=noise_config.sigma_min, sigma_max=noise_config.sigma_max, max_levels=max_levels
        )
        check_steps(sampler, len(checked) - 1, from_sigmas=True)
        levels = tuple(checked.tolist())
        steps = len(levels) - 1
    return SampleRequest(
        sampler=sampler,  # type: ignore[arg-type]  # checked by sampler_spec
        steps=steps,
        n=n,
        seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
        noise=noise,  # type: ignore[arg-type]  # checked above
        gamma=DEFAULT_GAMMA if gamma is None else gamma,
        sigmas=levels,
    )


def check_request(request: SampleRequest) -> SamplerSpec:
    """The request's sampler, once its steps suit it (and its sigmas make them); ValueError if not."""
    if request.sigmas is not None and len(request.sigmas) != request.steps + 1:
        raise ValueError(
            f"{len(request.sigmas)} sigmas do not make steps={request.steps} (they make steps + 1)"
        )
    return check_steps(request.sampler, request.steps, from_sigmas=request.sigmas is not None)


@functools.lru_cache(maxsize=256)
def schedule(sampler: str, steps: int, noise_config: NoiseConfig) -> torch.Tensor:
    """`sampling_sigmas`, cached: a few schedules serve every request (callers must not modify it)."""
    return sampling_sigmas(sampler, steps, **noise_config.schedule_kwargs())


def request_levels(request: SampleRequest, noise_config: NoiseConfig) -> torch.Tensor:
    """The levels a request visits: its explicit sigmas (ValueError if they break
    `explicit_sigmas`' rules), else the schedule's (cached: callers must not modify it)."""
    if request.sigmas is None:
        return schedule(request.sampler, request.steps, noise_config)
    return explicit_sigmas(request.sigmas, sigma_min=noise_config.sigma_min, sigma_max=noise_config.sigma_max)


class RowNoise:
    """γ-sampling's fresh noise for a batch: each request's rows from its own generator, in its order."""

    def __init__(self, generators: Sequence[torch.Generator], sizes: Sequence[int], padding: int) -> None:
        self.generators = generators
        self.sizes = sizes
        self.padding = padding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # The draw `generate` makes for a request of n rows: torch.randn((n,), generator=its generator).
        pairs = zip(self.generators, self.sizes, strict=True)
        parts = [torch.randn((n,), generator=g, dtype=x.dtype) for g, n in pairs]
        if self.padding:
            parts.append(torch.zeros(self.padding, dtype=x.dtype))
        return torch.cat(parts).to(x.device)


def batch_key(request: SampleRequest) -> tuple[object, ...]:
    """Requests with equal keys (for the same model) may run as one batch."""
    return (request.sampler, request.steps, request.gamma, request.sigmas)


def run_requests(
    runtime: Jumper | Denoiser,
    noise_config: NoiseConfig,
    requests: Sequence[SampleRequest],
    device: torch.device | str = "cpu",
) -> list[SampledTrajectory]:
    """Run requests that share sampler, steps, γ and sigmas as one sampler call on `runtime` (a
    model's `jump`/`denoise`); one path per request, in order. ValueError if they differ."""
    with torch.inference_mode():  # in the body: mutation testing skips decorated functions
        first = requests[0]
        if any(batch_key(request) != batch_key(first) for request in requests[1:]):
            raise ValueError("requests run together must share sampler, steps, gamma and sigmas")
        spec = check_request(first)
        kwargs = noise_config.sampling_kwargs()
        generators = [seeded_generator(request.seed) for request in requests]
        sizes = [request.n for request in requests]
        rows = sum(sizes)
        padding = aligned(rows) - rows
        parts = [
            latent(request.n, kwargs["data_mean"], kwargs["prior_std"], request.noise, generator)
            for request, generator in zip(requests, generators, strict=True)
        ]
        if padding:
            parts.append(torch.zeros(padding))
        x = (torch.cat(parts) if len(parts) > 1 else parts[0]).to(device)
        sigmas = request_levels(first, noise_config)
        row_noise = RowNoise(generators, sizes, padding) if spec.stochastic else None
        trajectory = spec.fn(runtime, x, sigmas, gamma=first.gamma, noise_sampler=row_noise)
        states = trajectory.states.cpu().numpy()
        sigmas_np = trajectory.sigmas.cpu().numpy().copy()  # not a view of the cached schedule
        paths = []
        start = 0
        for request in requests:
            paths.append(SampledTrajectory(sigmas_np, states[:, start : start + request.n], trajectory.nfe))
            start += request.n
        return paths
