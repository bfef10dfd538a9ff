"""Figures: samples against the reference (true density, or training histogram), sample paths, losses."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ctm_core.config import NoiseConfig
from ctm_core.parametrization import CTMParametrization
from ctm_core.samplers import Trajectory, generate
from ctm_core.tasks import EmpiricalTask, Task

# Legend of the reference drawn over the samples: a built-in task's density, or user data's histogram.
TRUE_DENSITY_LABEL = "true density"
TRAINING_HISTOGRAM_LABEL = "training data (histogram)"
DENSITY_BINS = 150


def reference_histogram(
    values: np.ndarray, x_range: tuple[float, float], bins: int = DENSITY_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """(edges, heights) of the training values' histogram on the samples' bins, normalised as
    `ax.hist(density=True)` normalises the samples' (over the values inside x_range)."""
    heights, edges = np.histogram(values, bins=bins, range=x_range, density=True)
    return edges, heights


def density_figure(task: Task, samples: dict[str, np.ndarray], title: str = "") -> Figure:
    """Histograms of each sample set over the reference: the task's exact density, or for user data
    (an EmpiricalTask) the histogram of the training values on the same bins."""
    values = np.concatenate(list(samples.values()))
    lo, hi = np.quantile(values, [0.001, 0.999])
    pad = 0.1 * (hi - lo)
    grid = np.linspace(lo - pad, hi + pad, 600)
    x_range = (float(grid[0]), float(grid[-1]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, x in samples.items():
        ax.hist(x, bins=DENSITY_BINS, range=x_range, density=True, histtype="step", label=label)
    if isinstance(task, EmpiricalTask):
        # Not its KDE: Scott's rule over-smooths multimodal data, and a good model would look wrong.
        edges, heights = reference_histogram(task.values, x_range)
        ax.stairs(heights, edges, color="k", lw=1.5, label=TRAINING_HISTOGRAM_LABEL)
    else:
        ax.plot(grid, task.pdf(grid), "k-", lw=1.5, label=TRUE_DENSITY_LABEL)
    ax.set(xlabel="x", ylabel="density", title=title or task.name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def paths_figure(trajectories: dict[str, Trajectory], max_paths: int = 150) -> Figure:
    """Each sample's path x(σ) from σ_max (top) down to σ_min (bottom), one panel per sampler."""
    fig, axes = plt.subplots(1, len(trajectories), figsize=(4 * len(trajectories), 4.5), sharey=True)
    for ax, (label, traj) in zip(np.atleast_1d(axes), trajectories.items(), strict=True):
        sigmas = traj.sigmas.double().cpu().numpy()
        states = traj.states[:, :max_paths].double().cpu().numpy()
        ax.plot(states, sigmas, lw=0.6, alpha=0.5)
        ax.set_yscale("log")
        ax.set(xlabel="x", title=f"{label} (NFE {traj.nfe})")
        ax.set_xlim(np.quantile(states[-1], 0.001) - 2, np.quantile(states[-1], 0.999) + 2)
    first = np.atleast_1d(axes)[0]
    first.set_ylabel("noise level σ (log scale)")
    # σ_max at the top: each line comes down from noise to data.
    first.set_ylim(
        min(t.sigmas.min().item() for t in trajectories.values()) / 1.5,
        max(t.sigmas.max().item() for t in trajectories.values()) * 1.5,
    )
    fig.tight_layout()
    return fig


def losses_figure(losses: dict[str, list[float]]) -> Figure:
    """Training loss per phase (log scale, smoothed over 50 steps)."""
    fig, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 3.5))
    for ax, (phase, values) in zip(np.atleast_1d(axes), losses.items(), strict=True):
        v = np.asarray(values, dtype=np.float64)
        if v.size:
            window = min(50, v.size)
            smooth = np.convolve(v, np.ones(window) / window, mode="valid")
            ax.plot(v, alpha=0.3, lw=0.5)
            ax.plot(np.arange(window - 1, v.size), smooth, lw=1.2)
            ax.set_yscale("log")
        ax.set(title=f"{phase} loss", xlabel="step")
    fig.tight_layout()
    return fig


def write_training_figures(
    directory: Path,
    student: CTMParametrization,
    teacher: CTMParametrization | None,
    task: Task,
    noise: NoiseConfig,
    losses: dict[str, list[float]] | None = None,
    n: int = 20_000,
    seed: int = 0,
) -> list[Path]:
    """density.png, paths.png (and losses.png) for a trained model, as in the original figures."""
    directory.mkdir(parents=True, exist_ok=True)
    sched = {**noise.sampling_kwargs(), "seed": seed}
    runs = {
        "one-step": ("onestep", 1, student),
        "multistep 4": ("multistep", 4, student),
        "euler 18": ("euler", 18, student),
    }
    if teacher is not None:
        runs["teacher heun 18"] = ("heun", 18, teacher)
    trajectories = {
        label: generate(model, sampler, steps, n, **sched) for label, (sampler, steps, model) in runs.items()
    }
    written = []
    samples = {k: t.samples.double().cpu().numpy() for k, t in trajectories.items()}
    figures = {
        "density.png": density_figure(task, samples),
        "paths.png": paths_figure({k: v for k, v in trajectories.items() if k != "teacher heun 18"}),
    }
    if losses:
        figures["losses.png"] = losses_figure({k: v for k, v in losses.items() if v})
    for name, fig in figures.items():
        path = directory / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
