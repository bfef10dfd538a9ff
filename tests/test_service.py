"""The HTTP service in-process: httpx against the ASGI app (lifespan run), every endpoint and error."""

import hashlib
import itertools
import json
import math
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from app_client import serve
from checkpoint_files import format_2_header
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ctm_core.checkpoint import FORMAT_VERSION, METADATA_KEY, load_checkpoint
from ctm_core.config import MAX_SEED, NoiseConfig
from ctm_core.samplers import SAMPLERS, SPECS
from ctm_core.schedules import karras_sigmas
from service.__main__ import main as cli_main
from service.app import create_app
from service.config import Settings
from service.schemas import ModelInfo, SampleResponse, TrajectoryResponse

pytestmark = pytest.mark.anyio

Models = dict[str, tuple[NoiseConfig, bool]]
SAMPLE_KEYS = ["model", "model_sha256", "sampler", "steps", "nfe", "n", "seed", "noise", "samples"]


@pytest.fixture
async def client(checkpoint_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(checkpoint_dir) as client:
        yield client


async def get_json(client: httpx.AsyncClient, url: str, params: dict[str, Any] | None = None) -> Any:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


# --- /sample ---------------------------------------------------------------------------------------


async def test_sample_defaults(client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/sample")
    assert list(body) == SAMPLE_KEYS
    SampleResponse.model_validate(body)
    assert (body["model"], body["sampler"], body["steps"], body["nfe"], body["n"], body["noise"]) == (
        "two_gmm_1D",
        "onestep",
        1,
        1,
        1000,
        "random",
    )
    assert 0 <= body["seed"] <= MAX_SEED
    assert len(body["samples"]) == 1000
    assert all(math.isfinite(x) for x in body["samples"])
    assert len(set(body["samples"])) > 900


@pytest.mark.parametrize(
    ("sampler", "steps", "nfe"),
    [
        ("onestep", 1, 1),
        ("multistep", 4, 4),
        ("gamma", 4, 4),
        ("euler", 4, 4),
        ("heun", 4, 7),
        ("heun", 1, 1),
    ],
)
async def test_sample_each_sampler(client: httpx.AsyncClient, sampler: str, steps: int, nfe: int) -> None:
    params = {"model": "gauss_1D", "sampler": sampler, "steps": steps, "n": 33, "seed": 5}
    body = await get_json(client, "/sample", params)
    assert (body["model"], body["sampler"], body["steps"], body["nfe"], body["n"], body["seed"]) == (
        "gauss_1D",
        sampler,
        steps,
        nfe,
        33,
        5,
    )
    assert len(body["samples"]) == 33


async def test_same_seed_same_samples_and_returned_seed_replays(client: httpx.AsyncClient) -> None:
    params = {"sampler": "gamma", "steps": 3, "n": 64, "seed": 123}
    first = await get_json(client, "/sample", params)
    again = await get_json(client, "/sample", params)
    other = await get_json(client, "/sample", {**params, "seed": 124})
    assert first == again
    assert other["samples"] != first["samples"]

    unseeded = await get_json(client, "/sample", {"sampler": "gamma", "steps": 3, "n": 64})
    replay = await get_json(client, "/sample", {**params, "seed": unseeded["seed"]})
    assert replay["samples"] == unseeded["samples"]


async def test_determinism_across_app_instances(checkpoint_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in checkpoint_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    params = {"model": "gauss_1D", "sampler": "gamma", "steps": 4, "gamma": 0.7, "n": 200, "seed": MAX_SEED}
    async with serve(checkpoint_dir) as one, serve(copy) as two:
        assert await get_json(one, "/sample", params) == await get_json(two, "/sample", params)
        assert await get_json(one, "/trajectory", params) == await get_json(two, "/trajectory", params)


async def test_gamma_zero_is_multistep(client: httpx.AsyncClient) -> None:
    params = {"steps": 5, "n": 50, "seed": 9}
    gamma0 = await get_json(client, "/sample", {**params, "sampler": "gamma", "gamma": 0})
    multistep = await get_json(client, "/sample", {**params, "sampler": "multistep"})
    gamma1 = await get_json(client, "/sample", {**params, "sampler": "gamma", "gamma": 1})
    assert gamma0["samples"] == multistep["samples"]
    assert gamma1["samples"] != multistep["samples"]


async def test_quantile_noise_is_deterministic(client: httpx.AsyncClient) -> None:
    params = {"sampler": "multistep", "steps": 3, "n": 101, "noise": "quantile"}
    one = await get_json(client, "/sample", {**params, "seed": 1})
    two = await get_json(client, "/sample", {**params, "seed": 2})
    assert one["noise"] == "quantile"
    assert one["samples"] == two["samples"]


async def test_default_model_setting(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, default_model="gauss_1D") as client:
        body = await get_json(client, "/sample", {"n": 3})
    assert body["model"] == "gauss_1D"


# --- /trajectory -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "sampler", "steps"),
    [
        ("two_gmm_1D", "onestep", 1),
        ("gauss_1D", "multistep", 6),
        ("gauss_1D", "gamma", 4),
        ("two_gmm_1D", "heun", 3),
    ],
)
async def test_trajectory_matches_sample(
    client: httpx.AsyncClient, checkpoint_models: Models, model: str, sampler: str, steps: int
) -> None:
    params = {"model": model, "sampler": sampler, "steps": steps, "n": 17, "seed": 42}
    body = await get_json(client, "/trajectory", params)
    TrajectoryResponse.model_validate(body)
    assert list(body) == [*SAMPLE_KEYS, "sigmas", "paths"]
    noise = checkpoint_models[model][0]
    sigmas = body["sigmas"]
    assert len(sigmas) == steps + 1
    assert sigmas[0] == noise.sigma_max
    assert sigmas[-1] == noise.sigma_min
    assert all(a > b for a, b in itertools.pairwise(sigmas))
    if sampler in ("multistep", "gamma"):
        # The jump samplers' schedule (`jump_schedule`, default "linear"): evenly spaced levels.
        evenly = np.linspace(noise.sigma_max, noise.sigma_min, steps + 1)
        np.testing.assert_allclose(sigmas, evenly, rtol=1e-12, atol=0)
    elif steps > 1:  # the ODE solvers keep Karras et al.'s eq. 5
        assert sigmas == karras_sigmas(steps + 1, noise.sigma_min, noise.sigma_max, noise.rho).tolist()
    assert len(body["paths"]) == 17
    assert all(len(path) == steps + 1 for path in body["paths"])
    assert [path[-1] for path in body["paths"]] == body["samples"]

    sample = await get_json(client, "/sample", params)
    assert sample["samples"] == body["samples"]
    assert {k: sample[k] for k in SAMPLE_KEYS} == {k: body[k] for k in SAMPLE_KEYS}


async def test_trajectory_quantile_latent(client: httpx.AsyncClient, checkpoint_models: Models) -> None:
    n = 9
    body = await get_json(client, "/trajectory", {"model": "gauss_1D", "n": n, "noise": "quantile"})
    noise = checkpoint_models["gauss_1D"][0]
    # The prior N(μ, σ_max² + σ_d²) (μ = 0 here): the marginal at σ_max, not the narrow N(0, σ_max²).
    std = math.sqrt(noise.sigma_max**2 + noise.sigma_data**2)
    expected = [std * statistics.NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)]
    latent = [path[0] for path in body["paths"]]
    assert latent == pytest.approx(expected, rel=1e-6, abs=1e-6)


# --- /models ---------------------------------------------------------------------------------------


async def test_models_list(
    client: httpx.AsyncClient, checkpoint_dir: Path, checkpoint_models: Models
) -> None:
    body = await get_json(client, "/models")
    infos = [ModelInfo.model_validate(m) for m in body["models"]]
    assert [info.name for info in infos] == ["gauss_1D", "two_gmm_1D"]
    for info in infos:
        path = checkpoint_dir / f"{info.name}.safetensors"
        noise, with_teacher = checkpoint_models[info.name]
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert info.size_bytes == path.stat().st_size
        assert info.file_name == path.name
        assert (info.noise.sigma_min, info.noise.sigma_max, info.noise.sigma_data, info.noise.rho) == (
            noise.sigma_min,
            noise.sigma_max,
            noise.sigma_data,
            noise.rho,
        )
        assert (info.noise.schedule, info.noise.jump_schedule) == ("karras", "linear")
        assert info.noise.prior_std == pytest.approx(math.hypot(noise.sigma_max, noise.sigma_data), rel=1e-12)
        assert info.has_teacher is with_teacher
        assert info.samplers == list(SAMPLERS)
        assert info.description == f"test model {info.name}"
        assert info.metrics == {"rows": [{"label": "student onestep", "qW1": 1.25}]}
        assert info.training["mode"] == "distill"
        assert info.architecture == {"network": info.training["network"], "sigma_data": noise.sigma_data}
        assert info.architecture["network"]["width"] == 16
        assert info.architecture["network"]["kind"] == "monotone"  # the default network
        assert info.training["noise"]["sigma_data"] == noise.sigma_data
        assert info.created_at == "2024-01-01T00:00:00+00:00"
        assert info.format_version == FORMAT_VERSION == 3


async def test_model_by_name(client: httpx.AsyncClient) -> None:
    listed = (await get_json(client, "/models"))["models"]
    one = await get_json(client, "/models/gauss_1D")
    assert one == next(m for m in listed if m["name"] == "gauss_1D")


@pytest.mark.parametrize(
    "name", ["nope", "two_gmm_1D.safetensors", "TWO_GMM_1D", ".%2e", "%2e%2e%2fetc%2fpasswd"]
)
async def test_unknown_model_is_404(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/models/{name}")
    assert response.status_code == 404
    assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("name", ["nope", "../checkpoints/two_gmm_1D", "/etc/passwd", "", "x" * 5000])
async def test_unknown_model_on_sample_is_404(client: httpx.AsyncClient, name: str) -> None:
    for url in ("/sample", "/trajectory"):
        response = await client.get(url, params={"model": name})
        assert response.status_code == 404
        detail = response.json()["detail"]
        assert "unknown model" in detail
        assert "gauss_1D, two_gmm_1D" in detail
        assert len(detail) < 300


# --- bad input: 422 with a detail a person can act on ----------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sampler": "bogus"}, "sampler"),
        ({"sampler": "ONESTEP"}, "sampler"),
        ({"sampler": "multistep", "steps": 0}, "steps"),
        ({"sampler": "multistep", "steps": -3}, "steps"),
        ({"sampler": "multistep", "steps": 2.5}, "steps"),
        ({"sampler": "multistep", "steps": "two"}, "steps"),
        ({"sampler": "multistep", "steps": 1001}, "steps"),
        ({"n": 0}, "n"),
        ({"n": -1}, "n"),
        ({"n": 1.5}, "n"),
        ({"n": "many"}, "n"),
        ({"n": 100_001}, "n"),
        ({"seed": -1}, "seed"),
        ({"seed": MAX_SEED + 1}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": "abc"}, "seed"),
        ({"sampler": "gamma", "gamma": -0.1}, "gamma"),
        ({"sampler": "gamma", "gamma": 1.5}, "gamma"),
        ({"sampler": "gamma", "gamma": "nan"}, "gamma"),
        ({"sampler": "gamma", "gamma": "NaN"}, "gamma"),
        ({"sampler": "gamma", "gamma": "inf"}, "gamma"),
        ({"sampler": "gamma", "gamma": "-Infinity"}, "gamma"),
        ({"noise": "uniform"}, "noise"),
    ],
)
async def test_invalid_parameter_is_422(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    for url in ("/sample", "/trajectory"):
        response = await client.get(url, params=params)
        assert response.status_code == 422, response.text
        errors = response.json()["errors"]
        assert [error["loc"] for error in errors] == [["query", field]]
        assert errors[0]["msg"]
        assert response.json()["detail"].startswith(f"{field}: ")


async def test_limits_are_named(client: httpx.AsyncClient) -> None:
    response = await client.get("/sample", params={"n": 100_001})
    assert "100000" in response.json()["errors"][0]["msg"]
    response = await client.get("/sample", params={"sampler": "euler", "steps": 1001})
    assert "1000" in response.json()["errors"][0]["msg"]


@pytest.mark.parametrize("steps", [0, 2, 10])
async def test_onestep_takes_one_step(client: httpx.AsyncClient, steps: int) -> None:
    response = await client.get("/sample", params={"sampler": "onestep", "steps": steps})
    assert response.status_code == 422
    if steps >= 1:
        detail = response.json()["detail"]
        assert isinstance(detail, str)
        assert "onestep" in detail
        assert f"steps={steps}" in detail


async def test_trajectory_size_limit(client: httpx.AsyncClient) -> None:
    # 100,000 × 11 values: over the default 1,000,000, refused before any sampling.
    response = await client.get("/trajectory", params={"sampler": "multistep", "steps": 10, "n": 100_000})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "1000000" in detail
    assert "CTM_MAX_TRAJECTORY_VALUES" in detail
    # /sample has no such limit.
    response = await client.get("/sample", params={"sampler": "multistep", "steps": 10, "n": 1000})
    assert response.status_code == 200


async def test_configured_limits(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, max_n=20, max_steps=5, max_trajectory_values=100) as client:
        ok = await client.get("/trajectory", params={"sampler": "multistep", "steps": 4, "n": 20})
        assert ok.status_code == 200
        assert len(ok.json()["paths"]) == 20
        too_many = await client.get("/trajectory", params={"sampler": "multistep", "steps": 5, "n": 20})
        assert too_many.status_code == 422
        assert "20 × 6 = 120" in too_many.json()["detail"]
        assert "limit of 100 values" in too_many.json()["detail"]
        assert (await client.get("/sample", params={"n": 21})).status_code == 422
        assert (
            await client.get("/sample", params={"sampler": "heun", "steps": 6, "n": 1})
        ).status_code == 422
        body = await get_json(client, "/sample")
        assert body["n"] == 20  # the default n is capped by the limit
        schema = await get_json(client, "/openapi.json")
    params = {p["name"]: p["schema"] for p in schema["paths"]["/sample"]["get"]["parameters"]}
    assert params["n"]["maximum"] == 20
    steps = next(option for option in params["steps"]["anyOf"] if option["type"] == "integer")
    assert steps["maximum"] == 5  # an optional integer: omitted, the sampler's default steps


# --- health, readiness, skipped checkpoints --------------------------------------------------------


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert await get_json(client, "/healthz") == {"status": "ok"}
    assert await get_json(client, "/readyz") == {"status": "ready", "models": ["gauss_1D", "two_gmm_1D"]}


@pytest.mark.parametrize("folder", ["empty", "missing"])
async def test_not_ready_without_models(tmp_path: Path, folder: str) -> None:
    if folder == "empty":
        (tmp_path / folder).mkdir()
    async with serve(tmp_path / folder) as client:
        assert await get_json(client, "/healthz") == {"status": "ok"}
        response = await client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "not ready"
        assert body["models"] == []
        assert "no model is loaded" in body["detail"]
        assert await get_json(client, "/models") == {"models": [], "default_model": None, "rejected": []}
        response = await client.get("/sample")
        assert response.status_code == 404
        assert "CTM_DEFAULT_MODEL" in response.json()["detail"]


async def test_bad_checkpoints_are_skipped(
    tmp_path: Path, checkpoint_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = (checkpoint_dir / "two_gmm_1D.safetensors").read_bytes()
    (folder / "two_gmm_1D.safetensors").write_bytes(good)
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (folder / "garbage.safetensors").write_bytes(b"\x80\x04not a checkpoint at all" * 10)
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not a *.safetensors file")
    with caplog.at_level("INFO", logger="service"):
        async with serve(folder) as client:
            assert await get_json(client, "/readyz") == {"status": "ready", "models": ["two_gmm_1D"]}
            metrics = (await client.get("/metrics")).text
    rejected = [r for r in caplog.records if "checkpoint rejected" in r.getMessage()]
    assert sorted(r.args[0] for r in rejected) == [
        "empty.safetensors",
        "garbage.safetensors",
        "truncated.safetensors",
    ]
    assert all("\n" not in r.getMessage() for r in rejected)
    assert "ctm_checkpoints_rejected 3.0" in metrics
    assert "ctm_models_loaded 1.0" in metrics


async def test_a_format_1_checkpoint_is_rejected_with_a_call_to_retrain(
    tmp_path: Path, checkpoint_dir: Path
) -> None:
    """Format 1 models were trained and sampled with the narrow prior N(μ, σ_max²): not served."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = checkpoint_dir / "two_gmm_1D.safetensors"
    (folder / "two_gmm_1D.safetensors").write_bytes(good.read_bytes())
    tensors = load_file(good)
    with safe_open(good, "pt") as f:
        metadata = json.loads(f.metadata()[METADATA_KEY])
    metadata["format_version"] = 1
    save_file(tensors, folder / "old.safetensors", metadata={METADATA_KEY: json.dumps(metadata)})
    async with serve(folder) as client:
        body = await get_json(client, "/models")
        assert (await client.get("/sample", params={"model": "old"})).status_code == 404
    assert [m["name"] for m in body["models"]] == ["two_gmm_1D"]
    reasons = {r["file_name"]: r["reason"] for r in body["rejected"]}
    assert list(reasons) == ["old.safetensors"]
    assert "format version 1" in reasons["old.safetensors"] and "Retrain" in reasons["old.safetensors"]


async def test_a_format_2_checkpoint_is_described_as_its_format_3_copy(
    tmp_path: Path, checkpoint_dir: Path
) -> None:
    """A format 2 file (each copy of a fact in place) serves: /models describes it as the same model
    written as format 3, but for the file (its format, size and sha256)."""
    folder = tmp_path / "both"
    folder.mkdir()
    good = checkpoint_dir / "gauss_1D.safetensors"  # with a teacher
    (folder / "new.safetensors").write_bytes(good.read_bytes())
    checkpoint = load_checkpoint(good)
    save_file(
        load_file(good), folder / "old.safetensors", metadata=format_2_header(checkpoint.metadata, True)
    )
    async with serve(folder) as client:
        body = await get_json(client, "/models")
    assert body["rejected"] == []
    new, old = body["models"]
    assert (old["format_version"], new["format_version"]) == (2, 3)
    of_the_file = {"name", "file_name", "size_bytes", "sha256", "format_version"}
    assert {k: v for k, v in old.items() if k not in of_the_file} == {
        k: v for k, v in new.items() if k not in of_the_file
    }


async def test_only_bad_checkpoints_is_not_ready(tmp_path: Path) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 64)
    async with serve(tmp_path) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert "1 checkpoint file(s) failed validation" in response.json()["detail"]


async def test_checkpoint_with_nonfinite_output_is_rejected(tmp_path: Path, make_checkpoint: Any) -> None:
    # σ_data of 1e30 keeps every weight finite but overflows float32 in the preconditioning.
    make_checkpoint(tmp_path / "huge.safetensors", noise=NoiseConfig(sigma_max=1e30, sigma_data=1e30))
    make_checkpoint(tmp_path / "fine.safetensors", noise=NoiseConfig(sigma_data=0.5))
    async with serve(tmp_path, default_model="fine") as client:
        assert (await get_json(client, "/readyz"))["models"] == ["fine"]


# --- metrics, OpenAPI, framework errors ------------------------------------------------------------


async def test_metrics(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        await get_json(client, "/sample", {"n": 10, "seed": 1})
    await get_json(client, "/trajectory", {"model": "gauss_1D", "sampler": "heun", "steps": 2, "n": 5})
    assert (await client.get("/sample", params={"sampler": "bogus"})).status_code == 422
    assert (await client.get("/sample", params={"model": "bogus"})).status_code == 404
    await get_json(client, "/models/gauss_1D")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    expected = [
        'ctm_http_requests_total{endpoint="/sample",model="two_gmm_1D",sampler="onestep",status="200"} 2.0',
        'ctm_http_requests_total{endpoint="/trajectory",model="gauss_1D",sampler="heun",status="200"} 1.0',
        'ctm_http_requests_total{endpoint="/sample",model="",sampler="",status="422"} 1.0',
        'ctm_http_requests_total{endpoint="/sample",model="",sampler="",status="404"} 1.0',
        'ctm_http_requests_total{endpoint="/models/{name}",model="gauss_1D",sampler="",status="200"} 1.0',
        "ctm_http_request_duration_seconds_count"
        '{endpoint="/sample",model="two_gmm_1D",sampler="onestep"} 2.0',
        "ctm_http_request_duration_seconds_bucket"
        '{endpoint="/sample",le="+Inf",model="two_gmm_1D",sampler="onestep"} 2.0',
        'ctm_samples_generated_total{model="two_gmm_1D",sampler="onestep"} 20.0',
        'ctm_samples_generated_total{model="gauss_1D",sampler="heun"} 5.0',
        "ctm_models_loaded 2.0",
    ]
    missing = [line for line in expected if line not in text]
    assert not missing, missing
    assert "bogus" not in text


async def test_metrics_are_per_app(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir) as one, serve(checkpoint_dir) as two:
        await get_json(one, "/sample", {"n": 3})
        text = (await two.get("/metrics")).text
    assert 'endpoint="/sample"' not in text


async def test_openapi_declares_ranges_and_responses(client: httpx.AsyncClient) -> None:
    schema = await get_json(client, "/openapi.json")
    for path in ("/sample", "/trajectory"):
        operation = schema["paths"][path]["get"]
        assert set(operation["responses"]) == {"200", "404", "406", "422", "503"}
        answers = set(operation["responses"]["200"]["content"])
        assert answers == {"application/json", "application/x-npy", "application/octet-stream"}
        params = {p["name"]: p["schema"] for p in operation["parameters"]}
        assert params["sampler"]["enum"] == list(SAMPLERS)
        # A plain /trajectory is a path with intermediate states; a plain /sample, one jump.
        assert params["sampler"]["default"] == ("onestep" if path == "/sample" else "multistep")
        assert params["noise"]["enum"] == ["random", "quantile"]
        ranges = {k: (v.get("minimum"), v.get("maximum"), v.get("default")) for k, v in params.items()}
        assert ranges["n"] == (1, 100_000, 1000)
        # Optional: omitted, the sampler's own default steps and γ.
        optional = {k: next(o for o in params[k]["anyOf"] if o["type"] != "null") for k in ("steps", "gamma")}
        assert (optional["steps"]["minimum"], optional["steps"]["maximum"]) == (1, 1000)
        assert (optional["gamma"]["minimum"], optional["gamma"]["maximum"]) == (0, 1)
        described = next(p for p in operation["parameters"] if p["name"] == "steps")["description"]
        assert all(f"{name} {spec.default_steps}" in described for name, spec in SPECS.items())
        seed = next(s for s in params["seed"]["anyOf"] if s.get("type") == "integer")
        assert (seed["minimum"], seed["maximum"]) == (0, MAX_SEED)
        assert "default" not in params["model"]  # omitted: the default /models names, at request time
    components = schema["components"]["schemas"]
    assert set(components["TrajectoryResponse"]["properties"]) == {*SAMPLE_KEYS, "sigmas", "paths"}
    assert set(schema["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert set(schema["paths"]["/models/{name}"]["get"]["responses"]) >= {"200", "404"}
    for path in ("/models", "/healthz", "/metrics"):
        assert "200" in schema["paths"][path]["get"]["responses"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_framework_errors_are_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/no-such-endpoint")
    assert response.status_code == 404
    assert response.json() == {
        "detail": "there is nothing at '/no-such-endpoint'; /docs lists the API's paths",
        "errors": [],
    }
    response = await client.post("/sample")
    assert response.status_code == 405
    assert response.json() == {"detail": "POST is not allowed on '/sample'; use GET", "errors": []}


async def test_unexpected_error_is_json_500(checkpoint_dir: Path) -> None:
    app = create_app(Settings(checkpoint_dir=checkpoint_dir))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):

        async def broken(job: Any) -> Any:
            raise RuntimeError("simulated fault")

        app.state.engine.sample = broken
        response = await client.get("/sample")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error; see the server log", "errors": []}


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--host",
        "--port",
        "--workers",
        "--checkpoint-dir",
        "--default-model",
        "--device",
        "--log-level",
    ):
        assert flag in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--port", "http"], "port"), (["--device", "tpu"], "device"), (["--workers", "0"], "workers")],
)
def test_cli_rejects_bad_settings(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctm-serve: invalid settings:")
    assert message in err
    assert "\n" not in err


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTM_MAX_N", "7")
    monkeypatch.setenv("CTM_DEVICE", "AUTO")
    monkeypatch.setenv("CTM_CHECKPOINT_DIR", "/srv/models")
    settings = Settings()
    assert (settings.max_n, settings.device, settings.checkpoint_dir) == (7, "auto", Path("/srv/models"))
    assert Settings(**{k.removeprefix("CTM_").lower(): v for k, v in settings.to_env().items()}) == settings
