"""`python -m benchmarks.quality`: the rows and NFEs it reports, its files, and the PASS/FAIL criteria."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks import quality, quality_report
from ctm_core.config import NoiseConfig
from ctm_core.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEUN_NFE = ((2, 3), (4, 7), (9, 17), (18, 35))  # (steps, NFE = 2·steps − 1)
# (label, NFE) of every row for a checkpoint with a teacher on a Gaussian-mixture task.
EXPECTED_ROWS = {
    ("student onestep", 1),
    ("student multistep 2", 2),
    ("student multistep 4", 4),
    *((f"student gamma(γ={g}) {k}", k) for g in ("0.3", "0.5", "1") for k in (2, 4)),
    *((f"{net} euler {k}", k) for net in ("student", "teacher") for k in (4, 8, 18, 35)),
    *((f"{net} heun {k}", nfe) for net in ("student", "teacher") for k, nfe in HEUN_NFE),
    ("exact euler 18", 18),
    *((f"exact heun {k}", nfe) for k, nfe in HEUN_NFE),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """main() sets torch's thread count (--threads); give the rest of the session its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _table_rows(markdown: str) -> set[tuple[str, int]]:
    """(label, NFE) of every data row of the markdown tables."""
    rows = set()
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and len(cells) == 7 and cells[1].isdigit():
            rows.add((cells[0], int(cells[1])))
    return rows


def test_benchmark_writes_every_row_plot_and_summary(tmp_path: Path, make_checkpoint, capsys) -> None:
    ckpts = tmp_path / "ckpts"
    make_checkpoint(ckpts / "two_gmm_1D.safetensors", noise=NoiseConfig(sigma_data=0.5), with_teacher=True)
    make_checkpoint(ckpts / "gauss_1D.safetensors", noise=NoiseConfig(sigma_data=1.0))  # not built in
    out = tmp_path / "results"

    code = quality.main(["--checkpoints", str(ckpts), "--n", "500", "--out-dir", str(out)])

    assert code == 0
    report = (out / "two_gmm_1D.md").read_text()
    assert _table_rows(report) == EXPECTED_ROWS
    assert (out / "two_gmm_1D_nfe.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "gauss_1D.md").exists()
    summary = (out / "summary.md").read_text()
    line = next(x for x in summary.splitlines() if x.startswith("| two_gmm_1D"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == 12 and cells[-2] in ("PASS", "FAIL") and cells[-1] in ("PASS", "FAIL")
    assert "skipped" in summary and "gauss_1D" in summary
    stdout = capsys.readouterr().out
    assert stdout.startswith("machine: ") and "torch" in stdout
    assert "exact heun 18" in stdout and "# Sample quality summary" in stdout


def test_nothing_to_benchmark_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert quality.main(["--checkpoints", str(tmp_path), "--out-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("error: nothing to benchmark")


def _row(network: str, sampler: str, steps: int, qw1: float, gamma: float = 0.0) -> dict:
    return {"network": network, "sampler": sampler, "steps": steps, "gamma": gamma, "qW1": qw1}


@pytest.mark.parametrize(
    ("onestep", "reference", "passes"),
    [
        (0.0125, 0.010, True),  # exactly 1.25 × teacher
        (0.0126, 0.010, False),
        (0.0100, 0.001, True),  # the 0.01 floor
        (0.0101, 0.001, False),
        (0.050, 0.045, True),
        (0.060, 0.045, False),
    ],
)
def test_onestep_criterion(onestep: float, reference: float, passes: bool) -> None:
    assert quality_report.onestep_passes(onestep, reference) is passes


def test_multistep_criterion() -> None:
    assert quality_report.multistep_passes(0.02, 0.03)
    assert quality_report.multistep_passes(0.03, 0.03)
    assert not quality_report.multistep_passes(0.031, 0.03)


def test_summary_of_hand_made_rows() -> None:
    rows = [
        _row("student", "onestep", 1, 0.030),
        _row("student", "multistep", 2, 0.040),
        _row("student", "gamma", 2, 0.035, 0.5),
        _row("student", "multistep", 4, 0.028),
        _row("student", "gamma", 4, 0.050, 1.0),
        _row("student", "heun", 18, 0.001),  # the student's own ODE is not the reference
        _row("teacher", "heun", 9, 0.001),
        _row("teacher", "heun", 18, 0.020),
        _row("exact", "heun", 18, 0.002),
    ]
    s = quality_report.summarise(rows)
    assert (s.onestep, s.teacher_heun, s.exact_heun) == (0.030, 0.020, 0.002)
    assert s.best_jump == {2: 0.035, 4: 0.028}
    assert s.ratio == pytest.approx(1.5)
    assert s.reference == "teacher"
    assert s.onestep_pass is False  # 0.030 > 1.25 × 0.020
    assert s.multistep_pass is True  # 0.028 ≤ 0.030

    rows[-2] = _row("teacher", "heun", 18, 0.025)
    assert quality_report.summarise(rows).onestep_pass is True  # 0.030 ≤ 0.03125
    rows[3] = _row("student", "multistep", 4, 0.031)
    assert quality_report.summarise(rows).multistep_pass is False  # best 0.031 > 0.030

    no_teacher = [r for r in rows if r["network"] != "teacher"]
    s = quality_report.summarise(no_teacher)
    assert s.reference == "exact" and s.onestep_pass is False  # 0.030 > max(0.0025, 0.01)
    assert quality_report.summarise([rows[0]]).onestep_pass is None


def test_exact_rows_per_task_kind() -> None:
    assert quality.default_exact_nfe(get_task("two_gmm_1D")) is None
    assert quality.default_exact_nfe(get_task("skewed_1D")) == [35]
    assert [s.label for s in quality.exact_specs([35])] == ["exact heun 18"]
    assert [s.label for s in quality.exact_specs([18, 3])] == ["exact euler 18", "exact heun 2"]
    assert len(quality.exact_specs(None)) == 5


def test_retrain_reports_training_time(tmp_path: Path) -> None:
    out = tmp_path / "results"
    tiny = ["network.width=16", "network.depth=2", "teacher.steps=10", "ctm.steps=10"]
    tiny += ["ctm.pool_size=64", "ctm.grid_points=8", "teacher.batch_size=64", "ctm.batch_size=64"]
    argv = ["--checkpoints", "--retrain", "scratch", "--tasks", "single_gaussian_1D", "--n", "200"]
    argv += ["--exact-nfe", "35", "--out-dir", str(out), *(a for t in tiny for a in ("--set", t))]

    assert quality.main(argv) == 0
    line = next(x for x in (out / "summary.md").read_text().splitlines() if x.startswith("| single"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:3] == ["retrained scratch", "scratch"]
    assert float(cells[9]) > 0  # training wall time
    assert cells[10].endswith("*")  # no teacher: the exact Heun-35 is the reference


def test_ideal_floor_of_a_gaussian() -> None:
    from benchmarks import ideal_floor

    # From the exact prior N(μ, σ_max² + σ²) the exact ODE maps the quantile latent onto N(μ, σ²)'s
    # quantiles up to σ_min and Heun-60's own error (≈ 4e-4), far closer than the ideal γ-sampler's
    # random renoise lets its sample get.
    one_step, gamma = ideal_floor.ideal_scores("single_gaussian_1D", [0.48], n=4000, seed=0, steps=60)
    assert one_step < 1e-3
    assert gamma[0.48] > 2 * one_step
