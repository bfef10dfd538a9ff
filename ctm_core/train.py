"""`python -m ctm_core.train`: train a CTM on a built-in task or on your own 1D data.

Distillation (default): an EDM teacher first, then the CTM student from it; `--mode scratch`
trains the student alone. Prints an evaluation table at the end and writes one safetensors file.
"""

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from scipy import stats

from ctm_core.checkpoint import CheckpointError, checkpoint_metadata, load_checkpoint, save_checkpoint
from ctm_core.config import NoiseConfig, TrainConfig, default_config
from ctm_core.data import DataFileError, data_statistics, load_data_file, split_holdout
from ctm_core.evaluation import evaluate, format_table
from ctm_core.likelihood import log_prob
from ctm_core.parametrization import CTMParametrization
from ctm_core.tasks import TASKS, EmpiricalTask, Task, get_task
from ctm_core.trainer import Trainer


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit code 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m ctm_core.train",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    src = p.add_argument_group("what to learn")
    src.add_argument(
        "--task",
        default=None,
        choices=[*sorted(TASKS), "all"],
        help="built-in 1D task (default two_gmm_1D); 'all' trains every task into the --out folder",
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
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this small MLP)"
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def load_task(config: TrainConfig) -> tuple[Task, np.ndarray | None, dict[str, Any]]:
    """The task to learn, the held-out values (for --data) and its description for the metadata."""
    if config.data is None:
        task = get_task(config.task or "two_gmm_1D")
        return task, None, {"name": task.name, "description": task.description, "kind": task.kind}
    values = load_data_file(config.data)
    train, holdout = split_holdout(values, config.holdout, config.seed)
    name = Path(config.data).stem
    task = EmpiricalTask(train, name=name)
    info = {
        "name": name,
        "kind": "data",
        "description": f"user data from {Path(config.data).name}: {train.size} training values",
        "file": Path(config.data).name,
        "statistics": data_statistics(values),
        "holdout": config.holdout,
        "n_train": int(train.size),
        "n_holdout": int(holdout.size),
        # A rank-even subset of the training values: enough for a KDE reference in the explorer.
        "kde_points": [
            float(v)
            for v in np.sort(train)[np.linspace(0, train.size - 1, min(train.size, 2000)).astype(int)]
        ],
    }
    return task, holdout, info


def noise_for(config: TrainConfig, task: Task) -> TrainConfig:
    """Fill in σ_data and the data's mean from the data, and widen σ_max for widely spread data."""
    noise = config.noise
    update: dict[str, Any] = {}
    if noise.sigma_data is None:
        update["sigma_data"] = max(task.std, 1e-3)
    if noise.data_mean is None:
        update["data_mean"] = task.mean
    reach = 3 * task.std
    if config.data is not None and reach > noise.sigma_max / 2:
        # σ_max must dwarf the data's spread, or x_T = σ_max·z is not close to the marginal.
        update["sigma_max"] = 2 * reach
    return config.model_copy(update={"noise": noise.model_copy(update=update)}) if update else config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.task == "all":
            return _train_all(args)
        return _train(args)
    except (UsageError, DataFileError, CheckpointError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


def _train_all(args: argparse.Namespace) -> int:
    """Every built-in task, one after the other, into <out>/<task>.safetensors (the shipped set)."""
    if args.data is not None or args.resume is not None:
        raise UsageError("--task all takes neither --data nor --resume")
    folder = args.out or Path("checkpoints")
    if folder.suffix == ".safetensors":
        raise UsageError("with --task all, --out is a folder (default checkpoints)")
    for name in sorted(TASKS):
        print(f"== {name}")
        task_args = argparse.Namespace(**{**vars(args), "task": name, "out": folder / f"{name}.safetensors"})
        code = _train(task_args)
        if code != 0:
            return code
    return 0


def _train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.save_every < 0 or args.eval_n < 0 or args.threads < 1:
        raise UsageError("--save-every and --eval-n must be ≥ 0 and --threads ≥ 1")
    device = resolve_device(config.device)
    torch.set_num_threads(args.threads)
    task, holdout, task_info = load_task(config)
    config = noise_for(config, task)
    out = args.out or Path("runs") / f"{task_info['name']}.safetensors"
    if (
        out.exists()
        and not args.overwrite
        and (args.resume is None or out.resolve() != args.resume.resolve())
    ):
        raise UsageError(f"{out} exists; pass --overwrite to replace it, or --resume {out}")

    trainer = Trainer(config, task.sample, device, progress=not args.no_progress)
    if args.resume is not None:
        _resume(trainer, args.resume, config)

    def save(final: bool) -> None:
        metrics: dict[str, Any] = {}
        if final:
            metrics = {"rows": rows} | ({"heldout_log_likelihood": likelihood} if likelihood else {})
        meta = checkpoint_metadata(
            network=config.network,
            noise=config.noise,
            task=task_info,
            training={**config.model_dump(), "state": trainer.state_metadata()},
            metrics=metrics,
        )
        save_checkpoint(
            out,
            student=trainer.student_eval,
            teacher=trainer.teacher_eval if config.mode == "distill" else None,
            metadata=meta,
            state=None if final else trainer.state_tensors(),
        )

    def periodic(t: Trainer, phase: str, step: int) -> None:
        if args.save_every and step % args.save_every == 0:
            save(final=False)

    rows: list[dict[str, Any]] = []
    likelihood: dict[str, float] = {}
    started = time.perf_counter()
    interrupted = _install_sigint()
    try:
        trainer.run(hook=periodic)
    except KeyboardInterrupt:
        save(final=False)
        print(
            f"\ninterrupted: saved {trainer.state.phase} step {trainer.state.step} to {out}; "
            f"continue with the same command plus --resume {out}",
            file=sys.stderr,
        )
        return 130
    finally:
        interrupted()
    train_seconds = time.perf_counter() - started
    print(f"trained {task_info['name']} ({config.mode}) in {train_seconds:.1f} s of wall time")

    if args.eval_n:
        try:
            rows = evaluate(
                trainer.student_eval,
                trainer.teacher_eval if config.mode == "distill" else None,
                config.noise,
                task,
                n=args.eval_n,
                holdout=holdout,
                exact=config.data is None and task.kind == "gaussian_mixture",
            )
        except ValueError as exc:  # non-finite samples: the run diverged; keep what it learned
            save(final=True)
            print(f"error: evaluation failed ({exc}); training diverged? saved {out} anyway", file=sys.stderr)
            return 1
        print(format_table(rows))
    if holdout is not None and holdout.size:
        likelihood.update(heldout_log_likelihood(trainer.student_eval, config.noise, task, holdout))
        print(
            f"held-out mean log-likelihood ({holdout.size} values): model {likelihood['model']:.4f}, "
            f"gaussian_kde (Scott) {likelihood['kde']:.4f} nats"
        )
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
    return 0


def heldout_log_likelihood(
    model: CTMParametrization, noise: NoiseConfig, task: EmpiricalTask, holdout: np.ndarray
) -> dict[str, float]:
    """Mean log p(holdout) under the model's PF-ODE and under a Scott's-rule KDE of the training split."""
    logp = log_prob(
        model,
        torch.as_tensor(holdout, dtype=torch.float32),
        noise.sigma_min,
        noise.sigma_max,
        rho=noise.rho,
        data_mean=noise.data_mean or 0.0,
    )
    kde = stats.gaussian_kde(task.values, bw_method="scott")
    return {"model": float(logp.mean()), "kde": float(kde.logpdf(holdout).mean())}


def _resume(trainer: Trainer, path: Path, config: TrainConfig) -> None:
    ckpt = load_checkpoint(path, device=trainer.device)
    saved = dict(ckpt.metadata.get("training", {}))
    state = saved.pop("state", None)
    if TrainConfig.model_validate(saved).model_dump(exclude={"device"}) != config.model_dump(
        exclude={"device"}
    ):
        raise UsageError(f"{path} was trained with other settings; resume with the same command")
    if not state or state.get("phase") == "done" or not ckpt.state:
        raise UsageError(f"{path} holds a finished run: nothing to resume")
    trainer.restore(ckpt.state, state, ckpt.student)
    print(f"resuming {path}: {state['phase']} step {state['step']}")


def _install_sigint():
    """Turn SIGINT into KeyboardInterrupt (even under a parent that ignores it); return the undo."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    return lambda: signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
