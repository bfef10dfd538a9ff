"""What a perfect CTM would score: the exact PF-ODE's one-step sample and the ideal γ = 1 sampler.

A perfect CTM's jump G(x, t, s) is the exact PF-ODE's solution from t to s. Its one-step and
deterministic multistep samples are then the same, so multistep can at best tie with one step.
γ = 1 with 2 steps jumps to σ_min, renoises to t₁ with fresh Gaussian noise and jumps again: its
samples are no longer the stratified quantile sample, so their qW1 carries a random sample's
error. This script measures both with each task's exact denoiser, the jumps solved by Heun on a
fine Karras grid, at n = 20,000 and a fixed seed, as docs/RESULTS.md quotes them.

    python -m benchmarks.ideal_floor --tasks bounded_1D skewed_1D three_gmm_1D
"""

import argparse
import time

import torch

from ctm_core.config import NoiseConfig
from ctm_core.evaluation import ExactDenoiser
from ctm_core.metrics import quantile_w1
from ctm_core.samplers import latent, sample_heun
from ctm_core.schedules import karras_sigmas
from ctm_core.tasks import TASKS, get_task


def ideal_scores(
    task_name: str, t1_values: list[float], n: int, seed: int, steps: int
) -> tuple[float, dict[float, float]]:
    """(qW1 of the exact ODE's sample from quantile latents, {t₁: qW1 of ideal γ = 1 in 2 steps})."""
    task, noise = get_task(task_name), NoiseConfig()
    denoiser = ExactDenoiser(task)
    noise = noise.model_copy(update={"sigma_data": task.std})
    x_T = latent(n, float(task.mean), noise.prior_std, "quantile", torch.Generator()).double()
    with torch.inference_mode():
        sigmas = karras_sigmas(steps + 1, noise.sigma_min, noise.sigma_max, noise.rho)
        x0 = sample_heun(denoiser, x_T, sigmas).samples
        gamma_scores = {}
        for t1 in t1_values:
            generator = torch.Generator().manual_seed(seed)
            fresh = torch.randn(n, generator=generator, dtype=torch.float64)
            x_t1 = x0 + (t1**2 - noise.sigma_min**2) ** 0.5 * fresh
            tail = karras_sigmas(steps // 2 + 1, noise.sigma_min, t1, noise.rho)
            gamma_scores[t1] = quantile_w1(sample_heun(denoiser, x_t1, tail).samples, task)
    return quantile_w1(x0, task), gamma_scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=sorted(TASKS), choices=sorted(TASKS), metavar="TASK")
    parser.add_argument("--t1", nargs="+", type=float, default=[0.05, 0.2, 0.48], help="renoise times")
    parser.add_argument("--n", type=int, default=20_000, help="samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh noise")
    parser.add_argument("--steps", type=int, default=200, help="Heun steps of the jump from σ_max")
    args = parser.parse_args(argv)
    if args.n < 1 or args.steps < 2 or not all(0.002 < t < 10 for t in args.t1):
        parser.error("need --n ≥ 1, --steps ≥ 2 and every --t1 inside (σ_min, σ_max) = (0.002, 10)")
    torch.set_num_threads(1)
    header = f"{'task':<20}{'one-step':>10}" + "".join(f"{f'γ=1 t₁={t}':>14}" for t in args.t1)
    print(header, "-" * len(header), sep="\n", flush=True)
    started = time.perf_counter()
    for name in args.tasks:
        one_step, gamma = ideal_scores(name, args.t1, args.n, args.seed, args.steps)
        print(f"{name:<20}{one_step:>10.4f}" + "".join(f"{gamma[t]:>14.4f}" for t in args.t1), flush=True)
    print(f"\nqW1 at n = {args.n:,}, seed {args.seed}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
