"""GET /sample and GET /trajectory: validate, run the job off the loop, shape the answer."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from service.api.deps import NoUnknownQuery, sampling_job_dependency, trajectory_job_dependency
from service.api.responses import json_response
from service.config import Settings
from service.inference import InferenceEngine, SamplingJob, SamplingResult
from service.schemas import ErrorResponse, SampleResponse, TrajectoryResponse, ValidationErrorResponse
from service.telemetry import Telemetry

ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"model": ErrorResponse, "description": "Unknown model."},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {
        "model": ValidationErrorResponse,
        "description": "A parameter out of range, or a rule between parameters broken (message names it).",
    },
}


def sample_payload(result: SamplingResult) -> dict[str, Any]:
    """The /sample body (`SampleResponse`), with numpy arrays for orjson."""
    job = result.job
    return {
        "model": job.model.name,
        "model_sha256": job.model.sha256,  # the version the whole request ran on
        "sampler": job.sampler,
        "steps": job.steps,
        "nfe": result.nfe,
        "n": job.n,
        "seed": job.seed,
        "noise": job.noise,
        "samples": result.samples,
    }


def trajectory_payload(result: SamplingResult) -> dict[str, Any]:
    """The /trajectory body (`TrajectoryResponse`)."""
    return {**sample_payload(result), "sigmas": result.sigmas, "paths": result.paths}


async def run(engine: InferenceEngine, telemetry: Telemetry, job: SamplingJob) -> SamplingResult:
    """Run a job; ctm_core's ValueError for bad arguments becomes 422, and samples are counted."""
    try:
        result = await engine.sample(job)
    except ValueError as exc:  # ctm_core refused the arguments: the request's fault, not ours
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    telemetry.count_samples(job.model.name, job.sampler, job.n)
    return result


def create_router(settings: Settings) -> APIRouter:
    """The sampling routes, with this app's request limits in their parameters."""
    router = APIRouter(tags=["sampling"], dependencies=[NoUnknownQuery])
    SampleJob = Annotated[SamplingJob, Depends(sampling_job_dependency(settings, with_sigmas=True))]
    TrajectoryJob = Annotated[SamplingJob, Depends(trajectory_job_dependency(settings, with_sigmas=True))]

    @router.get("/sample", response_model=SampleResponse, responses=ERRORS, summary="Draw samples")
    async def sample(job: SampleJob, request: Request) -> Response:
        """n samples from a model; the same seed gives the same samples.

        The sampler visits `steps` + 1 noise levels of the model's schedule, or exactly the levels
        given as `sigmas` (from the model's σ_max down to its σ_min; steps is then their number − 1).
        """
        # The engine and metrics straight from the app's state: each FastAPI dependency costs
        # about 13 µs a request, and /sample is the hot path (docs/PERFORMANCE.md).
        result = await run(request.app.state.engine, request.app.state.telemetry, job)
        return await json_response(sample_payload(result), values=job.n)

    @router.get(
        "/trajectory", response_model=TrajectoryResponse, responses=ERRORS, summary="Draw sampler paths"
    )
    async def trajectory(job: TrajectoryJob, request: Request) -> Response:
        """/sample plus the noise levels and each sample's state at every one of them.

        `sigmas` in the answer: the levels the sampler visited (the ones given, when given).
        Limited to n × (steps + 1) values (CTM_MAX_TRAJECTORY_VALUES), steps + 1 being the number
        of levels.
        """
        result = await run(request.app.state.engine, request.app.state.telemetry, job)
        return await json_response(trajectory_payload(result), values=job.n * (job.steps + 2))

    return router
