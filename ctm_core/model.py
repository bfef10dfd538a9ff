"""A trained CTM for use from Python: the same samples, paths and densities as the service.

    import ctm_core

    model = ctm_core.load("checkpoints/two_gmm_1D.safetensors")
    x = model.sample(1000, sampler="multistep", seed=0)      # numpy, shape (1000,)
    path = model.trajectory(5, sampler="multistep", seed=0)  # path.sigmas (5,), path.paths (5, 5)
    logp = model.logprob([0.0, 1.5])                         # nats, float64

Requests are checked and run by `ctm_core.sampling` on the runtime the service serves
(`ctm_core.runtime`), so `model.sample(n, sampler, steps, seed=…)` equals the service's `/sample`
with the same arguments bit for bit; the densities are `ctm_core.likelihood.density_log_prob`,
as `/logprob` computes them.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ctm_core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ctm_core.likelihood import DensityName, density_log_prob
from ctm_core.runtime import Runtime, runtime_for, verify_runtime
from ctm_core.sampling import SampledTrajectory, SampleRequest, run_requests, sample_request


class Model:
    """A checkpoint ready to sample from: its evaluation student, served runtime and noise settings."""

    def __init__(self, checkpoint: Checkpoint, name: str = "model") -> None:
        self.name = name
        self.checkpoint = checkpoint
        self.network = checkpoint.student
        self.noise = checkpoint.noise
        self.device = next(self.network.parameters()).device
        self.runtime = checked_runtime(checkpoint)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, sigma_min={self.noise.sigma_min:g}, sigma_max={self.noise.sigma_max:g})"

    def request(
        self,
        n: int = 1000,
        sampler: str = "onestep",
        steps: int | None = None,
        *,
        sigmas: Sequence[float] | None = None,
        seed: int | None = None,
        noise: str = "random",
        gamma: float | None = None,
    ) -> SampleRequest:
        """The checked request these arguments make of this model (its seed drawn if omitted);
        ValueError naming the rule they break (`ctm_core.sampling.sample_request`)."""
        return sample_request(
            self.noise, n=n, sampler=sampler, steps=steps, sigmas=sigmas, seed=seed, noise=noise, gamma=gamma
        )

    def run(self, request: SampleRequest, evaluator: Runtime | None = None) -> SampledTrajectory:
        """The trajectory of a checked request; `evaluator` wraps the runtime (e.g. to report progress)."""
        runtime = self.runtime if evaluator is None else evaluator
        return run_requests(runtime, self.noise, [request], self.device)[0]

    def trajectory(
        self,
        n: int = 1000,
        sampler: str = "multistep",
        steps: int | None = None,
        *,
        sigmas: Sequence[float] | None = None,
        seed: int | None = None,
        noise: str = "random",
        gamma: float | None = None,
    ) -> SampledTrajectory:
        """n sampler paths: `.sigmas` (K + 1,), `.states` (K + 1, n), `.paths` (n, K + 1),
        `.samples` (n,), `.nfe`. Arguments as /trajectory's (`ctm_core.sampling.sample_request`):
        steps default to the sampler's own; an omitted seed is drawn; ValueError on a broken rule."""
        return self.run(self.request(n, sampler, steps, sigmas=sigmas, seed=seed, noise=noise, gamma=gamma))

    def sample(
        self,
        n: int = 1000,
        sampler: str = "onestep",
        steps: int | None = None,
        *,
        sigmas: Sequence[float] | None = None,
        seed: int | None = None,
        noise: str = "random",
        gamma: float | None = None,
    ) -> np.ndarray:
        """n samples, float32, shape (n,): /sample's answer for the same arguments."""
        return self.trajectory(
            n, sampler, steps, sigmas=sigmas, seed=seed, noise=noise, gamma=gamma
        ).samples.copy()

    def logprob(self, x: Sequence[float] | np.ndarray, density: DensityName = "onestep") -> np.ndarray:
        """log p(x) in nats, float64, one per point: "onestep", the one-step sampler's law (models
        with a monotone network); "ode", the PF-ODE's law. -inf where the density is 0."""
        points = torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(-1), device=self.device)
        if not torch.isfinite(points).all():
            raise ValueError("every point must be a finite number")
        with torch.inference_mode(False):
            return density_log_prob(self.network, points, self.noise, density).cpu().numpy()


# Quantile latents whose one-step samples must come out finite before a model is used.
_PROBE_N = 16


def checked_runtime(checkpoint: Checkpoint) -> Runtime | torch.nn.Module:
    """The runtime a checkpoint's student is used through (`ctm_core.runtime.runtime_for`), once
    its jumps match the model's (`verify_runtime`) and one-step samples from a few quantiles come
    out finite (finite weights can still overflow); CheckpointError naming the file if not."""
    student, noise = checkpoint.student, checkpoint.noise
    runtime = runtime_for(student)
    try:
        verify_runtime(runtime, student, noise.sigma_min, noise.sigma_max, noise.data_mean or 0.0)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint.path}: {exc}") from None
    probe = SampleRequest(sampler="onestep", steps=1, n=_PROBE_N, seed=0, noise="quantile")
    device = next(student.parameters()).device
    samples = run_requests(runtime, noise, [probe], device)[0].samples
    if not np.isfinite(samples).all():
        raise CheckpointError(f"{checkpoint.path}: the model produces NaN or infinite samples")
    return runtime


def load(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """The checkpoint at `path` (a safetensors file written by `python -m ctm_core.train`), ready to
    sample; `CheckpointError` (a ValueError) saying what is wrong with a bad file."""
    path = Path(path)
    return Model(load_checkpoint(path, device), name=path.stem)
