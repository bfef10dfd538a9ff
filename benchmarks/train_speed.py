"""Training speed in one process and under torchrun, and the memory a large --data file costs.

    python benchmarks/train_speed.py                              # speed: 1 and 2 processes
    python benchmarks/train_speed.py --memory-values 10000000     # also: peak RSS per process
    python benchmarks/train_speed.py --help

Speed: the default recipe's network and batch sizes (teacher 1024, CTM 512 per process) for a
short, fixed number of steps, run as `python -m ctm_core.train` (1 and 2 torch threads) and as
`torchrun --standalone --nproc_per_node=N -m ctm_core.train` for each N of --processes. steps/s
and samples/s come from the training time the command reports (start-up, evaluation and writing
excluded; samples/s counts every process's batch); "wall" is the whole command.

Memory: a .npy of --memory-values float64 values is written to a temporary folder and trained on
with `--mmap on` (sampled in place) and `--mmap off` (read into memory), in one process and under
torchrun; each process runs under `benchmarks.rss_probe`, which records its peak resident memory,
private and file-backed (Linux); with --repeats, each row shows the median of the rounds.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctm_core.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))
_TRAINED = re.compile(r"trained \S+ \(\w+\) in ([0-9.]+) s of wall time")


@dataclass
class Run:
    """One training command's measurements."""

    label: str
    processes: int
    threads: int
    train_seconds: float
    wall_seconds: float
    samples: int  # every process's samples, both phases


def machine_description(threads: int) -> str:
    from benchmarks.harness import machine_line  # importable once ROOT is on sys.path

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {machine_line(threads)} per process unless the row says; load average {load}"


def _environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _launcher(processes: int | None) -> list[str]:
    """`python -m ctm_core.train`, or torchrun with `processes` processes on this machine."""
    if processes is None:
        return [sys.executable, "-m", "ctm_core.train"]
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"),
        *("-m", "ctm_core.train"),
    ]


def _run(command: list[str], cwd: Path) -> tuple[str, float]:
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=3600, check=False
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout, wall


def speed_run(label: str, processes: int | None, threads: int, args: argparse.Namespace, tmp: Path) -> Run:
    config = TrainConfig()
    flags = [
        "--task", "two_gmm_1D", "--teacher-steps", str(args.teacher_steps),
        "--ctm-steps", str(args.ctm_steps), "--eval-n", "0", "--no-progress", "--threads", str(threads),
        "--device", args.device, "--out", str(tmp / "speed.safetensors"), "--overwrite",
    ]  # fmt: skip
    out, wall = _run([*_launcher(processes), *flags], tmp)
    match = _TRAINED.search(out)
    if match is None:
        sys.exit(f"error: no training time in the output of {label}:\n{out}")
    n = processes or 1
    samples = n * (args.teacher_steps * config.teacher.batch_size + args.ctm_steps * config.ctm.batch_size)
    return Run(label, n, threads, float(match.group(1)), wall, samples)


def speed_table(runs: list[Run], steps: int) -> str:
    head = f"{'run':<38} {'procs':>5} {'threads':>7} {'train s':>8} {'wall s':>7} {'steps/s':>8}"
    head += f" {'samples/s':>10}"
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(
            f"{r.label:<38} {r.processes:>5} {r.threads:>7} {r.train_seconds:>8.1f} {r.wall_seconds:>7.1f} "
            f"{steps / r.train_seconds:>8.1f} {r.samples / r.train_seconds:>10,.0f}"
        )
    return "\n".join(lines)


def memory_runs(values: int, processes: int, args: argparse.Namespace, tmp: Path) -> list[str]:
    """Peak memory per process (MiB) training on a .npy of `values` values, mmap on and off."""
    data = tmp / "large.npy"
    rng = np.random.default_rng(0)
    mapped = np.lib.format.open_memmap(data, mode="w+", dtype=np.float64, shape=(values,))
    for start in range(0, values, 2**20):  # written in chunks: this process stays small too
        size = min(2**20, values - start)
        mapped[start : start + size] = rng.normal(0, 1, size) + rng.choice([-2.0, 2.0], size)
    mapped.flush()
    del mapped
    common = [
        "--teacher-steps", str(args.memory_steps), "--ctm-steps", str(args.memory_steps), "--eval-n", "0",
        "--no-progress", "--device", args.device, "--out", str(tmp / "memory.safetensors"), "--overwrite",
    ]  # fmt: skip
    on_file = ["--data", str(data), "--holdout", "0", *common]
    cases = [
        ("built-in task (no file), for reference", ["--task", "two_gmm_1D", *common]),
        ("--data large.npy --mmap on (in place)", [*on_file, "--mmap", "on"]),
        ("--data large.npy --mmap off (in memory)", [*on_file, "--mmap", "off"]),
    ]
    head = f"{'run':<40} {'procs':>5} {'peak RSS':>12} {'private':>12} {'file-backed':>12} {'wall s':>7}"
    size = data.stat().st_size / 2**20
    lines = [
        f"memory: {values:,} float64 values ({size:.0f} MiB .npy), median of {args.repeats} round(s); "
        "peak MiB per process (rank 0, 1, …): "
        "the whole resident set, its private (anonymous) part, its file-backed part (mapped files "
        "and shared libraries: one copy in the page cache for all processes)",
        head,
        "-" * len(head),
    ]
    for label, flags in cases:
        for n in sorted({1, processes}):
            rounds, walls = [], []
            for _ in range(args.repeats):
                for old in tmp.glob("rss.*"):
                    old.unlink()
                probe = ["-m", "benchmarks.rss_probe", str(tmp), "--", *flags]
                launch = [sys.executable] if n == 1 else _launcher(n)[:-2]
                _, wall = _run([*launch, *probe], tmp)
                walls.append(wall)
                rounds.append([(tmp / f"rss.{rank}").read_text().split() for rank in range(n)])
            peaks = np.median(np.array(rounds, dtype=float), axis=0)  # (rank, field), KiB
            shown = [",".join(f"{kib / 1024:.0f}" for kib in column) for column in peaks.T]
            wall = float(np.median(walls))
            lines.append(f"{label:<40} {n:>5} {shown[0]:>12} {shown[1]:>12} {shown[2]:>12} {wall:>7.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/train_speed.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="torchrun process counts")
    parser.add_argument("--teacher-steps", type=int, default=600, help="teacher steps of each speed run")
    parser.add_argument("--ctm-steps", type=int, default=400, help="CTM steps of each speed run")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="where to train")
    parser.add_argument(
        "--memory-values", type=int, default=0, help="also measure memory on a .npy of this many values"
    )
    parser.add_argument("--memory-steps", type=int, default=100, help="steps of each phase in a memory run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of each run: a speed row shows its fastest, a memory row its median",
    )
    parser.add_argument("--skip-speed", action="store_true", help="only the memory runs")
    args = parser.parse_args(argv)
    if min([*args.processes, args.teacher_steps, args.ctm_steps, args.repeats]) < 1 or args.memory_values < 0:
        parser.error("--processes, --teacher-steps, --ctm-steps, --repeats must be ≥ 1; --memory-values ≥ 0")

    print(machine_description(1))
    with tempfile.TemporaryDirectory(prefix="ctm-train-speed-") as folder:
        tmp = Path(folder)
        if not args.skip_speed:
            plan = [("python -m ctm_core.train", None, 1), ("python -m ctm_core.train --threads 2", None, 2)]
            plan += [(f"torchrun --nproc_per_node={n}", n, 1) for n in args.processes]
            best: dict[str, Run] = {}
            for _ in range(args.repeats):  # rounds, so that a burst of load spreads over the rows
                for label, processes, threads in plan:
                    run = speed_run(label, processes, threads, args, tmp)
                    if label not in best or run.train_seconds < best[label].train_seconds:
                        best[label] = run
            print(
                f"speed: {args.teacher_steps} teacher + {args.ctm_steps} CTM steps, device {args.device}, "
                f"fastest of {args.repeats} round(s)"
            )
            print(speed_table(list(best.values()), args.teacher_steps + args.ctm_steps), flush=True)
        if args.memory_values:
            print()
            print("\n".join(memory_runs(args.memory_values, max(args.processes), args, tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
