"""`python -m ctm_core.train`: train a CTM on a built-in task or on your own 1D data.

Distillation (default): an EDM teacher first, then the CTM student from it; `--mode scratch`
trains the student alone. Prints an evaluation table at the end and writes one safetensors file.
Under `torchrun --nproc_per_node=N`, N processes train one model with DistributedDataParallel
(--batch-size is per process); rank 0 prints, evaluates and writes the files.
"""

import argparse
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ctm_core.checkpoint import (
    Checkpoint,
    CheckpointError,
)
from ctm_core.cli import UsageError, error_message, print_error
from ctm_core.config import TrainConfig
from ctm_core.data import DataFileError
from ctm_core.distributed import (
    Group,
    LaunchError,
    exit_process,
    launch_from_env,
    process_group,
    resolve_amp,
    resolve_backend,
)
from ctm_core.evaluation import evaluate, format_heldout_likelihood, format_report, heldout_log_likelihood
from ctm_core.machine import DeviceError, resolve_device
from ctm_core.recipe import noise_for, resume_state, save_run
from ctm_core.tasks import TASKS
from ctm_core.train_args import build_parser as build_flags
from ctm_core.train_args import config_from_args
from ctm_core.trainer import Trainer
from ctm_core.training_data import TrainingData, load_training_data

_Result = TypeVar("_Result")


class _SharedFailure(UsageError):
    """A usage error that every rank of a distributed run has agreed on (see `_agreed`)."""


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (`ctm_core.train_args`), with this module's docstring as its help."""
    return build_flags(__doc__)


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
        noised = noise_for(config, data, data.bandwidth)
        out = args.out or Path("runs") / f"{data.info['name']}.safetensors"
        if (
            group.is_main
            and out.exists()
            and not args.overwrite
            and (args.resume is None or out.resolve() != args.resume.resolve())
        ):
            raise UsageError(f"{out} exists; pass --overwrite to replace it, or --resume {out}")
        saved = None
        if args.resume is not None:
            try:
                saved = resume_state(args.resume, noised, device)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
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
        extra: dict[str, Any] = {}
        if group.distributed:
            extra["distributed"] = group.describe()
            if final and trainer.replicas_sha256:
                extra["distributed"]["replicas_sha256"] = trainer.replicas_sha256
        save_run(out, trainer, config, task_info, metrics=metrics, state=state, extra=extra)

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
