"""Sampling off the event loop: one executor runs the jobs, batching concurrent compatible ones.

Threads, chosen by measurement (docs/PERFORMANCE.md): `inference_threads` batches run at once per
process; the rows of each are shared out to the runtime's `torch_threads` threads
(`ctm_core.rows.ROWS`, shared by the batches of the process), every PyTorch op single-threaded,
so that one large job uses every CPU the worker process owns and two large jobs share them.
PyTorch releases the GIL inside its kernels, so the event loop keeps answering (e.g. /healthz)
while a large job runs.

Jobs that wait for the executor together and share model, sampler, steps, γ and explicit noise
levels (if any) run as one batch (`service.batching`): their latents are concatenated, the network
runs once per step on all of them, and each job gets its own columns back. Every job's latent and
γ-noise come from its own seeded generator, in the order `ctm_core.samplers.generate` draws them,
and the runtime computes a row the same way whatever else is in the batch (`ctm_core.runtime`), so
a request gives the same samples alone, batched, or under any load. The network is the folded
runtime built from the checkpoint's weights (`ctm_core.runtime`), under `torch.inference_mode`.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ctm_core.machine import usable_cpus
from ctm_core.rows import ROWS
from ctm_core.samplers import nfe_of
from ctm_core.sampling import SampledTrajectory, SampleRequest, batch_key, run_requests
from service.batching import Batcher
from service.config import Settings
from service.registry import LoadedModel

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class SamplingJob(SampleRequest):
    """One checked sampling request (`ctm_core.sampling.sample_request`), with its model looked up."""

    model: LoadedModel


@dataclass(frozen=True)
class _Pending:
    """A job submitted to the engine, with the flag set once its request is answered or gone
    (timed out, disconnected): a batch whose every request is gone stops (`Stoppable`)."""

    job: SamplingJob
    gone: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class SamplingResult(SampledTrajectory):
    """A job's trajectory (`ctm_core.sampling.SampledTrajectory`), with the job it answers."""

    job: SamplingJob


class Stopped(Exception):
    """Work stopped because nobody waits for its answer any more."""


class Stoppable:
    """A model's `jump` and `denoise` that first ask `stop()`, raising `Stopped` when it says so.

    Samplers and the likelihood evaluate the network once or a few times per step, so work whose
    requests have timed out frees the CPU within a step, not at the end of the whole solve.
    """

    def __init__(self, model: Any, stop: Callable[[], bool]) -> None:
        self.model = model
        self.stop = stop

    def _check(self) -> None:
        if self.stop():
            raise Stopped("every request waiting for this work has gone")

    def jump(self, x: torch.Tensor, t: torch.Tensor | float, s: torch.Tensor | float) -> torch.Tensor:
        self._check()
        return self.model.jump(x, t, s)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        self._check()
        return self.model.denoise(x, t)


def torch_threads_for(settings: Settings) -> int:
    """Threads that share out a batch's rows: the setting, or the CPUs we may use split over workers.

    Concurrent batches of one process share these threads (`ctm_core.rows.ROWS`).
    """
    if settings.torch_threads:
        return settings.torch_threads
    return max(1, usable_cpus() // settings.workers)


def use_threads(threads: int) -> None:
    """Sample in this process as the service does: PyTorch ops single-threaded in the calling
    thread, a large input's rows shared out to `threads` threads."""
    torch.set_num_threads(1)
    ROWS.configure(threads)


# A batch of at most this many rows × network evaluations (about 2.5 ms on one core) runs on the
# event loop's own thread: the hop to a pool thread and back costs 0.12 ms, a sixth of a lone
# 1,000-sample request, and the GIL makes a pool thread's Python stall the loop anyway
# (docs/PERFORMANCE.md).
INLINE_MAX_ROW_EVALS = 4096
# Most rows in one batch (CTM_BATCH_MAX_ROWS): 16,384 measured best with 64 clients at n = 100 to
# 1,000 (docs/PERFORMANCE.md); larger batches only make their first jobs wait longer.
MAX_BATCH_ROWS = 16384


def run_batch(
    jobs: Sequence[SamplingJob], device: torch.device, stop: Callable[[], bool] = bool
) -> list[SamplingResult]:
    """Run jobs that share model, sampler, steps, γ and sigmas as one sampler call on the model's
    runtime (`ctm_core.sampling.run_requests`); one result per job. Raises `Stopped` once `stop()`."""
    model = jobs[0].model
    paths = run_requests(Stoppable(model.runtime, stop), model.checkpoint.noise, jobs, device)
    return [
        SamplingResult(path.sigmas, path.states, path.nfe, job) for path, job in zip(paths, jobs, strict=True)
    ]


def run_job(job: SamplingJob, device: torch.device, stop: Callable[[], bool] = bool) -> SamplingResult:
    """Run one job synchronously (in a pool thread): the model's own noise range and schedule (or
    the job's explicit sigmas).

    The same code path as a batch of one, so it gives what the job gets batched with others.
    """
    return run_batch([job], device, stop=stop)[0]


class InferenceEngine:
    """Runs sampling jobs on a dedicated thread pool, batched, without blocking the event loop."""

    def __init__(
        self,
        device: torch.device,
        inference_threads: int,
        torch_threads: int,
        max_batch_rows: int = MAX_BATCH_ROWS,
    ) -> None:
        self.device = device
        self.torch_threads = torch_threads
        self.inline_max_row_evals = INLINE_MAX_ROW_EVALS
        # Built on the event loop's thread, which runs small batches itself (`_inline`): its ops
        # single-threaded too (OpenMP's thread count is per calling thread).
        use_threads(torch_threads)
        self._executor = ThreadPoolExecutor(
            max_workers=inference_threads,
            thread_name_prefix="ctm-inference",
            initializer=use_threads,
            initargs=(torch_threads,),
        )
        self._batcher: Batcher[_Pending, SamplingResult] = Batcher(
            self._executor,
            self._run,
            slots=inference_threads,
            key=lambda pending: self._batch_key(pending.job),
            rows=lambda pending: pending.job.n,
            max_rows=max_batch_rows,
            inline=self._inline,
        )

    def _batch_key(self, job: SamplingJob) -> Hashable | None:
        """Jobs with equal keys may share a batch; None (run alone) for a model whose runtime did
        not show at load that batching leaves each row's value unchanged."""
        if not job.model.batchable:
            return None
        # id(): the waiting jobs hold their models, so no two live models share an id.
        return (id(job.model), *batch_key(job))

    def _inline(self, batch: list[_Pending]) -> bool:
        """Whether a batch is small enough to run on the event loop's thread (a CPU one only: a
        GPU's launches and copies would stall the loop)."""
        if self.device.type != "cpu":
            return False
        evaluations = sum(p.job.n * nfe_of(p.job.sampler, p.job.steps) for p in batch)
        return evaluations <= self.inline_max_row_evals

    def _run(self, batch: list[_Pending]) -> list[SamplingResult]:
        jobs = [pending.job for pending in batch]
        stop = lambda: all(pending.gone.is_set() for pending in batch)  # noqa: E731
        try:
            if len(jobs) == 1:
                return [run_job(jobs[0], self.device, stop=stop)]
            return run_batch(jobs, self.device, stop=stop)
        except Stopped:
            first = jobs[0]
            logger.info(
                "sampling stopped, its requests gone model=%s sampler=%s steps=%d rows=%d",
                first.model.name,
                first.sampler,
                first.steps,
                sum(job.n for job in jobs),
            )
            raise

    async def sample(self, job: SamplingJob) -> SamplingResult:
        """The trajectory for `job`; raises ValueError if ctm_core refuses the arguments."""
        start = time.perf_counter()
        pending = _Pending(job)
        try:
            result, batch = await self._batcher.submit(pending)
        finally:
            pending.gone.set()  # answered, or the request is gone: its batch may stop
        logger.info(
            "sampled model=%s sampler=%s steps=%d n=%d seed=%d noise=%s nfe=%d batch=%d seconds=%.4f",
            job.model.name,
            job.sampler,
            job.steps,
            job.n,
            job.seed,
            job.noise,
            result.nfe,
            batch,
            time.perf_counter() - start,
        )
        return result

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) on the same pool: other CPU work of a request (figures, metrics) shares its budget."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        """Stop taking jobs (running ones finish in their threads)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
