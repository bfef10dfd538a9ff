"""Explicit noise levels on /sample and /trajectory: `sigmas`, its validation, echo, batching and seeds."""

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from app_client import gather_while_held, serve

from ctm_core.samplers import generate
from service.app import create_app
from service.config import Settings
from service.inference import InferenceEngine, SamplingJob, run_batch, run_job
from service.registry import LoadedModel, load_model

pytestmark = pytest.mark.anyio
CPU = torch.device("cpu")
# two_gmm_1D's range is [0.002, 10] (tests/conftest.py FIXTURE_MODELS); gauss_1D's is [0.01, 5].
LEVELS = [10.0, 3.25, 0.7, 0.05, 0.002]
GAUSS_LEVELS = [5.0, 1.5, 0.2, 0.01]
NFE = {"multistep": 4, "gamma": 4, "euler": 4, "heun": 7}


@pytest.fixture
async def client(checkpoint_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(checkpoint_dir) as client:
        yield client


def as_float32(values: list[float]) -> np.ndarray:
    """JSON floats back to the float32 values the service wrote (orjson's shortest float32 repr)."""
    return np.asarray(values, dtype=np.float32)


def runtime_of(checkpoint_dir: Path, name: str) -> tuple[LoadedModel, Any]:
    """A model as the service loads it, and the network the service samples with (its runtime)."""
    model = load_model(checkpoint_dir / f"{name}.safetensors", CPU)
    return model, model.runtime


# --- the levels given are the levels used -----------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "sigmas=10&sigmas=3.25&sigmas=0.7&sigmas=0.05&sigmas=0.002",
        "sigmas=10,3.25,0.7,0.05,0.002",
        "sigmas=10,3.25&sigmas=0.7,0.05,0.002",
        "sigmas=10,%203.25,0.7%20,0.05,2e-3",
    ],
)
@pytest.mark.parametrize("sampler", ["multistep", "gamma", "euler", "heun"])
async def test_trajectory_echoes_the_given_sigmas(
    client: httpx.AsyncClient, sampler: str, query: str
) -> None:
    response = await client.get(f"/trajectory?model=two_gmm_1D&sampler={sampler}&n=9&seed=4&{query}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sigmas"] == LEVELS
    assert (body["steps"], body["nfe"], body["n"]) == (4, NFE[sampler], 9)
    assert len(body["paths"]) == 9 and all(len(path) == 5 for path in body["paths"])


@pytest.mark.parametrize("sampler", ["multistep", "gamma", "euler", "heun"])
@pytest.mark.parametrize(("name", "levels"), [("two_gmm_1D", LEVELS), ("gauss_1D", GAUSS_LEVELS)])
async def test_explicit_sigmas_give_what_generate_gives(
    client: httpx.AsyncClient, checkpoint_dir: Path, sampler: str, name: str, levels: list[float]
) -> None:
    """Bit for bit what ctm_core's `generate(..., sigmas=...)` draws from the same seed on the
    network the service runs, and ctm_core's eager model's samples up to float rounding."""
    params = {"model": name, "sampler": sampler, "n": 300, "seed": 77, "sigmas": levels}
    if sampler == "gamma":
        params["gamma"] = 0.3
    response = await client.get("/trajectory", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    model, runtime = runtime_of(checkpoint_dir, name)
    kwargs = model.checkpoint.noise.sampling_kwargs()
    steps = len(levels) - 1
    reference = generate(runtime, sampler, steps, 300, **kwargs, seed=77, gamma=0.3, sigmas=levels)
    np.testing.assert_array_equal(as_float32(body["samples"]), reference.samples.numpy())
    np.testing.assert_array_equal(as_float32(body["paths"]).T, reference.states.numpy())
    assert body["sigmas"] == levels == reference.sigmas.tolist()
    eager = generate(model.network, sampler, steps, 300, **kwargs, seed=77, gamma=0.3, sigmas=levels)
    np.testing.assert_allclose(as_float32(body["samples"]), eager.samples.numpy(), rtol=1e-4, atol=1e-4)
    # /sample draws the same samples as /trajectory for the same request.
    sampled = await client.get("/sample", params=params)
    assert sampled.status_code == 200, sampled.text
    assert sampled.json()["samples"] == body["samples"]
    assert (sampled.json()["steps"], sampled.json()["nfe"]) == (steps, body["nfe"])


async def test_multistep_sample_matches_generate_bit_for_bit(
    client: httpx.AsyncClient, checkpoint_dir: Path
) -> None:
    params = {
        "model": "two_gmm_1D",
        "sampler": "multistep",
        "n": 1000,
        "seed": 2024,
        "sigmas": "10,1,0.1,0.002",
    }
    body = (await client.get("/sample", params=params)).json()
    model, runtime = runtime_of(checkpoint_dir, "two_gmm_1D")
    reference = generate(
        runtime,
        "multistep",
        3,
        1000,
        **model.checkpoint.noise.sampling_kwargs(),
        seed=2024,
        sigmas=[10, 1, 0.1, 0.002],
    )
    np.testing.assert_array_equal(as_float32(body["samples"]), reference.samples.numpy())
    assert (body["steps"], body["nfe"]) == (3, 3)


async def test_sigmas_override_steps_and_the_schedule(client: httpx.AsyncClient) -> None:
    base = {"model": "two_gmm_1D", "sampler": "multistep", "n": 50, "seed": 3}
    schedule = (await client.get("/trajectory", params={**base, "steps": 4})).json()
    # The schedule's own levels, given explicitly, give the schedule's samples.
    same = (await client.get("/trajectory", params={**base, "sigmas": schedule["sigmas"]})).json()
    assert same["steps"] == 4 and same["sigmas"] == schedule["sigmas"]
    assert same["samples"] == schedule["samples"]
    # Other levels, other samples.
    other = (await client.get("/trajectory", params={**base, "sigmas": LEVELS})).json()
    assert other["sigmas"] == LEVELS and other["samples"] != schedule["samples"]
    two = (await client.get("/trajectory", params={**base, "sigmas": "10,0.002"})).json()
    assert (two["steps"], two["nfe"], two["sigmas"]) == (1, 1, [10.0, 0.002])
    # `steps` beside `sigmas` would be ignored: refused, not silently dropped.
    both = await client.get("/trajectory", params={**base, "steps": 4, "sigmas": LEVELS})
    assert both.status_code == 422
    assert "either steps or sigmas" in both.json()["detail"]


async def test_onestep_takes_exactly_two_levels(client: httpx.AsyncClient) -> None:
    base = {"sampler": "onestep", "n": 40, "seed": 8}
    default = (await client.get("/trajectory", params=base)).json()
    given = await client.get("/trajectory", params={**base, "sigmas": "10,0.002"})
    assert given.status_code == 200, given.text
    assert given.json()["sigmas"] == [10.0, 0.002] == default["sigmas"]
    assert given.json()["samples"] == default["samples"] and given.json()["steps"] == 1
    for path in ("/sample", "/trajectory"):
        refused = await client.get(path, params={"sampler": "onestep", "sigmas": "10,1,0.002"})
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert "onestep" in detail and "exactly 2" in detail and "got 3" in detail


# --- malformed sigmas: 422 with the rule broken, never a 500 ----------------------------------------

MALFORMED = [
    ("abc", "must be a number, got 'abc'"),
    ("10,one,0.002", "must be a number, got 'one'"),
    ("0x10,1,0.002", "must be a number"),
    ("", "empty value"),
    ("10,,0.002", "empty value"),
    ("10,1,0.002,", "empty value"),
    ("10", "at least 2 levels"),
    ("10,nan,0.002", "finite"),
    ("10,inf,0.002", "finite"),
    ("10,1e999,0.002", "finite"),
    ("0.002,10", "strictly decreasing"),
    ("10,1,1,0.002", "strictly decreasing"),
    ("10,-1,0.002", "strictly decreasing"),
    ("10,0.001,0.002", "strictly decreasing"),
    ("9,1,0.002", "first sigma must be the model's sigma_max = 10"),
    ("11,1,0.002", "first sigma must be the model's sigma_max = 10"),
    ("10,1,0.001", "last sigma must be the model's sigma_min = 0.002"),
    ("10,1,0.0021", "last sigma must be the model's sigma_min = 0.002"),
    ("10,1,0", "last sigma must be the model's sigma_min"),
    (",".join(["10", *(str(10 - i * 0.009) for i in range(1, 1001)), "0.002"]), "at most 1001"),
]


@pytest.mark.parametrize(("sigmas", "message"), MALFORMED)
@pytest.mark.parametrize("path", ["/sample", "/trajectory"])
@pytest.mark.parametrize("sampler", ["multistep", "heun"])
async def test_malformed_sigmas_are_422_with_the_rule(
    client: httpx.AsyncClient, path: str, sampler: str, sigmas: str, message: str
) -> None:
    response = await client.get(path, params={"model": "two_gmm_1D", "sampler": sampler, "sigmas": sigmas})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail, detail


async def test_sigmas_are_checked_against_the_requested_model(client: httpx.AsyncClient) -> None:
    # two_gmm_1D's levels do not fit gauss_1D's range [0.01, 5], and the other way round.
    wrong = await client.get(
        "/sample", params={"model": "gauss_1D", "sampler": "multistep", "sigmas": LEVELS}
    )
    assert wrong.status_code == 422 and "sigma_max = 5" in wrong.json()["detail"]
    right = await client.get(
        "/sample", params={"model": "gauss_1D", "sampler": "multistep", "sigmas": GAUSS_LEVELS}
    )
    assert right.status_code == 200 and right.json()["steps"] == 3
    missing = await client.get("/sample", params={"model": "nope", "sampler": "multistep", "sigmas": "1,0.5"})
    assert missing.status_code == 404


async def test_ends_within_1e9_relative_are_the_models_ends(client: httpx.AsyncClient) -> None:
    body = (
        await client.get(
            "/trajectory", params={"sampler": "multistep", "sigmas": "10.00000000001,1,0.002000000000001"}
        )
    ).json()
    assert body["sigmas"] == [10.0, 1.0, 0.002]


async def test_level_limits_follow_the_settings(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, max_steps=5, max_trajectory_values=100) as client:
        six = [10.0, 5.0, 1.0, 0.1, 0.01, 0.002]
        ok = await client.get("/sample", params={"sampler": "euler", "n": 20, "sigmas": six})
        assert ok.status_code == 200 and ok.json()["steps"] == 5
        seven = [10.0, 5.0, 1.0, 0.1, 0.05, 0.01, 0.002]
        too_many = await client.get("/sample", params={"sampler": "euler", "n": 20, "sigmas": seven})
        assert too_many.status_code == 422
        assert "7 levels; at most 6" in too_many.json()["detail"]
        # /trajectory's size limit counts the levels given, not `steps` (1 here): 20 × 5 fits, 20 × 6 not.
        five = [10.0, 1.0, 0.1, 0.01, 0.002]
        fits = await client.get("/trajectory", params={"sampler": "euler", "n": 20, "sigmas": five})
        assert fits.status_code == 200 and len(fits.json()["paths"][0]) == 5
        over = await client.get("/trajectory", params={"sampler": "euler", "n": 20, "sigmas": six})
        assert over.status_code == 422
        assert "20 × 6 = 120 values exceeds the limit of 100" in over.json()["detail"]


async def test_openapi_declares_sigmas_on_sample_and_trajectory(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path in ("/sample", "/trajectory"):
        params = {p["name"]: p for p in schema["paths"][path]["get"]["parameters"]}
        assert "sigmas" in params and not params["sigmas"].get("required", False)
        assert "comma-separated" in params["sigmas"]["description"]


# --- batching: equal levels batch together, different ones never -----------------------------------


def test_jobs_with_different_sigmas_have_different_batch_keys(
    checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(checkpoint_dir / "two_gmm_1D.safetensors", CPU)
    assert model.batchable  # the shipped MLP's runtime passed `batch_invariant` at load
    engine = InferenceEngine(CPU, inference_threads=1, torch_threads=1)
    try:

        def job(sigmas: tuple[float, ...] | None, seed: int = 0) -> SamplingJob:
            return SamplingJob(
                model=model,
                sampler="multistep",
                steps=2,
                n=10,
                seed=seed,
                noise="random",
                gamma=0.5,
                sigmas=sigmas,
            )

        a, b = (10.0, 1.0, 0.002), (10.0, 2.0, 0.002)
        keys = [engine._batch_key(job(s)) for s in (a, b, None)]
        assert len(set(keys)) == 3
        assert engine._batch_key(job(a, seed=1)) == engine._batch_key(job(a, seed=2))
    finally:
        engine.shutdown()


def test_a_batch_with_explicit_sigmas_gives_each_job_its_own_samples(checkpoint_dir: Path) -> None:
    model = load_model(checkpoint_dir / "two_gmm_1D.safetensors", CPU)
    _, runtime = runtime_of(checkpoint_dir, "two_gmm_1D")
    levels = tuple(LEVELS)
    for sampler in ("multistep", "gamma", "heun"):
        jobs = [
            SamplingJob(
                model=model,
                sampler=sampler,
                steps=4,
                n=n,
                seed=50 + i,
                noise="random",
                gamma=0.4,
                sigmas=levels,
            )  # type: ignore[arg-type]
            for i, n in enumerate([1, 17, 250, 3])
        ]
        for job, result in zip(jobs, run_batch(jobs, CPU), strict=True):
            alone = run_job(job, CPU)
            np.testing.assert_array_equal(result.states, alone.states)
            assert result.sigmas.tolist() == LEVELS
            reference = generate(
                runtime,
                sampler,
                4,
                job.n,
                **model.checkpoint.noise.sampling_kwargs(),
                seed=job.seed,
                gamma=0.4,
                sigmas=levels,
            )
            np.testing.assert_array_equal(result.states, reference.states.numpy())


def test_a_job_whose_sigmas_break_the_rules_is_refused(checkpoint_dir: Path) -> None:
    """The engine checks a job it is handed directly too (the routes check first)."""
    model = load_model(checkpoint_dir / "two_gmm_1D.safetensors", CPU)

    def job(steps: int, sigmas: tuple[float, ...]) -> SamplingJob:
        return SamplingJob(
            model=model,
            sampler="multistep",
            steps=steps,
            n=1,
            seed=0,
            noise="random",
            gamma=0.5,
            sigmas=sigmas,
        )

    with pytest.raises(ValueError, match="steps"):
        run_job(job(3, (10.0, 0.002)), CPU)
    with pytest.raises(ValueError, match="first sigma"):
        run_job(job(1, (9.0, 0.002)), CPU)
    with pytest.raises(ValueError, match="strictly decreasing"):
        run_job(job(2, (10.0, 20.0, 0.002)), CPU)


async def test_concurrent_requests_with_different_sigmas_keep_their_samples(
    checkpoint_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests that differ only in their levels, and requests on the schedule, all arriving at once:
    each gets what it gets alone, and the ones with equal levels are batched."""
    variants: list[Any] = [LEVELS, "10,1,0.05,0.002", [10.0, 9.0, 8.0, 0.002], None]
    mix = []
    for i in range(24):
        params: dict[str, Any] = {
            "model": "two_gmm_1D",
            "sampler": ["multistep", "gamma"][i % 2],
            "n": [1, 5, 64][i % 3],
        }
        params["seed"] = 500 + i // 4
        if params["sampler"] == "gamma":
            params["gamma"] = 0.4
        sigmas = variants[i % 4]
        params |= {"steps": 3} if sigmas is None else {"sigmas": sigmas}
        mix.append(params)
    batches: list[int] = []
    app = create_app(Settings(checkpoint_dir=checkpoint_dir, inference_threads=1))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        alone = []
        for params in mix:
            response = await client.get("/trajectory", params=params)
            assert response.status_code == 200, response.text
            alone.append(response.json())
        # Hold the only inference thread until every request has queued: they are batched.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="service.inference"):
            requests = [client.get("/trajectory", params=p) for p in mix]
            responses = await gather_while_held(app.state.engine, requests)
        for params, expected, response in zip(mix, alone, responses, strict=True):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["sigmas"] == expected["sigmas"], params
            assert body["samples"] == expected["samples"], params
            assert body["paths"] == expected["paths"], params
        found = (re.search(r" batch=(\d+) ", r.getMessage()) for r in caplog.records)
        batches += [int(m.group(1)) for m in found if m]
    assert len(batches) == len(mix)
    assert max(batches) > 1  # equal requests were batched (and different levels were not mixed)
