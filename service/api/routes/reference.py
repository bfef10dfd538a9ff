"""GET /models/{name}/density and GET /evaluate: a model's reference distribution, and W1 to it."""

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status

from service.api.deps import (
    EngineDep,
    NoUnknownQuery,
    RegistryDep,
    SamplingQuery,
    SettingsDep,
    TelemetryDep,
    lookup_model,
    unprocessable,
)
from service.api.responses import json_response
from service.api.routes.sampling import ERRORS, run
from service.config import Settings
from service.inference import SamplingJob
from service.reference import measure, no_reference_reason, reference_for, task_metadata
from service.schemas import DensityResponse, ErrorResponse, EvaluateResponse, ValidationErrorResponse
from service.telemetry import label_request

MAX_DENSITY_POINTS = 10_000
DENSITY_ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {
        "model": ErrorResponse,
        "description": "Unknown model, or a model without a reference density (message says why).",
    },
    status.HTTP_422_UNPROCESSABLE_CONTENT: {
        "model": ValidationErrorResponse,
        "description": "A parameter out of range, or lo ≥ hi, or only one of lo and hi.",
    },
}


def create_router(settings: Settings) -> APIRouter:
    """The reference routes, with this app's sampling limits in /evaluate's parameters."""
    router = APIRouter(dependencies=[NoUnknownQuery])
    evaluate_query = SamplingQuery(settings)
    SampleJob = Annotated[SamplingJob, Depends(evaluate_query.dependency())]

    @router.get(
        "/models/{name}/density",
        tags=["models"],
        response_model=DensityResponse,
        responses=DENSITY_ERRORS,
        summary="Reference density of a model's task",
    )
    async def density(
        name: str,
        request: Request,
        registry: RegistryDep,
        settings: SettingsDep,
        engine: EngineDep,
        lo: Annotated[
            float | None, Query(allow_inf_nan=False, description="Left end of the grid (with hi).")
        ] = None,
        hi: Annotated[
            float | None, Query(allow_inf_nan=False, description="Right end of the grid (with lo).")
        ] = None,
        points: Annotated[
            int, Query(ge=2, le=MAX_DENSITY_POINTS, description="Grid points, lo and hi included.")
        ] = 400,
    ) -> Response:
        """The density of the model's task at `points` evenly spaced x from lo to hi.

        Built-in tasks: the exact density (`source` "exact"). Models trained on user data: a
        Gaussian KDE of the training values stored in the checkpoint (`source` "kde"), 404 when the
        checkpoint stores none. Without lo and hi, the grid covers the distribution's bulk.
        """
        model = lookup_model(registry, name, settings)
        label_request(request, model=model.name)
        if (lo is None) != (hi is None):
            raise unprocessable("give both lo and hi, or neither (the grid then covers the distribution)")
        if lo is not None and hi is not None and not (lo < hi and math.isfinite(hi - lo)):
            raise unprocessable(f"lo must be below hi (and hi − lo finite), got lo={lo:g}, hi={hi:g}")
        task = task_metadata(model)
        reference = await engine.call(reference_for, task)
        if reference is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"model {model.name!r} has no reference density: {no_reference_reason(task)}",
            )
        if lo is None or hi is None:
            lo, hi = await engine.call(reference.default_range)
        x, values = await engine.call(reference.density, lo, hi, points)
        body = {"model": model.name, "source": reference.source, "label": reference.label, "x": x}
        return await json_response({**body, "density": values}, values=2 * points)

    @router.get(
        "/evaluate",
        tags=["sampling"],
        response_model=EvaluateResponse,
        responses=ERRORS,
        summary="Measure samples against the task",
        openapi_extra=evaluate_query.parameters(),
    )
    async def evaluate(job: SampleJob, engine: EngineDep, telemetry: TelemetryDep) -> Response:
        """W1 from the samples /sample draws for the same parameters to the model's reference.

        The reference is the one /models/{name}/density describes: the exact CDF of a built-in
        task, or the training values stored in a user-data checkpoint (two-sample W1); `w1` is
        null for a model without one.
        """
        result = await run(engine, telemetry, job)
        source, w1 = await engine.call(measure, task_metadata(job.model), result.samples)
        body = {
            "model": job.model.name,
            "sampler": job.sampler,
            "steps": job.steps,
            "nfe": result.nfe,
            "n": job.n,
            "seed": job.seed,
            "noise": job.noise,
            "reference": source,
            "w1": w1,
        }
        return await json_response(body, values=0)

    return router
