"""`python -m benchmarks.quality`: sample quality against NFE for every sampler, per task and model.

Evaluates shipped checkpoints (and/or models retrained here with the default recipe of
`python -m ctm_core.train`) against the task's exact distribution, as docs/CTM.md describes:
qW1 from quantile latents, W1/KS/NLL/mode coverage from random latents, n = 20,000 by default.
Writes <out-dir>/<task>.md (tables), <out-dir>/<task>_nfe.png (qW1 against NFE) and
<out-dir>/summary.md (one line per task and model, with the PASS/FAIL criteria).
"""

import argparse
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import machine_line
from benchmarks.quality_report import (
    HEUN_STEPS,
    JUMP_STEPS,
    REFERENCE_NFE,
    summary_markdown,
    task_markdown,
    text_table,
    write_nfe_plot,
)
from ctm_core.checkpoint import CheckpointError, load_checkpoint
from ctm_core.cli import HelpFormatter, UsageError
from ctm_core.config import NoiseConfig, default_config, with_overrides
from ctm_core.evaluation import EvalSpec, evaluate
from ctm_core.machine import resolve_device
from ctm_core.parametrization import CTMParametrization
from ctm_core.recipe import noise_for
from ctm_core.samplers import nfe_of
from ctm_core.tasks import TASKS, Task, get_task
from ctm_core.trainer import Trainer
from ctm_core.training_data import load_task

GAMMAS = (0.3, 0.5, 1.0)
EULER_STEPS = (4, 8, 18, 35)


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
        info = ckpt.metadata.task
        name = info.name
        if info.kind == "data" or name not in TASKS:
            notes.append(f"skipped {path}: task {name!r} is user data or not built in (no exact target)")
            continue
        if tasks is not None and name not in tasks:
            continue
        mode = ckpt.metadata.training.mode if ckpt.metadata.training is not None else "?"
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
