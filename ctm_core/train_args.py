"""The command line of `python -m ctm_core.train`: its flags, and the typed recipe they make.

The recipe itself is `ctm_core.config` (defaults, `config_from_raw`) and `ctm_core.recipe` (config →
data → trainer → checkpoint); this module only turns flags into a `TrainConfig`.
"""

import argparse
from pathlib import Path
from typing import Any

from ctm_core.cli import HelpFormatter, UsageError
from ctm_core.config import TrainConfig, config_from_raw, default_config
from ctm_core.distributed import AMP_CHOICES, BACKENDS
from ctm_core.machine import usable_cpus
from ctm_core.marron_wand import MARRON_WAND
from ctm_core.tasks import TASKS
from ctm_core.training_data import MMAP_MIN_VALUES


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The parser of every flag; `description` heads its --help (the CLI passes its docstring)."""
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m ctm_core.train",
        description=description,
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
    try:
        return config_from_raw(raw, args.overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
