"""GET /sample and GET /trajectory: validate, run the job off the loop, shape the answer."""

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.routing import APIRoute

from service.api.deps import SamplingQuery
from service.api.encoding import BINARY_CONTENT, JSON, Encoding, binary_response, negotiate
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

ANSWERS: dict[int | str, dict[str, Any]] = {
    status.HTTP_200_OK: {
        "content": BINARY_CONTENT,
        "description": "JSON by default; with `Accept: application/octet-stream` the samples (for "
        "/trajectory the paths, n rows of levels) as float32 little-endian, or with `Accept: "
        "application/x-npy` as a .npy file, the other fields in CTM-* headers (docs/SERVING.md).",
    },
    status.HTTP_406_NOT_ACCEPTABLE: {
        "model": ErrorResponse,
        "description": "The Accept header takes none of application/json, application/x-npy and "
        "application/octet-stream.",
    },
    **ERRORS,
}


class DirectRoute(APIRoute):
    """A route whose endpoint takes the request alone and returns its response: documented by
    FastAPI as usual (response model, errors, `openapi_extra`), but called directly, with no
    dependency solving and no response validation, which cost about 0.1 ms a request
    (docs/PERFORMANCE.md). The endpoint validates its own input (`SamplingQuery`)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        return self.endpoint


def sample_fields(result: SamplingResult) -> dict[str, Any]:
    """The /sample answer's fields but the samples (`SampleResponse`)."""
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
    }


async def answer(result: SamplingResult, encoding: Encoding, trajectory: bool) -> Response:
    """The /sample (or /trajectory) answer in the negotiated encoding: JSON with numpy arrays for
    orjson, or the samples (the paths) as binary float32 with the other fields in headers."""
    fields = sample_fields(result)
    if encoding != JSON:
        if not trajectory:
            return binary_response(result.samples, fields, encoding)
        return binary_response(result.paths, fields | {"sigmas": result.sigmas}, encoding)
    content = fields | {"samples": result.samples}
    if trajectory:
        content |= {"sigmas": result.sigmas, "paths": result.paths}
    return await json_response(content, values=result.states.size + result.samples.size)


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
    # The routes parse their query themselves (`SamplingQuery.job`): no FastAPI parameters, no
    # dependencies, as each costs microseconds a request on the hot path (docs/PERFORMANCE.md).
    router = APIRouter(tags=["sampling"], route_class=DirectRoute)
    sample_query = SamplingQuery(settings, with_sigmas=True)
    trajectory_query = SamplingQuery(settings, with_sigmas=True, trajectory=True)

    @router.get(
        "/sample",
        response_model=SampleResponse,
        responses=ANSWERS,
        summary="Draw samples",
        openapi_extra=sample_query.parameters(),
    )
    async def sample(request: Request) -> Response:
        """n samples from a model; the same seed gives the same samples.

        The sampler visits `steps` + 1 noise levels of the model's schedule, or exactly the levels
        given as `sigmas` (from the model's σ_max down to its σ_min; steps is then their number − 1).
        """
        encoding = negotiate(request.headers.get("accept"))
        job = sample_query.job(request)
        result = await run(request.app.state.engine, request.app.state.telemetry, job)
        return await answer(result, encoding, trajectory=False)

    @router.get(
        "/trajectory",
        response_model=TrajectoryResponse,
        responses=ANSWERS,
        summary="Draw sampler paths",
        openapi_extra=trajectory_query.parameters(),
    )
    async def trajectory(request: Request) -> Response:
        """/sample plus the noise levels and each sample's state at every one of them.

        `sigmas` in the answer: the levels the sampler visited (the ones given, when given).
        Limited to n × (steps + 1) values (CTM_MAX_TRAJECTORY_VALUES), steps + 1 being the number
        of levels.
        """
        encoding = negotiate(request.headers.get("accept"))
        job = trajectory_query.job(request)
        result = await run(request.app.state.engine, request.app.state.telemetry, job)
        return await answer(result, encoding, trajectory=True)

    return router
