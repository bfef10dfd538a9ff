"""Is every CTM claim true against the exact 1D flow? One row per (task, seed), then mean ± sd.

For each checkpoint of a built-in task (or, with --train, for fresh default-recipe runs over
--seeds), at n = 20,000 quantile latents from the prior N(μ, σ_max² + σ_d²):

- exact: the exact flow's one-step limit F_data⁻¹(F_σmax(x_T)) (`ctm_core.exact`);
- teacher resolved: the teacher's PF-ODE by Heun on 256 Karras steps (its own discretisation
  error below 1e-4), and teacher Heun-18 (35 NFE), the old reference;
- CTM onestep and multistep 2, 4, 8 on the default schedule;
- path: the worst mean |state − exact state| along σ_max → 5 → 2 → 1 → 0.5 → 0.2 → 0.05 → σ_min
  (explicit levels), and that path's final qW1;
- inversions: ordered latents whose one-step outputs come out of order;
- KL(true ‖ one-step density) and KL(true ‖ PF-ODE density) on 2,000 true samples.

    python -m benchmarks.exactness --checkpoints checkpoints
    python -m benchmarks.exactness --train --seeds 0 1 2 --tasks all --out-dir runs/exactness
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctm_core.checkpoint import load_checkpoint
from ctm_core.config import NoiseConfig
from ctm_core.exact import exact_flow, exact_path
from ctm_core.likelihood import ode_log_prob, onestep_log_prob
from ctm_core.metrics import quantile_w1
from ctm_core.parametrization import CTMParametrization
from ctm_core.recipe import train_model
from ctm_core.samplers import SAMPLERS, latent, sampling_sigmas
from ctm_core.tasks import TASKS, Task, get_task

PATH_LEVELS = (5.0, 2.0, 1.0, 0.5, 0.2, 0.05)
COLUMNS = (
    ("exact", "exact flow"),
    ("teacher_resolved", "teacher resolved"),
    ("teacher_heun18", "teacher Heun-18"),
    ("onestep", "CTM 1"),
    ("multistep2", "CTM 2"),
    ("multistep4", "CTM 4"),
    ("multistep8", "CTM 8"),
    ("path_worst", "path worst state"),
    ("path_final", "path final"),
    ("inversions", "inversions"),
    ("kl_onestep", "KL 1-step"),
    ("kl_ode", "KL PF-ODE"),
)


def path_sigmas(noise: NoiseConfig) -> torch.Tensor:
    """σ_max → 5 → 2 → 1 → 0.5 → 0.2 → 0.05 → σ_min, float64."""
    inner = [s for s in PATH_LEVELS if noise.sigma_min < s < noise.sigma_max]
    return torch.tensor([noise.sigma_max, *inner, noise.sigma_min], dtype=torch.float64)


@torch.no_grad()
def measure(
    student: CTMParametrization,
    teacher: CTMParametrization | None,
    noise: NoiseConfig,
    task: Task,
    n: int = 20_000,
    kl_n: int = 2_000,
) -> dict[str, float]:
    """Every column of the table for one model (see the module docstring)."""
    x_T = latent(n, noise.data_mean or 0.0, noise.prior_std, "quantile", torch.Generator())
    row: dict[str, float] = {}
    exact = exact_flow(task, x_T.double().numpy(), noise.sigma_max, noise.sigma_min)
    row["exact"] = quantile_w1(exact, task)

    def run(model: Any, sampler: str, sigmas: torch.Tensor, x: torch.Tensor = x_T) -> np.ndarray:
        return SAMPLERS[sampler](model, x, sigmas).states.double().numpy()

    if teacher is not None:
        fine = sampling_sigmas("heun", 256, **noise.schedule_kwargs())
        row["teacher_resolved"] = quantile_w1(run(teacher, "heun", fine)[-1], task)
        row["teacher_heun18"] = quantile_w1(
            run(teacher, "heun", sampling_sigmas("heun", 18, **noise.schedule_kwargs()))[-1], task
        )
    one = run(student, "onestep", sampling_sigmas("onestep", 1, **noise.schedule_kwargs()))[-1]
    row["onestep"] = quantile_w1(one, task)
    row["inversions"] = float(np.count_nonzero(np.diff(one) < 0))
    for k in (2, 4, 8):
        states = run(student, "multistep", sampling_sigmas("multistep", k, **noise.schedule_kwargs()))
        row[f"multistep{k}"] = quantile_w1(states[-1], task)
    sigmas = path_sigmas(noise)
    states = run(student, "multistep", sigmas)
    truth = exact_path(task, x_T.double().numpy(), sigmas.numpy())
    row["path_worst"] = float(np.abs(states[1:] - truth[1:]).mean(axis=1).max())
    row["path_final"] = quantile_w1(states[-1], task)
    x = task.sample(kl_n, torch.Generator().manual_seed(12345))
    true = task.log_prob(x.double().numpy())
    row["kl_onestep"] = float(np.mean(true - onestep_log_prob(student, x, noise).numpy()))
    row["kl_ode"] = float(np.mean(true - ode_log_prob(student, x, noise).numpy()))
    return row


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one row per (task, seed), then mean ± sd per task."""
    head = "| task | seed | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        cells = [_cell(key, r.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {r['task']} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(rows: list[dict[str, Any]]) -> str:
    """Per task, mean ± sd over its seeds of every column."""
    head = "| task | seeds | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name in sorted({r["task"] for r in rows}):
        group = [r for r in rows if r["task"] == name]
        cells = []
        for key, _ in COLUMNS:
            values = [r[key] for r in group if r.get(key) is not None]
            if not values:
                cells.append("–")
                continue
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{_fmt(key, mean)} ± {_fmt(key, sd)}")
        seeds = ",".join(str(r["seed"]) for r in group)
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(key: str, value: float) -> str:
    return f"{value:.0f}" if key == "inversions" else f"{value:.4f}"


def _cell(key: str, value: float | None) -> str:
    return "–" if value is None else _fmt(key, value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.exactness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoints", type=Path, help="a folder of checkpoints to measure")
    parser.add_argument("--train", action="store_true", help="train the default recipe per task and seed")
    parser.add_argument("--tasks", nargs="+", default=["all"], help="built-in task names, or all")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (--train)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/exactness"), help="where --train writes")
    parser.add_argument("--n", type=int, default=20_000, help="quantile latents per measurement")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--summarise", nargs="+", type=Path, metavar="JSON", help="only tabulate rows that earlier runs wrote"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.summarise:
        rows = [row for path in args.summarise for row in json.loads(path.read_text())]
        rows.sort(key=lambda r: (r["task"], r["seed"]))
        print(format_rows(rows), summarise(rows), sep="\n\n")
        return 0
    tasks = sorted(TASKS) if args.tasks == ["all"] else args.tasks
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or (args.checkpoints is None) == (not args.train) or args.n < 100:
        parser.error(f"give --checkpoints DIR or --train, known tasks only (unknown: {unknown}), --n ≥ 100")
    torch.set_num_threads(args.threads)
    jobs: list[tuple[str, int, Path]] = []
    if args.train:
        jobs = [(t, s, args.out_dir / f"{t}_seed{s}.safetensors") for s in args.seeds for t in tasks]
    else:
        jobs = [(t, 0, args.checkpoints / f"{t}.safetensors") for t in tasks]
    rows = []
    started = time.perf_counter()
    for i, (name, seed, path) in enumerate(jobs, 1):
        if args.train and not path.exists():
            t0 = time.perf_counter()
            train_model(name, path, seed=seed, progress=False)
            print(
                f"[{i}/{len(jobs)}] trained {name} seed {seed} in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        ckpt = load_checkpoint(path)
        seed = ckpt.metadata.training.seed if ckpt.metadata.training is not None else seed
        row = {
            "task": name,
            "seed": seed,
            **measure(ckpt.student, ckpt.teacher, ckpt.noise, get_task(name), args.n),
        }
        rows.append(row)
        print(
            f"[{i}/{len(jobs)}] {name} seed {seed}: "
            + json.dumps({k: round(v, 5) for k, v in row.items() if isinstance(v, float)}),
            flush=True,
        )
    print(format_rows(rows))
    print()
    print(summarise(rows))
    print(f"\n{len(rows)} models, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
