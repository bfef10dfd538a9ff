"""Sample a trained CTM offline: `python -m ctm_core.sample CHECKPOINT --n 1000 --out samples.csv`.

The same request as the service's /sample (or /trajectory with --trajectory), run by the same code
(`ctm_core.model`), so the numbers are the service's for the same arguments. Output by extension:
.csv (a header line, then one sample a line; with --trajectory one sample's path a line, one
column a noise level), .npy (float32: (n,), or (n, K + 1) paths), .json (the service's answer:
/sample's or /trajectory's fields). Without --out, CSV goes to standard output.
"""

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctm_core.checkpoint import CheckpointError, atomic_write_bytes
from ctm_core.cli import HelpFormatter, UsageError, print_error
from ctm_core.model import Model, load
from ctm_core.runtime import Runtime
from ctm_core.samplers import SPECS
from ctm_core.sampling import SampledTrajectory, SampleRequest

FORMATS = (".csv", ".npy", ".json")
# Rows × network evaluations above which a progress bar is shown (about a second of work here).
PROGRESS_MIN_WORK = 2_000_000


def build_parser() -> argparse.ArgumentParser:
    defaults = ", ".join(f"{name} {spec.default_steps}" for name, spec in SPECS.items())
    p = argparse.ArgumentParser(
        prog="python -m ctm_core.sample",
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m ctm_core.sample checkpoints/two_gmm_1D.safetensors --n 1000 "
        "--sampler multistep --seed 0 --out samples.csv",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="a .safetensors file written by python -m ctm_core.train")
    p.add_argument("--n", type=int, default=1000, help="number of samples")
    p.add_argument("--sampler", choices=list(SPECS), help="default: onestep (multistep with --trajectory)")
    p.add_argument("--steps", type=int, help=f"sampler steps; default: the sampler's own ({defaults})")
    p.add_argument(
        "--sigmas",
        help="explicit noise levels instead of --steps, comma-separated, from the model's sigma_max "
        "down to its sigma_min (e.g. 10,1,0.002)",
    )
    p.add_argument("--seed", type=int, help="seed of every random draw; default: one is drawn and printed")
    p.add_argument("--noise", choices=["random", "quantile"], default="random", help="latent x_T")
    p.add_argument("--gamma", type=float, help="γ of the gamma sampler (only with --sampler gamma)")
    p.add_argument("--trajectory", action="store_true", help="write each sample's path, not only its end")
    p.add_argument("--out", type=Path, help=f"output file, format by extension: {', '.join(FORMATS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    return p


class _Progress:
    """The runtime's jump and denoise, ticking a progress bar at each network evaluation."""

    def __init__(self, runtime: Runtime, bar: tqdm) -> None:
        self.runtime = runtime
        self.device = runtime.device
        self.bar = bar

    def jump(self, *args: object) -> object:
        self.bar.update()
        return self.runtime.jump(*args)  # type: ignore[arg-type]

    def denoise(self, *args: object) -> object:
        self.bar.update()
        return self.runtime.denoise(*args)  # type: ignore[arg-type]


def _sigmas(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--sigmas: expected comma-separated numbers, got {text!r}") from None


def _encode(
    model: Model, request: SampleRequest, result: SampledTrajectory, suffix: str, path: bool
) -> bytes:
    """The output file's bytes."""
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, result.paths if path else result.samples, allow_pickle=False)
        return buffer.getvalue()
    if suffix == ".json":
        answer = {
            "model": model.name,
            "model_sha256": model.checkpoint.sha256,
            "sampler": request.sampler,
            "steps": request.steps,
            "nfe": result.nfe,
            "n": request.n,
            "seed": request.seed,
            "noise": request.noise,
            "samples": result.samples.tolist(),
        }
        if path:
            answer |= {"sigmas": result.sigmas.tolist(), "paths": result.paths.tolist()}
        return json.dumps(answer).encode()
    text = io.StringIO()
    # %.9g: every float32 is written exactly (9 significant digits round-trip float32).
    if path:
        header = ",".join(f"sigma={level:.9g}" for level in result.sigmas)
        np.savetxt(text, result.paths, fmt="%.9g", delimiter=",", header=header, comments="")
    else:
        np.savetxt(text, result.samples, fmt="%.9g", header="x", comments="")
    return text.getvalue().encode()


def run(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a file name")
    suffix = ".csv" if args.out is None else args.out.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"--out {args.out}: unknown format {suffix!r}; use one of {', '.join(FORMATS)}")
    model = load(args.checkpoint, args.device)
    sampler = args.sampler or ("multistep" if args.trajectory else "onestep")
    request = model.request(
        args.n,
        sampler,
        args.steps,
        sigmas=_sigmas(args.sigmas),
        seed=args.seed,
        noise=args.noise,
        gamma=args.gamma,
    )
    nfe = SPECS[sampler].nfe(request.steps)
    show = not args.quiet and request.n * nfe >= PROGRESS_MIN_WORK
    with tqdm(total=nfe, desc="network evaluations", unit="eval", disable=not show, file=sys.stderr) as bar:
        result = model.run(request, _Progress(model.runtime, bar) if show else None)
    payload = _encode(model, request, result, suffix, args.trajectory)
    if args.out is None:
        sys.stdout.buffer.write(payload)
        sys.stdout.flush()
    else:
        atomic_write_bytes(args.out, payload)
    if not args.quiet:
        where = "stdout" if args.out is None else str(args.out)
        sys.stderr.write(
            f"{request.n} samples of {model.name}: sampler={sampler} steps={request.steps} "
            f"nfe={result.nfe} seed={request.seed} noise={request.noise} -> {where}\n"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, CheckpointError, ValueError, OSError) as exc:
        print_error(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
