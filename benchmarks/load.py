"""Load test: many concurrent clients against the real server (a subprocess on loopback), with hot reloads.

Starts `python -m service` on a free port over a fresh checkpoint folder (or --checkpoint-dir),
warms it up, then runs --concurrency clients for --duration seconds over a mix of every endpoint
and of small and large requests, while a reloader swaps one model's file between two versions,
adds and removes another, and drops in a corrupt one, calling POST /admin/reload each time.
Prints the requests sent, failures, latency percentiles per endpoint, and the server's resident
memory (VmRSS from /proc) after warm-up and after the run. Exits 1 on any failed request or when
memory grew by more than --max-rss-growth.

A failure is a transport error, or a status other than the one the request expects (every request
expects 200, except two deliberate mistakes: n=0 expects 422 and an unknown model 404), or a
response of the swapped model naming a version (model_sha256) that was never on disk.

    python benchmarks/load.py --duration 30 --concurrency 64
"""

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import Server  # noqa: E402
from benchmarks.reloads import (  # noqa: E402
    SWAPPED,
    prepare_checkpoints,
    reloader_loop,
)


@dataclass(frozen=True)
class Request:
    """One kind of request in the mix: label, path, query, the status it expects, its weight."""

    label: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    expect: int = 200
    weight: int = 1
    body: dict[str, Any] | None = None  # a JSON body: sent as POST


MIX = [
    Request("sample small", "/sample", {"n": 100}, weight=30),
    Request("sample multistep", "/sample", {"sampler": "multistep", "steps": 4, "n": 1000}, weight=12),
    Request("sample large heun", "/sample", {"sampler": "heun", "steps": 8, "n": 20_000}, weight=3),
    Request(
        "trajectory",
        "/trajectory",
        {"model": "gauss_1D", "sampler": "gamma", "steps": 4, "n": 200},
        weight=10,
    ),
    Request("sample swapped", "/sample", {"model": SWAPPED, "n": 64, "noise": "quantile"}, weight=15),
    Request("evaluate", "/evaluate", {"sampler": "multistep", "steps": 2, "n": 500}, weight=3),
    Request("density", "/models/two_gmm_1D/density", {"points": 200}, weight=2),
    Request("plot", "/plot.png", {"n": 500, "steps": 1}, weight=1),
    Request("logprob", "/logprob", body={"x": [i / 10 - 5 for i in range(100)]}, weight=2),
    Request("models", "/models", weight=5),
    Request("model", "/models/gauss_1D", weight=3),
    Request("healthz", "/healthz", weight=5),
    Request("readyz", "/readyz", weight=3),
    Request("metrics", "/metrics", weight=2),
    Request("bad n (422)", "/sample", {"n": 0}, expect=422, weight=2),
    Request("unknown model (404)", "/sample", {"model": "nope"}, expect=404, weight=2),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/load.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=30.0, help="seconds of measured load")
    p.add_argument(
        "--warmup",
        type=float,
        default=30.0,
        help="seconds of the same load before measuring (long enough for memory to reach its plateau)",
    )
    p.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    p.add_argument("--reload-every", type=float, default=1.0, help="seconds between reloads (0: no reloads)")
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="serve a copy of this folder's checkpoints too (default: untrained models only)",
    )
    p.add_argument(
        "--max-rss-growth", type=float, default=0.10, help="largest allowed RSS growth after warm-up"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results here")
    return p


# ---- the server ----------------------------------------------------------------------------------


def start_server(folder: Path, token: str, log_path: Path) -> Server:
    """The service on a free port with only this run's settings (the caller's CTM_* dropped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTM_")}
    env |= {"CTM_ADMIN_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "service", "--checkpoint-dir", str(folder), "--log-level", "warning"]
    return Server(command, env, log_path, workers=1, ready_path="/readyz")


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ---- clients and the reloader --------------------------------------------------------------------


@dataclass
class Tally:
    """Latencies and failures by request label."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    versions_seen: set[str] = field(default_factory=set)
    reloads: int = 0
    reload_failures: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())


async def client_loop(
    client: httpx.AsyncClient, pick: Callable[[], Request], versions: set[str], stop_at: float, tally: Tally
) -> None:
    while time.monotonic() < stop_at:
        request = pick()
        start = time.perf_counter()
        try:
            if request.body is not None:
                response = await client.post(request.path, json=request.body)
            else:
                response = await client.get(request.path, params=request.params)
            problem = None
            if response.status_code != request.expect:
                problem = f"{request.label}: status {response.status_code}: {response.text[:200]}"
            elif request.label == "sample swapped":
                version = response.json()["model_sha256"]
                tally.versions_seen.add(version)
                if version not in versions:
                    problem = f"{request.label}: unknown version {version}"
        except httpx.HTTPError as exc:
            seconds = time.perf_counter() - start
            problem = f"{request.label}: {type(exc).__name__} after {seconds:.3f} s: {exc!r}"
        tally.latencies[request.label].append(time.perf_counter() - start)
        if problem is not None:
            tally.failures.append(problem)


async def run_load(
    base_url: str,
    folder: Path,
    versions: dict[str, bytes],
    ephemeral: bytes,
    token: str,
    args: argparse.Namespace,
    seconds: float,
    rng: random.Random,
) -> Tally:
    tally = Tally()
    weights = [r.weight for r in MIX]

    def pick() -> Request:
        return rng.choices(MIX, weights)[0]

    connections = args.concurrency + 1
    # Idle connections expire on the client (2 s) before uvicorn closes them (5 s): otherwise a request
    # can go out on a connection the server is closing at that moment and fail with ReadError.
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
    )
    timeout = httpx.Timeout(120.0)
    stop_at = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        tasks = [client_loop(client, pick, set(versions), stop_at, tally) for _ in range(args.concurrency)]
        if args.reload_every > 0:
            tasks.append(
                reloader_loop(client, folder, versions, ephemeral, token, args.reload_every, stop_at, tally)
            )
        await asyncio.gather(*tasks)
    return tally


# ---- report --------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def summarise(tally: Tally, seconds: float, rss_warm: int, rss_end: int, rss_peak: int) -> dict[str, Any]:
    every = [x for v in tally.latencies.values() for x in v]
    return {
        "requests": tally.requests,
        "failures": len(tally.failures),
        "failure_examples": tally.failures[:10],
        "requests_per_second": tally.requests / seconds,
        "latency": percentiles(every) if every else {},
        "by_endpoint": {
            label: {"requests": len(v), **percentiles(v)} for label, v in sorted(tally.latencies.items())
        },
        "reloads": tally.reloads,
        "reload_failures": len(tally.reload_failures),
        "reload_failure_examples": tally.reload_failures[:10],
        "versions_served": len(tally.versions_seen),
        "rss_after_warmup_mb": rss_warm / 2**20,
        "rss_after_run_mb": rss_end / 2**20,
        "rss_peak_mb": rss_peak / 2**20,
        "rss_growth": rss_end / rss_warm - 1,
    }


def rss_quarters(series: list[tuple[float, int]], duration: float) -> list[float]:
    """Server RSS (MiB) at the end of each quarter of the run: flat once warm, rising with a leak."""
    marks = [duration * q / 4 for q in (1, 2, 3, 4)]
    return [next((rss for t, rss in series if t >= mark), series[-1][1]) / 2**20 for mark in marks]


def rss_slope(series: list[tuple[float, int]]) -> float:
    """Least-squares trend of the server's RSS over the run, MiB per minute (a leak shows as a rise)."""
    t = np.array([t for t, _ in series])
    mb = np.array([rss for _, rss in series]) / 2**20
    return float(np.polyfit(t, mb, 1)[0] * 60) if len(series) > 2 and np.ptp(t) > 0 else 0.0


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"{args.concurrency} clients, {args.duration:g} s measured after {args.warmup:g} s warm-up, "
        f"reload every {args.reload_every:g} s"
    )
    print(f"{'endpoint':<22} {'requests':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    rows = [*result["by_endpoint"].items(), ("all", {"requests": result["requests"], **result["latency"]})]
    for label, row in rows:
        print(
            f"{label:<22} {row['requests']:>9} {row['p50_ms']:>9.1f} {row['p90_ms']:>9.1f} "
            f"{row['p99_ms']:>9.1f} {row['max_ms']:>9.1f}"
        )
    print(
        f"requests: {result['requests']} ({result['requests_per_second']:.1f}/s), "
        f"failures: {result['failures']}; reloads: {result['reloads']}, "
        f"reload failures: {result['reload_failures']}, versions served: {result['versions_served']}"
    )
    print(
        f"server RSS: {result['rss_after_warmup_mb']:.1f} MiB after warm-up, "
        f"{result['rss_after_run_mb']:.1f} MiB after the run ({result['rss_growth']:+.1%}), "
        f"peak {result['rss_peak_mb']:.1f} MiB; server exit code on SIGTERM: {result['exit_code']}"
    )
    quarters = ", ".join(f"{mb:.1f}" for mb in result["rss_by_quarter_mb"])
    print(
        f"server RSS at the end of each quarter of the run (MiB): {quarters}; "
        f"trend {result['rss_slope_mb_per_min']:+.1f} MiB/min"
    )
    for failure in result["failure_examples"] + result["reload_failure_examples"]:
        print(f"  failure: {failure}")


async def measure(
    process: subprocess.Popen[bytes],
    base_url: str,
    folder: Path,
    versions: dict[str, bytes],
    ephemeral: bytes,
    token: str,
    args: argparse.Namespace,
    tally_rss: list[tuple[float, int]],
) -> tuple[Tally, int, int, int]:
    """Warm up, then measure; `tally_rss` receives (seconds into the run, server RSS) samples."""
    rng = random.Random(args.seed)
    if args.warmup > 0:
        await run_load(base_url, folder, versions, ephemeral, token, args, args.warmup, rng)
    rss_warm = rss_bytes(process.pid)
    start = time.monotonic()
    load = asyncio.create_task(
        run_load(base_url, folder, versions, ephemeral, token, args, args.duration, rng)
    )
    while not load.done():
        tally_rss.append((time.monotonic() - start, rss_bytes(process.pid)))
        await asyncio.sleep(0.25)
    tally = await load
    rss_end = rss_bytes(process.pid)
    tally_rss.append((time.monotonic() - start, rss_end))
    return tally, rss_warm, rss_end, max(rss for _, rss in tally_rss)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.warmup < 0 or args.reload_every < 0:
        print("error: --duration and --concurrency must be positive, --warmup and --reload-every ≥ 0")
        return 2
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="ctm-load-") as tmp:
        folder = Path(tmp) / "checkpoints"
        versions, ephemeral = prepare_checkpoints(folder, args.checkpoint_dir)
        log_path = Path(tmp) / "server.log"
        server = start_server(folder, token, log_path)
        process, base_url = server.process, server.base_url
        rss_series: list[tuple[float, int]] = []
        try:
            tally, rss_warm, rss_end, rss_peak = asyncio.run(
                measure(process, base_url, folder, versions, ephemeral, token, args, rss_series)
            )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                exit_code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                exit_code = process.wait()
        result = summarise(tally, args.duration, rss_warm, rss_end, rss_peak)
        result |= {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "reload_every_s": args.reload_every,
            "exit_code": exit_code,
            "cpus": len(os.sched_getaffinity(0)),
            "rss_by_quarter_mb": rss_quarters(rss_series, args.duration),
            "rss_slope_mb_per_min": rss_slope(rss_series),
        }
        if result["failures"] or result["reload_failures"] or exit_code != 0:
            print(log_path.read_text()[-4000:], file=sys.stderr)
    print_report(result, args)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = (
        result["failures"] == 0
        and result["reload_failures"] == 0
        and result["rss_growth"] <= args.max_rss_growth
        and exit_code == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
