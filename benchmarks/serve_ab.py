"""Serving A/B: this checkout's service against another checkout's (the commit before a refactor),
the same requests under wrk, alternating runs, so that a slowdown shows beside the run-to-run spread.

The other checkout's service runs from its own code (its folder first on the import path) on its
own checkpoints (an older code may read only an older checkpoint format; the weights must be the
same). JSON requests only: the answers both versions give.

    git worktree add /tmp/before e89ad3f^
    git archive 525a998 checkpoints | tar -x -C /tmp/before-checkpoints
    python -m benchmarks.serve_ab --other /tmp/before --other-checkpoints /tmp/before-checkpoints/checkpoints
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import wrk
from benchmarks.harness import REPO_ROOT, Server, machine_line, server_env
from benchmarks.serve import Case

CASES = [
    Case("/sample", "onestep", 1, 1, 64),
    Case("/sample", "onestep", 1, 1000, 1),
    Case("/sample", "multistep", 4, 1000, 1),
    Case("/sample", "onestep", 1, 100_000, 1),
]


def start(code: Path, checkpoints: Path, log_path: Path) -> Server:
    """`python -m service` with `code` first on the import path (so its packages, not this
    checkout's, are the ones imported), on `checkpoints`."""
    launcher = (
        f"import runpy, sys; sys.path.insert(0, {str(code)!r}); sys.argv[0] = 'service'; "
        "import service; print('service from', service.__file__, flush=True); "
        "runpy.run_module('service', run_name='__main__', alter_sys=True)"
    )
    command = [sys.executable, "-c", launcher, "--checkpoint-dir", str(checkpoints)]
    return Server(command, server_env("warning", 1), log_path, 1, "/readyz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve_ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (a folder)")
    parser.add_argument("--other-checkpoints", type=Path, required=True, help="its checkpoint folder")
    parser.add_argument("--checkpoints", type=Path, default=REPO_ROOT / "checkpoints", help="this one's")
    parser.add_argument("--model", default="two_gmm_1D", help="the model requests name")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of each wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs per case and server")
    args = parser.parse_args(argv)
    if not (args.other / "service" / "__main__.py").is_file():
        parser.error(f"{args.other} holds no service/ package")
    wrk.executable()
    work = Path(tempfile.mkdtemp(prefix="ctm-serve-ab-"))
    print(f"machine: {machine_line(1)}; {args.rounds} rounds of {args.seconds:g} s", flush=True)
    servers = {
        "this": start(REPO_ROOT, args.checkpoints, work / "this.log"),
        "other": start(args.other, args.other_checkpoints, work / "other.log"),
    }
    for name, server in servers.items():
        print(f"{name}: {server.log_path.read_text().splitlines()[0]}")
    ratios: list[float] = []
    try:
        print(f"{'case':<36} | {'this req/s (min–max)':>24} | {'other req/s (min–max)':>24} | this ÷ other")
        for case in CASES:
            url = case.query.format(model=args.model)
            rates: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    rates[name].append(wrk.run(server.base_url + url, case.connections, args.seconds).rps)
            mine, theirs = statistics.median(rates["this"]), statistics.median(rates["other"])
            cells = [f"{statistics.median(r):>9,.0f} ({min(r):,.0f}–{max(r):,.0f})" for r in rates.values()]
            print(f"{case.label:<36} | {cells[0]:>24} | {cells[1]:>24} | {mine / theirs:.2f}", flush=True)
            ratios.append(mine / theirs)
    finally:
        for server in servers.values():
            server.stop()
    print(f"\nslowest ratio {min(ratios):.2f} (below 1: this checkout serves slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
