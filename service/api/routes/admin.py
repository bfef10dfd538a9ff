"""POST /admin/reload: pick up new, replaced and removed checkpoint files without a restart.

Present only when CTM_ADMIN_TOKEN is set (otherwise the path answers 404), and guarded by that
token as `Authorization: Bearer <token>`. With several worker processes each has its own models
and this reaches one of them; use CTM_RELOAD_POLL_S there.
"""

from fastapi import APIRouter, Depends, Request

from service.config import Settings
from service.lifecycle import reload_models
from service.schemas import ReloadResponse
from service.security import admin_token_dependency, unauthorized_response


def create_router(settings: Settings) -> APIRouter:
    """The admin routes, or an empty router when no admin token is configured."""
    router = APIRouter(tags=["admin"])
    if settings.admin_token is None:
        return router

    @router.post(
        "/admin/reload",
        summary="Reload the checkpoints",
        dependencies=[Depends(admin_token_dependency(settings.admin_token))],
        responses={401: unauthorized_response("The admin token (CTM_ADMIN_TOKEN) is missing or wrong.")},
    )
    async def reload(request: Request) -> ReloadResponse:
        """Load new and changed `*.safetensors` files, drop removed ones, and swap each model atomically.

        A request already running finishes on the version it started with. A file that fails
        validation is listed under `rejected`, and its previous version, if any, keeps serving.
        """
        report = await reload_models(request.app, trigger="admin")
        snapshot = report.snapshot
        return ReloadResponse(
            models={name: snapshot.models[name].sha256 for name in sorted(snapshot.models)},
            added=report.added,
            replaced=report.replaced,
            removed=report.removed,
            unchanged=report.unchanged,
            rejected=snapshot.describe_rejections(),
            seconds=report.seconds,
        )

    return router
