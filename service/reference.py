"""A model's reference distribution: its task's exact density, or stored training values.

A model trained on a built-in task (checkpoint metadata `task.name` in `ctm_core.tasks.TASKS`, and
`task.kind` not "data") is measured against that task's exact density and CDF. A model trained on
user data carries no training data; when its metadata holds `task.kde_points` (a list of training
values evenly spaced in rank), the reference is their empirical distribution (source "kde"): the
two-sample W1 for distances, their histogram in figures (`histogram_density`, on the samples'
bins), and a Scott's-rule Gaussian KDE for /models/{name}/density. Any other model has no reference.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ctm_core.checkpoint import TaskInfo
from service.registry import LoadedModel

if TYPE_CHECKING:
    from ctm_core.tasks import Task

# ctm_core.tasks and ctm_core.metrics import scipy.stats (0.6 s and 60 MB): imported by the first
# request that needs a reference, not at the server's start.

ReferenceSource = Literal["exact", "kde"]
# Most stored training values used: bounds the cost of a KDE on a grid of 10,000 points.
MAX_KDE_POINTS = 2_000
# Default grid: the central 99.8% of the reference, widened by this fraction of its width.
_DEFAULT_RANGE_P = (0.001, 0.999)
_DEFAULT_RANGE_PAD = 0.15
# Legend words. The KDE's label names its bandwidth rule: Scott's rule over-smooths multimodal data.
_LABELS: dict[ReferenceSource, str] = {
    "exact": "true density",
    "kde": "KDE of the training data (Scott's rule)",
}
HISTOGRAM_LABEL = "training data (histogram)"
# What W1 is measured against, with the word /evaluate's `reference` uses (the page says the same).
_W1_LABELS: dict[ReferenceSource, str] = {
    "exact": "W1 to the task (reference: exact)",
    "kde": "W1 to the training data (reference: kde)",
}


@dataclass(frozen=True)
class Reference:
    """The distribution a model's samples are compared with, and where it comes from."""

    task: "Task"
    source: ReferenceSource

    @property
    def label(self) -> str:
        """What `density` is, for legends: "true density" or "KDE of the training data (Scott's rule)"."""
        return _LABELS[self.source]

    @property
    def training_values(self) -> np.ndarray | None:
        """The stored training values (sorted float64) of a user-data reference; None for a built-in task."""
        from ctm_core.tasks import EmpiricalTask

        return self.task.values if isinstance(self.task, EmpiricalTask) else None

    def default_range(self) -> tuple[float, float]:
        """An x interval holding the reference's bulk, with a margin on each side."""
        from ctm_core.tasks import EmpiricalTask

        if isinstance(self.task, EmpiricalTask):
            # The KDE's tails reach about 3 bandwidths beyond the extreme values.
            values = self.task.values
            margin = 3.0 * float(np.sqrt(self.task.kde.covariance[0, 0]))
            return float(values[0] - margin), float(values[-1] + margin)
        lo, hi = (float(q) for q in self.task.quantile(np.array(_DEFAULT_RANGE_P)))
        pad = _DEFAULT_RANGE_PAD * (hi - lo)
        return lo - pad, hi + pad

    def density(self, lo: float, hi: float, points: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, p(x)) on `points` evenly spaced x from lo to hi; float64, shape (points,) each."""
        x = np.linspace(lo, hi, points)
        return x, self.task.pdf(x)

    def w1(self, samples: np.ndarray) -> float | None:
        """W1 between the samples and the reference; None when a sample is NaN or infinite."""
        from ctm_core.metrics import w1_to_cdf

        try:
            return w1_to_cdf(samples, self.task)
        except ValueError:  # non-finite samples: no distance to report
            return None


def w1_label(source: ReferenceSource) -> str:
    """What W1 is measured against, for titles: the words a person reads, then /evaluate's word."""
    return _W1_LABELS[source]


def histogram_density(
    values: np.ndarray, bins: int, x_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(edges, heights) of the values' histogram on `bins` equal bins over x_range, as a density.

    Heights are counts / (n · bin width) with n all the finite values, those outside x_range
    included, so the area over the view is the fraction of values in it and histograms of
    different sample sizes on the same bins compare. edges: (bins + 1,), heights: (bins,).
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    counts, edges = np.histogram(x, bins=bins, range=x_range)
    width = (x_range[1] - x_range[0]) / bins
    return edges, counts / (max(x.size, 1) * width)


def task_metadata(model: LoadedModel) -> TaskInfo:
    """The checkpoint's own `task` metadata (the public ModelInfo may leave out `kde_points`)."""
    return model.checkpoint.metadata.task


def reference_for(task: TaskInfo) -> Reference | None:
    """The reference of a model with checkpoint metadata `task`, or None when it has none."""
    from ctm_core.tasks import TASKS, EmpiricalTask

    if task.kind == "data" or task.kde_points is not None:
        values = _kde_points(task.kde_points)
        if values is None:
            return None
        return Reference(EmpiricalTask(values, name=task.name or "data"), "kde")
    builtin = TASKS.get(task.name)
    return None if builtin is None else Reference(builtin, "exact")


def no_reference_reason(task: TaskInfo) -> str:
    """Why `reference_for(task)` is None, for a 404 message."""
    from ctm_core.tasks import TASKS

    if task.kind == "data" or task.kde_points is not None:
        return (
            "it was trained on user data and its checkpoint stores no usable 'kde_points' "
            "(at least 2 distinct training values) to estimate the data's density from"
        )
    valid = ", ".join(sorted(TASKS))
    return f"its task {task.name[:80]!r} is not a built-in task ({valid})"


def _kde_points(points: list[float] | None) -> np.ndarray | None:
    """The stored training values (finite: `TaskInfo` checks them) as a sorted float64 array (at
    most MAX_KDE_POINTS), or None when fewer than 2 distinct."""
    if points is None or len(points) < 2:
        return None
    values = np.sort(np.asarray(points, dtype=np.float64))
    if values.size > MAX_KDE_POINTS:
        values = values[np.round(np.linspace(0, values.size - 1, MAX_KDE_POINTS)).astype(np.int64)]
    if values[0] == values[-1]:  # a KDE of identical values has no bandwidth
        return None
    return values


def measure(task: TaskInfo, samples: np.ndarray) -> tuple[ReferenceSource | None, float | None]:
    """(source, W1) of the samples against the reference of a model with metadata `task`, or (None, None)."""
    reference = reference_for(task)
    if reference is None:
        return None, None
    return reference.source, reference.w1(samples)
