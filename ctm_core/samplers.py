"""CTM samplers and PF-ODE solvers; each returns the whole trajectory and its NFE.

Every sampler shares one signature, `sample_x(model, x, sigmas, generator=None, gamma=0.0,
noise_sampler=None)`: `model` has `jump(x, t, s)` (the CTM jump G) and/or `denoise(x, t)` (the
denoiser D), `x` is the latent x_T at sigmas[0], shape (n,), and `sigmas` runs from σ_max down to
σ_min, shape (K + 1,). A stochastic sampler draws its fresh N(0, 1) noise shaped like x from
`noise_sampler(x)` if given (e.g. one generator per block of rows), else from `generator`.
"""

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from ctm_core.schedules import get_sigmas
from ctm_core.seeding import seeded_generator

NoiseMode = Literal["random", "quantile"]
SamplerName = Literal["onestep", "multistep", "gamma", "euler", "heun"]
NoiseSampler = Callable[[torch.Tensor], torch.Tensor]  # x ↦ fresh N(0, 1) noise shaped like x
DEFAULT_GAMMA = 0.5  # γ-sampling's γ when none is given: a quarter of each level's variance is fresh noise


class Jumper(Protocol):
    def jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor: ...


class Denoiser(Protocol):
    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Trajectory:
    """States (K + 1, n) at noise levels sigmas (K + 1,), from x_T to the samples; nfe evaluations."""

    sigmas: torch.Tensor
    states: torch.Tensor
    nfe: int

    @property
    def samples(self) -> torch.Tensor:
        """The final states, shape (n,)."""
        return self.states[-1]


def _level(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device)


def sample_onestep(
    model: Jumper,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    gamma: float = 0.0,
    noise_sampler: NoiseSampler | None = None,
) -> Trajectory:
    """CTM one-step generation: x = G(x_T, σ_max, σ_min) (Kim et al. 2023, sec. 4). NFE 1."""
    ends = torch.stack([sigmas[0], sigmas[-1]])
    out = model.jump(x, _level(ends[0], x), _level(ends[1], x))
    return Trajectory(ends, torch.stack([x, out]), nfe=1)


def sample_multistep(
    model: Jumper,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    gamma: float = 0.0,
    noise_sampler: NoiseSampler | None = None,
) -> Trajectory:
    """Deterministic CTM multistep sampling: x ← G(x, τ_i, τ_{i+1}) (Algorithm 3 with γ = 0)."""
    states = [x]
    for t, s in itertools.pairwise(sigmas):
        x = model.jump(x, _level(t, x), _level(s, x))
        states.append(x)
    return Trajectory(sigmas, torch.stack(states), nfe=len(sigmas) - 1)


def sample_gamma(
    model: Jumper,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    gamma: float = DEFAULT_GAMMA,
    noise_sampler: NoiseSampler | None = None,
) -> Trajectory:
    """γ-sampling, Algorithm 3 of Kim et al. (2023): jump to √(1−γ²)·τ_{i+1}, then renoise to τ_{i+1}.

    The intermediate target is kept ≥ σ_min (γ = 1 would otherwise ask for time 0), and the fresh
    noise restores exactly the marginal level τ_{i+1}: std √(τ_{i+1}² − s²), which is γ·τ_{i+1}
    whenever s is not clamped. The last step jumps straight to σ_min. NFE K. The fresh noise
    comes from `noise_sampler(x)` when given (k-diffusion's convention), else from `generator`.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    sigma_end = sigmas[-1]
    states = [x]
    n_steps = len(sigmas) - 1
    for i in range(n_steps):
        t, level = sigmas[i], sigmas[i + 1]
        if i == n_steps - 1:
            x = model.jump(x, _level(t, x), _level(sigma_end, x))
        else:
            s = torch.clamp((1 - gamma**2) ** 0.5 * level, min=sigma_end)
            x = model.jump(x, _level(t, x), _level(s, x))
            noise_std = (level**2 - s**2).clamp(min=0).sqrt()
            if noise_sampler is not None:
                eps = noise_sampler(x)
            else:
                # Noise is drawn on the CPU generator so a seed means the same on every device.
                eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = x + _level(noise_std, x) * eps
        states.append(x)
    return Trajectory(sigmas, torch.stack(states), nfe=n_steps)


def pf_ode_drift(x: torch.Tensor, denoised: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """PF-ODE drift dx/dt = (x − D(x, t)) / t given D(x, t) (Karras et al. 2022, eq. 4 with σ(t) = t);
    t a level shared by all rows or one per row."""
    return (x - denoised) / t


def _drift(model: Denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = _level(t, x)
    return pf_ode_drift(x, model.denoise(x, t), t)


def sample_euler(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    gamma: float = 0.0,
    noise_sampler: NoiseSampler | None = None,
) -> Trajectory:
    """Euler steps on the PF-ODE (Karras et al. 2022, Algorithm 1 without the Heun correction). NFE K."""
    states = [x]
    for t, s in itertools.pairwise(sigmas):
        x = x + _level(s - t, x) * _drift(model, x, t)
        states.append(x)
    return Trajectory(sigmas, torch.stack(states), nfe=len(sigmas) - 1)


def sample_heun(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    gamma: float = 0.0,
    noise_sampler: NoiseSampler | None = None,
) -> Trajectory:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1); the last step is Euler. NFE 2K − 1."""
    states = [x]
    n_steps = len(sigmas) - 1
    for i in range(n_steps):
        t, s = sigmas[i], sigmas[i + 1]
        dt = _level(s - t, x)
        d = _drift(model, x, t)
        x_euler = x + dt * d
        x = x + dt * 0.5 * (d + _drift(model, x_euler, s)) if i < n_steps - 1 else x_euler
        states.append(x)
    return Trajectory(sigmas, torch.stack(states), nfe=max(2 * n_steps - 1, 1))


SamplerFn = Callable[..., Trajectory]


@dataclass(frozen=True)
class SamplerSpec:
    """What one sampler is, needs and defaults to: `SPECS` is the one place these rules live.

    `uses_jump`: it runs the CTM jump G (else the denoiser D: a PF-ODE solver). `stochastic`: it
    draws fresh noise after x_T, so `gamma` and the seed act on it beyond the latent.
    `fixed_steps`: it takes exactly `default_steps` steps. `evaluations_per_step`: network
    evaluations a step (Heun's last step is a plain Euler step, one fewer).
    """

    fn: SamplerFn
    default_steps: int
    uses_jump: bool
    stochastic: bool = False
    fixed_steps: bool = False
    evaluations_per_step: int = 1

    def nfe(self, steps: int) -> int:
        """Network evaluations for `steps` steps."""
        return max(self.evaluations_per_step * steps - (self.evaluations_per_step - 1), 1)


# Default steps: the jump samplers a few (more did not beat one step by more than the seed spread,
# docs/RESULTS.md); the ODE solvers enough that their samples lie within about 0.001·σ_data (Heun,
# 64 steps) and 0.005·σ_data (Euler, 256 steps) of a 512-step Heun solve of the same model on the
# shipped models: the solvers' own error, not a quality setting (docs/RESULTS.md, "Default steps").
SPECS: dict[str, SamplerSpec] = {
    "onestep": SamplerSpec(sample_onestep, default_steps=1, uses_jump=True, fixed_steps=True),
    "multistep": SamplerSpec(sample_multistep, default_steps=4, uses_jump=True),
    "gamma": SamplerSpec(sample_gamma, default_steps=4, uses_jump=True, stochastic=True),
    "euler": SamplerSpec(sample_euler, default_steps=256, uses_jump=False),
    "heun": SamplerSpec(sample_heun, default_steps=64, uses_jump=False, evaluations_per_step=2),
}
SAMPLERS: dict[str, SamplerFn] = {name: spec.fn for name, spec in SPECS.items()}
# Samplers that need the CTM jump G (the others only need a denoiser D).
JUMP_SAMPLERS = frozenset(name for name, spec in SPECS.items() if spec.uses_jump)


def sampler_spec(sampler: str) -> SamplerSpec:
    """The sampler's specification; ValueError naming the choices for an unknown one."""
    spec = SPECS.get(sampler)
    if spec is None:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SPECS)}")
    return spec


def check_steps(sampler: str, steps: int, *, from_sigmas: bool = False) -> SamplerSpec:
    """The sampler's specification, once `steps` suits it; ValueError saying what does not.

    `from_sigmas`: the steps come from explicit levels (their number − 1), and the message says so.
    """
    spec = sampler_spec(sampler)
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if spec.fixed_steps and steps != spec.default_steps:
        if from_sigmas:
            raise ValueError(
                f"the {sampler} sampler takes exactly {spec.default_steps + 1} sigmas (σ_max and σ_min), "
                f"got {steps + 1}; use sampler=multistep for more levels"
            )
        raise ValueError(
            f"the {sampler} sampler takes exactly {spec.default_steps} step, got steps={steps}; "
            "use sampler=multistep for more steps"
        )
    return spec


def sampling_sigmas(
    sampler: str,
    steps: int,
    *,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    schedule: str = "karras",
    jump_schedule: str = "linear",
) -> torch.Tensor:
    """The steps + 1 noise levels a sampler visits, shape (steps + 1,), float64: the CTM jump
    samplers follow `jump_schedule`, the ODE solvers `schedule` (`NoiseConfig` explains why)."""
    return get_sigmas(
        jump_schedule if sampler in JUMP_SAMPLERS else schedule, steps + 1, sigma_min, sigma_max, rho
    )


def explicit_sigmas(
    sigmas: Sequence[float] | torch.Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    max_levels: int | None = None,
) -> torch.Tensor:
    """User-given noise levels as a float64 tensor; ValueError unless they run strictly down from
    σ_max to σ_min (each end within 1e-9 relative), with 2 to `max_levels` levels."""
    levels = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if levels.numel() < 2:
        raise ValueError(f"sigmas needs at least 2 levels (σ_max and σ_min), got {levels.numel()}")
    if max_levels is not None and levels.numel() > max_levels:
        raise ValueError(f"sigmas has {levels.numel()} levels; at most {max_levels} are allowed")
    if not torch.isfinite(levels).all():
        raise ValueError("every sigma must be a finite number")
    if not (levels[1:] < levels[:-1]).all():
        raise ValueError("sigmas must be strictly decreasing")
    for index, want, name in ((0, sigma_max, "sigma_max"), (-1, sigma_min, "sigma_min")):
        got = float(levels[index])
        if abs(got - want) > 1e-9 * want:
            where = "first" if index == 0 else "last"
            raise ValueError(f"the {where} sigma must be the model's {name} = {want:g}, got {got:g}")
    levels[0], levels[-1] = sigma_max, sigma_min
    return levels


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations a sampler spends for a number of steps."""
    return sampler_spec(sampler).nfe(steps)


def quantile_latent(n: int, std: float = 1.0) -> torch.Tensor:
    """Stratified latent z_i = std·Φ⁻¹((i + ½)/n), shape (n,), float32 (computed in float64)."""
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (std * torch.special.ndtri(p)).float()


def latent(n: int, mean: float, std: float, noise: NoiseMode, generator: torch.Generator) -> torch.Tensor:
    """x_T of shape (n,) from the prior N(mean, std²) (docs/CTM.md, "The prior"): random from the
    generator, or its n quantiles mean + std·Φ⁻¹((i + ½)/n)."""
    if noise == "quantile":
        return mean + quantile_latent(n, std)
    if noise == "random":
        return mean + std * torch.randn(n, generator=generator)
    raise ValueError(f"unknown noise mode {noise!r}; choose 'random' or 'quantile'")


@torch.inference_mode()
def generate(
    model: Jumper | Denoiser,
    sampler: str,
    steps: int,
    n: int,
    *,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    schedule: str = "karras",
    jump_schedule: str = "linear",
    seed: int = 0,
    noise: NoiseMode = "random",
    gamma: float = DEFAULT_GAMMA,
    data_mean: float = 0.0,
    prior_std: float,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> Trajectory:
    """Draw n samples with the named sampler over `steps` steps of the schedule, from one seed.

    The latent and every later random draw come from one CPU generator seeded with `seed`, so the
    same arguments give the same trajectory in any process on the same platform. The latent is
    drawn from the prior N(data_mean, prior_std²) (`NoiseConfig.sampling_kwargs` gives both);
    the noise levels are `sampling_sigmas`', or `sigmas` when given (`explicit_sigmas` checks
    them; they override `steps` and the schedules).
    """
    spec = check_steps(sampler, steps)
    generator = seeded_generator(seed)
    x = latent(n, data_mean, prior_std, noise, generator).to(device)
    if sigmas is None:
        sigmas = sampling_sigmas(
            sampler,
            steps,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            rho=rho,
            schedule=schedule,
            jump_schedule=jump_schedule,
        )
    else:
        sigmas = explicit_sigmas(sigmas, sigma_min=sigma_min, sigma_max=sigma_max)
        spec = check_steps(sampler, len(sigmas) - 1, from_sigmas=True)
    return spec.fn(model, x, sigmas, generator=generator, gamma=gamma)
