"""Builds the FastAPI app: `create_app(settings)` for tests and workers, `app` for `uvicorn service.app:app`.

Building an app loads nothing; its lifespan loads the checkpoints, so importing this module is cheap
and works with an empty or missing checkpoint directory.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from ctm_core import __version__
from service.api.responses import dumps
from service.api.routes import admin, explorer, health, likelihood, metrics, models, reference, sampling
from service.config import Settings
from service.inference import InferenceEngine, resolve_device, torch_threads_for
from service.lifecycle import RequestTimeoutMiddleware, checkpoint_poller, document_responses
from service.limits import RequestSizeMiddleware
from service.memory import limit_fragmentation, memory_trimmer
from service.registry import ModelRegistry
from service.security import APIKeyMiddleware, cors_options
from service.telemetry import MetricsMiddleware, Telemetry, configure_logging

logger = logging.getLogger(__name__)

DESCRIPTION = """Samples from Consistency Trajectory Models (Kim et al., ICLR 2024) of 1D distributions.

Each model is one checkpoint in the server's checkpoint directory, named by its file's stem.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load every checkpoint (bad ones are logged and skipped), serve, then stop the sampling threads."""
    settings: Settings = app.state.settings
    registry: ModelRegistry = app.state.registry
    telemetry: Telemetry = app.state.telemetry
    device = resolve_device(settings.device)
    limit_fragmentation()  # before the sampling threads start (service.memory)
    engine = InferenceEngine(
        device,
        settings.inference_threads,
        torch_threads_for(settings),
        max_batch_rows=settings.batch_max_rows,
    )
    app.state.engine = engine
    await anyio.to_thread.run_sync(registry.load_directory, settings.checkpoint_dir, device)
    telemetry.models_loaded.set(len(registry))
    telemetry.checkpoints_rejected.set(len(registry.rejected))
    logger.info(
        "service started dir=%s device=%s models=%s rejected=%d ready=%s torch_threads=%d jobs=%d",
        settings.checkpoint_dir,
        device,
        ",".join(registry.names) or "-",
        len(registry.rejected),
        len(registry) > 0,
        engine.torch_threads,
        settings.inference_threads,
    )
    log_default_model(settings, registry)
    try:
        async with checkpoint_poller(app), memory_trimmer():
            yield
    finally:
        engine.shutdown()
        logger.info("service stopped")


def log_default_model(settings: Settings, registry: ModelRegistry) -> None:
    """Say at startup when the configured default model is missing, and what plain requests get."""
    configured = settings.default_model
    if registry.get(configured) is not None:
        return
    chosen = registry.default_name(configured)
    if chosen != configured:
        logger.warning(
            "default model %r (CTM_DEFAULT_MODEL) did not load; requests that name no model use %r, "
            "the only model loaded",
            configured,
            chosen,
        )
    else:
        logger.warning(
            "default model %r (CTM_DEFAULT_MODEL) did not load; requests that name no model get 404 "
            "until it does (loaded: %s); set CTM_DEFAULT_MODEL or --default-model to one of them",
            configured,
            ", ".join(registry.names) or "none",
        )


async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected still answers JSON with a `detail`; the traceback goes to the log."""
    logger.exception("unhandled error path=%s", request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": "internal server error; see the server log"},
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 list of errors, encoded so that a non-finite number echoed from a JSON body
    (1e999 parses as inf) becomes null instead of failing the encoder."""
    errors = jsonable_encoder(exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
    body = dumps({"detail": errors})
    return Response(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app with its own registry, metrics and settings (default: from the environment)."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="ctm-serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        exception_handlers={Exception: unhandled_error, RequestValidationError: invalid_request},
    )
    app.state.settings = settings
    app.state.registry = ModelRegistry()
    app.state.telemetry = Telemetry()
    # Outermost last: CORS (answers preflights), metrics (counts 401, 413 and 503 too), sizes, API
    # key, time limit.
    app.add_middleware(RequestTimeoutMiddleware, seconds=settings.request_timeout_s)
    if settings.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(
        RequestSizeMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_url_bytes=settings.max_url_bytes,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(MetricsMiddleware, telemetry=app.state.telemetry)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, **cors_options(settings))
    app.include_router(sampling.create_router(settings))
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(reference.create_router(settings))
    app.include_router(likelihood.router)
    app.include_router(explorer.create_router(settings))
    app.include_router(admin.create_router(settings))
    document_responses(app)
    return app


app = create_app()
