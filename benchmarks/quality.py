"""`python -m benchmarks.quality`: sample quality against NFE for every sampler, per task and model.

Evaluates shipped checkpoints (and/or models retrained here with the default recipe of
`python -m ctm_core.train`) against the task's exact distribution, as docs/CTM.md describes:
qW1 from quantile latents, W1/KS/NLL/mode coverage from random latents, n = 20,000 by default.
Writes <out-dir>/<task>.md (tables), <out-dir>/<task>_nfe.png (qW1 against NFE) and
<out-dir>/summary.md (one line per task and model, with the PASS/FAIL criteria).
"""

import argparse
import os
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ctm_core.checkpoint import CheckpointError, load_checkpoint
from ctm_core.cli import HelpFormatter, UsageError
from ctm_core.config import NoiseConfig, default_config, with_overrides
from ctm_core.evaluation import EvalSpec, evaluate
from ctm_core.machine import cpu_name, resolve_device, usable_cpus
from ctm_core.parametrization import CTMParametrization
from ctm_core.recipe import noise_for
from ctm_core.samplers import nfe_of
from ctm_core.tasks import TASKS, Task, get_task
from ctm_core.trainer import Trainer
from ctm_core.training_data import load_task

GAMMAS = (0.3, 0.5, 1.0)
JUMP_STEPS = (2, 4)
EULER_STEPS = (4, 8, 18, 35)
HEUN_STEPS = (2, 4, 9, 18)  # NFE 3, 7, 17, 35
REFERENCE_NFE = 35  # teacher / exact Heun with 18 steps
ONESTEP_FACTOR = 1.25
ONESTEP_FLOOR = 0.01


def model_specs(with_teacher: bool) -> tuple[EvalSpec, ...]:
    """The student's rows (jump samplers, then its own ODE) and, with a teacher, the teacher's ODE rows."""
    specs = [EvalSpec("student", "onestep", 1)]
    specs += [EvalSpec("student", "multistep", k) for k in JUMP_STEPS]
    specs += [EvalSpec("student", "gamma", k, g) for g in GAMMAS for k in JUMP_STEPS]
    networks = ("student", "teacher") if with_teacher else ("student",)
    for net in networks:
        specs += [EvalSpec(net, "euler", k) for k in EULER_STEPS]
        specs += [EvalSpec(net, "heun", k) for k in HEUN_STEPS]
    return tuple(specs)


def exact_specs(nfes: Iterable[int] | None) -> tuple[EvalSpec, ...]:
    """The exact denoiser's ODE rows (Euler 18, Heun at every NFE), kept where the NFE is in `nfes`."""
    specs = [EvalSpec("exact", "euler", 18), *(EvalSpec("exact", "heun", k) for k in HEUN_STEPS)]
    if nfes is None:
        return tuple(specs)
    wanted = set(nfes)
    return tuple(s for s in specs if nfe_of(s.sampler, s.steps) in wanted)


def default_exact_nfe(task: Task) -> list[int] | None:
    """All NFEs for closed-form (mixture) denoisers; Heun-35 only for quadrature ones (~1 s/call)."""
    return None if task.kind == "gaussian_mixture" else [REFERENCE_NFE]


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


# ---- models ---------------------------------------------------------------------------------
@dataclass
class Model:
    """One model to evaluate: a checkpoint's networks or a freshly retrained pair."""

    task: Task
    name: str  # the file, or "retrained <mode>"
    mode: str
    student: CTMParametrization
    teacher: CTMParametrization | None
    noise: NoiseConfig
    train_seconds: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def find_checkpoints(paths: list[Path], explicit: bool) -> list[Path]:
    """*.safetensors files named or inside the named folders (sorted); missing paths are an error if named."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.glob("*.safetensors"))
        elif path.is_file():
            found.append(path)
        elif explicit:
            raise UsageError(f"{path}: no such file or folder")
    return found


def load_models(paths: list[Path], tasks: set[str] | None, notes: list[str]) -> list[Model]:
    """The evaluable checkpoints among `paths` (built-in tasks, in `tasks` if given); others get a note."""
    models = []
    for path in paths:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            notes.append(f"skipped {path}: {exc}")
            continue
        info = ckpt.metadata.get("task") or {}
        name = str(info.get("name", "?"))
        if info.get("kind") == "data" or name not in TASKS:
            notes.append(f"skipped {path}: task {name!r} is user data or not built in (no exact target)")
            continue
        if tasks is not None and name not in tasks:
            continue
        mode = str((ckpt.metadata.get("training") or {}).get("mode", "?"))
        models.append(Model(get_task(name), str(path), mode, ckpt.student, ckpt.teacher, ckpt.noise))
    return models


def retrain(task_name: str, mode: str, overrides: list[str]) -> Model:
    """Train `task_name` in-process with the default recipe of `mode` (+ `--set`-style overrides)."""
    try:
        config = with_overrides(default_config(mode).model_copy(update={"task": task_name}), overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    task, _, _ = load_task(config)
    config = noise_for(config, task)
    trainer = Trainer(config, task.sample, resolve_device(config.device), progress=False)
    started = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - started
    teacher = trainer.teacher_eval.to("cpu") if mode == "distill" else None
    return Model(
        task, f"retrained {mode}", mode, trainer.student_eval.to("cpu"), teacher, config.noise, seconds
    )


# ---- evaluation -----------------------------------------------------------------------------
def evaluate_model(
    model: Model,
    n: int,
    seed: int,
    exact_nfe: list[int] | None,
    cache: dict[tuple, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Every row for one model, one spec at a time (progress to stderr); exact rows are cached."""
    specs = model_specs(model.teacher is not None) + exact_specs(exact_nfe)
    rows = []
    for spec in specs:
        started = time.perf_counter()
        key = (model.task.name, spec, n, seed, tuple(sorted(model.noise.sampling_kwargs().items())))
        if spec.network == "exact" and key in cache:
            row = cache[key]
        else:
            found = evaluate(
                model.student,
                model.teacher,
                model.noise,
                model.task,
                specs=(spec,),
                n=n,
                seed=seed,
                exact=spec.network == "exact",
            )
            if not found:
                continue
            row = found[0]
            if spec.network == "exact":
                cache[key] = row
        rows.append(row)
        print(
            f"  [{model.task.name} | {model.name}] {row['label']:<26} NFE {row['nfe']:>3}  "
            f"qW1 {row['qW1']:.4f}  ({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return rows


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


def machine_line(threads: int) -> str:
    cpu, usable = cpu_name(), usable_cpus()
    return (
        f"{cpu}, {os.cpu_count()} cores ({usable} usable), Python {platform.python_version()}, "
        f"torch {torch.__version__}, {threads} torch thread(s)"
    )


# ---- the command line -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoints",
        type=Path,
        nargs="*",
        default=None,
        metavar="PATH",
        help="checkpoint files or folders of *.safetensors (default: checkpoints/ where it exists; "
        "the flag alone: none)",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"built-in tasks to benchmark, or 'all' (default: those the checkpoints cover); {sorted(TASKS)}",
    )
    p.add_argument("--n", type=int, default=20_000, help="samples per row")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of every row")
    p.add_argument(
        "--retrain",
        nargs="+",
        choices=["distill", "scratch"],
        default=[],
        metavar="MODE",
        help="also train each task here with the default recipe (distill and/or scratch), timing it",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="recipe override for --retrain, as in python -m ctm_core.train (e.g. ctm.steps=500)",
    )
    p.add_argument(
        "--exact-nfe",
        nargs="+",
        default=None,
        metavar="NFE",
        help="NFEs that get an exact-denoiser row (euler 18; heun 3, 7, 17, 35), or 'all' "
        "(default: all for Gaussian mixtures, 35 only for the slow quadrature denoisers)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out-dir", type=Path, default=Path("docs/results"), help="where to write the reports")
    return p


def _parse_exact_nfe(values: list[str] | None) -> tuple[bool, list[int] | None]:
    """(use the per-task default, NFEs to keep: None for all)."""
    if values is None:
        return True, None
    if values == ["all"]:
        return False, None
    try:
        return False, [int(v) for v in values]
    except ValueError:
        raise UsageError(f"--exact-nfe takes integers or 'all', got {values}") from None


def _select_tasks(names: list[str] | None) -> set[str] | None:
    if names is None:
        return None
    if names == ["all"]:
        return set(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {unknown}; valid tasks: {', '.join(sorted(TASKS))}")
    return set(names)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.n < 2 or args.threads < 1 or args.seed < 0:
        raise UsageError("--n must be ≥ 2, --threads ≥ 1 and --seed ≥ 0")
    per_task_exact, chosen_exact = _parse_exact_nfe(args.exact_nfe)
    tasks = _select_tasks(args.tasks)
    torch.set_num_threads(args.threads)
    machine = machine_line(args.threads)
    print(f"machine: {machine}", flush=True)

    notes: list[str] = []
    explicit = args.checkpoints is not None
    paths = find_checkpoints(args.checkpoints if explicit else [Path("checkpoints")], explicit)
    models = load_models(paths, tasks, notes)
    if args.retrain:
        retrain_tasks = sorted(tasks) if tasks is not None else sorted({m.task.name for m in models})
        if not retrain_tasks:
            raise UsageError("--retrain needs --tasks (no checkpoint names a built-in task)")
        for name in retrain_tasks:
            for mode in args.retrain:
                print(f"training {name} ({mode}) with the default recipe …", file=sys.stderr, flush=True)
                model = retrain(name, mode, args.overrides)
                print(f"  trained in {model.train_seconds:.1f} s", file=sys.stderr, flush=True)
                models.append(model)
    if not models:
        where = ", ".join(map(str, paths)) or "checkpoints/"
        raise UsageError(
            f"nothing to benchmark in {where}: train with `python -m ctm_core.train --task all`, "
            "or pass --retrain distill --tasks NAME"
        )

    started = time.perf_counter()
    cache: dict[tuple, dict[str, Any]] = {}
    by_task: dict[str, list[Model]] = {}
    for model in models:
        by_task.setdefault(model.task.name, []).append(model)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, task_models in sorted(by_task.items()):
        task = task_models[0].task
        exact_nfe = default_exact_nfe(task) if per_task_exact else chosen_exact
        for model in task_models:
            print(f"== {name}: {model.name} ({model.mode})", file=sys.stderr, flush=True)
            model.rows = evaluate_model(model, args.n, args.seed, exact_nfe, cache)
            trained = "" if model.train_seconds is None else f", trained in {model.train_seconds:.1f} s"
            print(f"\n== {name}: {model.name} ({model.mode}{trained}), n = {args.n}, seed {args.seed}")
            print(text_table(model.rows), flush=True)
        (args.out_dir / f"{name}.md").write_text(task_markdown(task, task_models, args.n, args.seed, machine))
        write_nfe_plot(args.out_dir / f"{name}_nfe.png", task, task_models)

    elapsed = time.perf_counter() - started
    header = [
        f"Written {datetime.now(UTC).isoformat(timespec='seconds')} by "
        f"`{' '.join(['python -m benchmarks.quality', *argv])}`",
        f"n = {args.n:,}, seed {args.seed}; evaluation took {elapsed:.0f} s.",
        f"Machine: {machine}",
    ]
    summary = summary_markdown(sorted(models, key=lambda m: m.task.name), notes, header)
    (args.out_dir / "summary.md").write_text(summary)
    print("\n" + summary)
    print(f"wrote {args.out_dir}/summary.md and {len(by_task)} task report(s) in {elapsed:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return run(args, argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
