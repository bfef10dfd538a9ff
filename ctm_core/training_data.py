"""The data a training run learns from: a built-in task, or the values of a user's file split into
training and held-out values, in memory or memory-mapped (`ctm_core.shards`) across processes.

`load_training_data` gives each process its stream; `load_task` the task and held-out values that
the report measures against; both describe the data for the checkpoint's metadata (`task`).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from ctm_core.bandwidth import MAX_VALUES as BANDWIDTH_VALUES
from ctm_core.bandwidth import cv_bandwidth
from ctm_core.config import TrainConfig
from ctm_core.data import data_statistics, load_data_file, split_holdout
from ctm_core.distributed import Group
from ctm_core.shards import EVAL_HOLDOUT_VALUES, EVAL_TRAIN_VALUES, MappedData, shard
from ctm_core.tasks import EmpiricalTask, Task, get_task

# --mmap auto: .npy files of at least this many values are sampled in place from the mapped file.
MMAP_MIN_VALUES = 2**22


def load_task(config: TrainConfig) -> tuple[Task, np.ndarray | None, dict[str, Any]]:
    """The task to learn, the held-out values (for --data) and its description for the metadata."""
    if config.data is None:
        task = get_task(config.task or "two_gmm_1D")
        return task, None, {"name": task.name, "description": task.description, "kind": task.kind}
    values = load_data_file(config.data)
    train, holdout = split_holdout(values, config.holdout, config.seed)
    task = EmpiricalTask(train, name=Path(config.data).stem)
    return task, holdout, _data_info(config, data_statistics(values), train.size, holdout.size, task)


def _data_info(
    config: TrainConfig, statistics: dict[str, Any], n_train: int, n_holdout: int, task: EmpiricalTask | None
) -> dict[str, Any]:
    """The metadata's description of --data (`ctm_core.checkpoint.TaskInfo`; the holdout fraction is
    the run's setting); `task` (the training values) gives the KDE points."""
    assert config.data is not None
    info = {
        "name": Path(config.data).stem,
        "kind": "data",
        "description": f"user data from {Path(config.data).name}: {n_train} training values",
        "file": Path(config.data).name,
        "statistics": statistics,
        "n_train": int(n_train),
        "n_holdout": int(n_holdout),
    }
    if task is not None:
        # A rank-even subset of the training values: enough for a KDE reference in the explorer.
        v = task.values  # sorted
        info["kde_points"] = [float(x) for x in v[np.linspace(0, v.size - 1, min(v.size, 2000)).astype(int)]]
    return info


@dataclass
class TrainingData:
    """What one process trains on, and (on rank 0) what the report measures against.

    `mean` and `std` are those of the whole training split, the same on every rank. `task` and
    `holdout` are None on the other ranks of a memory-mapped run; `kde` is the held-out
    likelihood's baseline (None: a KDE of all of task's values); `bandwidth` the training values'
    cross-validated KDE bandwidth, to be σ_min (user data with `data_sigma_min` "bandwidth"
    only, else None; the same on every rank).
    """

    sample: Callable[[int, torch.Generator], torch.Tensor]
    mean: float
    std: float
    task: Task | None
    holdout: np.ndarray | None
    info: dict[str, Any]
    kde: stats.gaussian_kde | None = None
    bandwidth: float | None = None


def load_training_data(config: TrainConfig, group: Group, mmap: str = "auto") -> TrainingData:
    """This rank's data: a built-in task (every rank draws its own stream), a shard of an
    in-memory split, or its blocks of a memory-mapped .npy (`ctm_core.shards`)."""
    if config.data is None:
        task, _, info = load_task(config)
        return TrainingData(task.sample, task.mean, task.std, task, None, info)
    threshold = {"auto": MMAP_MIN_VALUES, "on": 0, "off": None}[mmap]
    values = load_data_file(config.data, mmap_min_values=threshold)
    if not isinstance(values, np.memmap):
        train, holdout = split_holdout(values, config.holdout, config.seed)
        task = EmpiricalTask(train, name=Path(config.data).stem)
        info = _data_info(config, data_statistics(values), train.size, holdout.size, task)
        own = task if group.world_size == 1 else EmpiricalTask(shard(train, group.rank, group.world_size))
        bandwidth = cv_bandwidth(train, config.seed) if _smoothed(config) else None
        return TrainingData(own.sample, task.mean, task.std, task, holdout, info, bandwidth=bandwidth)

    data = MappedData(values, config.holdout, config.seed, group.rank, group.world_size)
    mean, std = data.train_moments()
    task = holdout = kde = None
    if group.is_main:
        task = EmpiricalTask(data.train_sample(EVAL_TRAIN_VALUES, config.seed), name=Path(config.data).stem)
        holdout = data.holdout_sample(EVAL_HOLDOUT_VALUES, config.seed + 1)
        kde = task.kde
    info = _data_info(config, data_statistics(values), data.n_train, data.n_holdout, task)
    info["memory_mapped"] = {
        "block_values": data.block,
        "reference_values": int(task.values.size) if task else None,
        "holdout_values_evaluated": int(holdout.size) if holdout is not None else None,
    }
    # Every rank draws the same seeded subsample of the whole split, so all agree on σ_min.
    bandwidth = None
    if _smoothed(config):
        sample = data.train_sample(BANDWIDTH_VALUES, config.seed)
        bandwidth = cv_bandwidth(sample, config.seed, data.n_train)
    return TrainingData(data.sample, mean, std, task, holdout, info, kde, bandwidth)


def _smoothed(config: TrainConfig) -> bool:
    """Whether the flow stops at the data's bandwidth (`RunConfig.data_sigma_min`)."""
    return config.data_sigma_min == "bandwidth"
