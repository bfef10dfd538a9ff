"""Dynamic batching: the Batcher's grouping; the same samples for a request alone or batched, under load."""

import asyncio
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from app_client import gather_while_held
from scipy import stats

from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.samplers import generate
from service import inference, registry
from service.app import create_app
from service.batching import Batcher
from service.config import Settings
from service.inference import SamplingJob, run_batch, run_job
from service.registry import LoadedModel, load_model

pytestmark = pytest.mark.anyio
CPU = torch.device("cpu")
NOISE = NoiseConfig(sigma_min=0.002, sigma_max=10.0, sigma_data=0.5, data_mean=0.3)


@contextmanager
def running_engine(inference_threads: int = 1) -> Iterator[inference.InferenceEngine]:
    """An engine on the CPU with single-threaded row work, shut down on the way out."""
    engine = inference.InferenceEngine(CPU, inference_threads=inference_threads, torch_threads=1)
    try:
        yield engine
    finally:
        engine.shutdown()


@pytest.fixture
def full_size_dir(tmp_path: Path, make_checkpoint: Any) -> Path:
    """A folder with one default model, `m` (monotone: a 3×128 conditioner of 64 tanh units), the
    kind and size the shipped models have; and `mlp`, a default-size plain MLP (3×128)."""
    folder = tmp_path / "served"
    folder.mkdir()
    make_checkpoint(folder / "m.safetensors", noise=NOISE, network=NetworkConfig(), seed=3)
    make_checkpoint(folder / "mlp.safetensors", noise=NOISE, network=NetworkConfig(kind="mlp"), seed=3)
    return folder


@pytest.fixture(params=["m", "mlp"])
def model(full_size_dir: Path, request: pytest.FixtureRequest) -> LoadedModel:
    """Each served runtime in turn: the folded monotone network and the folded MLP."""
    return load_model(full_size_dir / f"{request.param}.safetensors", CPU)


# ---- the Batcher ------------------------------------------------------------------------------------


class _Recorder:
    """A `run` that records its batches; it waits on `gate` so that jobs pile up behind the first."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.gate = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def __call__(self, jobs: list[tuple[str, int]]) -> list[str]:
        asyncio.run_coroutine_threadsafe(self.gate.wait(), self.loop).result(timeout=10)
        self.batches.append(jobs)
        return [f"{key}:{rows}" for key, rows in jobs]


def _batcher(run: _Recorder, executor: ThreadPoolExecutor, max_rows: int = 100) -> Batcher[Any, str]:
    def key(job: tuple[str, int]) -> Hashable | None:
        return None if job[0] == "alone" else job[0]

    return Batcher(executor, run, slots=1, key=key, rows=lambda job: job[1], max_rows=max_rows)


async def test_jobs_waiting_together_with_one_key_run_as_one_batch() -> None:
    run = _Recorder()
    with ThreadPoolExecutor(1) as executor:
        batcher = _batcher(run, executor, max_rows=100)
        first = asyncio.create_task(batcher.submit(("a", 1)))
        await asyncio.sleep(0.05)  # dispatched alone: nothing else waited; it holds the only slot
        jobs = [("a", 2), ("b", 3), ("a", 90), ("alone", 1), ("alone", 1), ("a", 7), ("b", 4)]
        tasks = [asyncio.create_task(batcher.submit(job)) for job in jobs]
        await asyncio.sleep(0.05)
        assert batcher.waiting == len(jobs)
        run.gate.set()
        results = [await first, *await asyncio.gather(*tasks)]
    assert [result for result, _ in results] == [f"{k}:{r}" for k, r in [("a", 1), *jobs]]
    # Oldest first; each takes every later waiting job of its key that fits in max_rows.
    assert run.batches == [
        [("a", 1)],
        [("a", 2), ("a", 90), ("a", 7)],
        [("b", 3), ("b", 4)],
        [("alone", 1)],
        [("alone", 1)],
    ]
    assert [size for _, size in results] == [1, 3, 2, 3, 1, 1, 3, 2]


async def test_jobs_submitted_in_one_loop_turn_share_a_batch_even_with_a_free_slot() -> None:
    run = _Recorder()
    run.gate.set()
    with ThreadPoolExecutor(2) as executor:
        batcher = Batcher(executor, run, slots=2, key=lambda j: j[0], rows=lambda j: j[1], max_rows=100)
        results = await asyncio.gather(*(batcher.submit(("a", rows)) for rows in (1, 2, 3)))
    assert run.batches == [[("a", 1), ("a", 2), ("a", 3)]]
    assert [size for _, size in results] == [3, 3, 3]


async def test_small_batches_run_on_the_loop_thread_and_large_ones_in_the_pool() -> None:
    threads: list[tuple[list[int], int]] = []

    def run(jobs: list[int]) -> list[int]:
        threads.append((jobs, threading.get_ident()))
        return [2 * job for job in jobs]

    with ThreadPoolExecutor(1) as executor:
        batcher: Batcher[int, int] = Batcher(
            executor,
            run,
            slots=1,
            key=lambda j: "k",
            rows=lambda j: j,
            max_rows=100,
            inline=lambda b: sum(b) <= 5,
        )
        small = await asyncio.gather(*(batcher.submit(job) for job in (1, 2, 2)))
        large = await asyncio.gather(*(batcher.submit(job) for job in (3, 4)))
    loop_thread = threading.get_ident()
    assert threads[0] == ([1, 2, 2], loop_thread)
    assert threads[1][0] == [3, 4] and threads[1][1] != loop_thread
    assert small == [(2, 3), (4, 3), (4, 3)] and large == [(6, 2), (8, 2)]


async def test_an_error_of_an_inline_batch_reaches_its_jobs_and_the_batcher_goes_on() -> None:
    def run(jobs: list[int]) -> list[int]:
        if 0 in jobs:
            raise ValueError("refused")
        return jobs

    with ThreadPoolExecutor(1) as executor:
        batcher: Batcher[int, int] = Batcher(
            executor, run, slots=1, key=lambda j: j == 0, rows=lambda j: 1, max_rows=9, inline=lambda b: True
        )
        outcomes = await asyncio.gather(*(batcher.submit(j) for j in (0, 1, 0, 2)), return_exceptions=True)
    assert [type(o) for o in outcomes] == [ValueError, tuple, ValueError, tuple]
    assert outcomes[1] == (1, 2) and outcomes[3] == (2, 2)


async def test_a_cancelled_waiting_job_never_runs() -> None:
    run = _Recorder()
    with ThreadPoolExecutor(1) as executor:
        batcher = _batcher(run, executor)
        first = asyncio.create_task(batcher.submit(("a", 1)))
        await asyncio.sleep(0.05)  # running, alone: the next two wait
        doomed = asyncio.create_task(batcher.submit(("a", 2)))
        kept = asyncio.create_task(batcher.submit(("a", 3)))
        await asyncio.sleep(0.05)
        doomed.cancel()
        run.gate.set()
        assert (await first)[0] == "a:1" and (await kept)[0] == "a:3"
        with pytest.raises(asyncio.CancelledError):
            await doomed
    assert run.batches == [[("a", 1)], [("a", 3)]]


async def test_an_error_reaches_every_job_of_its_batch() -> None:
    def fail(jobs: list[tuple[str, int]]) -> list[str]:
        time.sleep(0.05)
        raise ValueError("refused")

    with ThreadPoolExecutor(1) as executor:
        batcher: Batcher[Any, str] = Batcher(
            executor, fail, slots=1, key=lambda j: j[0], rows=lambda j: 1, max_rows=9
        )
        outcomes = await asyncio.gather(*(batcher.submit(("a", 1)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)


# ---- batched sampling gives each job what it gets alone ---------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "steps"), [("onestep", 1), ("multistep", 3), ("gamma", 4), ("euler", 3), ("heun", 3)]
)
def test_a_batch_gives_each_job_its_own_samples(model: LoadedModel, sampler: str, steps: int) -> None:
    sizes = [1, 7, 16, 250, 1, 33]
    jobs = [
        SamplingJob(
            model=model,
            sampler=sampler,  # type: ignore[arg-type]
            steps=steps,
            n=n,
            seed=100 + i,
            noise="quantile" if i == 3 else "random",
            gamma=0.3,
        )
        for i, n in enumerate(sizes)
    ]
    batched = run_batch(jobs, CPU)
    for job, result in zip(jobs, batched, strict=True):
        alone = run_job(job, CPU)
        assert result.job is job and result.nfe == alone.nfe
        np.testing.assert_array_equal(result.states, alone.states)
        np.testing.assert_array_equal(result.sigmas, alone.sigmas)
        # And the runtime's samples are ctm_core's, up to float rounding (the same latent and noise).
        reference = generate(
            model.network,
            sampler,
            steps,
            job.n,
            **NOISE.sampling_kwargs(),
            seed=job.seed,
            noise=job.noise,
            gamma=0.3,
        )
        np.testing.assert_allclose(result.states, reference.states.numpy(), rtol=1e-4, atol=1e-4)
    # The quantile job's latent is the prior's quantiles, batched or not: N(μ, σ_max² + σ_d²).
    n = sizes[3]
    prior = stats.norm(NOISE.data_mean, math.hypot(NOISE.sigma_max, NOISE.sigma_data))
    expected = prior.ppf((np.arange(n) + 0.5) / n)
    np.testing.assert_allclose(batched[3].states[0], expected, rtol=1e-6, atol=1e-5)


# ---- the service under concurrent load --------------------------------------------------------------


@asynccontextmanager
async def serve(folder: Path, **settings: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(Settings(checkpoint_dir=folder, **settings))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield app, client


def request_mix() -> list[dict[str, Any]]:
    """Requests that share batch keys (sampler, steps, γ) with varied n, seeds and latents."""
    mix = []
    for i in range(48):
        sampler, steps = [("onestep", 1), ("multistep", 4), ("gamma", 3), ("heun", 2)][i % 4]
        params = {"model": "m", "sampler": sampler, "steps": steps, "n": [1, 3, 64, 200, 17, 1000][i % 6]}
        params |= {"seed": 1000 + i // 2, "noise": "quantile" if i % 5 == 0 else "random"}
        if sampler == "gamma":
            params["gamma"] = 0.4
        mix.append(params)
    return mix


async def test_same_request_same_samples_under_concurrent_load(
    full_size_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mix = request_mix()
    batches: list[int] = []
    async with serve(full_size_dir, inference_threads=1) as (app, client):
        alone = []
        for params in mix:
            response = await client.get("/sample", params=params)
            assert response.status_code == 200, response.text
            alone.append(response.json()["samples"])
        for _ in range(2):
            # Hold the only inference thread until every request has queued: they are batched.
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="service.inference"):
                requests = [client.get("/sample", params=p) for p in mix]
                responses = await gather_while_held(app.state.engine, requests)
            for params, expected, response in zip(mix, alone, responses, strict=True):
                assert response.status_code == 200, response.text
                assert response.json()["samples"] == expected, params
            found = (re.search(r" batch=(\d+) ", r.getMessage()) for r in caplog.records)
            batches += [int(m.group(1)) for m in found if m]
    assert len(batches) == 2 * len(mix)
    assert max(batches) > 5  # the load was batched, not run one request at a time


# ---- a lone small job runs on the event loop's thread ----------------------------------------------


async def test_small_batches_run_inline_and_large_ones_go_to_the_pool(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    sizes: list[int] = []
    names: set[str] = set()

    def recording_run_batch(jobs: list[SamplingJob], device: torch.device, **kwargs: Any) -> list[Any]:
        threads.append(threading.get_ident())
        names.add(threading.current_thread().name)
        sizes.append(len(jobs))
        return run_batch(jobs, device, **kwargs)

    monkeypatch.setattr(inference, "run_batch", recording_run_batch)
    loop_thread = threading.get_ident()

    def job(n: int, seed: int, sampler: str = "multistep", steps: int = 4) -> SamplingJob:
        return SamplingJob(
            model=model, sampler=sampler, steps=steps, n=n, seed=seed, noise="random", gamma=0.0
        )

    with running_engine() as engine:
        small = job(1024, 1)
        result = await engine.sample(small)  # 4,096 row-evaluations: INLINE_MAX_ROW_EVALS exactly
        assert threads == [loop_thread]
        np.testing.assert_array_equal(result.states, run_job(small, CPU).states)

        await engine.sample(job(1100, 1))
        assert threads[-1] != loop_thread

        # Arriving together, small jobs run as one batch on the loop's thread, each its own samples.
        threads.clear()
        sizes.clear()
        together = [job(10, s, "onestep", 1) for s in range(4)]
        results = await asyncio.gather(*(engine.sample(j) for j in together))
        assert threads == [loop_thread] and sizes == [4]
        for one, got in zip(together, results, strict=True):
            np.testing.assert_array_equal(got.states, run_job(one, CPU).states)

        # Together past the limit (4 × 1,100 row-evaluations), they go to the pool.
        threads.clear()
        await asyncio.gather(*(engine.sample(job(1100, s, "onestep", 1)) for s in range(4)))
        assert threads and loop_thread not in threads
        # The engine's own pool, not asyncio's default executor.
        assert {name.split("_")[0] for name in names} == {threading.main_thread().name, "ctm-inference"}


async def test_other_request_work_shares_the_inference_pool() -> None:
    """`InferenceEngine.call` (figures, metrics) runs on the engine's own threads, so the pool's
    size bounds all of a request's CPU work, with the engine's torch thread count."""
    with running_engine(inference_threads=2) as engine:

        def where() -> tuple[str, int]:
            return threading.current_thread().name, torch.get_num_threads()

        names = await asyncio.gather(*(engine.call(where) for _ in range(8)))
        assert all(name.startswith("ctm-inference") and threads == 1 for name, threads in names)


@pytest.mark.parametrize("jobs_in_batch", [1, 2])
async def test_work_whose_requests_are_all_gone_stops_within_a_step(
    full_size_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, jobs_in_batch: int
) -> None:
    """Cancelled while its batch runs (a timeout, a client gone), a 64-jump solve stops at its next
    network evaluation instead of finishing, and says so in the log. A second jump waits until
    every request is gone, so the solve cannot finish first."""
    model = load_model(full_size_dir / "m.safetensors", CPU)
    first_jump, requests_gone = threading.Event(), threading.Event()
    evaluations: list[int] = []
    runtime_jump = model.runtime.jump

    def held_jump(*args: Any) -> torch.Tensor:
        evaluations.append(1)
        if len(evaluations) == 1:
            first_jump.set()
        elif len(evaluations) == 2:
            requests_gone.wait(30)
        return runtime_jump(*args)

    monkeypatch.setattr(model.runtime, "jump", held_jump)
    jobs = [
        SamplingJob(model=model, sampler="multistep", steps=64, n=1000, seed=s, noise="random", gamma=0.0)
        for s in range(jobs_in_batch)
    ]
    with running_engine() as engine:
        with caplog.at_level(logging.INFO, logger=inference.logger.name):
            tasks = [asyncio.create_task(engine.sample(job)) for job in jobs]
            assert await asyncio.get_running_loop().run_in_executor(None, first_jump.wait, 30)
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
            requests_gone.set()
            await engine.call(lambda: None)  # the one pool thread is free again: the batch has ended
        # Stopped at the check before the second jump or the third (the second may already be
        # waiting when the requests go), never after all 64.
        assert len(evaluations) <= 2
        stopped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sampling stopped")]
        rows = 1000 * jobs_in_batch
        assert stopped == [
            f"sampling stopped, its requests gone model=m sampler=multistep steps=64 rows={rows}"
        ]


async def test_each_sampled_request_logs_what_it_ran(
    full_size_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The access log's sampling line names the model, the sampler, its work and its own duration."""
    model = load_model(full_size_dir / "m.safetensors", CPU)
    job = SamplingJob(model=model, sampler="multistep", steps=3, n=10, seed=5, noise="quantile", gamma=0.0)
    with running_engine() as engine, caplog.at_level(logging.INFO, logger=inference.logger.name):
        before = time.perf_counter()
        await engine.sample(job)
        took = time.perf_counter() - before
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sampled ")]
    head, _, seconds = line.rpartition(" seconds=")
    assert head == "sampled model=m sampler=multistep steps=3 n=10 seed=5 noise=quantile nfe=3 batch=1"
    assert 0 <= float(seconds) <= took + 1e-4  # printed to 4 decimals


async def test_requests_for_two_models_never_share_a_batch(full_size_dir: Path, make_checkpoint: Any) -> None:
    """Arriving together with the same sampler, steps and n, requests for two models of the same
    kind each get their own model's samples (a batch runs on one model's network)."""
    other = make_checkpoint(full_size_dir / "other.safetensors", noise=NOISE, network=NetworkConfig(), seed=4)
    models = [load_model(full_size_dir / "m.safetensors", CPU), load_model(other, CPU)]
    jobs = [
        SamplingJob(model=model, sampler="onestep", steps=1, n=16, seed=s, noise="random", gamma=0.0)
        for s in range(3)
        for model in models
    ]
    with running_engine() as engine:
        results = await asyncio.gather(*(engine.sample(job) for job in jobs))
    for job, result in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(result.states, run_job(job, CPU).states)
    assert not np.array_equal(results[0].states, results[1].states)


async def test_shutdown_returns_at_once_and_drops_queued_work() -> None:
    """Shutdown stops taking jobs without waiting for the running one; queued work is cancelled."""
    engine = inference.InferenceEngine(CPU, inference_threads=1, torch_threads=1)
    running, release = threading.Event(), threading.Event()

    def held() -> str:
        running.set()
        release.wait(30)
        return "done"

    first = asyncio.create_task(engine.call(held))
    queued = asyncio.create_task(engine.call(lambda: "queued"))
    assert await asyncio.get_running_loop().run_in_executor(None, running.wait, 30)
    closer = threading.Thread(target=engine.shutdown)
    closer.start()
    closer.join(timeout=10)
    returned_while_running = not closer.is_alive() and not release.is_set()
    release.set()
    closer.join()
    assert returned_while_running
    assert await first == "done"
    with pytest.raises(asyncio.CancelledError):
        await queued


@pytest.mark.parametrize(
    ("cpus", "workers", "setting", "expected"), [(8, 2, 0, 4), (2, 2, 0, 1), (2, 8, 0, 1), (2, 8, 3, 3)]
)
def test_row_threads_split_the_cpus_over_the_workers(
    monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int, setting: int, expected: int
) -> None:
    monkeypatch.setattr(inference, "usable_cpus", lambda: cpus)
    assert inference.torch_threads_for(Settings(workers=workers, torch_threads=setting)) == expected


def test_a_runtime_that_rounds_rows_by_their_batch_is_never_batched(
    full_size_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_model(full_size_dir / "m.safetensors", CPU).batchable
    monkeypatch.setattr(registry, "batch_invariant", lambda runtime: False)
    assert not load_model(full_size_dir / "m.safetensors", CPU).batchable
