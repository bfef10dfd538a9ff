"""GET / (the explorer page and its assets) and GET /plot.png (the same views, drawn server-side)."""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.responses import FileResponse, HTMLResponse

from service.api.deps import EngineDep, NoUnknownQuery, SamplingQuery, TelemetryDep
from service.api.routes.sampling import ERRORS, run
from service.config import Settings
from service.inference import SamplingJob, SamplingResult
from service.plotting import PlotView, render_png
from service.reference import reference_for, task_metadata

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
# The page's files, by the name they are served under; nothing else in STATIC_DIR is reachable.
# explorer.js is the page's ES module; it imports the other modules.
_MODULES = ("explorer.js", "api.js", "controls.js", "plots.js", "scales.js", "format.js", "downloads.js")
ASSETS = {**dict.fromkeys(_MODULES, "text/javascript"), "explorer.css": "text/css"}
# Most samples in one figure: drawing and histogramming more adds time and shows nothing new.
MAX_PLOT_N = 20_000
_NO_CACHE = {"Cache-Control": "no-cache"}


def render_result(result: SamplingResult, view: PlotView) -> bytes:
    """The PNG of one run, with its W1 to the reference in the title (runs in a pool thread)."""
    reference = reference_for(task_metadata(result.job.model))
    w1 = reference.w1(result.samples) if reference is not None else None
    return render_png(result, reference, view, w1)


def create_router(settings: Settings) -> APIRouter:
    """The page and the figure route; /plot.png takes /trajectory's parameters, with n ≤ MAX_PLOT_N."""
    router = APIRouter(tags=["explorer"])
    plot_settings = settings.model_copy(update={"max_n": min(settings.max_n, MAX_PLOT_N)})
    plot_query = SamplingQuery(plot_settings, trajectory=True)
    PlotJob = Annotated[SamplingJob, Depends(plot_query.dependency(known=frozenset({"view"})))]

    @router.get("/", response_class=HTMLResponse, summary="Explorer page")
    async def page() -> FileResponse:
        """A page to sample any loaded model and see its samples, density and paths.

        It uses only this API: /models, /models/{name}/density, /trajectory, /evaluate, /plot.png.
        """
        return FileResponse(STATIC_DIR / "explorer.html", media_type="text/html", headers=_NO_CACHE)

    @router.get("/static/{asset}", include_in_schema=False)
    async def static_asset(asset: str) -> FileResponse:
        """The page's script modules and style sheet."""
        if asset not in ASSETS:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
        return FileResponse(STATIC_DIR / asset, media_type=ASSETS[asset], headers=_NO_CACHE)

    responses: dict[int | str, dict[str, Any]] = {
        status.HTTP_200_OK: {"content": {"image/png": {}}, "description": "A PNG image."},
        **ERRORS,
    }

    @router.get(
        "/plot.png",
        response_class=Response,
        responses=responses,
        summary="Figure of a sampling run",
        dependencies=[NoUnknownQuery],
        openapi_extra=plot_query.parameters(),
    )
    async def plot(
        job: PlotJob,
        engine: EngineDep,
        telemetry: TelemetryDep,
        view: Annotated[
            PlotView,
            Query(description="density: samples against the reference; paths: x(σ); both: side by side."),
        ] = "both",
    ) -> Response:
        """/trajectory's run drawn with matplotlib: the histogram of the samples over the reference
        density (/models/{name}/density) and up to 300 of the paths (evenly spaced in index), from σ_max
        (top) to the data.

        Same parameters and limits as /trajectory, with n ≤ 20,000.
        """
        result = await run(engine, telemetry, job)
        png = await engine.call(render_result, result, view)
        return Response(png, media_type="image/png")

    return router
