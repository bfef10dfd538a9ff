"""Checkpoint files for the tests of `ctm_core.checkpoint` and `ctm_core.checkpoint_formats`: small
seeded models, their metadata, and headers written by hand (today's format, and format 2's)."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_tensors

from ctm_core.checkpoint import (
    FORMAT_VERSION,
    METADATA_KEY,
    CheckpointError,
    CheckpointMetadata,
    Metrics,
    TaskInfo,
    TrainingRecord,
    build_model,
    checkpoint_metadata,
    load_checkpoint,
)
from ctm_core.config import CTMConfig, NetworkConfig, NoiseConfig, TrainConfig
from ctm_core.parametrization import CTMParametrization

# Most tests name MLP tensors (net.mlp.<i>.weight): they pin the MLP kind.
NETWORK = NetworkConfig(kind="mlp", width=16, depth=2)
MONOTONE = NetworkConfig(kind="monotone", width=16, depth=2, units=8)
NOISE = NoiseConfig(sigma_min=0.002, sigma_max=10.0, sigma_data=0.5)
CREATED_AT = "2024-01-01T00:00:00+00:00"


def seeded_model(seed: int, network: NetworkConfig = NETWORK, data_mean: float = 0.0) -> CTMParametrization:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(network, NOISE.sigma_data, data_mean)


TRAINING = TrainingRecord.of(TrainConfig(seed=3, ctm=CTMConfig(steps=7)), {"phase": "done", "step": 7})


def sample_metadata(network: NetworkConfig = NETWORK, noise: NoiseConfig = NOISE) -> CheckpointMetadata:
    return checkpoint_metadata(
        network=network,
        noise=noise,
        task=TaskInfo(name="two_gmm_1D", description="test task"),
        training=TRAINING,
        metrics=Metrics(rows=[{"label": "student onestep", "qW1": 0.5}]),
        created_at=CREATED_AT,
    )


def metadata_json(metadata: CheckpointMetadata | None = None) -> dict[str, Any]:
    """The metadata's JSON object as save_checkpoint writes it (less format_version, has_teacher)."""
    return (metadata or sample_metadata()).model_dump(mode="json")


def file_header(metadata: CheckpointMetadata | dict[str, Any], has_teacher: bool = False) -> dict[str, str]:
    """The safetensors metadata save_checkpoint writes, for crafting files by hand."""
    raw = metadata if isinstance(metadata, dict) else metadata_json(metadata)
    full = {**raw, "format_version": FORMAT_VERSION, "has_teacher": has_teacher}
    return {METADATA_KEY: json.dumps(full, sort_keys=True)}


def student_tensors(model: CTMParametrization) -> dict[str, torch.Tensor]:
    return {f"student.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def assert_state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def load_error(path: Path, one_line: bool = True) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message, "the message names the file"
    if one_line:  # the CLI prints it as its one "error:" line
        assert "\n" not in message
    return message


def write_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    path.write_bytes(save_tensors(tensors, metadata=metadata))
    return path


def format_2_header(metadata: CheckpointMetadata, has_teacher: bool) -> dict[str, str]:
    """The safetensors metadata format 2 wrote for `metadata`, each copy of a fact in place (σ_d in
    `architecture`, the prior, the network and noise range in `training`, a data task's holdout)."""
    raw: dict[str, Any] = metadata.model_dump(mode="json")
    network, noise = raw.pop("network"), raw["noise"]
    raw["architecture"] = {"network": network, "sigma_data": noise["sigma_data"]}
    raw["prior"] = {
        "distribution": "normal",
        "mean": noise["data_mean"] or 0.0,
        "std": metadata.noise.prior_std,
    }
    raw["training"] = raw.get("training") or {}
    if raw["training"]:
        raw["training"] |= {"network": network, "noise": noise}
        if raw["task"].get("kind") == "data":
            raw["task"]["holdout"] = raw["training"]["holdout"]
    raw |= {"format_version": 2, "has_teacher": has_teacher}
    return {METADATA_KEY: json.dumps(raw, sort_keys=True)}
