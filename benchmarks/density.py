"""1D density estimation: CTM against Scott's KDE, the ISJ KDE and a BIC Gaussian mixture.

Part 1, the 15 Marron & Wand (1992) densities (`ctm_core.marron_wand`): for each density, training
size (1,000 and 10,000) and repetition r = 0, 1, 2, one draw of values seeded by (density, size,
r); every method is fitted on exactly those values. CTM is trained as a user would, `python -m
ctm_core.train --data FILE.csv --seed r --holdout 0` with the default recipe for every density,
and loaded with `ctm_core.load`. Metrics against the exact law: W1 (CTM: its one-step samples of
20,000 quantile latents, `ctm_core.metrics.w1_to_cdf`; a baseline: ∫|F_model − F| dx on a fine
grid) and KL(true ‖ model) by quadrature under the true law (CTM: its one-step and its PF-ODE
density), with the wall time of each fit.

Part 2, real data (`--real`, and part of the default run): scikit-learn's bundled samples
(`benchmarks.own_data`), 10 random 80/20 splits each; held-out mean log-likelihood and W1 from
20,000 model quantiles to the held-out values.

    pip install -e '.[baselines]'
    python -m benchmarks.density                    # everything (hours: 130 CTM trainings)
    python -m benchmarks.density --quick            # 2 densities × 2 sizes × 1 repetition (~6 min)
    python -m benchmarks.density --densities mw10_claw --sizes 1000 --reps 1
    python -m benchmarks.density --report-only      # rebuild the report from the result files

One JSON file per (density, size, repetition, method) or (data set, split, method) lands in
--results; files already there are skipped, so an interrupted run continues where it stopped.
The report (docs/results/density.md, with one figure per density) is rebuilt from every file.
"""

import argparse
import json
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import machine_line
from benchmarks.own_data import datasets
from ctm_core.baselines import BASELINES, Estimator, fit_baseline
from ctm_core.machine import usable_cpus
from ctm_core.marron_wand import MARRON_WAND
from ctm_core.metrics import NLL_LOG_PROB_FLOOR, mid_probabilities, w1_to_cdf, w1_two_sample
from ctm_core.model import Model, load
from ctm_core.tasks import Task

SIZES = (1_000, 10_000)
REPS = 3
METHODS = ("ctm", *BASELINES)
# --quick: four CTM trainings of about 80 s each on this 2-core CPU, well under 15 minutes.
QUICK_DENSITIES = ("mw06_bimodal", "mw10_claw")
REAL_SPLITS = 10
REAL_HOLDOUT = 0.2
# Quantile latents (CTM) or model quantiles (baselines) whose samples measure W1.
N_SAMPLES = 20_000
# KL quadrature (`kl_by_quadrature`): m of each kind of point; the finer grid measures the
# coarser one's error.
KL_POINTS = 4_000
KL_CHECK_POINTS = 16_000
# Baselines' W1: |F_model − F| by the trapezoid rule on this many true quantiles plus as many
# uniform points over both laws' 1e-9..1 − 1e-9 range (spikes of σ = 0.01 get ~30 points each).
W1_GRID_POINTS = 20_000
PLOT_POINTS = 2_001


def value_seed(density: str, size: int, rep: int) -> int:
    """The seed of one training draw: a stable hash of (density, size, repetition)."""
    return zlib.crc32(f"{density}/{size}/{rep}".encode())


def draw_values(task: Task, size: int, rep: int) -> np.ndarray:
    """`size` draws of the task's exact law, seeded by (task, size, rep); float64, shape (size,)."""
    generator = torch.Generator().manual_seed(value_seed(task.name, size, rep))
    return task.sample(size, generator).double().numpy()


def quadrature_points(task: Task, m: int, lo: float, hi: float) -> np.ndarray:
    """Sorted x for the trapezoid rule: the task's m mid-quantiles (i + ½)/m, which follow its mass,
    plus m uniform points over [lo, hi], which follow a model's ripples anywhere in that range."""
    return np.unique(np.concatenate([task.quantile(mid_probabilities(m)), np.linspace(lo, hi, m)]))


def kl_by_quadrature(log_q: Callable[[np.ndarray], np.ndarray], task: Task, m: int) -> float:
    """KL(p ‖ q) = ∫ p (log p − log q) dx by the trapezoid rule on m true quantiles (i + ½)/m plus m
    uniform points over the true 1e-10..1 − 1e-10 range; log q floored at NLL_LOG_PROB_FLOOR (−1000)
    where a model gives a point no density. (The midpoint rule in u = F(x) alone aliases with a
    narrow KDE's ripples: it halved the ISJ KDE's KL on the claw.)"""
    lo, hi = task.quantile(np.array([1e-10, 1 - 1e-10]))
    x = quadrature_points(task, m, lo, hi)
    log_p = task.log_prob(x)
    return float(np.trapezoid(np.exp(log_p) * (log_p - np.maximum(log_q(x), NLL_LOG_PROB_FLOOR)), x))


def exact_w1(estimator: Estimator, task: Task) -> float:
    """W1 = ∫|F_model − F| dx by the trapezoid rule on true quantiles plus uniform points over both
    laws' ranges (the model's from its 1e-9 and 1 − 1e-9 quantiles)."""
    ends = np.array([1e-9, 1 - 1e-9])
    true_ends, model_ends = task.quantile(ends), estimator.quantile(ends)
    lo, hi = min(true_ends[0], model_ends[0]), max(true_ends[1], model_ends[1])
    grid = quadrature_points(task, W1_GRID_POINTS, lo, hi)
    return float(np.trapezoid(np.abs(estimator.cdf(grid) - task.cdf(grid)), grid))


def plot_grid(task: Task) -> np.ndarray:
    """The x of the figures' curves: the true 1e-4..1 − 1e-4 quantile range widened by 0.1 std."""
    lo, hi = task.quantile(np.array([1e-4, 1 - 1e-4]))
    return np.linspace(lo - 0.1 * task.std, hi + 0.1 * task.std, PLOT_POINTS)


# ---- fitting -------------------------------------------------------------------------------------
def train_ctm(values: np.ndarray, seed: int, folder: Path, stem: str) -> tuple[Model, dict[str, float]]:
    """Train the default recipe on `values` exactly as a user would (the CLI, in a subprocess, on a
    CSV of the values); the loaded model and its times (process wall, and training as it reports)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv, out = folder / f"{stem}.csv", folder / f"{stem}.safetensors"
    np.savetxt(csv, values, fmt="%.17g")  # round-trips float64: CTM sees the baselines' values
    command = [sys.executable, "-m", "ctm_core.train", "--data", str(csv), "--seed", str(seed)]
    command += ["--holdout", "0", "--out", str(out), "--overwrite", "--no-progress", "--eval-n", "0"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr.strip()}")
    # "trained NAME (distill) in 83.2 s of wall time": the training loop alone.
    line = next(line for line in done.stdout.splitlines() if line.startswith("trained "))
    train_seconds = float(line.split(" in ")[1].split(" s ")[0])
    return load(out), {"fit_seconds": seconds, "train_seconds": train_seconds}


def ctm_quantile_samples(model: Model) -> np.ndarray:
    """One-step samples of N_SAMPLES quantile latents: the model's own quantiles (its map is monotone)."""
    return model.sample(N_SAMPLES, sampler="onestep", noise="quantile", seed=0).astype(np.float64)


def measure_ctm(model: Model, task: Task) -> dict[str, Any]:
    """W1 of the one-step samples; KL of the one-step and of the PF-ODE density (each with its grid check)."""
    started = time.perf_counter()
    onestep = lambda x: model.logprob(x, density="onestep")  # noqa: E731
    ode = lambda x: model.logprob(x, density="ode")  # noqa: E731
    ode_started = time.perf_counter()
    kl_ode = kl_by_quadrature(ode, task, KL_POINTS)
    ode_seconds = time.perf_counter() - ode_started
    return {
        "w1": w1_to_cdf(ctm_quantile_samples(model), task),
        "kl": kl_by_quadrature(onestep, task, KL_POINTS),
        "kl_check": kl_by_quadrature(onestep, task, KL_CHECK_POINTS),
        "kl_ode": kl_ode,
        "kl_ode_check": kl_by_quadrature(ode, task, KL_CHECK_POINTS),
        "kl_ode_seconds": ode_seconds,
        "pdf": np.exp(onestep(plot_grid(task))).tolist(),
        "eval_seconds": time.perf_counter() - started,
    }


def measure_baseline(estimator: Estimator, task: Task) -> dict[str, Any]:
    """Exact W1, KL (and its grid check), and the density on the figure's grid."""
    started = time.perf_counter()
    return {
        "w1": exact_w1(estimator, task),
        "kl": kl_by_quadrature(estimator.log_prob, task, KL_POINTS),
        "kl_check": kl_by_quadrature(estimator.log_prob, task, KL_CHECK_POINTS),
        "pdf": estimator.pdf(plot_grid(task)).tolist(),
        "eval_seconds": time.perf_counter() - started,
    }


def estimator_details(estimator: Estimator) -> dict[str, Any]:
    """What a baseline chose: its bandwidth or its number of components."""
    if hasattr(estimator, "bandwidth"):
        return {"bandwidth": estimator.bandwidth}
    return {"components": getattr(estimator, "components", None)}


def fit_timed(name: str, values: np.ndarray) -> tuple[Estimator, float]:
    started = time.perf_counter()
    estimator = fit_baseline(name, values)
    return estimator, time.perf_counter() - started


# ---- the grid of fits ----------------------------------------------------------------------------
class Progress:
    """Per-fit progress lines with an ETA from the mean time so far of each method."""

    def __init__(self, pending: list[str]) -> None:
        self.left = {m: pending.count(m) for m in set(pending)}
        self.total, self.done = len(pending), 0
        self.seconds: dict[str, list[float]] = {}
        self.started = time.perf_counter()

    def report(self, label: str, method: str, seconds: float, summary: str) -> None:
        self.done += 1
        self.left[method] -= 1
        self.seconds.setdefault(method, []).append(seconds)
        eta = sum(np.mean(self.seconds[m]) * n for m, n in self.left.items() if m in self.seconds)
        unknown = [m for m, n in self.left.items() if n and m not in self.seconds]
        more = f" + {', '.join(sorted(unknown))} fits" if unknown else ""
        elapsed = time.perf_counter() - self.started
        print(
            f"[{self.done}/{self.total}] {label} {method}: {summary} ({seconds:.1f} s; "
            f"{elapsed / 60:.1f} min so far, ETA {eta / 60:.1f} min{more})",
            flush=True,
        )


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Write one result file atomically (a partial file would look finished to a resumed run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def density_jobs(results: Path, densities: list[str], sizes: list[int], reps: int) -> Iterator[tuple]:
    """(density, size, rep, methods still without a result file), for each cell of the grid."""
    for name in densities:
        for size in sizes:
            for rep in range(reps):
                missing = [m for m in METHODS if not density_path(results, name, size, rep, m).exists()]
                if missing:
                    yield name, size, rep, missing


def density_path(results: Path, density: str, size: int, rep: int, method: str) -> Path:
    return results / "marron_wand" / f"{density}_n{size}_r{rep}_{method}.json"


def real_path(results: Path, dataset: str, split: int, method: str) -> Path:
    return results / "real" / f"{dataset}_s{split}_{method}.json"


def run_densities(jobs: list[tuple], results: Path, progress: Progress, machine: str) -> None:
    for name, size, rep, missing in jobs:
        task, values = MARRON_WAND[name], draw_values(MARRON_WAND[name], size, rep)
        label = f"{name} n={size} r={rep}"
        base = {"part": "marron_wand", "density": name, "size": size, "rep": rep, "machine": machine}
        base["value_seed"] = value_seed(name, size, rep)
        for method in missing:
            if method == "ctm":
                model, times = train_ctm(values, rep, results / "models", f"{name}_n{size}_r{rep}")
                record = base | {"method": method, "ctm_seed": rep} | times | measure_ctm(model, task)
                summary = f"W1 {record['w1']:.4f}, KL {record['kl']:.4f} (ODE {record['kl_ode']:.4f})"
            else:
                estimator, seconds = fit_timed(method, values)
                record = base | {"method": method, "fit_seconds": seconds} | estimator_details(estimator)
                record |= measure_baseline(estimator, task)
                summary = f"W1 {record['w1']:.4f}, KL {record['kl']:.4f}"
            write_result(density_path(results, name, size, rep, method), record)
            progress.report(label, method, record["fit_seconds"] + record["eval_seconds"], summary)


def real_split(values: np.ndarray, split: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout): a permutation seeded by the split, REAL_HOLDOUT of the values held out."""
    order = np.random.default_rng(split).permutation(values.size)
    n_holdout = round(REAL_HOLDOUT * values.size)
    return values[order[n_holdout:]], values[order[:n_holdout]]


def run_real(results: Path, splits: int, progress: Progress | None, machine: str) -> list[tuple]:
    """The real-data fits still missing; with `progress`, run them (else only list them)."""
    jobs = []
    for dataset, values in datasets().items():
        for split in range(splits):
            missing = [m for m in METHODS if not real_path(results, dataset, split, m).exists()]
            if not missing:
                continue
            jobs.append((dataset, split, missing))
            if progress is None:
                continue
            train, holdout = real_split(values.astype(np.float64), split)
            base = {"part": "real", "dataset": dataset, "split": split, "machine": machine}
            base |= {"n_train": int(train.size), "n_holdout": int(holdout.size)}
            for method in missing:
                started = time.perf_counter()
                if method == "ctm":
                    model, times = train_ctm(train, split, results / "models", f"{dataset}_s{split}")
                    loglik = model.logprob(holdout, density="onestep")
                    quantiles = ctm_quantile_samples(model)
                    record = base | {"method": method} | times
                else:
                    estimator, seconds = fit_timed(method, train)
                    loglik = estimator.log_prob(holdout)
                    quantiles = estimator.quantile(mid_probabilities(N_SAMPLES))
                    record = base | {"method": method, "fit_seconds": seconds} | estimator_details(estimator)
                record["heldout_loglik"] = float(np.mean(np.maximum(loglik, NLL_LOG_PROB_FLOOR)))
                record["w1_heldout"] = w1_two_sample(quantiles, holdout)
                record["eval_seconds"] = time.perf_counter() - started - record["fit_seconds"]
                write_result(real_path(results, dataset, split, method), record)
                summary = f"held-out log-lik {record['heldout_loglik']:.4f}, W1 {record['w1_heldout']:.4f}"
                progress.report(f"{dataset} split {split}", method, time.perf_counter() - started, summary)
    return jobs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.density",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--densities", nargs="+", choices=sorted(MARRON_WAND), metavar="NAME", help="default: all 15"
    )
    p.add_argument(
        "--sizes", nargs="+", type=int, help=f"training sizes (default {' '.join(map(str, SIZES))})"
    )
    p.add_argument("--reps", type=int, help=f"repetitions r = 0..REPS−1 (default {REPS})")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{', '.join(QUICK_DENSITIES)} at sizes 10000 and 1000, one repetition, no real data",
    )
    p.add_argument("--real", action="store_true", help="only the real-data part (the default run does both)")
    p.add_argument("--splits", type=int, default=REAL_SPLITS, help="random 80/20 splits per real data set")
    p.add_argument("--results", type=Path, default=Path("runs/density"), help="result files (and models)")
    p.add_argument("--report", type=Path, default=Path("docs/results/density.md"), help="report to write")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the result files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    selected = args.quick or args.densities or args.sizes or args.reps is not None
    if args.real and selected:
        print("error: --real runs the real-data part alone; drop --densities/--sizes/--reps/--quick")
        return 2
    started = time.perf_counter()
    if not args.report_only:
        densities = list(QUICK_DENSITIES) if args.quick else args.densities or sorted(MARRON_WAND)
        sizes = [10_000, 1_000] if args.quick else args.sizes or list(SIZES)
        reps = 1 if args.quick else args.reps if args.reps is not None else REPS
        jobs = [] if args.real else list(density_jobs(args.results, densities, sizes, reps))
        with_real = args.real or not selected
        real_jobs = run_real(args.results, args.splits, None, "") if with_real else []
        pending = [m for job in jobs for m in job[-1]] + [m for job in real_jobs for m in job[-1]]
        print(f"{len(pending)} fits to run ({pending.count('ctm')} CTM trainings); results in {args.results}")
        progress, machine = Progress(pending), machine_line(threads=min(2, usable_cpus()))
        run_densities(jobs, args.results, progress, machine)
        if with_real:
            run_real(args.results, args.splits, progress, machine)
    from benchmarks.density_report import write_report  # it reads this module's definitions

    command = "python -m benchmarks.density " + " ".join(argv if argv is not None else sys.argv[1:])
    written = write_report(args.results, args.report, command.strip(), time.perf_counter() - started)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
