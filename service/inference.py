"""Sampling off the event loop: a dedicated thread pool runs `ctm_core.samplers.generate`.

Threads, chosen deliberately: `inference_threads` jobs run at once per process, each with
`torch_threads` intra-op threads (set in every pool thread, since OpenMP keeps that count per
thread), so jobs × intra-op threads ≈ the CPUs one worker process owns. PyTorch releases the GIL
inside its kernels, so the event loop keeps answering (e.g. /healthz) while a large job runs.
Networks run under `torch.inference_mode` (inside `generate`) and are loaded in eval mode.

Every job is one `SamplingJob` carrying its resolved model, so later features (batching concurrent
small jobs, other kinds of jobs such as log-likelihoods) change this module, not the routes.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ctm_core.samplers import NoiseMode, SamplerName, generate
from service.config import DeviceName, Settings
from service.registry import LoadedModel

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingJob:
    """One validated sampling request, with its model already looked up."""

    model: LoadedModel
    sampler: SamplerName
    steps: int
    n: int
    seed: int
    noise: NoiseMode
    gamma: float


@dataclass(frozen=True)
class SamplingResult:
    """The trajectory of a job: sigmas (K + 1,) float64 and states (K + 1, n) float32, on the CPU."""

    job: SamplingJob
    nfe: int
    sigmas: np.ndarray
    states: np.ndarray

    @property
    def samples(self) -> np.ndarray:
        """The final states, shape (n,)."""
        return self.states[-1]

    @property
    def paths(self) -> np.ndarray:
        """One row of K + 1 states per sample, shape (n, K + 1), C-contiguous."""
        return np.ascontiguousarray(self.states.T)


def resolve_device(name: DeviceName) -> torch.device:
    """cpu, cuda, or (auto) cuda when available; RuntimeError when cuda is asked for but missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CTM_DEVICE=cuda but PyTorch sees no CUDA device; use cpu or auto")
    return torch.device(name)


def torch_threads_for(settings: Settings) -> int:
    """Intra-op threads per job: the setting, or the CPUs we may use split over workers and jobs."""
    if settings.torch_threads:
        return settings.torch_threads
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // (settings.workers * settings.inference_threads))


def run_job(job: SamplingJob, device: torch.device) -> SamplingResult:
    """Run one job synchronously (in a pool thread): the model's own noise range and schedule."""
    noise = job.model.checkpoint.noise
    trajectory = generate(
        job.model.network,
        job.sampler,
        job.steps,
        job.n,
        **noise.sampling_kwargs(),
        seed=job.seed,
        noise=job.noise,
        gamma=job.gamma,
        device=device,
    )
    return SamplingResult(
        job=job,
        nfe=trajectory.nfe,
        sigmas=trajectory.sigmas.cpu().numpy(),
        states=trajectory.states.cpu().numpy(),
    )


class InferenceEngine:
    """Runs sampling jobs on a dedicated thread pool and awaits them without blocking the loop."""

    def __init__(self, device: torch.device, inference_threads: int, torch_threads: int) -> None:
        self.device = device
        self.torch_threads = torch_threads
        self._previous_torch_threads = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
        self._executor = ThreadPoolExecutor(
            max_workers=inference_threads,
            thread_name_prefix="ctm-inference",
            initializer=torch.set_num_threads,
            initargs=(torch_threads,),
        )

    async def sample(self, job: SamplingJob) -> SamplingResult:
        """The trajectory for `job`; raises ValueError if ctm_core refuses the arguments."""
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, run_job, job, self.device)
        logger.info(
            "sampled model=%s sampler=%s steps=%d n=%d seed=%d noise=%s nfe=%d seconds=%.4f",
            job.model.name,
            job.sampler,
            job.steps,
            job.n,
            job.seed,
            job.noise,
            result.nfe,
            time.perf_counter() - start,
        )
        return result

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) on the same pool: other CPU work of a request (figures, metrics) shares its budget."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        """Stop taking jobs (running ones finish in their threads); restore PyTorch's thread count."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        torch.set_num_threads(self._previous_torch_threads)
