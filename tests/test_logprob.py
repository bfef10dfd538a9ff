"""/logprob: the one-step sampler's density (default) and the PF-ODE's, their names and validation."""

import copy
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from app_client import serve

from ctm_core.checkpoint import load_checkpoint
from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.likelihood import log_prob

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(checkpoint_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(checkpoint_dir) as client:
        yield client


async def test_ode_post_matches_the_library(client: httpx.AsyncClient, checkpoint_dir: Path) -> None:
    xs = [-1.5, 0.0, 0.7, 2.0]
    response = await client.post("/logprob", json={"model": "two_gmm_1D", "x": xs, "sampler": "ode"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "two_gmm_1D" and body["x"] == xs and body["density"] == "ode"
    ckpt = load_checkpoint(checkpoint_dir / "two_gmm_1D.safetensors")
    noise = ckpt.noise
    expected = log_prob(
        ckpt.student,
        torch.tensor(xs),
        noise.sigma_min,
        noise.sigma_max,
        rho=noise.rho,
        data_mean=noise.data_mean or 0.0,
        prior_std=noise.prior_std,
    )
    assert body["logprob"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(math.isfinite(v) for v in body["logprob"])


@pytest.mark.parametrize("sampler", ["onestep", "ode"])
async def test_get_with_repeated_x_equals_post(client: httpx.AsyncClient, sampler: str) -> None:
    query = [("model", "two_gmm_1D"), ("x", "0.1"), ("x", "0.2"), ("sampler", sampler)]
    got = await client.get("/logprob", params=query)
    posted = await client.post("/logprob", json={"model": "two_gmm_1D", "x": [0.1, 0.2], "sampler": sampler})
    assert got.status_code == 200 and posted.status_code == 200
    assert got.json()["density"] == posted.json()["density"] == sampler
    assert got.json()["logprob"] == pytest.approx(posted.json()["logprob"])


# --- the one-step sampler's density (the default) ---------------------------------------------------


def prior_log_pdf(z: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return -0.5 * ((z - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def float64_jump(
    checkpoint_dir: Path, name: str
) -> tuple[NoiseConfig, Callable[[torch.Tensor], torch.Tensor]]:
    """The model's noise config and its one-step map z ↦ G(z, σ_max, σ_min), computed in float64."""
    ckpt = load_checkpoint(checkpoint_dir / f"{name}.safetensors")
    noise = ckpt.noise
    student = copy.deepcopy(ckpt.student).double()
    t = torch.tensor(noise.sigma_max, dtype=torch.float64)
    s = torch.tensor(noise.sigma_min, dtype=torch.float64)

    def jump(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return student.jump(z.double(), t, s)

    return noise, jump


async def test_default_density_is_onestep(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/logprob", params={"x": [0.0, 0.5]}),
        await client.post("/logprob", json={"x": [0.0, 0.5]}),
    ):
        assert response.status_code == 200
        body = response.json()
        assert list(body) == ["model", "model_sha256", "density", "x", "logprob"]
        assert body["density"] == "onestep" and body["model"] == "two_gmm_1D"
        assert all(math.isfinite(v) for v in body["logprob"])


@pytest.mark.parametrize("name", ["two_gmm_1D", "gauss_1D"])
async def test_onestep_density_matches_finite_differences(
    client: httpx.AsyncClient, checkpoint_dir: Path, name: str
) -> None:
    """log p(y) = log prior(z) − log((G(z + h) − G(z − h)) / 2h) at y = G(z), G in float64."""
    noise, jump = float64_jump(checkpoint_dir, name)
    mean, std = noise.data_mean or 0.0, noise.prior_std
    z = mean + std * torch.tensor([-2.0, -1.5, -0.3, 0.0, 0.4, 1.2, 2.5], dtype=torch.float64)
    h = 1e-4 * std
    slope = (jump(z + h) - jump(z - h)) / (2 * h)
    assert bool((slope > 0).all())
    expected = prior_log_pdf(z, mean, std) - slope.log()
    y = jump(z).tolist()
    response = await client.post("/logprob", json={"model": name, "x": y})
    assert response.status_code == 200
    assert response.json()["density"] == "onestep"
    assert response.json()["logprob"] == pytest.approx(expected.tolist(), abs=1e-3)


@pytest.mark.parametrize("name", ["two_gmm_1D", "gauss_1D"])
async def test_onestep_density_integrates_to_one(
    client: httpx.AsyncClient, checkpoint_dir: Path, name: str
) -> None:
    """Trapezoid rule over a fine grid spanning G's image of the prior's ±9 std (all but 2e-19 of it)."""
    noise, jump = float64_jump(checkpoint_dir, name)
    mean, std = noise.data_mean or 0.0, noise.prior_std
    lo, hi = jump(torch.tensor([mean - 9 * std, mean + 9 * std])).tolist()
    grid = np.linspace(lo, hi, 10_000)
    response = await client.post("/logprob", json={"model": name, "x": grid.tolist()})
    assert response.status_code == 200
    logprob = np.array([-math.inf if v is None else v for v in response.json()["logprob"]])
    assert np.isfinite(logprob[1:-1]).all()
    assert np.trapezoid(np.exp(logprob), grid) == pytest.approx(1.0, abs=2e-3)


async def test_onestep_density_is_zero_outside_the_maps_image(
    client: httpx.AsyncClient, checkpoint_dir: Path
) -> None:
    noise, jump = float64_jump(checkpoint_dir, "two_gmm_1D")
    mean, std = noise.data_mean or 0.0, noise.prior_std
    lo, hi = jump(torch.tensor([mean - 40 * std, mean + 40 * std])).tolist()
    response = await client.get("/logprob", params={"x": [lo - 1.0, 0.0, hi + 1.0, 1e30]})
    assert response.status_code == 200
    body = response.json()
    assert body["logprob"][0] is None and body["logprob"][2] is None and body["logprob"][3] is None
    assert math.isfinite(body["logprob"][1])
    # The PF-ODE density has no such edge.
    ode = await client.get("/logprob", params={"x": [lo - 1.0, hi + 1.0], "sampler": "ode"})
    assert all(v is not None and math.isfinite(v) for v in ode.json()["logprob"])


async def test_onestep_density_needs_a_monotone_network(checkpoint_dir: Path, make_checkpoint: Any) -> None:
    noise = NoiseConfig(sigma_min=0.002, sigma_max=10.0, sigma_data=0.5)
    make_checkpoint(
        checkpoint_dir / "plain.safetensors", noise=noise, network=NetworkConfig(kind="mlp", width=16)
    )
    async with serve(checkpoint_dir) as client:
        refused = await client.get("/logprob", params={"model": "plain", "x": [0.0]})
        assert refused.status_code == 422
        assert "not monotone" in refused.json()["detail"] and "sampler=ode" in refused.json()["detail"]
        ode = await client.post("/logprob", json={"model": "plain", "x": [0.0], "sampler": "ode"})
        assert ode.status_code == 200 and ode.json()["density"] == "ode"


@pytest.mark.parametrize("sampler", ["heun", "euler", "multistep", "ODE", "", "pf-ode"])
async def test_unknown_sampler_is_422(client: httpx.AsyncClient, sampler: str) -> None:
    got = await client.get("/logprob", params={"x": [0.0], "sampler": sampler})
    posted = await client.post("/logprob", json={"x": [0.0], "sampler": sampler})
    for response in (got, posted):
        assert response.status_code == 422
        errors = response.json()["errors"]
        assert any("sampler" in e["loc"] for e in errors), errors
        assert "sampler: " in response.json()["detail"]


async def test_openapi_describes_both_densities(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    get = schema["paths"]["/logprob"]["get"]
    sampler = next(p for p in get["parameters"] if p["name"] == "sampler")
    assert sampler["schema"]["enum"] == ["onestep", "ode"] and sampler["schema"]["default"] == "onestep"
    assert "one-step" in sampler["description"] and "probability-flow ODE" in sampler["description"]
    components = schema["components"]["schemas"]
    assert components["LogProbResponse"]["properties"]["density"]["enum"] == ["onestep", "ode"]
    assert "density" in components["LogProbResponse"]["required"]
    assert components["LogProbRequest"]["properties"]["sampler"]["default"] == "onestep"
    post = schema["paths"]["/logprob"]["post"]["description"]
    assert "onestep" in post and "ode" in post


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
