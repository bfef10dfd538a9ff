"""Checkpoint I/O: safetensors only (never pickle), validated on load, written atomically.

Layout: tensors `student.*` (the evaluation-EMA student) and, for a distilled model, `teacher.*`;
while training, `state.*` holds what resuming needs (online weights, EMA, optimiser moments, RNG).
The safetensors metadata holds one JSON string under the key "ctm_serve": a `CheckpointMetadata`
plus the file's `format_version` and `has_teacher` (`ctm_core.checkpoint_formats`: the versions, and
format 2 read into today's model).
"""

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer
from pydantic_core.core_schema import SerializerFunctionWrapHandler
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ctm_core import __version__
from ctm_core.checkpoint_formats import FORMAT_VERSION, file_facts, from_format_2
from ctm_core.config import NetworkConfig, NoiseConfig, RunConfig, TrainConfig
from ctm_core.network import build_network
from ctm_core.parametrization import CTMParametrization

METADATA_KEY = "ctm_serve"
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_HEADER_BYTES = 8 * 1024 * 1024
_ALLOWED_PREFIXES = ("student.", "teacher.", "state.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with a message a person can act on."""


class _Record(BaseModel):
    """Part of the metadata: immutable, unknown fields refused; `_optional` fields not written when None."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _optional: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if not (v is None and k in self._optional)}


class DataStatistics(_Record):
    """A user's data file, whole (`ctm_core.data.data_statistics`): count, mean, population std, range."""

    n: int = Field(ge=0)
    mean: float
    std: float = Field(ge=0)
    min: float
    max: float


class MemoryMapped(_Record):
    """A data file read memory-mapped (`ctm_core.shards`): its block size, and the values evaluated."""

    block_values: int = Field(ge=1)
    reference_values: int | None
    holdout_values_evaluated: int | None


class TaskInfo(_Record):
    """What the model generates: a built-in task (`kind` its family), or a user's data file (kind
    "data": the file's name and statistics, the split's sizes, training values for a KDE reference)."""

    _optional = frozenset(
        {"kind", "file", "statistics", "n_train", "n_holdout", "kde_points", "memory_mapped"}
    )
    name: str
    description: str = ""
    kind: str | None = None
    file: str | None = None
    statistics: DataStatistics | None = None
    n_train: int | None = Field(None, ge=0)
    n_holdout: int | None = Field(None, ge=0)
    kde_points: list[Annotated[float, Field(strict=True, allow_inf_nan=False)]] | None = None
    memory_mapped: MemoryMapped | None = None


class TrainingState(_Record):
    """Where the run stood when saved ("done" at the end); `world_size`: its processes, if several."""

    _optional = frozenset({"world_size"})
    phase: Literal["teacher", "ctm", "done"]
    step: int = Field(ge=0)
    world_size: int | None = Field(None, ge=2)


class DistributedRun(_Record):
    """A run of several processes: how many, their backend, and the sha256 of their (equal) weights."""

    _optional = frozenset({"replicas_sha256"})
    world_size: int = Field(ge=1)
    backend: str
    replicas_sha256: str | None = None


class TrainingRecord(RunConfig, _Record):
    """How the model was trained: the run's settings (its network and noise range are the
    metadata's own), where the run stands, its wall time (`train_model`) and its processes."""

    _optional = frozenset({"wall_seconds", "distributed"})
    state: TrainingState
    wall_seconds: float | None = Field(None, ge=0)
    distributed: DistributedRun | None = None

    @classmethod
    def of(cls, config: TrainConfig, state: dict[str, Any], **notes: Any) -> "TrainingRecord":
        """The record of a run of `config` at `state` (`Trainer.state_metadata`), with `notes`."""
        return cls.model_validate(
            {**config.model_dump(exclude={"network", "noise"}), "state": state, **notes}
        )

    def train_config(self, network: NetworkConfig, noise: NoiseConfig) -> TrainConfig:
        """The `TrainConfig` of the run, given the metadata's network and noise range."""
        settings = self.model_dump(include=set(RunConfig.model_fields))
        return TrainConfig.model_validate({**settings, "network": network, "noise": noise})


class Metrics(_Record):
    """Quality measured at the end of training: the evaluation table's rows (`ctm_core.evaluation`;
    [] when skipped) and, for user data, the held-out log-likelihood and its baselines."""

    _optional = frozenset({"rows", "heldout_log_likelihood"})
    rows: list[dict[str, Any]] | None = None
    heldout_log_likelihood: dict[str, float | int | str | None] | None = None


class CheckpointMetadata(_Record):
    """What a checkpoint says of its model, each fact once: enough to rebuild it (`network`, and
    `noise` with the σ_d and data mean it was trained with; the prior N(data_mean, σ_max² + σ_d²)
    follows, `NoiseConfig.prior_std`) and to describe it (task, training, metrics, provenance)."""

    _optional = frozenset({"training"})
    network: NetworkConfig
    noise: NoiseConfig
    task: TaskInfo
    training: TrainingRecord | None = None
    metrics: Metrics = Metrics()
    package_version: str
    created_at: str

    @field_validator("noise")
    @classmethod
    def _measured(cls, noise: NoiseConfig) -> NoiseConfig:
        if noise.sigma_data is None:
            raise ValueError("noise.sigma_data must be set (the value the model was trained with)")
        return noise


@dataclass
class Checkpoint:
    """A loaded, validated checkpoint: networks in eval mode plus their description.

    `format_version`: the file's (a format 2 file's metadata is read into today's model)."""

    path: Path
    metadata: CheckpointMetadata
    student: CTMParametrization
    teacher: CTMParametrization | None
    sha256: str
    size_bytes: int
    format_version: int
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def noise(self) -> NoiseConfig:
        """The noise range the model was trained with (σ_d and the data mean measured)."""
        return self.metadata.noise


def build_model(network: NetworkConfig, sigma_data: float, data_mean: float = 0.0) -> CTMParametrization:
    """A fresh CTM model: the raw MLP inside the EDM/CTM parametrisation."""
    return CTMParametrization(build_network(network), sigma_data, data_mean)


def checkpoint_metadata(
    *,
    network: NetworkConfig,
    noise: NoiseConfig,
    task: TaskInfo,
    training: TrainingRecord | None = None,
    metrics: Metrics | None = None,
    created_at: str | None = None,
) -> CheckpointMetadata:
    """The metadata of a model about to be saved, stamped with this package's version and (unless
    given) the time now; `noise.sigma_data` must be set (ValueError if not)."""
    return CheckpointMetadata(
        network=network,
        noise=noise,
        task=task,
        training=training,
        metrics=metrics or Metrics(),
        package_version=__version__,
        created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
    )


def save_checkpoint(
    path: str | Path,
    *,
    student: CTMParametrization,
    teacher: CTMParametrization | None,
    metadata: CheckpointMetadata,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a checkpoint (format `FORMAT_VERSION`) atomically: temporary file in the same folder,
    fsync, rename."""
    tensors = _prefixed("student.", student)
    if teacher is not None:
        tensors |= _prefixed("teacher.", teacher)
    for name, tensor in (state or {}).items():
        tensors[f"state.{name}"] = tensor.detach().to("cpu").clone()
    of_the_file = {"format_version": FORMAT_VERSION, "has_teacher": teacher is not None}
    header = {**metadata.model_dump(mode="json"), **of_the_file}
    payload = save_tensors(tensors, metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})
    atomic_write_bytes(Path(path), payload)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Replace `path` by `payload` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the checkpoint the usual mode (readable by a server user).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint; raise CheckpointError naming the file and the problem."""
    path = Path(path)
    data = _read_file(path)
    raw = _read_header(path, data)
    try:
        version, has_teacher = file_facts(raw)
        raw = from_format_2(raw) if version == 2 else raw
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    metadata = _validated(path, raw)
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None

    unknown = [k for k in tensors if not k.startswith(_ALLOWED_PREFIXES)]
    if unknown:
        raise CheckpointError(f"{path}: unexpected tensors {unknown[:3]}")
    student = _restore(path, "student.", tensors, metadata, device)
    teacher = _restore(path, "teacher.", tensors, metadata, device) if has_teacher else None
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return Checkpoint(
        path=path,
        metadata=metadata,
        student=student,
        teacher=teacher,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format_version=version,
        state=state,
    )


def _validated(path: Path, raw: dict[str, Any]) -> CheckpointMetadata:
    """`raw` (format 3's shape) as the typed metadata; CheckpointError naming the first bad field."""
    try:
        return CheckpointMetadata.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])  # never empty: `raw` is a dict
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        reason = f"{where}: {first['msg']}"
        if first["loc"][:1] in (("network",), ("noise",)):
            raise CheckpointError(
                f"{path}: metadata lacks a valid architecture or noise range ({_one_line(reason)}){more}"
            ) from None
        words = {"extra_forbidden": "unknown field", "missing": "missing field"}
        reason = f"{words[first['type']]} {where}" if first["type"] in words else reason
        raise CheckpointError(
            f"{path}: invalid metadata, {_one_line(reason)}{more}: the file is damaged or was not "
            "written by ctm-serve; retrain it"
        ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _prefixed(prefix: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def _read_file(path: Path) -> bytes:
    if path.is_symlink() and not path.exists():
        raise CheckpointError(f"{path}: broken symbolic link")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file")
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES}-byte limit")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None


def _read_header(path: Path, data: bytes) -> dict[str, Any]:
    """Parse the safetensors header ourselves first: bounded size, JSON; our metadata, a JSON object."""
    if len(data) < 8:
        raise CheckpointError(f"{path}: truncated (only {len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path}: not a safetensors checkpoint (header claims {header_len} bytes, "
            f"limit {MAX_HEADER_BYTES}); pickled PyTorch files are not accepted"
        )
    if 8 + header_len > len(data):
        raise CheckpointError(f"{path}: truncated (header runs past the end of the file)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    fields = header.get("__metadata__") or {}
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path}: the safetensors __metadata__ is not a JSON object")
    raw = fields.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: no '{METADATA_KEY}' metadata: not a ctm-serve checkpoint")
    try:
        metadata = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: the '{METADATA_KEY}' metadata is not a JSON object")
    return metadata


def _restore(
    path: Path,
    prefix: str,
    tensors: dict[str, torch.Tensor],
    metadata: CheckpointMetadata,
    device: str | torch.device,
) -> CTMParametrization:
    noise = metadata.noise
    assert noise.sigma_data is not None  # CheckpointMetadata requires it
    model = build_model(metadata.network, noise.sigma_data, noise.data_mean or 0.0)
    expected = model.state_dict()
    found = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: {prefix.rstrip('.')} weights do not match the architecture "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, want in expected.items():
        got = found[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: {prefix}{name} is {got.dtype}{list(got.shape)}, "
                f"expected {want.dtype}{list(want.shape)}"
            )
        if not torch.isfinite(got).all():
            raise CheckpointError(f"{path}: {prefix}{name} holds NaN or infinite values")
    model.load_state_dict(found)
    return model.to(device).eval().requires_grad_(False)
