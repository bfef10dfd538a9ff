"""Exact-likelihood accuracy: KL(true ‖ model) of shipped checkpoints, and the integrator's own error.

    python -m benchmarks.likelihood                       # every checkpoints/*.safetensors
    python -m benchmarks.likelihood --checkpoints checkpoints/two_gmm_1D.safetensors --n 2000

For each checkpoint of a built-in task it draws n true samples (fixed seed) and reports
KL(true ‖ model) = E_true[log p_true(x) − log p_model(x)] with the model's log p from
`ctm_core.likelihood.log_prob` (the student's PF-ODE, RK4). Beside it, the same integrator run with
the task's exact denoiser (the ODE limit) and the N(μ, σ_max²) prior: its gap to the true density
is the integrator's plus the prior's error, which bounds how exact the method itself is.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctm_core.checkpoint import CheckpointError, load_checkpoint
from ctm_core.evaluation import ExactDenoiser
from ctm_core.likelihood import ode_log_prob
from ctm_core.tasks import TASKS, get_task


def kl_row(path: Path, n: int, seed: int, steps: int) -> dict[str, float | str] | None:
    """One table row for a checkpoint of a built-in task (None for other checkpoints)."""
    ckpt = load_checkpoint(path)
    name = ckpt.metadata.task.name
    if name not in TASKS:
        return None
    task = get_task(name)
    x = task.sample(n, torch.Generator().manual_seed(seed))
    noise = ckpt.noise
    true = task.log_prob(x.double().numpy())
    started = time.perf_counter()
    model = ode_log_prob(ckpt.student, x, noise, steps).numpy()
    seconds = time.perf_counter() - started
    row: dict[str, float | str] = {
        "task": name,
        "KL(true‖model)": float(np.mean(true - model)),
        "seconds": seconds,
    }
    # The closed-form denoiser of a Gaussian mixture is differentiable; the quadrature ones are not.
    if task.kind == "gaussian_mixture":
        exact = ode_log_prob(ExactDenoiser(task), x.double(), noise, steps).numpy()
        row["KL(true‖exact-ODE)"] = float(np.mean(true - exact))
        row["max|exact-ODE − true|"] = float(np.max(np.abs(exact - true)))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.likelihood",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoints", nargs="*", type=Path, default=[Path("checkpoints")])
    parser.add_argument("--n", type=int, default=2000, help="true samples per task (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=64, help="RK4 steps of the integrator (default 64)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    files = sorted(p for c in args.checkpoints for p in ([c] if c.is_file() else c.glob("*.safetensors")))
    if not files:
        print("error: no checkpoints found", file=sys.stderr)
        return 2
    header = f"{'task':<22}{'KL(true‖model)':>16}{'KL(true‖ODE lim)':>18}{'max|ODE lim−true|':>19}{'s':>7}"
    threads = torch.get_num_threads()
    print(f"n = {args.n} true samples, seed {args.seed}, RK4 {args.steps} steps, {threads} thread(s)")
    print(header)
    print("-" * len(header))
    for path in files:
        try:
            row = kl_row(path, args.n, args.seed, args.steps)
        except CheckpointError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        if row is None:
            continue
        limit, gap = row.get("KL(true‖exact-ODE)"), row.get("max|exact-ODE − true|")
        print(
            f"{row['task']:<22}{row['KL(true‖model)']:>16.4f}"
            f"{'–' if limit is None else f'{limit:.4f}':>18}{'–' if gap is None else f'{gap:.4f}':>19}"
            f"{row['seconds']:>7.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
