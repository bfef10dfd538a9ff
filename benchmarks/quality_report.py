"""The quality benchmark's criteria and outputs (benchmarks/quality.py): the PASS/FAIL rules,
the tables, the NFE figure and the summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctm_core.tasks import Task

if TYPE_CHECKING:
    from benchmarks.quality import Model

JUMP_STEPS = (2, 4)
HEUN_STEPS = (2, 4, 9, 18)  # NFE 3, 7, 17, 35
REFERENCE_NFE = 35  # teacher / exact Heun with 18 steps
ONESTEP_FACTOR = 1.25
ONESTEP_FLOOR = 0.01


# ---- the criteria ---------------------------------------------------------------------------
def onestep_passes(onestep_qw1: float, reference_qw1: float) -> bool:
    """One-step qW1 ≤ max(1.25 × teacher Heun-35 qW1, 0.01)."""
    return onestep_qw1 <= max(ONESTEP_FACTOR * reference_qw1, ONESTEP_FLOOR)


def multistep_passes(best_qw1: float, onestep_qw1: float) -> bool:
    """The best multistep/γ row at 2 or 4 steps is no worse than one step."""
    return best_qw1 <= onestep_qw1


@dataclass(frozen=True)
class Summary:
    """The headline numbers of one model's rows (None where the row was not run)."""

    onestep: float | None
    teacher_heun: float | None
    exact_heun: float | None
    best_jump: dict[int, float]  # steps → best qW1 of multistep and γ-sampling
    onestep_pass: bool | None
    multistep_pass: bool | None
    reference: str  # "teacher", "exact" (no teacher: the exact ODE stands in) or "–"

    @property
    def ratio(self) -> float | None:
        if self.onestep is None or not self.teacher_heun:
            return None
        return self.onestep / self.teacher_heun


def _find(rows: list[dict[str, Any]], network: str, sampler: str, steps: int) -> float | None:
    for r in rows:
        if (r["network"], r["sampler"], r["steps"]) == (network, sampler, steps):
            return float(r["qW1"])
    return None


def summarise(rows: list[dict[str, Any]]) -> Summary:
    """Headline numbers and criteria from evaluation rows (dicts with network, sampler, steps, qW1)."""
    onestep = _find(rows, "student", "onestep", 1)
    teacher = _find(rows, "teacher", "heun", HEUN_STEPS[-1])
    exact = _find(rows, "exact", "heun", HEUN_STEPS[-1])
    best_jump = {}
    for k in JUMP_STEPS:
        values = [
            float(r["qW1"])
            for r in rows
            if r["network"] == "student" and r["sampler"] in ("multistep", "gamma") and r["steps"] == k
        ]
        if values:
            best_jump[k] = min(values)
    reference, ref_value = ("teacher", teacher) if teacher is not None else ("exact", exact)
    if ref_value is None:
        reference = "–"
    onestep_pass = None if onestep is None or ref_value is None else onestep_passes(onestep, ref_value)
    multistep_pass = (
        None if onestep is None or not best_jump else multistep_passes(min(best_jump.values()), onestep)
    )
    return Summary(onestep, teacher, exact, best_jump, onestep_pass, multistep_pass, reference)


# ---- outputs -------------------------------------------------------------------------------
def mode_error(row: dict[str, Any]) -> float | None:
    """max over modes of |model weight − true weight|, or None for tasks without modes."""
    modes = row.get("modes")
    if not modes:
        return None
    return max(abs(m["model_weight"] - m["true_weight"]) for m in modes)


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def text_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table (as `ctm_core.evaluation.format_table`, plus the mode-coverage error)."""
    header = f"{'sampler':<28}{'NFE':>5}{'qW1':>9}{'W1':>9}{'KS':>9}{'NLL':>9}{'modes Δ':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['label']:<28}{r['nfe']:>5}{r['qW1']:>9.4f}{r['W1']:>9.4f}{r['KS']:>9.4f}"
            f"{r['NLL']:>9.3f}{_fmt(mode_error(r), '.3f'):>9}"
        )
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| sampler | NFE | qW1 | W1 | KS | NLL | modes Δ |", "|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['nfe']} | {r['qW1']:.4f} | {r['W1']:.4f} | {r['KS']:.4f} "
            f"| {r['NLL']:.3f} | {_fmt(mode_error(r), '.3f')} |"
        )
    return "\n".join(lines)


# ---- outputs --------------------------------------------------------------------------------
def _family(row: dict[str, Any]) -> str:
    if row["sampler"] == "gamma":
        return f"{row['network']} γ={row['gamma']:g}"
    return f"{row['network']} {row['sampler']}"


def write_nfe_plot(path: Path, task: Task, models: list[Model]) -> None:
    """qW1 against NFE (log-log), one panel per model, one line per network/sampler family."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * len(models), 4.8), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models, strict=True):
        families: dict[str, list[tuple[int, float]]] = {}
        for r in model.rows:
            if r["sampler"] != "onestep":
                families.setdefault(_family(r), []).append((r["nfe"], r["qW1"]))
        for name, points in families.items():
            points.sort()
            style = "--" if name.startswith("teacher") else ":" if name.startswith("exact") else "-"
            ax.plot(*zip(*points, strict=True), style, marker="o", markersize=4, label=name)
        onestep = _find(model.rows, "student", "onestep", 1)
        if onestep is not None:
            ax.plot([1], [onestep], "k*", markersize=14, label="student one-step", zorder=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(f"{task.name}: {model.name} ({model.mode})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("qW1 (quantile W1 to the exact target)")
    axes[-1].legend(fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def task_markdown(task: Task, models: list[Model], n: int, seed: int, machine: str) -> str:
    parts = [
        f"# Sample quality: {task.name}",
        "",
        f"{task.description}. n = {n:,}, seed {seed}; qW1 from quantile latents, W1/KS/NLL from "
        "random latents, all against the exact target (docs/CTM.md). modes Δ = max over modes of "
        "|model weight − true weight|. Written by `python -m benchmarks.quality`.",
        "",
        f"Machine: {machine}",
        "",
        f"![qW1 against NFE]({task.name}_nfe.png)",
    ]
    for model in models:
        trained = "" if model.train_seconds is None else f", trained in {model.train_seconds:.1f} s"
        parts += ["", f"## {model.name} ({model.mode}{trained})", "", markdown_table(model.rows)]
    return "\n".join(parts) + "\n"


SUMMARY_HEADER = (
    "| task | model | mode | 1-step qW1 | teacher H35 qW1 | ratio | best ms/γ @2 | best ms/γ @4 "
    "| exact H35 qW1 | train s | 1-step ≤ max(1.25·T, 0.01) | best(2,4) ≤ 1-step |"
)


def _verdict(passed: bool | None, reference: str = "teacher") -> str:
    if passed is None:
        return "–"
    word = "PASS" if passed else "FAIL"
    return word + ("*" if reference == "exact" else "")


def summary_line(model: Model) -> str:
    s = summarise(model.rows)
    train_s = _fmt(model.train_seconds, ".3g")
    return (
        f"| {model.task.name} | {model.name} | {model.mode} | {_fmt(s.onestep, '.4f')} "
        f"| {_fmt(s.teacher_heun, '.4f')} | {_fmt(s.ratio, '.2f')} | {_fmt(s.best_jump.get(2), '.4f')} "
        f"| {_fmt(s.best_jump.get(4), '.4f')} | {_fmt(s.exact_heun, '.4f')} | {train_s} "
        f"| {_verdict(s.onestep_pass, s.reference)} | {_verdict(s.multistep_pass)} |"
    )


def summary_markdown(models: list[Model], notes: list[str], header: list[str]) -> str:
    lines = ["# Sample quality summary", "", *header, "", SUMMARY_HEADER, "|---" * 12 + "|"]
    lines += [summary_line(m) for m in models]
    lines += [
        "",
        "T = the teacher's Heun-18 (35 NFE) qW1; PASS* = no teacher, so the exact denoiser's Heun-35 "
        "stands in for T. best ms/γ @k = the lowest qW1 of multistep and γ ∈ {0.3, 0.5, 1} at k steps.",
    ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
