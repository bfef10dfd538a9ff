"""The training recipe as a library call: config → data → trainer → checkpoint, for built-in tasks.

`python -m ctm_core.train` is the full command line (user data, resume, torchrun, reports);
benchmarks and notebooks that train the default recipe on a built-in task call `train_model`.
"""

import time
from pathlib import Path

import torch

from ctm_core.checkpoint import checkpoint_metadata, save_checkpoint
from ctm_core.config import TrainConfig, default_config
from ctm_core.tasks import get_task
from ctm_core.train import noise_for
from ctm_core.trainer import Trainer


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
    training = {**config.model_dump(), "state": trainer.state_metadata()}
    training["wall_seconds"] = round(time.perf_counter() - started, 2)
    meta = checkpoint_metadata(
        network=config.network,
        noise=config.noise,
        task={"name": target.name, "description": target.description, "kind": target.kind},
        training=training,
    )
    teacher = trainer.teacher_eval if config.mode == "distill" else None
    save_checkpoint(out, student=trainer.student_eval, teacher=teacher, metadata=meta)
    return Path(out)
