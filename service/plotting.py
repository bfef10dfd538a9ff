"""Figures of one sampling run, as PNG: samples against the reference, and the sampler's paths.

Drawn with matplotlib's object API on the Agg canvas (headless, and no pyplot: pyplot keeps global
state that is not safe across the inference threads). The page at `/` draws the same two views.
"""

import io
import math
import threading
from typing import TYPE_CHECKING, Literal

import numpy as np

from service.inference import SamplingResult
from service.reference import HISTOGRAM_LABEL, Reference, histogram_density, w1_label

if TYPE_CHECKING:  # matplotlib is imported by the first figure: it costs the server's start 0.5 s and 45 MB
    from matplotlib.axes import Axes

PlotView = Literal["both", "density", "paths"]
# Most paths drawn, evenly spaced in index; more would hide each other (the page draws as many).
MAX_PLOTTED_PATHS = 300
# Samples' central range: these quantiles, widened by a fraction of their spread on each side.
_SAMPLE_RANGE_P = (0.001, 0.999)
_SAMPLE_RANGE_PAD = 0.1
_PATHS_RANGE_PAD = 0.5
_DPI = 110
_SAMPLES_COLOR = "#4c72b0"
_REFERENCE_COLOR = "#111111"


def finite(values: np.ndarray) -> np.ndarray:
    """The finite values of an array, as float64."""
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def view_range(samples: np.ndarray, reference_range: tuple[float, float] | None) -> tuple[float, float]:
    """The x interval of the density view: the samples' central range joined with the reference's."""
    x = finite(samples)
    bounds: list[float] = []
    if x.size:
        lo, hi = np.quantile(x, _SAMPLE_RANGE_P)
        pad = _SAMPLE_RANGE_PAD * max(hi - lo, 1e-3 * max(1.0, abs(lo), abs(hi)))
        bounds += [lo - pad, hi + pad]
    if reference_range is not None:
        bounds += list(reference_range)
    if not bounds:
        return -1.0, 1.0
    return float(min(bounds)), float(max(bounds))


def evenly(rows: np.ndarray, count: int) -> np.ndarray:
    """At most `count` rows, evenly spaced in index (with quantile noise, index order is latent order)."""
    if len(rows) <= count:
        return rows
    return rows[np.round(np.linspace(0, len(rows) - 1, count)).astype(np.int64)]


def histogram_bins(n: int) -> int:
    """Number of histogram bins for n samples: 1.5·√n, between 20 and 120 (the page uses the same)."""
    return int(min(120, max(20, round(1.5 * math.sqrt(n)))))


def draw_density(
    ax: "Axes", samples: np.ndarray, reference: Reference | None, x_range: tuple[float, float]
) -> None:
    """Histogram of the samples (as a density over all n) and the reference on top: the true density
    of a built-in task, or the histogram of the stored training values on the samples' bins."""
    x = finite(samples)
    lo, hi = x_range
    values = reference.training_values if reference is not None else None
    # The samples' bins for both histograms, so that bar heights compare bin by bin.
    bins = histogram_bins(x.size if x.size or values is None else values.size)
    if x.size:
        edges, heights = histogram_density(x, bins, x_range)
        ax.stairs(heights, edges, fill=True, color=_SAMPLES_COLOR, alpha=0.45, label="samples")
    if values is not None:
        # Not a KDE: Scott's rule over-smooths multimodal data, and a good model would look wrong.
        edges, heights = histogram_density(values, bins, x_range)
        ax.stairs(heights, edges, color=_REFERENCE_COLOR, lw=1.4, label=HISTOGRAM_LABEL)
    elif reference is not None:
        grid, density = reference.density(lo, hi, 600)
        ax.plot(grid, density, color=_REFERENCE_COLOR, lw=1.6, label=reference.label)
    else:
        ax.text(
            0.02, 0.96, "no reference density for this model", transform=ax.transAxes, va="top", fontsize=8
        )
    ax.set(xlim=x_range, xlabel="x", ylabel="density")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper right")


def draw_paths(ax: "Axes", sigmas: np.ndarray, paths: np.ndarray, x_range: tuple[float, float]) -> None:
    """Each path x(σ) from σ_max (top) to σ_min (bottom), on a log σ axis; paths (n, K + 1).

    The x axis is the density view's `x_range` widened, so more of each path's start shows.
    """
    from matplotlib.collections import LineCollection

    shown = evenly(paths, MAX_PLOTTED_PATHS).astype(np.float64)
    # Colour by where each path ends in the data's range: which noise goes to which mode.
    position = np.nan_to_num((shown[:, -1] - x_range[0]) / (x_range[1] - x_range[0]), nan=0.5)
    segments = np.stack([shown, np.broadcast_to(sigmas, shown.shape)], axis=-1)  # (paths, K + 1, 2)
    ax.add_collection(LineCollection(segments, colors=_path_colors(position.clip(0, 1)), lw=0.6, alpha=0.55))
    ax.set_yscale("log")
    # σ_max at the top: each line comes down from noise to data.
    ax.set_ylim(sigmas.min() / 1.5, sigmas.max() * 1.5)
    ax.set(xlim=paths_range(x_range), xlabel="x", ylabel="noise level σ (log scale)")
    ax.set_title(f"{len(shown):,} of {len(paths):,} paths", fontsize=9)


def _path_colors(position: np.ndarray) -> np.ndarray:
    """RGBA colours along matplotlib's viridis map for positions in [0, 1]."""
    from matplotlib import colormaps

    return colormaps["viridis"](0.1 + 0.8 * position)


def paths_range(x_range: tuple[float, float]) -> tuple[float, float]:
    """The paths view: the density view widened, so more of each path's start at σ_max shows."""
    lo, hi = x_range
    pad = _PATHS_RANGE_PAD * (hi - lo)
    return lo - pad, hi + pad


# matplotlib's text layout (the mathtext parser behind log-axis tick labels) is not thread-safe:
# concurrent renders on the inference threads failed with ParseException (found by benchmarks/load.py).
_RENDER_LOCK = threading.Lock()


def render_png(
    result: SamplingResult, reference: Reference | None, view: PlotView, w1: float | None
) -> bytes:
    """The figure of one sampling run as PNG bytes (one figure at a time per process)."""
    with _RENDER_LOCK:
        return _render_png(result, reference, view, w1)


def _render_png(
    result: SamplingResult, reference: Reference | None, view: PlotView, w1: float | None
) -> bytes:
    job = result.job
    samples = result.samples
    x_range = view_range(samples, reference.default_range() if reference else None)
    panels = ["density", "paths"] if view == "both" else [view]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(panels), 4.2), dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "density":
            draw_density(ax, samples, reference, x_range)
        else:
            draw_paths(ax, result.sigmas, result.paths, x_range)
    steps = f"{job.steps} step{'s' * (job.steps != 1)}"
    gamma = f", γ = {job.gamma:g}" if job.sampler == "gamma" else ""
    distance = "" if w1 is None or reference is None else f" · {w1_label(reference.source)} {w1:.3g}"
    fig.suptitle(
        f"{job.model.name} · {job.sampler}{gamma} · {steps} · NFE {result.nfe} · n {job.n:,} · "
        f"seed {job.seed}{distance}",
        fontsize=9,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
