"""`python -m ctm_core.train`: train a CTM on a built-in task or on your own 1D data.

Distillation (default): an EDM teacher first, then the CTM student from it; `--mode scratch`
trains the student alone. Prints an evaluation table at the end and writes one safetensors file.
Under `torchrun --nproc_per_node=N`, N processes train one model with DistributedDataParallel
(--batch-size is per process); rank 0 prints, evaluates and writes the files.
"""

import argparse
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError

from ctm_core.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint,
)
from ctm_core.cli import HelpFormatter, UsageError, error_message, print_error
from ctm_core.config import TrainConfig, default_config
from ctm_core.data import DataFileError
from ctm_core.distributed import (
    AMP_CHOICES,
    BACKENDS,
    Group,
    LaunchError,
    exit_process,
    launch_from_env,
    process_group,
    resolve_amp,
    resolve_backend,
)
from ctm_core.evaluation import evaluate, format_heldout_likelihood, format_report, heldout_log_likelihood
from ctm_core.machine import DeviceError, resolve_device, usable_cpus
from ctm_core.marron_wand import MARRON_WAND
from ctm_core.recipe import noise_for
from ctm_core.tasks import TASKS
from ctm_core.trainer import Trainer
from ctm_core.training_data import MMAP_MIN_VALUES, TrainingData, load_training_data

_Result = TypeVar("_Result")


class _SharedFailure(UsageError):
    """A usage error that every rank of a distributed run has agreed on (see `_agreed`)."""


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m ctm_core.train",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    src = p.add_argument_group("what to learn")
    src.add_argument(
        "--task",
        default=None,
        choices=[*sorted(TASKS), *sorted(MARRON_WAND), "all"],
        help="built-in 1D task (default two_gmm_1D) or a Marron–Wand benchmark density (mw01_…mw15_…); "
        "'all' trains the built-in tasks into the --out folder",
    )
    src.add_argument(
        "--data", type=Path, help="your own values: .npy, .csv (one column) or .txt (one a line)"
    )
    src.add_argument(
        "--holdout",
        type=float,
        default=defaults.holdout,
        help="fraction of --data held out for evaluation (0 = train on all)",
    )
    run = p.add_argument_group("how")
    run.add_argument(
        "--mode",
        choices=["distill", "scratch"],
        default=defaults.mode,
        help="distill from an EDM teacher, or train the CTM from scratch",
    )
    run.add_argument(
        "--teacher-steps",
        type=int,
        default=defaults.teacher.steps,
        help="phase 1 (teacher, DSM) optimiser steps",
    )
    scratch = default_config("scratch").ctm
    run.add_argument(
        "--ctm-steps",
        type=int,
        default=None,
        help=f"phase 2 (CTM student) optimiser steps (default {defaults.ctm.steps}; scratch {scratch.steps})",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=(
            f"batch size of both phases (default: teacher {defaults.teacher.batch_size}, "
            f"CTM {defaults.ctm.batch_size})"
        ),
    )
    run.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate of both phases (default: teacher {defaults.teacher.lr:g}, "
        f"CTM {defaults.ctm.lr:g})",
    )
    run.add_argument("--seed", type=int, default=defaults.seed, help="seed of initialisation, data and noise")
    run.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], default=defaults.device, help="where to train"
    )
    run.add_argument(
        "--threads",
        type=int,
        default=min(2, usable_cpus()),
        help="torch CPU threads: 2 trained the default network 1.5× faster than 1 on an idle 2-core "
        "machine, but 10× slower than 1 while other processes kept both cores busy",
    )
    run.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="auto",
        help="bfloat16 mixed precision: auto = on with CUDA, off on the CPU",
    )
    run.add_argument(
        "--dist-backend",
        choices=BACKENDS,
        default="auto",
        help="under torchrun: the process group's backend (auto = nccl with CUDA, gloo on the CPU)",
    )
    run.add_argument(
        "--mmap",
        choices=["auto", "on", "off"],
        default="auto",
        help=f"--data .npy: sample the memory-mapped file in place (auto: from {MMAP_MIN_VALUES:,} "
        "values; off: read it into memory)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="any recipe field, e.g. --set ctm.lambda_dsm=0.05 --set network.width=64",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--out", type=Path, default=None, help="checkpoint to write (default runs/<name>.safetensors)"
    )
    out.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    out.add_argument(
        "--resume", type=Path, default=None, metavar="CKPT", help="continue the interrupted run saved in CKPT"
    )
    out.add_argument(
        "--save-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="also save a resumable checkpoint every STEPS steps (0 = only at the end)",
    )
    out.add_argument(
        "--plots",
        type=Path,
        default=None,
        metavar="DIR",
        help="write figures (densities, paths, losses) to DIR",
    )
    out.add_argument(
        "--eval-n", type=int, default=20_000, help="samples per row of the evaluation table (0 skips it)"
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The typed recipe: defaults, then the named flags, then --set overrides."""
    raw: dict[str, Any] = default_config(args.mode).model_dump()
    raw |= {"mode": args.mode, "holdout": args.holdout, "seed": args.seed, "device": args.device}
    raw["task"] = None if args.data else (args.task or "two_gmm_1D")
    raw["data"] = str(args.data) if args.data else None
    raw["teacher"]["steps"] = args.teacher_steps
    if args.ctm_steps is not None:
        raw["ctm"]["steps"] = args.ctm_steps
    for phase in ("teacher", "ctm"):
        if args.batch_size is not None:
            raw[phase]["batch_size"] = args.batch_size
        if args.lr is not None:
            raw[phase]["lr"] = args.lr
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise UsageError(f"--set: unknown field {key!r}")
            node = node[part]
        if leaf not in node:
            raise UsageError(f"--set: unknown field {key!r}")
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"invalid setting {where}: {first['msg']}") from None


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device, mixed precision or not, and its process group."""

    device: torch.device
    amp: bool
    group: Group


_INPUT_ERRORS = (UsageError, DataFileError, CheckpointError, LaunchError, DeviceError, KeyError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Flags, device and backend are checked before any process group exists: a bad command
        # fails the same way on every rank, and none waits for the others.
        launch = launch_from_env()
        device = resolve_device(config_from_args(args).device, launch.local_rank if launch else None)
        amp = resolve_amp(args.amp, device)
        backend = resolve_backend(args.dist_backend, device) if launch else "none"
    except _INPUT_ERRORS as exc:
        print_error(exc)
        return 2
    with process_group(launch, backend, device) as group:
        try:
            runtime = Runtime(device, amp, group)
            code = _train_all(args, runtime) if args.task == "all" else _train(args, runtime)
        except _INPUT_ERRORS as exc:
            print_error(exc)
            if isinstance(exc, _SharedFailure):
                # Every rank is failing here: exit together, once each has said why (torchrun
                # stops the other ranks as soon as one has exited).
                group.all_true(True)
            code = 2
    if launch is not None:
        exit_process(code)  # a torchrun worker ends here (see exit_process)
    return code


def _agreed(group: Group, prepare: Callable[[], _Result]) -> _Result:
    """Run `prepare` (what reads files) on every rank; if it fails on any, fail on all with the
    first failing rank's message, so that no rank waits for another in a collective."""
    if not group.distributed:
        return prepare()
    result, error = None, None
    try:
        result = prepare()
    except _INPUT_ERRORS as exc:
        error = error_message(exc)
    shared = group.first_error(error)
    if shared is not None:
        raise _SharedFailure(shared)
    return result  # type: ignore[return-value]


def _train_all(args: argparse.Namespace, runtime: Runtime) -> int:
    """Every built-in task, one after the other, into <out>/<task>.safetensors (the shipped set)."""
    if args.data is not None or args.resume is not None:
        raise UsageError("--task all takes neither --data nor --resume")
    folder = args.out or Path("runs")
    if folder.suffix == ".safetensors":
        raise UsageError("with --task all, --out is a folder (default runs)")
    for name in sorted(TASKS):
        if runtime.group.is_main:
            print(f"== {name}")
        task_args = argparse.Namespace(**{**vars(args), "task": name, "out": folder / f"{name}.safetensors"})
        code = _train(task_args, runtime)
        if code != 0:
            return code
    return 0


def _train(args: argparse.Namespace, runtime: Runtime) -> int:
    config = config_from_args(args)
    if args.save_every < 0 or args.eval_n < 0 or args.threads < 1:
        raise UsageError("--save-every and --eval-n must be ≥ 0 and --threads ≥ 1")
    device, group = runtime.device, runtime.group
    torch.set_num_threads(args.threads)

    def prepare() -> tuple[TrainingData, TrainConfig, Path, tuple[Checkpoint, dict[str, Any]] | None]:
        data = load_training_data(config, group, args.mmap)
        noised = noise_for(config, data)
        out = args.out or Path("runs") / f"{data.info['name']}.safetensors"
        if (
            group.is_main
            and out.exists()
            and not args.overwrite
            and (args.resume is None or out.resolve() != args.resume.resolve())
        ):
            raise UsageError(f"{out} exists; pass --overwrite to replace it, or --resume {out}")
        saved = _resume_checkpoint(args.resume, noised, device) if args.resume is not None else None
        return data, noised, out, saved

    data, config, out, saved = _agreed(group, prepare)
    task, holdout, task_info = data.task, data.holdout, data.info
    trainer = Trainer(
        config,
        data.sample,
        device,
        progress=group.is_main and not args.no_progress,
        group=group,
        amp=runtime.amp,
    )
    if saved is not None:
        _resume(trainer, args.resume, *saved)

    def save(final: bool, all_ranks: bool = True) -> None:
        state = None if final else trainer.state_tensors(all_ranks=all_ranks)  # a collective
        if not group.is_main:
            return
        metrics: dict[str, Any] = {}
        if final:
            metrics = {"rows": rows} | ({"heldout_log_likelihood": likelihood} if likelihood else {})
        training = {**config.model_dump(), "state": trainer.state_metadata()}
        if group.distributed:
            training["distributed"] = group.describe()
            if final and trainer.replicas_sha256:
                training["distributed"]["replicas_sha256"] = trainer.replicas_sha256
        meta = checkpoint_metadata(
            network=config.network,
            noise=config.noise,
            task=task_info,
            training=training,
            metrics=metrics,
        )
        save_checkpoint(
            out,
            student=trainer.student_eval,
            teacher=trainer.teacher_eval if config.mode == "distill" else None,
            metadata=meta,
            state=state,
        )

    def periodic(t: Trainer, phase: str, step: int) -> None:
        if args.save_every and step % args.save_every == 0:
            save(final=False)

    rows: list[dict[str, Any]] = []
    likelihood: dict[str, float | str] = {}
    started = time.perf_counter()
    interrupted = _install_sigint()
    try:
        trainer.run(hook=periodic)
    except KeyboardInterrupt:
        save(final=False, all_ranks=False)  # no collective: the other ranks are stopping too
        if group.is_main:
            print(
                f"\ninterrupted: saved {trainer.state.phase} step {trainer.state.step} to {out}; "
                f"continue with the same command plus --resume {out}",
                file=sys.stderr,
            )
        return 130
    finally:
        interrupted()
    train_seconds = time.perf_counter() - started
    if not group.is_main:
        return 0  # rank 0 evaluates, reports and writes the checkpoint
    print(f"trained {task_info['name']} ({config.mode}) in {train_seconds:.1f} s of wall time")
    if group.distributed:
        print(
            f"{group.world_size} processes ({group.backend}): every rank held the same weights, EMAs "
            f"and teacher at the end of each phase (sha256 {trainer.replicas_sha256})"
        )
    assert task is not None  # rank 0 always has the task it reports on

    if args.eval_n:
        try:
            rows = evaluate(
                trainer.student_eval,
                trainer.teacher_eval if config.mode == "distill" else None,
                config.noise,
                task,
                n=args.eval_n,
                holdout=holdout,
                exact=config.data is None,
            )
        except ValueError as exc:  # non-finite samples: the run diverged; keep what it learned
            save(final=True)
            print(f"error: evaluation failed ({exc}); training diverged? saved {out} anyway", file=sys.stderr)
            return 1
        print(format_report(rows, user_data=config.data is not None))
    if holdout is not None and holdout.size:
        likelihood.update(
            heldout_log_likelihood(trainer.student_eval, config.noise, task, holdout, kde=data.kde)
        )
        print(format_heldout_likelihood(likelihood, holdout.size))
    save(final=True)
    print(f"saved {out}")
    if args.plots is not None:
        from ctm_core.plots import write_training_figures

        teacher = trainer.teacher_eval if config.mode == "distill" else None
        figures = write_training_figures(
            args.plots, trainer.student_eval, teacher, task, config.noise, trainer.state.losses
        )
        for path in figures:
            print(f"wrote {path}")
    print(serve_command(out))
    return 0


def serve_command(checkpoint: Path) -> str:
    """The line that tells a user how to serve the checkpoint just written (its folder, named by its stem)."""
    folder, name = shlex.quote(str(checkpoint.parent)), shlex.quote(checkpoint.stem)
    return f"serve it: python -m service --checkpoint-dir {folder} --default-model {name}"


def _resume_checkpoint(
    path: Path, config: TrainConfig, device: torch.device
) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint to resume and its saved state, checked against this run's settings."""
    ckpt = load_checkpoint(path, device=device)
    saved = dict(ckpt.metadata.get("training", {}))
    state = saved.pop("state", None)
    saved.pop("distributed", None)
    if TrainConfig.model_validate(saved).model_dump(exclude={"device"}) != config.model_dump(
        exclude={"device"}
    ):
        raise UsageError(f"{path} was trained with other settings; resume with the same command")
    if not state or state.get("phase") == "done" or not ckpt.state:
        raise UsageError(f"{path} holds a finished run: nothing to resume")
    return ckpt, state


def _resume(trainer: Trainer, path: Path, ckpt: Checkpoint, state: dict[str, Any]) -> None:
    exact = trainer.restore(ckpt.state, state, ckpt.student)
    group = trainer.group
    exact = group.all_true(exact) and int(state.get("world_size", 1)) == group.world_size
    if group.is_main:
        print(f"resuming {path}: {state['phase']} step {state['step']}")
        if not exact:
            print(
                f"note: saved by {state.get('world_size', 1)} process(es), resumed by "
                f"{group.world_size}: the data streams differ from those of an uninterrupted run"
            )


def _install_sigint():
    """Turn SIGINT into KeyboardInterrupt (even under a parent that ignores it); return the undo."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    return lambda: signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
