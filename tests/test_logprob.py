import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch
from app_client import serve

from ctm_core.checkpoint import load_checkpoint
from ctm_core.likelihood import log_prob

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(checkpoint_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(checkpoint_dir) as client:
        yield client


async def test_post_matches_the_library(client: httpx.AsyncClient, checkpoint_dir: Path) -> None:
    xs = [-1.5, 0.0, 0.7, 2.0]
    response = await client.post("/logprob", json={"model": "two_gmm_1D", "x": xs})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "two_gmm_1D" and body["x"] == xs
    ckpt = load_checkpoint(checkpoint_dir / "two_gmm_1D.safetensors")
    noise = ckpt.noise
    expected = log_prob(
        ckpt.student,
        torch.tensor(xs),
        noise.sigma_min,
        noise.sigma_max,
        rho=noise.rho,
        data_mean=noise.data_mean or 0.0,
    )
    assert body["logprob"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(math.isfinite(v) for v in body["logprob"])


async def test_get_with_repeated_x_equals_post(client: httpx.AsyncClient) -> None:
    got = await client.get("/logprob", params=[("model", "two_gmm_1D"), ("x", "0.1"), ("x", "0.2")])
    posted = await client.post("/logprob", json={"model": "two_gmm_1D", "x": [0.1, 0.2]})
    assert got.status_code == 200
    assert got.json()["logprob"] == pytest.approx(posted.json()["logprob"])


@pytest.mark.parametrize(
    "body",
    [{"x": []}, {"x": [1.0, "nan"]}, {"x": ["inf"]}, {"x": "1.0"}, {"x": [0.0] * 10_001}, {}],
)
async def test_post_bad_bodies_are_422(client: httpx.AsyncClient, body) -> None:
    response = await client.post("/logprob", json={"model": "two_gmm_1D", **body})
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [[("x", "nan")], [("x", "inf")], [], [("x", "abc")], [("x", "0.5")] * 101],
)
async def test_get_bad_queries_are_422(client: httpx.AsyncClient, params) -> None:
    response = await client.get("/logprob", params=[("model", "two_gmm_1D"), *params])
    assert response.status_code == 422
    assert response.json()["detail"]


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/logprob", json={"model": "../etc/passwd", "x": [0.0]})
    assert response.status_code == 404
    assert "unknown model" in response.json()["detail"]
