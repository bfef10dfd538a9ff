"""Your own data: the served density against Scott's KDE on small real 1D samples with many ties.

Real data sets that scikit-learn ships inside its package (nothing is downloaded), each a few
hundred values rounded to a unit: iris sepal length (150 values, 35 distinct), wine alcohol
(178, 126), diabetes progression (442, 214) and breast-cancer mean radius (569, 456). Each is
trained with the default recipe exactly as a user would (`python -m ctm_core.train --data
FILE.csv --seed S`, 80/20 split by the seed) and the training report's held-out mean
log-likelihood is read back from the checkpoint: the served density (the one-step sampler's own,
what /logprob answers by default) against a Scott's-rule KDE fitted on the same training values.

    pip install -e '.[baselines]'   # scikit-learn, for its bundled data sets
    python -m benchmarks.own_data --seeds 0 1 2
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ctm_core.checkpoint import load_checkpoint


def datasets() -> dict[str, np.ndarray]:
    """The real samples, by name (scikit-learn's bundled copies)."""
    try:
        from sklearn import datasets as sk
    except ImportError:
        sys.exit("error: this benchmark needs scikit-learn: pip install -e '.[baselines]'")
    return {
        "iris_sepal_length": sk.load_iris().data[:, 0],
        "wine_alcohol": sk.load_wine().data[:, 0],
        "diabetes_progression": sk.load_diabetes(scaled=False).target,
        "breast_cancer_radius": sk.load_breast_cancer().data[:, 0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.own_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training and split seeds")
    parser.add_argument(
        "--out-dir", type=Path, help="keep the CSVs and checkpoints here (default: temporary)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    args = parser.parse_args(argv)
    folder = args.out_dir or Path(tempfile.mkdtemp(prefix="ctm-own-data-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for name, values in datasets().items():
        csv = folder / f"{name}.csv"
        np.savetxt(csv, values, fmt="%.10g")
        for seed in args.seeds:
            out = folder / f"{name}_seed{seed}.safetensors"
            command = [sys.executable, "-m", "ctm_core.train", "--data", str(csv), "--seed", str(seed)]
            command += [
                "--out",
                str(out),
                "--overwrite",
                "--no-progress",
                "--eval-n",
                "0",
                "--threads",
                str(args.threads),
            ]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            ckpt = load_checkpoint(out)
            held = ckpt.metadata.metrics.heldout_log_likelihood
            assert held is not None, f"{out}: training recorded no held-out likelihood"
            rows.append((name, seed, held["model"], held["kde"], held.get("density", "ode")))
            print(
                f"{name} seed {seed}: model {held['model']:.4f} ({held.get('density')}, "
                f"σ_min {ckpt.noise.sigma_min:.4g}), Scott KDE {held['kde']:.4f} nats",
                flush=True,
            )
    print("\n| data set | values | distinct | model − KDE (nats, mean ± sd over seeds) | wins |")
    print("|---|---|---|---|---|")
    for name, values in datasets().items():
        diffs = [m - k for n, _, m, k, _ in rows if n == name]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        wins = sum(d >= 0 for d in diffs)
        print(
            f"| {name} | {values.size} | {np.unique(values).size} | "
            f"{statistics.fmean(diffs):+.3f} ± {sd:.3f} | {wins}/{len(diffs)} |"
        )
    print(f"\n{len(rows)} runs in {time.perf_counter() - started:.0f} s; files in {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
