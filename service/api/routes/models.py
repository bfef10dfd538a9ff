"""GET /models and GET /models/{name}: what is loaded, from which file, trained how."""

from fastapi import APIRouter, Request, status

from service.api.deps import NoUnknownQuery, RegistryDep, SettingsDep, lookup_model
from service.schemas import ErrorResponse, ModelInfo, ModelList
from service.telemetry import label_request

router = APIRouter(tags=["models"], dependencies=[NoUnknownQuery])


@router.get("/models", summary="List loaded models")
async def list_models(registry: RegistryDep, settings: SettingsDep) -> ModelList:
    """Every loaded model, by name, the default model, and the checkpoint files that failed validation."""
    snapshot = registry.snapshot()
    models = [snapshot.models[name].info for name in sorted(snapshot.models)]
    default = registry.default_name(settings.default_model)
    return ModelList(
        models=models,
        default_model=default if registry.get(default) is not None else None,
        rejected=snapshot.describe_rejections(),
    )


@router.get(
    "/models/{name}",
    summary="Describe one model",
    responses={status.HTTP_404_NOT_FOUND: {"model": ErrorResponse, "description": "Unknown model."}},
)
async def get_model(name: str, request: Request, registry: RegistryDep, settings: SettingsDep) -> ModelInfo:
    """One loaded model; 404 if no model of that name is loaded."""
    model = lookup_model(registry, name, settings)
    label_request(request, model=model.name)
    return model.info
