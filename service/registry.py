"""The model registry: name → loaded, validated checkpoint. Names are file stems; lookups never touch disk.

Requests read one immutable snapshot of the mapping; `replace` swaps in a new one with a single
assignment, so a later hot reload can load new files aside and publish them atomically.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from pydantic import ValidationError

from ctm_core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ctm_core.parametrization import CTMParametrization
from ctm_core.samplers import SAMPLERS, generate
from service.schemas import ModelInfo, NoiseInfo

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".safetensors"
_SMOKE_N = 16


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to serve, and its public description."""

    name: str
    checkpoint: Checkpoint
    info: ModelInfo

    @property
    def network(self) -> CTMParametrization:
        """The served CTM (the checkpoint's evaluation-EMA student), in eval mode."""
        return self.checkpoint.student


class ModelRegistry:
    """Loaded models by name; the mapping is replaced as a whole, never edited in place."""

    def __init__(self) -> None:
        self._models: Mapping[str, LoadedModel] = MappingProxyType({})
        self._rejected: Mapping[str, str] = MappingProxyType({})

    def get(self, name: str) -> LoadedModel | None:
        """The model called `name`, or None; `name` is only compared with loaded names."""
        return self._models.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    @property
    def models(self) -> list[LoadedModel]:
        snapshot = self._models
        return [snapshot[name] for name in sorted(snapshot)]

    @property
    def rejected(self) -> Mapping[str, str]:
        """File name → reason, for the checkpoints that failed validation at the last load."""
        return self._rejected

    def __len__(self) -> int:
        return len(self._models)

    def replace(self, models: Mapping[str, LoadedModel], rejected: Mapping[str, str]) -> None:
        """Publish a new set of models in one step (readers see the old set or the new one)."""
        self._models = MappingProxyType(dict(models))
        self._rejected = MappingProxyType(dict(rejected))

    def load_directory(self, directory: Path, device: torch.device) -> None:
        """Load every `*.safetensors` in `directory`, skip (and log) the bad ones, publish the rest."""
        self.replace(*load_directory(directory, device))


def load_directory(directory: Path, device: torch.device) -> tuple[dict[str, LoadedModel], dict[str, str]]:
    """(name → model, file name → reason rejected) for the checkpoints in `directory`."""
    if not directory.is_dir():
        logger.warning("checkpoint directory missing dir=%s", directory)
        return {}, {}
    models: dict[str, LoadedModel] = {}
    rejected: dict[str, str] = {}
    for path in sorted(directory.glob(f"*{CHECKPOINT_SUFFIX}")):
        try:
            model = load_model(path, device)
        except CheckpointError as exc:
            rejected[path.name] = _one_line(str(exc))
        except Exception as exc:  # one odd file must not stop the others from serving
            rejected[path.name] = _one_line(f"{path}: unexpected {type(exc).__name__} ({exc})")
        else:
            models[model.name] = model
            logger.info(
                "checkpoint loaded model=%s file=%s sha256=%s", model.name, path.name, model.info.sha256[:12]
            )
            continue
        logger.error("checkpoint rejected file=%s reason=%r", path.name, rejected[path.name])
    return models, rejected


def load_model(path: Path, device: torch.device) -> LoadedModel:
    """Load and validate one checkpoint; raise CheckpointError with a message a person can act on."""
    checkpoint = load_checkpoint(path, device)
    _check_generates(path, checkpoint, device)
    try:
        info = describe(path.stem, checkpoint)
    except ValidationError as exc:
        raise CheckpointError(f"{path}: metadata cannot be described ({exc.error_count()} errors)") from None
    return LoadedModel(name=path.stem, checkpoint=checkpoint, info=info)


def describe(name: str, checkpoint: Checkpoint) -> ModelInfo:
    """The public description of a checkpoint, from its metadata and file."""
    meta = checkpoint.metadata
    task = _as_dict(meta.get("task"))
    noise = checkpoint.noise
    return ModelInfo(
        name=name,
        description=str(task.get("description") or task.get("name") or ""),
        task=task,
        architecture=_as_dict(meta.get("architecture")),
        noise=NoiseInfo(
            sigma_min=noise.sigma_min,
            sigma_max=noise.sigma_max,
            sigma_data=checkpoint.student.sigma_data,
            rho=noise.rho,
            schedule=noise.schedule,
        ),
        training=_as_dict(meta.get("training")),
        metrics=_as_dict(meta.get("metrics")),
        samplers=list(SAMPLERS),
        has_teacher=checkpoint.teacher is not None,
        file_name=checkpoint.path.name,
        size_bytes=checkpoint.size_bytes,
        sha256=checkpoint.sha256,
        created_at=_str_or_none(meta.get("created_at")),
        format_version=meta["format_version"],
        package_version=_str_or_none(meta.get("package_version")),
    )


def _check_generates(path: Path, checkpoint: Checkpoint, device: torch.device) -> None:
    """One-step samples from a few quantiles must be finite: finite weights can still overflow."""
    noise = checkpoint.noise
    trajectory = generate(
        checkpoint.student,
        "onestep",
        1,
        _SMOKE_N,
        **noise.sampling_kwargs(),
        noise="quantile",
        device=device,
    )
    if not torch.isfinite(trajectory.samples).all():
        raise CheckpointError(f"{path}: the model produces NaN or infinite samples")


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _one_line(message: str) -> str:
    return " ".join(message.split())
