"""Checkpoint format versions: the one written, the ones read, and format 2's metadata in today's shape.

3: each fact once (`ctm_core.checkpoint.CheckpointMetadata`): σ_d and the data mean only in `noise`
   (the prior N(μ, σ_max² + σ_d²) follows from it), the network at the top, `training` without
   copies of the network and the noise range, a data task without the holdout fraction.
2: the prior N(μ, σ_max² + σ_d²) (recorded under "prior") and the network kind; σ_d, the data mean,
   the network, the noise range and a data task's holdout recorded twice. Read (`from_format_2`),
   and refused where two copies of a fact disagree.
1: models trained and sampled with the narrow prior N(μ, σ_max²): refused, to be retrained.

The functions raise ValueError with the reason; `ctm_core.checkpoint` names the file.
"""

import math
from typing import Any

from pydantic import ValidationError

from ctm_core.config import NoiseConfig

FORMAT_VERSION = 3
# Two copies of a number agree to within this (relative); format 2 wrote them from one value.
_TOLERANCE = 1e-12


def file_facts(raw: dict[str, Any]) -> tuple[int, bool]:
    """What the metadata `raw` says of its file (taken out of it): the format version, if this
    ctm-serve reads it, and whether the file holds a teacher."""
    version = raw.pop("format_version", None)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("missing or invalid format_version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"format version {version} is newer than this ctm-serve reads ({FORMAT_VERSION}); "
            "upgrade ctm-serve"
        )
    if version == 1:
        raise ValueError(
            "format version 1 predates the corrected prior N(μ, σ_max² + σ_d²); its model was trained "
            "and sampled with the narrow one. Retrain it: python -m ctm_core.train --task NAME or --data FILE"
        )
    if version < 1:
        raise ValueError(f"unknown format version {version}")
    has_teacher = raw.pop("has_teacher", None)
    if not isinstance(has_teacher, bool):
        raise ValueError("missing or invalid has_teacher (true or false)")
    return version, has_teacher


def from_format_2(raw: dict[str, Any]) -> dict[str, Any]:
    """Format 2's metadata (without format_version and has_teacher) in format 3's shape: each copy of a
    fact dropped once it agrees with the one kept; ValueError naming the two where they disagree."""
    meta = dict(raw)
    architecture, prior = meta.pop("architecture", None), meta.pop("prior", None)
    noise = meta.get("noise")
    if not isinstance(architecture, dict) or not isinstance(noise, dict):
        raise ValueError(
            "metadata lacks a valid architecture or noise range (format 2 needs its architecture and "
            "noise objects)"
        )
    if not isinstance(prior, dict):
        raise ValueError("format 2 metadata lacks its 'prior' object: the file is damaged; retrain it")
    meta["network"] = architecture.get("network")
    _agree(
        "architecture.sigma_data", architecture.get("sigma_data"), "noise.sigma_data", noise.get("sigma_data")
    )
    _agree("prior.mean", prior.get("mean"), "noise.data_mean", noise.get("data_mean") or 0.0)
    _agree("prior.distribution", prior.get("distribution"), "the normal prior", "normal")
    try:
        prior_std = NoiseConfig.model_validate(noise).prior_std
    except ValidationError:
        prior_std = None  # the validation of the whole metadata says what is wrong with it
    if prior_std is not None:
        _agree("prior.std", prior.get("std"), "√(noise.sigma_max² + noise.sigma_data²)", prior_std)

    training = meta.get("training")
    if isinstance(training, dict):
        training = dict(training)
        for key in ("network", "noise"):
            if key in training:
                _agree(f"training.{key}", training.pop(key), key, meta[key])
        meta["training"] = training or None
    task = meta.get("task")
    if isinstance(task, dict) and "holdout" in task:
        task = dict(task)
        holdout = task.pop("holdout")
        if isinstance(training, dict) and "holdout" in training:
            _agree("task.holdout", holdout, "training.holdout", training["holdout"])
        meta["task"] = task
    return meta


def _agree(name: str, value: Any, other_name: str, other: Any) -> None:
    """Nothing if the two copies of a fact agree; ValueError naming them (the first key that differs,
    for objects) if not."""
    if isinstance(value, dict) and isinstance(other, dict):
        for key in sorted(value.keys() | other.keys()):
            _agree(f"{name}.{key}", value.get(key), f"{other_name}.{key}", other.get(key))
        return
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (value, other))
    if numbers and math.isclose(value, other, rel_tol=_TOLERANCE, abs_tol=_TOLERANCE):
        return
    if not numbers and value == other:
        return
    raise ValueError(
        f"format 2 metadata disagrees with itself: {name} ({_short(value)}) differs from {other_name} "
        f"({_short(other)}); the file is damaged or was edited: retrain it"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
