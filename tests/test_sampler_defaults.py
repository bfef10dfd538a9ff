"""The sampler table (`ctm_core.samplers.SPECS`): its NFE counts what the samplers really evaluate,
and the API's defaults come from it, so a request without `steps` never answers an unsolved ODE."""

from pathlib import Path

import pytest
import torch
from app_client import serve

from ctm_core.samplers import SPECS, check_steps, sampling_sigmas

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingModel:
    """A Gaussian's exact jump and denoiser that count their calls."""

    def __init__(self) -> None:
        self.calls = 0

    def jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * torch.sqrt((1 + s**2) / (1 + t**2))

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x / (1 + t**2)


@pytest.mark.parametrize("sampler", list(SPECS))
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_nfe_is_the_number_of_network_calls(sampler: str, steps: int) -> None:
    spec = SPECS[sampler]
    if spec.fixed_steps and steps != spec.default_steps:
        with pytest.raises(ValueError, match="takes exactly"):
            check_steps(sampler, steps)
        return
    model = CountingModel()
    sigmas = sampling_sigmas(sampler, steps, sigma_min=0.002, sigma_max=10.0)
    trajectory = spec.fn(model, torch.zeros(4), sigmas, generator=torch.Generator().manual_seed(0))
    assert model.calls == spec.nfe(steps) == trajectory.nfe


def test_unknown_samplers_and_bad_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        check_steps("rk4", 1)
    with pytest.raises(ValueError, match="steps must be ≥ 1"):
        check_steps("heun", 0)
    with pytest.raises(ValueError, match="exactly 2 sigmas"):
        check_steps("onestep", 3, from_sigmas=True)


async def test_omitted_steps_are_the_samplers_default(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir) as client:
        for sampler, spec in SPECS.items():
            body = (await client.get("/sample", params={"sampler": sampler, "n": 50, "seed": 1})).json()
            assert (body["steps"], body["nfe"]) == (spec.default_steps, spec.nfe(spec.default_steps))
        # Heun without steps now solves the ODE: the same samples as Heun with 512 steps, to within
        # its discretisation error (before, steps defaulted to 1: one Euler step, samples near 0).
        params = {"sampler": "heun", "n": 2000, "seed": 3, "noise": "quantile"}
        default = torch.tensor((await client.get("/sample", params=params)).json()["samples"])
        fine = torch.tensor((await client.get("/sample", params=params | {"steps": 512})).json()["samples"])
        assert float((default - fine).abs().mean()) < 0.01 * float(fine.std())


async def test_a_plain_trajectory_is_a_path(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir) as client:
        body = (await client.get("/trajectory", params={"n": 3})).json()
        steps = SPECS["multistep"].default_steps
        assert body["sampler"] == "multistep" and body["steps"] == steps
        assert len(body["sigmas"]) == steps + 1 and all(len(path) == steps + 1 for path in body["paths"])


async def test_parameters_a_sampler_would_ignore_are_refused(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir) as client:
        for sampler in ("onestep", "multistep", "euler", "heun"):
            response = await client.get("/sample", params={"sampler": sampler, "gamma": 0.3})
            assert response.status_code == 422
            assert "gamma applies to sampler=gamma only" in response.json()["detail"]
        assert (await client.get("/sample", params={"sampler": "gamma", "gamma": 0.3})).status_code == 200


async def test_default_steps_respect_a_lower_step_limit(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, max_steps=10) as client:
        body = (await client.get("/sample", params={"sampler": "heun", "n": 5})).json()
        assert body["steps"] == 10


async def test_the_served_defaults_are_the_tables(checkpoint_dir: Path) -> None:
    """A client reads the defaults from the OpenAPI description, written from the same table."""
    async with serve(checkpoint_dir) as client:
        schema = (await client.get("/openapi.json")).json()
    described = next(p for p in schema["paths"]["/sample"]["get"]["parameters"] if p["name"] == "steps")
    for name, spec in SPECS.items():
        assert f"{name} {spec.default_steps}" in described["description"]


async def test_models_lists_each_samplers_default_steps(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir) as client:
        models = (await client.get("/models")).json()["models"]
    for model in models:
        assert model["default_steps"] == {name: spec.default_steps for name, spec in SPECS.items()}


# --- the default model ------------------------------------------------------------------------------


async def test_the_only_loaded_model_is_the_default_when_the_configured_one_is_missing(
    tmp_path: Path, checkpoint_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "mine.safetensors").write_bytes((checkpoint_dir / "gauss_1D.safetensors").read_bytes())
    with caplog.at_level("WARNING", logger="service"):
        async with serve(folder) as client:
            assert (await client.get("/models")).json()["default_model"] == "mine"
            body = (await client.get("/sample", params={"n": 3})).json()
            assert body["model"] == "mine"
            logprob = await client.post("/logprob", json={"x": [0.0]})
            assert logprob.json()["model"] == "mine"
    assert "default model 'two_gmm_1D' (CTM_DEFAULT_MODEL) did not load" in caplog.text
    assert "use 'mine'" in caplog.text


async def test_with_several_models_and_no_default_a_plain_request_says_why(
    checkpoint_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="service"):
        async with serve(checkpoint_dir, default_model="absent") as client:
            assert (await client.get("/models")).json()["default_model"] is None
            response = await client.get("/sample", params={"n": 3})
            assert response.status_code == 404
            assert "CTM_DEFAULT_MODEL, did not load" in response.json()["detail"]
    assert "requests that name no model get 404" in caplog.text


async def test_models_names_the_configured_default(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir) as client:
        assert (await client.get("/models")).json()["default_model"] == "two_gmm_1D"


async def test_unknown_query_parameters_are_named_in_a_422(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir) as client:
        for path, params in (
            ("/sample", {"n": 3, "bogus": 1}),
            ("/sample", {"n": 3, "step": 8}),  # a misspelt steps, not silently the default
            ("/trajectory", {"n": 3, "sigma": "10,0.002"}),
            ("/logprob", {"x": 0.5, "density": "ode"}),
            ("/models", {"verbose": 1}),
            ("/evaluate", {"n": 10, "bogus": 1}),
            ("/plot.png", {"n": 10, "bogus": 1}),
        ):
            response = await client.get(path, params=params)
            assert response.status_code == 422, (path, response.text)
            unknown = next(name for name in params if name not in ("n", "x"))
            assert f"unknown query parameter {unknown!r}" in response.json()["detail"]
        # The explorer page reads its own query (model, sampler, ...) in the browser.
        assert (await client.get("/", params={"model": "two_gmm_1D", "anything": 1})).status_code == 200


def test_the_server_finds_models_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Started where there is no ./checkpoints, it serves the shipped models; where there is one, that.
    from service.config import SHIPPED_CHECKPOINTS, Settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CTM_CHECKPOINT_DIR", raising=False)
    assert Settings().checkpoint_dir == SHIPPED_CHECKPOINTS
    assert (SHIPPED_CHECKPOINTS / "two_gmm_1D.safetensors").is_file()
    (tmp_path / "checkpoints").mkdir()
    assert Settings().checkpoint_dir == Path("checkpoints")
