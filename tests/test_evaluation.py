"""ctm_core.evaluation: the rows of the table, their NFE, and qW1 against known answers."""

import math
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy import special

from ctm_core.baselines import fit_baseline
from ctm_core.checkpoint import build_model
from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.evaluation import (
    DEFAULT_SPECS,
    EvalSpec,
    evaluate,
    format_heldout_likelihood,
    format_table,
    heldout_log_likelihood,
)
from ctm_core.parametrization import CTMParametrization
from ctm_core.tasks import TASKS, EmpiricalTask, Task, get_task

TASK = get_task("two_gmm_1D")
NOISE = NoiseConfig(sigma_data=TASK.std)
# The latents' law: N(μ, σ_max² + σ_d²), μ = 0 here.
PRIOR_STD = math.sqrt(NOISE.sigma_max**2 + TASK.std**2)
LABELS = [
    "student onestep",
    "student multistep 2",
    "student multistep 4",
    "student gamma(γ=0.5) 4",
    "student heun 18",
    "teacher heun 18",
    "teacher heun 256",
    "exact flow (the limit)",
]
NFE = [1, 2, 4, 4, 35, 35, 511, 0]  # Heun: 2·steps − 1; the exact flow evaluates no network


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(seed: int) -> CTMParametrization:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(NetworkConfig(width=16, depth=2), TASK.std).eval().requires_grad_(False)


class _QuantileMap:
    """A 'perfect' one-step model: G(x, σ_max, ·) = F⁻¹(Φ((x − μ)/std)) + shift, the task's exact
    transport from the prior N(μ, std²) (std = √(σ_max² + σ_d²))."""

    def __init__(self, task: Task, sigma_max: float, shift: float = 0.0, std: float = PRIOR_STD) -> None:
        self.task, self.sigma_max, self.shift, self.std = task, sigma_max, shift, std

    def jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        assert torch.all(t == self.sigma_max), "one step starts at σ_max"
        p = special.ndtr((x.double().numpy() - self.task.mean) / self.std)
        return torch.from_numpy(self.task.quantile(p) + self.shift).to(x.dtype)


@pytest.fixture(scope="module")
def untrained_rows() -> list[dict]:
    torch.set_num_threads(1)
    return evaluate(_tiny(0), _tiny(1), NOISE, TASK, n=500)


def test_rows_labels_and_nfe(untrained_rows: list[dict]) -> None:
    assert [r["label"] for r in untrained_rows] == LABELS
    assert [spec.label for spec in DEFAULT_SPECS] == LABELS
    assert [r["nfe"] for r in untrained_rows] == NFE
    assert [(r["network"], r["sampler"], r["steps"]) for r in untrained_rows][-2:] == [
        ("teacher", "heun", 256),
        ("exact", "flow", 1),
    ]
    assert [(r["network"], r["sampler"], r["steps"]) for r in untrained_rows][3] == ("student", "gamma", 4)
    assert untrained_rows[3]["gamma"] == 0.5
    for row in untrained_rows:
        for key in ("qW1", "W1", "KS", "NLL"):
            assert np.isfinite(row[key]), (row["label"], key)
        assert 0 <= row["KS"] <= 1 and row["qW1"] >= 0 and row["W1"] >= 0
        assert "W1_holdout" not in row
        weights = [m["true_weight"] for m in row["modes"]]
        assert weights == pytest.approx([0.5, 0.5])


def test_untrained_model_is_far_and_the_exact_flow_is_the_target(untrained_rows: list[dict]) -> None:
    by_label = {r["label"]: r for r in untrained_rows}
    # An untrained student collapses the two modes: far from the target.
    assert by_label["student onestep"]["qW1"] > 0.5
    # The exact flow from the wide prior lands on the data's quantiles (docs/CTM.md: ~1e-5).
    flow = by_label["exact flow (the limit)"]
    assert flow["qW1"] < 1e-4
    assert flow["KS"] < by_label["student onestep"]["KS"]
    assert [m["model_weight"] for m in flow["modes"]] == pytest.approx([0.5, 0.5], abs=0.08)


def test_evaluation_is_reproducible(untrained_rows: list[dict]) -> None:
    again = evaluate(_tiny(0), _tiny(1), NOISE, TASK, specs=DEFAULT_SPECS[:4], n=500)
    assert again == untrained_rows[:4]
    other_seed = evaluate(_tiny(0), None, NOISE, TASK, specs=DEFAULT_SPECS[3:4], n=500, seed=1)
    # γ-sampling draws fresh noise from the seed, so its quantile row changes with it.
    assert other_seed[0]["qW1"] != untrained_rows[3]["qW1"]


def test_missing_networks_drop_their_rows() -> None:
    rows = evaluate(_tiny(0), None, NOISE, TASK, specs=DEFAULT_SPECS[4:], n=200, exact=False)
    assert [r["label"] for r in rows] == ["student heun 18"]
    # The exact denoiser has no jump G: its one-step/multistep/γ rows are skipped, not faked.
    jump_specs = (
        EvalSpec("exact", "onestep", 1),
        EvalSpec("exact", "multistep", 2),
        EvalSpec("exact", "gamma", 4),
    )
    assert evaluate(_tiny(0), None, NOISE, TASK, specs=jump_specs, n=200) == []


EXACT_SPECS = (EvalSpec("exact", "flow", 1), EvalSpec("exact", "heun", 18))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_exact_rows_for_every_builtin_task(name: str) -> None:
    """The exact flow from N(μ, σ_max² + σ_d²) reaches every task's quantiles (up to the prior's
    higher moments: ≤ 2e-4 here); the exact denoiser's Heun-18 adds its discretisation error."""
    task = TASKS[name]
    noise = NoiseConfig(sigma_data=task.std, data_mean=task.mean)
    rows = evaluate(_tiny(0), None, noise, task, specs=EXACT_SPECS, n=500)
    assert [r["label"] for r in rows] == ["exact flow (the limit)", "exact heun 18"]
    assert [r["nfe"] for r in rows] == [0, 35]
    flow, heun = rows
    assert flow["qW1"] < 1e-3, flow
    assert heun["qW1"] < 0.03, heun
    for row in rows:
        assert row["KS"] < 0.1, row
        if task.modes is not None:
            for mode in row["modes"]:
                assert mode["model_weight"] == pytest.approx(mode["true_weight"], abs=0.08)


@pytest.mark.parametrize("name", ["single_gaussian_1D", "uneven_two_gmm_1D"])
def test_exact_flow_row_starts_from_the_configured_mean(name: str) -> None:
    """Both tasks have μ ≠ 0: from a prior centred on 0 instead, even the exact flow misses."""
    task = TASKS[name]
    spec = EXACT_SPECS[:1]
    centred = evaluate(
        _tiny(0), None, NoiseConfig(sigma_data=task.std, data_mean=task.mean), task, specs=spec
    )
    at_zero = evaluate(_tiny(0), None, NoiseConfig(sigma_data=task.std, data_mean=0.0), task, specs=spec)
    assert centred[0]["qW1"] < 1e-3 < 0.01 < at_zero[0]["qW1"]


def test_exact_heun_on_two_gmm_at_5000() -> None:
    rows = evaluate(_tiny(0), None, NOISE, TASK, specs=(EvalSpec("exact", "heun", 18),), n=5000)
    assert rows[0]["qW1"] < 0.02
    assert rows[0]["W1"] < 0.05


def test_qw1_of_the_exact_transport_is_zero_and_sees_a_shift() -> None:
    spec = (EvalSpec("student", "onestep", 1),)
    perfect = evaluate(_QuantileMap(TASK, NOISE.sigma_max), None, NOISE, TASK, specs=spec, n=4000)[0]
    assert perfect["qW1"] < 1e-5  # the quantile latents map exactly onto F⁻¹((i + ½)/n)
    # ... only with the latents' true std: the transport from the narrow N(0, σ_max²) is off.
    narrow = _QuantileMap(TASK, NOISE.sigma_max, std=NOISE.sigma_max)
    assert evaluate(narrow, None, NOISE, TASK, specs=spec, n=4000)[0]["qW1"] > 1e-3
    assert perfect["W1"] < 0.05 and perfect["KS"] < 0.05  # random latents: only sampling error
    shifted = evaluate(_QuantileMap(TASK, NOISE.sigma_max, 0.3), None, NOISE, TASK, specs=spec, n=4000)[0]
    assert shifted["qW1"] == pytest.approx(0.3, abs=1e-5)
    assert shifted["W1"] == pytest.approx(0.3, abs=0.05)


def test_holdout_column() -> None:
    holdout = TASK.sample(2000, torch.Generator().manual_seed(0)).double().numpy()
    spec = (EvalSpec("student", "onestep", 1),)
    near = evaluate(
        _QuantileMap(TASK, NOISE.sigma_max), None, NOISE, TASK, specs=spec, n=2000, holdout=holdout
    )
    far = evaluate(
        _QuantileMap(TASK, NOISE.sigma_max, 1.0), None, NOISE, TASK, specs=spec, n=2000, holdout=holdout
    )
    assert near[0]["W1_holdout"] < 0.08
    assert far[0]["W1_holdout"] == pytest.approx(1.0, abs=0.08)
    empty = evaluate(
        _QuantileMap(TASK, NOISE.sigma_max), None, NOISE, TASK, specs=spec, n=200, holdout=holdout[:0]
    )
    assert "W1_holdout" not in empty[0]


def test_format_table(untrained_rows: list[dict]) -> None:
    table = format_table(untrained_rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(untrained_rows)
    assert lines[0].split() == ["sampler", "NFE", "qW1", "W1", "KS", "NLL"]
    assert set(lines[1]) == {"-"}
    for line, row in zip(lines[2:], untrained_rows, strict=True):
        assert line.startswith(row["label"])
        assert f"{row['qW1']:.4f}" in line and f" {row['nfe']} " in line
    assert all(label in table for label in LABELS)
    assert "W1 hold" not in table

    with_holdout = [dict(untrained_rows[0], W1_holdout=0.125), untrained_rows[1]]
    table = format_table(with_holdout)
    assert "W1 hold" in table.splitlines()[0]
    assert table.splitlines()[2].endswith("0.1250")
    assert table.splitlines()[3].endswith("nan")  # a row without the column stays aligned


def test_heldout_likelihood_adds_the_isj_kde_and_the_bic_mixture() -> None:
    pytest.importorskip("KDEpy")
    pytest.importorskip("sklearn")
    values = TASK.sample(1_200, torch.Generator().manual_seed(0)).double().numpy()
    train, holdout = values[:1_000], values[1_000:]
    got = heldout_log_likelihood(_tiny(0), NOISE, EmpiricalTask(train), holdout)
    assert {"model", "kde", "density", "isj_kde", "bic_mixture", "bic_mixture_components"} <= set(got)
    assert got["isj_kde"] == pytest.approx(float(fit_baseline("isj_kde", train).log_prob(holdout).mean()))
    mixture = fit_baseline("bic_mixture", train)
    assert got["bic_mixture"] == pytest.approx(float(mixture.log_prob(holdout).mean()))
    assert got["bic_mixture_components"] == mixture.components == 2
    last = format_heldout_likelihood(got, holdout.size).splitlines()[-1]
    assert f"ISJ KDE {got['isj_kde']:.4f}" in last and "BIC mixture (2 components)" in last


def test_heldout_likelihood_without_the_baselines_extra_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "KDEpy", None)
    values = TASK.sample(300, torch.Generator().manual_seed(1)).double().numpy()
    got = heldout_log_likelihood(_tiny(0), NOISE, EmpiricalTask(values[:200]), values[200:])
    assert "isj_kde" not in got and "bic_mixture" not in got and "baselines_missing" in got
    text = format_heldout_likelihood(got, 100)
    assert text.splitlines()[-1].strip() == "(install '.[baselines]' to compare with ISJ and BIC mixture)"


def test_a_baseline_that_cannot_be_fitted_is_reported_not_fatal() -> None:
    pytest.importorskip("KDEpy")
    # Two training values: ISJ finds no bandwidth; the mixture has one component.
    got = heldout_log_likelihood(_tiny(0), NOISE, EmpiricalTask(np.array([0.0, 1.0])), np.array([0.5]))
    assert "isj_kde" not in got and "Root finding" in str(got["isj_kde_error"])
    assert "ISJ KDE not fitted (Root finding" in format_heldout_likelihood(got, 1)
