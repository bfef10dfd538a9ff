"""Builds the FastAPI app: `create_app(settings)` for tests and workers, `app` for `uvicorn service.app:app`.

Building an app loads nothing; its lifespan loads the checkpoints, so importing this module is cheap
and works with an empty or missing checkpoint directory.
"""

import http
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

from ctm_core import __version__
from ctm_core.machine import resolve_device
from service.api.responses import error_response, summarise, validation_errors
from service.api.routes import admin, explorer, health, likelihood, metrics, models, reference, sampling
from service.config import Settings
from service.inference import InferenceEngine, torch_threads_for
from service.lifecycle import RequestTimeoutMiddleware, checkpoint_poller, document_responses
from service.limits import RequestSizeMiddleware
from service.memory import limit_fragmentation, memory_trimmer
from service.registry import ModelRegistry
from service.security import APIKeyMiddleware, cors_options
from service.telemetry import MetricsMiddleware, Telemetry, configure_logging

logger = logging.getLogger(__name__)

DESCRIPTION = """Samples from Consistency Trajectory Models (Kim et al., ICLR 2024) of 1D distributions.

Each model is one checkpoint in the server's checkpoint directory, named by its file's stem.

Every error answers `{"detail": "<what went wrong, in one sentence>", "errors": [...]}`; `errors` lists
the invalid inputs (`loc`, `msg`, `type`) when a request failed validation, and is empty otherwise.
"""
# Swagger UI and ReDoc are served from the fastapi-offline package's copies, not a CDN: /docs works
# on a machine without internet access.
DOCS_ASSETS_URL = "/docs-assets"
DOCS_ASSETS_PACKAGE = ("fastapi_offline", "static")
# The docs pages may load only from this server: ReDoc's footer would fetch its logo from a CDN.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; worker-src 'self' blob:"
)
_PATH_ECHO_LIMIT = 80
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load every checkpoint (bad ones are logged and skipped), serve, then stop the sampling threads."""
    settings: Settings = app.state.settings
    registry: ModelRegistry = app.state.registry
    telemetry: Telemetry = app.state.telemetry
    device = resolve_device(settings.device, setting="CTM_DEVICE")
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


async def unhandled_error(request: Request, exc: Exception) -> Response:
    """Anything unexpected still answers JSON with a `detail`; the traceback goes to the log."""
    logger.exception("unhandled error path=%s", request.url.path, exc_info=exc)
    return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error; see the server log")


async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """422 naming each invalid input in `detail`, and listing them in `errors`."""
    errors = validation_errors(exc.errors())
    return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, summarise(errors), errors)


async def http_error(request: Request, exc: HTTPException) -> Response:
    """An HTTPException (the routes', the framework's 404 and 405) in the common error shape."""
    headers = dict(exc.headers or {})
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    detail = http_detail(request, exc, headers.get("Allow", ""))
    return error_response(exc.status_code, detail, headers=headers)


def allowed_methods(request: Request) -> str:
    """The methods some route answers at the request's path ('GET, POST' for /logprob), where the
    router's own 405 names only the first route's. Mounts are left out: they take any method."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def http_detail(request: Request, exc: HTTPException, allowed: str) -> str:
    """The exception's message; for the framework's bare 'Not Found' and 'Method Not Allowed', one
    that names the path and what to do instead."""
    phrase = http.HTTPStatus(exc.status_code).phrase
    if isinstance(exc.detail, str) and exc.detail != phrase:
        return exc.detail
    path = request.url.path
    shown = path if len(path) <= _PATH_ECHO_LIMIT else path[:_PATH_ECHO_LIMIT] + "…"
    if exc.status_code == status.HTTP_404_NOT_FOUND:
        return f"there is nothing at {shown!r}; /docs lists the API's paths"
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        return f"{request.method} is not allowed on {shown!r}; use {allowed or 'another method'}"
    return phrase


def add_offline_docs(app: FastAPI) -> None:
    """Serve /docs (Swagger UI) and /redoc with their scripts and styles from this server.

    FastAPI's own pages load them from a CDN; these load them from `DOCS_ASSETS_URL`, a mount of the
    files fastapi-offline ships (FastAPI's "self-hosting JavaScript and CSS for docs" recipe).
    """
    app.mount(DOCS_ASSETS_URL, StaticFiles(packages=[DOCS_ASSETS_PACKAGE]), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that adds a prefix
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            # No badge from the online validator (validator.swagger.io): nothing leaves the machine.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app with its own registry, metrics and settings (default: from the environment)."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="ctm-serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # add_offline_docs serves /docs and /redoc without a CDN
        redoc_url=None,
        exception_handlers={
            Exception: unhandled_error,
            RequestValidationError: invalid_request,
            HTTPException: http_error,
        },
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
    add_offline_docs(app)
    document_responses(app)
    return app


app = create_app()
