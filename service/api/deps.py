"""Shared dependencies: the app's registry, engine and telemetry, model lookup, and query validation.

Per-parameter ranges are `Query` bounds (so OpenAPI shows them, and FastAPI answers 422 with its
list of errors); the request limits come from the settings, so the sampling dependencies are built
per app. Rules between parameters answer 422 with one message naming the rule or limit.
"""

import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status

from ctm_core.samplers import NoiseMode, SamplerName
from service.config import MAX_SEED, Settings
from service.inference import InferenceEngine, SamplingJob
from service.registry import LoadedModel, ModelRegistry
from service.telemetry import Telemetry, label_request

_NAME_ECHO_LIMIT = 80


# Dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in its
# thread pool, a thread hop each (docs/PERFORMANCE.md).
async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_engine(request: Request) -> InferenceEngine:
    return request.app.state.engine


async def get_telemetry(request: Request) -> Telemetry:
    return request.app.state.telemetry


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def lookup_model(registry: ModelRegistry, name: str, settings: Settings) -> LoadedModel:
    """The loaded model called `name`, or 404 listing the loaded ones."""
    model = registry.get(name)
    if model is not None:
        return model
    shown = name if len(name) <= _NAME_ECHO_LIMIT else name[:_NAME_ECHO_LIMIT] + "…"
    loaded = ", ".join(registry.names) or "none"
    hint = ""
    if name == settings.default_model:
        hint = " (the server's default model, CTM_DEFAULT_MODEL, did not load)"
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown model {shown!r}{hint}; loaded models: {loaded}")


def unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def sampling_job_dependency(settings: Settings) -> Callable[..., SamplingJob]:
    """The dependency that turns /sample's query into a `SamplingJob`, with this app's limits."""
    default_n = min(1000, settings.max_n)

    async def sampling_job(
        request: Request,
        model: Annotated[
            str, Query(description="A loaded model's name (see /models).")
        ] = settings.default_model,
        sampler: Annotated[
            SamplerName,
            Query(description="CTM jumps (onestep, multistep, gamma) or PF-ODE solvers (euler, heun)."),
        ] = "onestep",
        steps: Annotated[
            int, Query(ge=1, le=settings.max_steps, description="Sampler steps; onestep takes only 1.")
        ] = 1,
        n: Annotated[int, Query(ge=1, le=settings.max_n, description="Number of samples.")] = default_n,
        seed: Annotated[
            int | None,
            Query(ge=0, le=MAX_SEED, description="Seed of every random draw; omitted: one is drawn."),
        ] = None,
        gamma: Annotated[
            float,
            Query(ge=0, le=1, allow_inf_nan=False, description="γ of the gamma sampler (others ignore it)."),
        ] = 0.5,
        noise: Annotated[
            NoiseMode,
            Query(description="Latent x_T: random, or the n quantiles σ_max·Φ⁻¹((i + ½)/n)."),
        ] = "random",
    ) -> SamplingJob:
        if sampler == "onestep" and steps != 1:
            raise unprocessable(
                f"the onestep sampler takes exactly 1 step, got steps={steps}; "
                "use sampler=multistep for more steps"
            )
        loaded = lookup_model(request.app.state.registry, model, settings)  # no RegistryDep: see /sample
        label_request(request, model=loaded.name, sampler=sampler)
        return SamplingJob(
            model=loaded,
            sampler=sampler,
            steps=steps,
            n=n,
            seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
            noise=noise,
            gamma=gamma,
        )

    return sampling_job


def trajectory_job_dependency(settings: Settings) -> Callable[..., SamplingJob]:
    """/sample's dependency plus the response-size limit n × (steps + 1) of /trajectory."""
    sampling_job = sampling_job_dependency(settings)
    limit = settings.max_trajectory_values

    async def trajectory_job(job: Annotated[SamplingJob, Depends(sampling_job)]) -> SamplingJob:
        values = job.n * (job.steps + 1)
        if values > limit:
            raise unprocessable(
                f"a trajectory of n × (steps + 1) = {job.n} × {job.steps + 1} = {values} values exceeds "
                f"the limit of {limit} values (CTM_MAX_TRAJECTORY_VALUES); lower n or steps"
            )
        return job

    return trajectory_job
