"""Soak test: an hour of mixed traffic against one worker, with reloads, watching resident memory.

Starts `python -m service` (one uvicorn worker) on a free loopback port over a scratch copy of the
shipped checkpoints plus the reloader's files of benchmarks/load.py (a model swapped between two
versions, another added and removed, a corrupt one dropped in), then runs --clients clients for
--duration seconds over a weighted mix: /sample with every sampler (onestep; multistep 2, 4, 8
steps; gamma with γ 0.3; euler and heun 32 steps) at sizes n from 1 to 100,000 (large ones rare),
explicit `sigmas`, /trajectory, /evaluate, GET and POST /logprob (onestep up to 10,000 points, ode
on small sizes only), /models, the health and metrics endpoints, the density and the plot; a
POST /admin/reload every --reload-every seconds (load.py's reloader); and about 1 % hostile
requests (unknown model, n=0, malformed sigmas, a body that is not JSON, 10,001 points, a 20 MB
body). A legal request fails on any status but 200 (or a swapped-model answer naming a version
never on disk); a hostile one fails only on a 5xx or a transport error (any 4xx is accepted).

Every --sample-every seconds it reads the server's resident memory (VmRSS summed over its process
tree) and prints a progress line; it also keeps the lowest of the readings it takes each second in
between (the floor, without the transient peaks of requests in flight). At the end it prints the
requests by kind with p50/p99, the failures (legal and hostile apart, with the first messages), the
server log's errors, the memory series, and its least-squares slope in MB (2^20 bytes) per 10
minutes over the samples after --warmup seconds (and the floor's, for comparison); --json writes
the record. Exits 1 on any failed request or reload, an unclean server exit, or a slope of the
samples above --max-slope-mb-per-10min. Not part of CI: the recorded run is in docs/RELIABILITY.md.
The server gets this process's environment without its CTM_* variables (so e.g. MALLOC_ARENA_MAX
reaches it); --only restricts the mix, to find which traffic grows memory.

    python benchmarks/soak.py --json soak.json                      # the full hour
    python benchmarks/soak.py --duration 180 --warmup 60 --sample-every 15 --reload-every 30
"""

import argparse
import asyncio
import json
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import memory_mb  # noqa: E402
from benchmarks.load import Tally, start_server  # noqa: E402
from benchmarks.reloads import EPHEMERAL, SWAPPED, prepare_checkpoints, reloader_loop  # noqa: E402
from benchmarks.soak_mix import Call, Kind, Models, chosen_kinds  # noqa: E402
from benchmarks.soak_report import passed, print_report, summarise  # noqa: E402

FLOOR_EVERY_S = 1.0  # seconds between the RSS readings whose minimum is the floor
KEPT_MESSAGES = 100  # failure messages kept per category (all are counted)


# ---- clients and the memory monitor -------------------------------------------------------------------


@dataclass
class SoakTally(Tally):
    """load.py's tally (latencies by label, legal failures, reloads) plus the hostile requests'
    failures and every label's status codes."""

    hostile_failures: list[str] = field(default_factory=list)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    failed_by_kind: Counter[str] = field(default_factory=Counter)
    legal_failed: int = 0
    hostile_failed: int = 0
    server_died: bool = False
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, MB)
    rss_floor: list[tuple[float, float]] = field(default_factory=list)  # the same, the interval's lowest

    def fail(self, kind: Kind, message: str) -> None:
        """Count a failed request; keep the first KEPT_MESSAGES messages of each category."""
        self.failed_by_kind[kind.label] += 1
        if kind.hostile:
            self.hostile_failed += 1
        else:
            self.legal_failed += 1
        messages = self.hostile_failures if kind.hostile else self.failures
        if len(messages) < KEPT_MESSAGES:
            messages.append(message)


async def send(client: httpx.AsyncClient, call: Call) -> httpx.Response:
    if call.method == "GET":
        return await client.get(call.path, params=call.params, headers=call.headers)
    return await client.post(call.path, json=call.json, content=call.content, headers=call.headers)


def check(kind: Kind, response: httpx.Response, versions: set[str], tally: SoakTally) -> str | None:
    """The problem with an answer, or None when it is what the request should get."""
    code = response.status_code
    if kind.hostile:
        return None if 400 <= code < 500 else f"status {code}: {response.text[:200]}"
    if code != 200:
        return f"status {code}: {response.text[:200]}"
    if kind.label == "sample swapped":
        version = response.json()["model_sha256"]
        tally.versions_seen.add(version)
        if version not in versions:
            return f"unknown version {version}"
    return None


async def client_loop(
    client: httpx.AsyncClient,
    mix: list[Kind],
    rng: random.Random,
    models: Models,
    versions: set[str],
    think: float,
    stop_at: float,
    tally: SoakTally,
) -> None:
    weights = [kind.weight for kind in mix]
    while time.monotonic() < stop_at:
        kind = rng.choices(mix, weights)[0]
        call = kind.build(rng, models)
        start = time.perf_counter()
        try:
            response = await send(client, call)
            tally.statuses[kind.label][response.status_code] += 1
            problem = check(kind, response, versions, tally)
        except httpx.HTTPError as exc:
            tally.statuses[kind.label][0] += 1  # 0: no answer
            problem = f"{type(exc).__name__} after {time.perf_counter() - start:.3f} s: {exc!r}"
        tally.latencies[kind.label].append(time.perf_counter() - start)
        if problem is not None:
            tally.fail(kind, f"{kind.label}: {call.describe()[:300]}: {problem}")
        if think > 0:
            await asyncio.sleep(rng.expovariate(1 / think))


def progress_line(tally: SoakTally, elapsed: float, last: tuple[float, int]) -> str:
    since, before = last
    rate = (tally.requests - before) / max(elapsed - since, 1e-9)
    mb, floor = tally.rss[-1][1], tally.rss_floor[-1][1]
    return (
        f"[{elapsed:7.0f} s] requests {tally.requests:>8,} ({rate:5.1f}/s), "
        f"failures legal {tally.legal_failed} hostile {tally.hostile_failed}, "
        f"reloads {tally.reloads} (failed {len(tally.reload_failures)}), RSS {mb:.1f} MB (floor {floor:.1f})"
    )


async def monitor(
    process: subprocess.Popen[bytes],
    start: float,
    every: float,
    stop_at: float,
    tally: SoakTally,
    others: list[asyncio.Task[None]],
) -> None:
    """Record the server's RSS at 0, every, 2·every, … seconds into the run, and the lowest of the
    readings taken each second since the previous sample (the floor: what stays resident between
    requests, without the transient peaks of the ones in flight); print a progress line each time.
    Cancel the `others` (clients, reloader) if the server has exited."""
    last = (0.0, 0)
    k = 0
    floor = float("inf")
    while True:
        elapsed = time.monotonic() - start
        if process.poll() is not None:
            print(f"[{elapsed:7.0f} s] the server exited with {process.returncode}: stopping", flush=True)
            tally.server_died = True
            for task in others:
                task.cancel()
            return
        mb = memory_mb(process.pid)
        floor = min(floor, mb)
        next_at = start + k * every
        if time.monotonic() >= next_at - 0.01:
            tally.rss.append((elapsed, mb))
            tally.rss_floor.append((elapsed, floor))
            print(progress_line(tally, elapsed, last), flush=True)
            last = (elapsed, tally.requests)
            floor = float("inf")
            k += 1
            next_at = start + k * every
            if next_at > stop_at:
                return
        await asyncio.sleep(max(0.0, min(next_at, time.monotonic() + FLOOR_EVERY_S) - time.monotonic()))


async def soak(
    base_url: str,
    process: subprocess.Popen[bytes],
    folder: Path,
    versions: dict[str, bytes],
    ephemeral: bytes,
    token: str,
    args: argparse.Namespace,
) -> SoakTally:
    tally = SoakTally()
    connections = args.clients + 1
    # As in load.py: idle connections expire on the client (2 s) before uvicorn closes them (5 s).
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(120.0)) as client:
        listing = (await client.get("/models")).json()["models"]
        shipped = [m for m in listing if m["name"] not in (SWAPPED, EPHEMERAL)]
        models = Models(
            names=[m["name"] for m in shipped],
            sigma_range={m["name"]: (m["noise"]["sigma_min"], m["noise"]["sigma_max"]) for m in shipped},
        )
        print(f"models in the mix: {', '.join(models.names)} (and {SWAPPED}, swapped by the reloader)")
        start = time.monotonic()
        stop_at = start + args.duration
        master = random.Random(args.seed)
        mix = chosen_kinds(args.only)
        rngs = [random.Random(master.random()) for _ in range(args.clients)]
        loops = [
            client_loop(client, mix, rng, models, set(versions), args.think, stop_at, tally) for rng in rngs
        ]
        if args.reload_every > 0:
            loops.append(
                reloader_loop(client, folder, versions, ephemeral, token, args.reload_every, stop_at, tally)
            )
        tasks = [asyncio.create_task(loop) for loop in loops]
        await monitor(process, start, args.sample_every, stop_at, tally, tasks)
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):  # not a failed request (those are counted): a bug here
                raise outcome
    return tally


# ---- the run -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/soak.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of traffic")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument(
        "--think", type=float, default=0.02, help="mean pause of a client between requests (s, exponential)"
    )
    p.add_argument("--reload-every", type=float, default=60.0, help="seconds between reloads (0: none)")
    p.add_argument("--sample-every", type=float, default=60.0, help="seconds between RSS readings")
    p.add_argument(
        "--warmup", type=float, default=300.0, help="seconds of traffic before the RSS slope's first sample"
    )
    p.add_argument(
        "--max-slope-mb-per-10min", type=float, default=1.0, help="largest allowed RSS slope after warm-up"
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=REPO_ROOT / "checkpoints",
        help="serve a scratch copy of this folder's checkpoints (plus the reloader's files)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="REGEX",
        help="only the kinds of request whose label (e.g. 'sample heun 32', 'hostile n=0') matches one of "
        "these, with their weights (to find which traffic grows memory)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the record here")
    p.add_argument("--server-log", type=Path, default=None, metavar="FILE", help="keep the server's log here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.sample_every <= 0:
        print("error: --duration, --clients and --sample-every must be positive", file=sys.stderr)
        return 2
    if args.reload_every < 0 or args.warmup < 0 or args.think < 0:
        print("error: --reload-every, --warmup and --think must be ≥ 0", file=sys.stderr)
        return 2
    if not chosen_kinds(args.only):
        print(f"error: no kind of request matches {args.only}", file=sys.stderr)
        return 2
    if not any(args.checkpoint_dir.glob("*.safetensors")):
        print(f"error: no *.safetensors in {args.checkpoint_dir}", file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="ctm-soak-") as tmp:
        folder = Path(tmp) / "checkpoints"
        versions, ephemeral = prepare_checkpoints(folder, args.checkpoint_dir, untrained=())
        log_path = Path(tmp) / "server.log"
        server = start_server(folder, token, log_path)
        process = server.process
        print(
            f"server pid {process.pid} at {server.base_url}, ready in {server.ready_s:.1f} s, "
            f"{memory_mb(process.pid):.1f} MB resident",
            flush=True,
        )
        try:
            tally = asyncio.run(soak(server.base_url, process, folder, versions, ephemeral, token, args))
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                exit_code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                exit_code = process.wait()
        log = log_path.read_text(errors="replace")
        if args.server_log is not None:
            args.server_log.write_text(log)
    result = summarise(tally, args, exit_code, log)
    print_report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = passed(result)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
