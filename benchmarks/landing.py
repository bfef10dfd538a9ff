"""Where should the multi-step jump samplers' first jump land? Scan the landing level per task.

For each checkpoint of a built-in task: the one-step qW1, and the best qW1 of multistep and
γ ∈ {0.3, 0.5, 1} at 2 and at 4 steps when the first jump lands at ratio·σ_data (then a Karras
grid down to σ_min, `ctm_core.schedules.landing_sigmas`), for each ratio, and with the Karras
schedule over the whole range. A ✓ marks a level at which the better of 2 and 4 steps is no
worse than one step. n = 20,000 quantile latents and seed 0 for the γ-noise, as in
`benchmarks.quality`; docs/RESULTS.md quotes the table.

    python -m benchmarks.landing --checkpoints checkpoints
"""

import argparse
import time
from pathlib import Path

import torch

from ctm_core.checkpoint import CheckpointError, load_checkpoint
from ctm_core.config import NoiseConfig
from ctm_core.metrics import quantile_w1
from ctm_core.parametrization import CTMParametrization
from ctm_core.samplers import generate
from ctm_core.tasks import TASKS, Task, get_task

GAMMAS = (0.3, 0.5, 1.0)
STEPS = (2, 4)
DEFAULT_RATIOS = (0.005, 0.0075, 0.01, 0.013, 0.016, 0.02, 0.03, 0.05)


def best_multi_step(
    model: CTMParametrization, task: Task, noise: NoiseConfig, n: int, seed: int
) -> dict[int, float]:
    """{steps: the lowest qW1 of multistep and γ-sampling at that many steps} on `noise`'s schedule."""
    runs = [("multistep", 0.0)] + [("gamma", g) for g in GAMMAS]
    kwargs = noise.sampling_kwargs()
    return {
        steps: min(
            quantile_w1(
                generate(model, sampler, steps, n, noise="quantile", seed=seed, gamma=g, **kwargs).samples,
                task,
            )
            for sampler, g in runs
        )
        for steps in STEPS
    }


def _cell(best: dict[int, float] | None, one_step: float) -> str:
    if best is None:
        return "–"
    mark = " ✓" if min(best.values()) <= one_step else ""
    return f"{best[2]:.5f} / {best[4]:.5f}{mark}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--checkpoints", type=Path, default=Path("checkpoints"), help="folder of <task>.safetensors"
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        choices=sorted(TASKS),
        metavar="TASK",
        help="tasks to scan (default: every built-in task with a checkpoint in the folder)",
    )
    parser.add_argument(
        "--ratios",
        nargs="+",
        type=float,
        default=list(DEFAULT_RATIOS),
        help="landing levels, as multiples of the model's σ_data",
    )
    parser.add_argument("--n", type=int, default=20_000, help="samples per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the γ-noise")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.n < 2 or args.seed < 0 or args.threads < 1 or not all(r > 0 for r in args.ratios):
        parser.error("need --n ≥ 2, --seed ≥ 0, --threads ≥ 1 and positive --ratios")
    if not args.checkpoints.is_dir():
        parser.error(f"--checkpoints {args.checkpoints} is not a folder")
    names = args.tasks or sorted(t for t in TASKS if (args.checkpoints / f"{t}.safetensors").is_file())
    if not names:
        parser.error(f"no checkpoint of a built-in task in {args.checkpoints}")
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    header = ["task", "σ_data", "one-step", *(f"{r:g}·σ_data" for r in args.ratios), "Karras, whole range"]
    print("| " + " | ".join(header) + " |", "|" + "---|" * len(header), sep="\n", flush=True)
    passes = [0] * (len(args.ratios) + 1)
    for name in names:
        path = args.checkpoints / f"{name}.safetensors"
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as exc:
            parser.exit(2, f"error: {exc}\n")
        task, noise, model = get_task(name), checkpoint.noise, checkpoint.student
        one_step = quantile_w1(
            generate(model, "onestep", 1, args.n, noise="quantile", **noise.sampling_kwargs()).samples, task
        )
        cells = []
        for i, ratio in enumerate([*args.ratios, None]):
            schedule = noise.model_copy(update={"landing_ratio": ratio})
            if ratio is not None and schedule.landing is None:  # r·σ_data outside (σ_min, σ_max)
                cells.append(_cell(None, one_step))
                continue
            best = best_multi_step(model, task, schedule, args.n, args.seed)
            passes[i] += min(best.values()) <= one_step
            cells.append(_cell(best, one_step))
        row = [name, f"{model.sigma_data:.3f}", f"{one_step:.5f}", *cells]
        print("| " + " | ".join(row) + " |", flush=True)
    print("| tasks with ✓ | | | " + " | ".join(f"{p}/{len(names)}" for p in passes) + " |")
    print(
        f"\nCells: best qW1 of multistep/γ at 2 / 4 steps; n = {args.n:,}, seed {args.seed}; "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
