"""Checkpoint I/O: safetensors only (never pickle), validated on load, written atomically.

Layout: tensors `student.*` (the evaluation-EMA student) and, for a distilled model, `teacher.*`;
while training, `state.*` holds what resuming needs (online weights, EMA, optimiser moments, RNG).
The safetensors metadata holds one JSON string under the key "ctm_serve" (see `FORMAT_VERSION`).
"""

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ctm_core import __version__
from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.network import build_network
from ctm_core.parametrization import CTMParametrization

# 2: the prior N(μ, σ_max² + σ_d²) (recorded under "prior") and the network kind. Version 1
# models were trained and sampled with the narrow prior N(μ, σ_max²): refused, to be retrained.
FORMAT_VERSION = 2
METADATA_KEY = "ctm_serve"
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_HEADER_BYTES = 8 * 1024 * 1024
_ALLOWED_PREFIXES = ("student.", "teacher.", "state.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with a message a person can act on."""


@dataclass
class Checkpoint:
    """A loaded, validated checkpoint: networks in eval mode plus their description."""

    path: Path
    metadata: dict[str, Any]
    student: CTMParametrization
    teacher: CTMParametrization | None
    noise: NoiseConfig
    sha256: str
    size_bytes: int
    state: dict[str, torch.Tensor] = field(default_factory=dict)


def build_model(network: NetworkConfig, sigma_data: float, data_mean: float = 0.0) -> CTMParametrization:
    """A fresh CTM model: the raw MLP inside the EDM/CTM parametrisation."""
    return CTMParametrization(build_network(network), sigma_data, data_mean)


def checkpoint_metadata(
    *,
    network: NetworkConfig,
    noise: NoiseConfig,
    task: dict[str, Any],
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """The metadata every checkpoint carries: enough to rebuild the model and to describe it.

    `noise.sigma_data` must be set (the value the model was trained with); `task` holds at least
    "name" and "description" (and, for user data, "kind": "data" with the file's statistics).
    """
    if noise.sigma_data is None:
        raise ValueError("noise.sigma_data must be set before saving")
    return {
        "architecture": {"network": network.model_dump(), "sigma_data": noise.sigma_data},
        "noise": noise.model_dump(),
        "prior": {"distribution": "normal", "mean": noise.data_mean or 0.0, "std": noise.prior_std},
        "task": task,
        "training": training or {},
        "metrics": metrics or {},
        "package_version": __version__,
        "created_at": created_at or datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save_checkpoint(
    path: str | Path,
    *,
    student: CTMParametrization,
    teacher: CTMParametrization | None,
    metadata: dict[str, Any],
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a checkpoint atomically: temporary file in the same folder, fsync, rename."""
    tensors = _prefixed("student.", student)
    if teacher is not None:
        tensors |= _prefixed("teacher.", teacher)
    for name, tensor in (state or {}).items():
        tensors[f"state.{name}"] = tensor.detach().to("cpu").clone()
    header = {**metadata, "format_version": FORMAT_VERSION, "has_teacher": teacher is not None}
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
    metadata = _read_metadata(path, data)
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None

    try:
        network = NetworkConfig.model_validate(metadata["architecture"]["network"])
        noise = NoiseConfig.model_validate(metadata["noise"])
        sigma_data = float(metadata["architecture"]["sigma_data"])
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise CheckpointError(
            f"{path}: metadata lacks a valid architecture or noise range ({_first_line(exc)})"
        ) from None
    if noise.sigma_data is None or abs(noise.sigma_data - sigma_data) > 1e-12:
        raise CheckpointError(f"{path}: sigma_data disagrees between architecture and noise range")

    unknown = [k for k in tensors if not k.startswith(_ALLOWED_PREFIXES)]
    if unknown:
        raise CheckpointError(f"{path}: unexpected tensors {unknown[:3]}")
    student = _restore(path, "student.", tensors, network, noise, device)
    teacher = None
    if metadata.get("has_teacher"):
        teacher = _restore(path, "teacher.", tensors, network, noise, device)
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return Checkpoint(
        path=path,
        metadata=metadata,
        student=student,
        teacher=teacher,
        noise=noise,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        state=state,
    )


def _first_line(exc: Exception) -> str:
    """A one-line reason: pydantic's first error, or the exception's first line."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


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


def _read_metadata(path: Path, data: bytes) -> dict[str, Any]:
    """Parse the safetensors header ourselves first: bounded size, JSON, our format version."""
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
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: missing or invalid format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version} is newer than this ctm-serve reads "
            f"({FORMAT_VERSION}); upgrade ctm-serve"
        )
    if version == 1:
        raise CheckpointError(
            f"{path}: format version 1 predates the corrected prior N(μ, σ_max² + σ_d²); its model "
            "was trained and sampled with the narrow one. Retrain it: python -m ctm_core.train "
            "--task NAME or --data FILE"
        )
    if version < 1:
        raise CheckpointError(f"{path}: unknown format version {version}")
    return metadata


def _restore(
    path: Path,
    prefix: str,
    tensors: dict[str, torch.Tensor],
    network: NetworkConfig,
    noise: NoiseConfig,
    device: str | torch.device,
) -> CTMParametrization:
    model = build_model(network, noise.sigma_data or 1.0, noise.data_mean or 0.0)
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
