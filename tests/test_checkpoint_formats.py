"""ctm_core.checkpoint_formats: which format versions load, and format 2 read into today's metadata."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoint_files import (
    MONOTONE,
    NOISE,
    TRAINING,
    assert_state_dicts_equal,
    format_2_header,
    load_error,
    metadata_json,
    sample_metadata,
    seeded_model,
    student_tensors,
    write_file,
)
from safetensors.torch import load_file

from ctm_core.checkpoint import (
    FORMAT_VERSION,
    METADATA_KEY,
    TaskInfo,
    TrainingRecord,
    load_checkpoint,
    save_checkpoint,
)


def test_version_1_files_are_refused_with_a_call_to_retrain(tmp_path: Path) -> None:
    """Version 1 models were trained and sampled with the narrow prior N(μ, σ_max²)."""
    meta = {**metadata_json(), "format_version": 1, "has_teacher": False}
    path = write_file(
        tmp_path / "v1.safetensors", student_tensors(seeded_model(0)), {METADATA_KEY: json.dumps(meta)}
    )
    message = load_error(path)
    assert "format version 1" in message and "prior" in message and "Retrain" in message


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (None, "missing or invalid format_version"),
        ("1", "missing or invalid format_version"),
        (True, "missing or invalid format_version"),
        (1.0, "missing or invalid format_version"),
        (0, "unknown format version 0"),
        (1, "format version 1 predates the corrected prior"),
        (FORMAT_VERSION + 1, f"format version {FORMAT_VERSION + 1} is newer"),
    ],
)
def test_bad_format_version(tmp_path: Path, version: Any, expected: str) -> None:
    meta = {**metadata_json(), "has_teacher": False}
    if version is not None:
        meta["format_version"] = version
    header = {METADATA_KEY: json.dumps(meta)}
    path = write_file(tmp_path / "v.safetensors", student_tensors(seeded_model(0)), header)
    message = load_error(path)
    assert expected in message
    if version == FORMAT_VERSION + 1:
        assert "upgrade" in message


@pytest.mark.parametrize("has_teacher", [None, "yes", 1])
def test_has_teacher_must_be_true_or_false(tmp_path: Path, has_teacher: Any) -> None:
    meta = {**metadata_json(), "format_version": FORMAT_VERSION}
    if has_teacher is not None:
        meta["has_teacher"] = has_teacher
    path = write_file(
        tmp_path / "t.safetensors", student_tensors(seeded_model(0)), {METADATA_KEY: json.dumps(meta)}
    )
    assert "missing or invalid has_teacher" in load_error(path)


DATA_TASK = TaskInfo(name="mydata", description="user data", kind="data", file="mydata.csv", n_train=8)


@pytest.mark.parametrize("task", [sample_metadata().task, DATA_TASK])
@pytest.mark.parametrize("training", [TRAINING, None])
def test_format_2_files_are_read_into_the_format_3_model(
    tmp_path: Path, task: TaskInfo, training: TrainingRecord | None
) -> None:
    """Format 2 (σ_d, the prior, the network and noise range, a data task's holdout all stored twice)
    loads as the same metadata; saved again, it is format 3 with the same metadata and weights."""
    noise = NOISE.model_copy(update={"data_mean": 0.7})
    metadata = sample_metadata(MONOTONE, noise).model_copy(update={"task": task, "training": training})
    student, teacher = seeded_model(1, MONOTONE, 0.7), seeded_model(2, MONOTONE, 0.7)
    tensors = student_tensors(student) | {f"teacher.{k}": v for k, v in teacher.state_dict().items()}
    old = write_file(tmp_path / "v2.safetensors", tensors, format_2_header(metadata, has_teacher=True))
    ckpt = load_checkpoint(old)
    assert ckpt.format_version == 2 and ckpt.metadata == metadata
    assert_state_dicts_equal(ckpt.student, student)
    assert ckpt.teacher is not None
    assert_state_dicts_equal(ckpt.teacher, teacher)
    new = tmp_path / "v3.safetensors"
    save_checkpoint(new, student=ckpt.student, teacher=ckpt.teacher, metadata=ckpt.metadata)
    again = load_checkpoint(new)
    assert again.format_version == 3 and again.metadata == metadata
    assert load_file(new).keys() == load_file(old).keys()
    assert all(torch.equal(v, load_file(old)[k]) for k, v in load_file(new).items())


def _format_2(edit: Any) -> dict[str, str]:
    header = format_2_header(sample_metadata().model_copy(update={"task": DATA_TASK}), has_teacher=False)
    raw = json.loads(header[METADATA_KEY])
    edit(raw)
    return {METADATA_KEY: json.dumps(raw)}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda m: m["architecture"].update(sigma_data=0.7),
            "architecture.sigma_data (0.7) differs from noise",
        ),
        (lambda m: m["noise"].update(sigma_data=None), "architecture.sigma_data (0.5) differs from noise"),
        (lambda m: m["prior"].update(mean=0.1), "prior.mean (0.1) differs from noise.data_mean (0.0)"),
        (lambda m: m["prior"].update(std=10.0), "prior.std (10.0) differs from √(noise.sigma_max²"),
        (lambda m: m["prior"].update(distribution="laplace"), "prior.distribution ('laplace') differs"),
        (
            lambda m: m["training"]["network"].update(width=32),
            "training.network.width (32) differs from network.width (16)",
        ),
        (lambda m: m["training"]["noise"].update(sigma_max=20.0), "training.noise.sigma_max (20.0) differs"),
        (lambda m: m["task"].update(holdout=0.5), "task.holdout (0.5) differs from training.holdout (0.2)"),
        (lambda m: m.pop("prior"), "format 2 metadata lacks its 'prior' object"),
        (lambda m: m.pop("architecture"), "lacks a valid architecture or noise range"),
        (lambda m: m["architecture"]["network"].update(width=0), "training.network.width (16) differs"),
        (
            lambda m: [n.update(width=0) for n in (m["architecture"]["network"], m["training"]["network"])],
            "lacks a valid architecture or noise range (network.width",
        ),
        (
            lambda m: [n.update(sigma_min=20.0) for n in (m["noise"], m["training"]["noise"])],
            "lacks a valid architecture or noise range (noise",
        ),
        (lambda m: m["metrics"].update(qW1_onestep=1.25), "unknown field metrics.qW1_onestep"),
    ],
)
def test_format_2_files_whose_copies_disagree_are_refused(tmp_path: Path, edit: Any, expected: str) -> None:
    path = write_file(tmp_path / "v2.safetensors", student_tensors(seeded_model(0)), _format_2(edit))
    message = load_error(path)
    assert expected in message, message
    if "differs" in message:
        assert "format 2 metadata disagrees with itself" in message and "retrain it" in message
