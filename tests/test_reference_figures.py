"""What the figures draw as the reference, and the training report's legend.

A model of user data is drawn against the histogram of its stored training values on the samples'
bins (a Scott's-rule KDE over-smooths multimodal data), labelled "training data (histogram)"; a
built-in task against its exact density, "true density". The service's /plot.png
(service/plotting.py) and the training report's density.png (ctm_core/plots.py) both do so.
"""

import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import StepPatch

from ctm_core.checkpoint import TaskInfo
from ctm_core.evaluation import format_heldout_likelihood, format_report, format_table, table_legend
from ctm_core.plots import TRAINING_HISTOGRAM_LABEL, density_figure, reference_histogram
from ctm_core.tasks import EmpiricalTask, get_task
from service.plotting import draw_density, histogram_bins, view_range
from service.reference import HISTOGRAM_LABEL, histogram_density, reference_for, w1_label

# Training values with two well separated clusters, as a bimodal user data set.
RNG = np.random.default_rng(0)
VALUES = np.sort(np.concatenate([RNG.normal(-2.0, 0.2, 300), RNG.normal(1.5, 0.3, 200)]))
SAMPLES = np.concatenate([RNG.normal(-2.0, 0.25, 700), RNG.normal(1.5, 0.3, 300), [np.nan]])


def axes() -> Axes:
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.subplots()


def legend_texts(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


def steps(ax: Axes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label → (heights, edges) of each histogram drawn as stairs."""
    found = {}
    for patch in ax.patches:
        if isinstance(patch, StepPatch):
            data = patch.get_data()
            found[patch.get_label()] = (np.asarray(data.values), np.asarray(data.edges))
    return found


def test_histogram_density_is_numpy_histogram_over_all_values() -> None:
    x_range = (-1.0, 1.0)
    edges, heights = histogram_density(VALUES, 40, x_range)
    counts, numpy_edges = np.histogram(VALUES, bins=40, range=x_range)
    np.testing.assert_array_equal(edges, numpy_edges)
    # Normalised by every value, the ones outside the view too: the area is the fraction inside.
    np.testing.assert_allclose(heights, counts / (VALUES.size * 0.05), rtol=1e-12)
    inside = np.mean((VALUES >= -1.0) & (VALUES <= 1.0))
    assert float(np.sum(heights * np.diff(edges))) == pytest.approx(inside)
    edges, heights = histogram_density(np.array([0.5, np.nan, np.inf]), 4, (0.0, 1.0))
    assert heights.tolist() == [0.0, 0.0, 4.0, 0.0]  # the finite values only


def test_service_figure_of_user_data_draws_the_training_histogram_on_the_samples_bins() -> None:
    reference = reference_for(TaskInfo(name="mydata", kind="data", kde_points=VALUES.tolist()))
    assert reference is not None and reference.source == "kde"
    np.testing.assert_array_equal(reference.training_values, VALUES)
    x_range = view_range(SAMPLES, reference.default_range())
    ax = axes()
    draw_density(ax, SAMPLES, reference, x_range)

    assert legend_texts(ax) == ["samples", HISTOGRAM_LABEL] == ["samples", "training data (histogram)"]
    assert not ax.lines  # no KDE curve
    drawn = steps(ax)
    heights, edges = drawn[HISTOGRAM_LABEL]
    sample_heights, sample_edges = drawn["samples"]
    bins = histogram_bins(SAMPLES.size - 1)  # the finite samples
    np.testing.assert_array_equal(edges, sample_edges)  # the same bins
    counts, numpy_edges = np.histogram(VALUES, bins=bins, range=x_range)
    np.testing.assert_allclose(edges, numpy_edges, rtol=0, atol=1e-12)
    np.testing.assert_allclose(heights, counts / (VALUES.size * np.diff(numpy_edges)), rtol=1e-9)
    finite = SAMPLES[np.isfinite(SAMPLES)]
    counts, _ = np.histogram(finite, bins=bins, range=x_range)
    np.testing.assert_allclose(sample_heights, counts / (finite.size * np.diff(numpy_edges)), rtol=1e-9)


def test_service_figure_of_a_builtin_task_draws_its_true_density() -> None:
    reference = reference_for(TaskInfo(name="two_gmm_1D"))
    assert reference is not None and reference.training_values is None
    ax = axes()
    x_range = view_range(SAMPLES, reference.default_range())
    draw_density(ax, SAMPLES, reference, x_range)
    assert legend_texts(ax) == ["samples", "true density"]
    x, y = ax.lines[0].get_data()
    np.testing.assert_allclose(y, get_task("two_gmm_1D").pdf(np.asarray(x)), rtol=1e-12)
    assert list(steps(ax)) == ["samples"]

    ax = axes()
    draw_density(ax, SAMPLES, None, (-3.0, 3.0))
    assert legend_texts(ax) == ["samples"]
    assert "no reference density" in " ".join(t.get_text() for t in ax.texts)


def test_labels_say_what_the_reference_is() -> None:
    kde = reference_for(TaskInfo(name="data", kind="data", kde_points=VALUES.tolist()))
    assert kde is not None and kde.label == "KDE of the training data (Scott's rule)"
    # The word of /evaluate's `reference`, as the explorer shows it.
    assert w1_label("kde") == "W1 to the training data (reference: kde)"
    assert w1_label("exact") == "W1 to the task (reference: exact)"


def test_training_report_figure_of_user_data_draws_the_training_histogram() -> None:
    task = EmpiricalTask(VALUES, name="mydata")
    samples = {"one-step": SAMPLES[np.isfinite(SAMPLES)]}
    fig = density_figure(task, samples)
    try:
        ax = fig.axes[0]
        assert legend_texts(ax) == ["one-step", TRAINING_HISTOGRAM_LABEL]
        assert not any("KDE" in text for text in legend_texts(ax))
        heights, edges = steps(ax)[TRAINING_HISTOGRAM_LABEL]
        x_range = (float(edges[0]), float(edges[-1]))
        expected, numpy_edges = np.histogram(VALUES, bins=150, range=x_range, density=True)
        np.testing.assert_allclose(edges, numpy_edges, rtol=0, atol=1e-12)
        np.testing.assert_allclose(heights, expected, rtol=1e-12)
        np.testing.assert_allclose(reference_histogram(VALUES, x_range)[1], expected, rtol=1e-12)
    finally:
        plt.close(fig)


def test_training_report_figure_of_a_builtin_task_draws_its_true_density() -> None:
    task = get_task("two_gmm_1D")
    samples = task.sample(2000, torch.Generator().manual_seed(0)).double().numpy()
    fig = density_figure(task, {"one-step": samples})
    try:
        assert legend_texts(fig.axes[0]) == ["one-step", "true density"]
    finally:
        plt.close(fig)


# --- the training report's legend ------------------------------------------------------------------

# The keys `evaluate` gives a row.
ROW = {"label": "student onestep", "nfe": 1, "qW1": 0.0123, "W1": 0.0234, "KS": 0.0345, "NLL": 1.2345}


def test_report_legend_has_one_line_per_column_and_keeps_the_table() -> None:
    rows = [ROW, dict(ROW, label="student multistep 4", nfe=4)]
    report = format_report(rows)
    assert report.startswith(format_table(rows) + "\n")  # the numbers as before
    legend = table_legend(rows).splitlines()
    columns = format_table(rows).splitlines()[0].split()
    assert legend[0].startswith("columns")
    assert [line.split()[0] for line in legend[1:]] == columns
    nll = next(line for line in legend if line.split()[0] == "NLL")
    assert "nats per sample" in nll and "exact density" in nll and "not the training loss" in nll
    assert all(unit in report for unit in ("(count)", "(x units)", "(0 to 1)"))

    held = [dict(ROW, W1_holdout=0.05)]
    legend = table_legend(held, user_data=True)
    assert legend.splitlines()[-1].startswith("  W1 hold  ") and "held-out values" in legend
    assert "Scott's-rule KDE of the training split" in legend and "exact" not in legend.split("NLL")[1]


@pytest.mark.parametrize("density", ["onestep", "ode"])
def test_heldout_likelihood_line_names_the_density_and_units(density: str) -> None:
    text = format_heldout_likelihood({"model": -1.234567, "density": density, "kde": -1.5}, 1234)
    first = text.splitlines()[0]
    # What tests/test_train_cli.py and test_distributed.py read in the printed report.
    assert first.startswith("held-out mean log-likelihood (1,234 values never trained on; nats per value")
    assert f"model -1.2346 ({density} density)" in first
    assert re.search(r"gaussian_kde \(Scott\) of the training split -1\.5000$", first)
    assert "change of variables" in text.splitlines()[1]
