"""How well a student fits its own teacher's jumps, pair by pair of training levels.

The student is trained to map the teacher's trajectory state at t to its state at s. This prints,
for every third level t of the training grid and every third level s below it, the mean
|G_student(x_t, t, s) − x_s| over 4,096 teacher trajectories (Heun with the run's pool substeps
per grid interval, as the trainer's pool): where the student has not learned the jumps its own
training asked of it.

    python -m benchmarks.jump_fit checkpoints/two_gmm_1D.safetensors
"""

import argparse
import sys
from pathlib import Path

import torch

from ctm_core.checkpoint import load_checkpoint
from ctm_core.config import default_config
from ctm_core.samplers import latent, sample_heun
from ctm_core.trainer import refine_grid, training_grid


@torch.inference_mode()
def jump_errors(path: Path, rows: int = 4096, every: int = 3) -> tuple[list[float], list[list[float | None]]]:
    """(levels, errors): errors[i][j] for the i-th and j-th listed levels (None where s ≥ t)."""
    ckpt = load_checkpoint(path)
    if ckpt.teacher is None:
        raise ValueError(f"{path} has no teacher (a model trained from scratch)")
    noise, record = ckpt.noise, ckpt.metadata.training
    # The run's own grid and pool solve, as recorded (the default recipe's for a file without them).
    if record is not None:
        config = record.train_config(ckpt.metadata.network, noise)
    else:
        config = default_config().model_copy(update={"noise": noise})
    grid = training_grid(config).double()
    substeps = config.ctm.pool_substeps
    x_T = latent(rows, noise.data_mean or 0.0, noise.prior_std, "random", torch.Generator().manual_seed(7))
    states = sample_heun(ckpt.teacher, x_T, refine_grid(grid, substeps)).states[::substeps]
    picked = [*range(0, len(grid) - 1, every), len(grid) - 1]
    levels = grid.float()
    errors: list[list[float | None]] = []
    for n in picked:
        row: list[float | None] = []
        for k in picked:
            if k <= n:
                row.append(None)
                continue
            jumped = ckpt.student.jump(states[n], levels[n].expand(rows), levels[k].expand(rows))
            row.append(float((jumped - states[k]).abs().mean()))
        errors.append(row)
    return [float(levels[i]) for i in picked], errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.jump_fit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a distilled model (with its teacher)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    levels, errors = jump_errors(args.checkpoint)
    print("| t \\ s | " + " | ".join(f"{s:.3g}" for s in levels[1:]) + " |")
    print("|---" * len(levels) + "|")
    for t, row in zip(levels[:-1], errors[:-1], strict=True):
        print(f"| {t:.3g} | " + " | ".join("" if e is None else f"{e:.4f}" for e in row[1:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
