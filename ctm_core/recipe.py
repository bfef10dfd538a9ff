"""The training recipe as a library call: config → data → trainer → checkpoint, for built-in tasks.

`python -m ctm_core.train` is the full command line (user data, resume, torchrun, reports);
benchmarks and notebooks that train the default recipe on a built-in task call `train_model`.
"""

import time
from pathlib import Path
from typing import Any, Protocol

import torch

from ctm_core.checkpoint import (
    Checkpoint,
    Metrics,
    TaskInfo,
    TrainingRecord,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint,
)
from ctm_core.config import TrainConfig, default_config
from ctm_core.tasks import get_task
from ctm_core.trainer import Trainer


class Moments(Protocol):
    """What `noise_for` reads of the training data: a task, or the CLI's TrainingData."""

    mean: float
    std: float


def noise_for(config: TrainConfig, data: Moments, bandwidth: float | None = None) -> TrainConfig:
    """Fill in σ_data and the data's mean from the data, and widen σ_max for widely spread data.

    For user data, `bandwidth` (`TrainingData.bandwidth`, None unless `config.data_sigma_min` is
    "bandwidth") becomes σ_min."""
    noise = config.noise
    update: dict[str, Any] = {}
    if config.data is not None and bandwidth is not None:
        update["sigma_min"] = bandwidth
    if noise.sigma_data is None:
        update["sigma_data"] = max(data.std, 1e-3)
    if noise.data_mean is None:
        update["data_mean"] = data.mean
    reach = 3 * data.std
    if config.data is not None and reach > noise.sigma_max / 2:
        # σ_max must dwarf the data's spread, or the prior is not close to the marginal at σ_max.
        update["sigma_max"] = 2 * reach
    return config.model_copy(update={"noise": noise.model_copy(update=update)}) if update else config


def train_model(
    task: str,
    out: str | Path,
    *,
    seed: int = 0,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train `config` (default: the distillation recipe) on a built-in task with `seed`; write `out`."""
    config = (config or default_config()).model_copy(update={"task": task, "data": None, "seed": seed})
    target = get_task(task)
    config = noise_for(config, target)
    trainer = Trainer(config, target.sample, torch.device("cpu"), progress=progress)
    started = time.perf_counter()
    trainer.run()
    info = {"name": target.name, "description": target.description, "kind": target.kind}
    save_run(out, trainer, config, info, extra={"wall_seconds": round(time.perf_counter() - started, 2)})
    return Path(out)


def save_run(
    out: str | Path,
    trainer: Trainer,
    config: TrainConfig,
    task: dict[str, Any],
    *,
    metrics: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a training run's checkpoint: its networks (the teacher too when distilled), the
    recipe and the trainer's progress (`training`, plus `extra`), `task` and `metrics`; `state`
    (the optimisers' tensors) makes it resumable."""
    meta = checkpoint_metadata(
        network=config.network,
        noise=config.noise,
        task=TaskInfo.model_validate(task),
        training=TrainingRecord.of(config, trainer.state_metadata(), **(extra or {})),
        metrics=Metrics.model_validate(metrics or {}),
    )
    teacher = trainer.teacher_eval if config.mode == "distill" else None
    save_checkpoint(out, student=trainer.student_eval, teacher=teacher, metadata=meta, state=state)


def resume_state(path: Path, config: TrainConfig, device: torch.device) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint to resume and its saved progress; ValueError when it was trained with other
    settings than `config` or holds a finished run."""
    ckpt = load_checkpoint(path, device=device)
    record = ckpt.metadata.training
    saved = None if record is None else record.train_config(ckpt.metadata.network, ckpt.noise)
    if record is None or saved is None or saved.model_copy(update={"device": config.device}) != config:
        raise ValueError(f"{path} was trained with other settings; resume with the same command")
    if record.state.phase == "done" or not ckpt.state:
        raise ValueError(f"{path} holds a finished run: nothing to resume")
    return ckpt, record.state.model_dump()
