"""The seed contract over HTTP: a seed names one sample, alone or batched; distinct seeds, distinct samples.

/sample accepts any seed in [0, MAX_SEED]. Every one must select its own random stream: the latent
x_T of a random request and the fresh noise of γ-sampling (which, with quantile latents, is the only
thing a seed changes). Seeds that agree in their low 32 bits (2³² apart, or 2⁶³ − 1 and 2³² − 1)
are where a seed cut to 32 bits on its way to a generator shows. And the same seed gives the same
samples whether the request runs alone or in a batch with other seeds (`service.inference`).
"""

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from app_client import gather_while_held, serve

from ctm_core.checkpoint import build_model
from ctm_core.config import MAX_SEED, NetworkConfig, NoiseConfig
from ctm_core.samplers import SAMPLERS, generate
from ctm_core.seeding import seeded_generator
from service import inference
from service.app import create_app
from service.config import Settings

pytestmark = pytest.mark.anyio

# Seeds in [0, MAX_SEED], with pairs that differ only above bit 31 (2³² apart, and 2⁶³ − 1 against
# 2³² − 1), pairs that differ only in bit 31, and neighbours.
_CANDIDATES = [0, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**32 + 2**31 - 1, 2**33, 2**62]
_CANDIDATES += [MAX_SEED - 2**32, MAX_SEED - 1, MAX_SEED]
SEEDS = sorted({seed for seed in _CANDIDATES if 0 <= seed <= MAX_SEED})
STEPS = {"onestep": 1, "multistep": 3, "gamma": 3, "euler": 3, "heun": 2}
N = 8


def _params(sampler: str, seed: int, noise: str) -> dict[str, Any]:
    params = {"model": "two_gmm_1D", "sampler": sampler, "steps": STEPS[sampler], "n": N, "seed": seed,
              "noise": noise}  # fmt: skip
    return params | {"gamma": 0.6} if sampler == "gamma" else params


@asynccontextmanager
async def serve_app(folder: Path, **settings: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """(app, client): `app_client.serve`, with the app, whose engine the batching test holds."""
    app = create_app(Settings(checkpoint_dir=folder, **settings))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield app, client


async def _sample(client: Any, params: dict[str, Any]) -> list[float]:
    response = await client.get("/sample", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == params["seed"]
    return body["samples"]


def _assert_pairwise_distinct(samples: dict[int, list[float]], what: str) -> None:
    for (a, xa), (b, xb) in itertools.combinations(samples.items(), 2):
        assert xa != xb, f"{what}: seeds {a} and {b} gave the same samples"


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
async def test_distinct_seeds_give_distinct_samples_and_a_seed_repeats(
    checkpoint_dir: Path, sampler: str
) -> None:
    async with serve(checkpoint_dir) as client:
        random = {seed: await _sample(client, _params(sampler, seed, "random")) for seed in SEEDS}
        quantile = {seed: await _sample(client, _params(sampler, seed, "quantile")) for seed in SEEDS}
        for seed in (SEEDS[0], SEEDS[-1], 2**32 if 2**32 in SEEDS else SEEDS[1]):
            assert await _sample(client, _params(sampler, seed, "random")) == random[seed]
            assert await _sample(client, _params(sampler, seed, "quantile")) == quantile[seed]
    _assert_pairwise_distinct(random, f"{sampler}, random latents")
    if sampler == "gamma":
        # The latents are the prior's quantiles, so the γ-noise is all that a seed changes.
        _assert_pairwise_distinct(quantile, "gamma, quantile latents")
    else:
        # A deterministic sampler on quantile latents draws nothing: every seed gives the same.
        assert all(samples == quantile[SEEDS[0]] for samples in quantile.values())


async def test_batched_requests_get_their_own_seeds_samples(
    checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every (sampler, seed, noise) request sent at once while the only inference thread is held:
    they queue, run in batches of mixed seeds when it is released, and each gets what it got alone."""
    batch_sizes: list[int] = []
    real_run_batch = inference.run_batch

    def recording_run_batch(jobs: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        batch_sizes.append(len(jobs))
        return real_run_batch(jobs, *args, **kwargs)

    requests = [
        _params(sampler, seed, noise)
        for sampler in sorted(SAMPLERS)
        for noise in ("random", "quantile")
        for seed in SEEDS
    ]
    async with serve_app(checkpoint_dir, inference_threads=1) as (app, client):
        alone = [await _sample(client, params) for params in requests]
        monkeypatch.setattr(inference, "run_batch", recording_run_batch)
        batched = await gather_while_held(app.state.engine, [_sample(client, p) for p in requests])
    for params, expected, got in zip(requests, alone, batched, strict=True):
        assert got == expected, params
    assert sum(batch_sizes) == len(requests)
    assert max(batch_sizes) >= len(SEEDS)  # each sampler's requests ran together, seeds mixed


def test_library_gamma_noise_comes_from_the_seed() -> None:
    """ctm_core.samplers.generate: with quantile latents, γ-sampling differs between seeds only
    through its fresh noise; the same seed repeats it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(NetworkConfig(width=16, depth=2, units=16), 0.5).eval()
    kwargs = NoiseConfig(sigma_data=0.5, data_mean=0.3).sampling_kwargs()
    runs = {
        seed: generate(model, "gamma", 3, 16, seed=seed, noise="quantile", gamma=0.6, **kwargs).samples
        for seed in (0, 1, 2**31 - 1, 2**31)
    }
    for (a, xa), (b, xb) in itertools.combinations(runs.items(), 2):
        assert not torch.equal(xa, xb), (a, b)
    again = generate(model, "gamma", 3, 16, seed=1, noise="quantile", gamma=0.6, **kwargs).samples
    assert torch.equal(again, runs[1])


# --- the library's generator ------------------------------------------------------------------------


def test_seeds_below_two_to_the_32_seed_as_manual_seed_does() -> None:
    for seed in (0, 1, 12345, 2**32 - 1):
        ours = torch.randn(8, generator=seeded_generator(seed))
        torch.testing.assert_close(ours, torch.randn(8, generator=torch.Generator().manual_seed(seed)))


def test_seeds_that_share_their_low_32_bits_draw_different_streams() -> None:
    seeds = (7, 7 + 2**32, 7 + 2**40, MAX_SEED)
    draws = [torch.randn(1000, generator=seeded_generator(seed)) for seed in seeds]
    for i, a in enumerate(draws):
        for b in draws[i + 1 :]:
            assert not torch.equal(a, b)
    # A large seed's stream is still standard normal, and repeats.
    big = torch.randn(200_000, generator=seeded_generator(MAX_SEED))
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 1) < 0.01
    assert torch.equal(torch.randn(1000, generator=seeded_generator(MAX_SEED)), draws[-1])
    with pytest.raises(ValueError, match="seed must be in"):
        seeded_generator(MAX_SEED + 1)
