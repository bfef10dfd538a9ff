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
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import memory_mb  # noqa: E402
from benchmarks.load import (  # noqa: E402
    EPHEMERAL,
    SWAPPED,
    Tally,
    percentiles,
    prepare_checkpoints,
    reloader_loop,
    rss_slope,
    start_server,
)

MAX_N = 100_000  # the service's default CTM_MAX_N
MAX_TRAJECTORY_VALUES = 1_000_000  # its default CTM_MAX_TRAJECTORY_VALUES
MAX_POST_POINTS = 10_000  # POST /logprob's limit
MAX_GET_POINTS = 100  # GET /logprob's limit
BIG_BODY_BYTES = 20 * 2**20
FLOOR_EVERY_S = 1.0  # seconds between the RSS readings whose minimum is the floor
KEPT_MESSAGES = 100  # failure messages kept per category (all are counted)


# ---- the mix -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One HTTP request to send: GET with `params`, or POST with a `json` body or raw `content`."""

    method: str
    path: str
    params: dict[str, Any] | list[tuple[str, Any]] | None = None
    json: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] | None = None

    def describe(self) -> str:
        """A short account of the request for failure messages (no bodies)."""
        if self.content is not None:
            return f"{self.method} {self.path} ({len(self.content):,}-byte body)"
        if self.json is not None:
            shown = {k: (f"[{len(v)} values]" if isinstance(v, list) else v) for k, v in self.json.items()}
            return f"{self.method} {self.path} {shown}"
        return f"{self.method} {self.path} {self.params or ''}"


@dataclass(frozen=True)
class Models:
    """What the mix may ask for: the served models (shipped ones) and each one's noise range."""

    names: list[str]
    sigma_range: dict[str, tuple[float, float]]  # name -> (sigma_min, sigma_max)


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix: label, weight, and how to build one (sizes drawn each time)."""

    label: str
    weight: int
    build: Callable[[random.Random, Models], Call]
    hostile: bool = False


def size(rng: random.Random, most: int = MAX_N) -> int:
    """n for one request: log-uniform from 1 to 10,000 mostly; 10,001 to 100,000 one time in 20
    (half of those the maximum). Capped at `most`."""
    if rng.random() < 0.95:
        n = int(10 ** rng.uniform(0, 4))
    else:
        n = MAX_N if rng.random() < 0.5 else rng.randint(10_001, MAX_N)
    return max(1, min(n, most))


def seed(rng: random.Random) -> int:
    return rng.randrange(2**62)


def sample(sampler: str, steps: int, **extra: Any) -> Callable[[random.Random, Models], Call]:
    def build(rng: random.Random, models: Models) -> Call:
        params = {"model": rng.choice(models.names), "sampler": sampler, "steps": steps}
        params |= {"n": size(rng), "seed": seed(rng), "noise": rng.choice(("random", "quantile")), **extra}
        return Call("GET", "/sample", params)

    return build


def sample_swapped(rng: random.Random, models: Models) -> Call:
    sampler, steps = rng.choice((("onestep", 1), ("multistep", 2), ("multistep", 4)))
    params = {"model": SWAPPED, "sampler": sampler, "steps": steps, "n": size(rng, 1000), "seed": seed(rng)}
    return Call("GET", "/sample", params)


def sigma_levels(rng: random.Random, sigma_min: float, sigma_max: float, levels: int) -> list[str]:
    """`levels` strictly decreasing noise levels from sigma_max to sigma_min, geometric with jitter."""
    inner = sorted((rng.uniform(0.05, 0.95) for _ in range(levels - 2)), reverse=True)
    ratio = sigma_min / sigma_max
    middle = [f"{sigma_max * ratio ** (1 - u):.6g}" for u in inner]
    # Rounded inner levels may collide; keep them strictly decreasing and inside the range.
    values = [repr(sigma_max)]
    for text in middle:
        if sigma_min < float(text) < float(values[-1]):
            values.append(text)
    return [*values, repr(sigma_min)]


def sample_sigmas(rng: random.Random, models: Models) -> Call:
    model = rng.choice(models.names)
    sampler = rng.choice(("onestep", "multistep", "gamma", "euler", "heun"))
    levels = sigma_levels(rng, *models.sigma_range[model], 2 if sampler == "onestep" else rng.randint(2, 12))
    params: list[tuple[str, Any]] = [("model", model), ("sampler", sampler), ("n", size(rng))]
    params += [
        ("seed", seed(rng)),
        *([("gamma", 0.3)] if sampler == "gamma" else []),
    ]  # no steps: sigmas fix them
    if rng.random() < 0.5:
        params.append(("sigmas", ",".join(levels)))  # comma-separated
    else:
        params += [("sigmas", level) for level in levels]  # repeated
    return Call("GET", "/sample", params)


TRAJECTORY_SAMPLERS = [("onestep", 1), ("multistep", 2), ("multistep", 4), ("multistep", 8)]
TRAJECTORY_SAMPLERS += [("gamma", 4), ("euler", 32), ("heun", 32)]


def trajectory(rng: random.Random, models: Models) -> Call:
    model = rng.choice(models.names)
    sampler, steps = rng.choice(TRAJECTORY_SAMPLERS)
    n = size(rng, MAX_TRAJECTORY_VALUES // (steps + 1))
    params: dict[str, Any] = {"model": model, "sampler": sampler, "steps": steps, "n": n, "seed": seed(rng)}
    if sampler == "gamma":
        params["gamma"] = 0.3
    if sampler != "onestep" and rng.random() < 0.25:
        levels = sigma_levels(rng, *models.sigma_range[model], steps + 1 if steps <= 8 else 9)
        params["sigmas"] = ",".join(levels)
        del params["steps"]  # the sigmas fix the steps; the service refuses both
    return Call("GET", "/trajectory", params)


def evaluate(rng: random.Random, models: Models) -> Call:
    sampler, steps = rng.choice((("onestep", 1), ("multistep", 4), ("heun", 32)))
    params = {"model": rng.choice(models.names), "sampler": sampler, "steps": steps, "n": size(rng, 20_000)}
    return Call("GET", "/evaluate", params | {"seed": seed(rng)})


def points(rng: random.Random, count: int) -> list[float]:
    return [round(rng.uniform(-6.0, 6.0), 6) for _ in range(count)]


def logprob_post(density: str, most: int) -> Callable[[random.Random, Models], Call]:
    def build(rng: random.Random, models: Models) -> Call:
        count = int(10 ** rng.uniform(0, np.log10(most)))
        body = {"model": rng.choice(models.names), "x": points(rng, count), "sampler": density}
        return Call("POST", "/logprob", json=body)

    return build


def logprob_get(density: str, most: int) -> Callable[[random.Random, Models], Call]:
    def build(rng: random.Random, models: Models) -> Call:
        params: list[tuple[str, Any]] = [("model", rng.choice(models.names)), ("sampler", density)]
        params += [("x", x) for x in points(rng, rng.randint(1, most))]
        return Call("GET", "/logprob", params)

    return build


def fixed(path: str) -> Callable[[random.Random, Models], Call]:
    return lambda rng, models: Call("GET", path)


def model_info(rng: random.Random, models: Models) -> Call:
    return Call("GET", f"/models/{rng.choice(models.names)}")


def density(rng: random.Random, models: Models) -> Call:
    return Call("GET", f"/models/{rng.choice(models.names)}/density", {"points": rng.randint(2, 2000)})


def plot(rng: random.Random, models: Models) -> Call:
    params = {"model": rng.choice(models.names), "n": size(rng, 2000), "sampler": "multistep", "steps": 2}
    return Call("GET", "/plot.png", params)


# ---- hostile requests: any 4xx is fine, a 5xx or a dropped connection is not ----------------------


def unknown_model(rng: random.Random, models: Models) -> Call:
    return Call("GET", "/sample", {"model": f"no-such-model-{rng.randrange(10**6)}", "n": 10})


def zero_n(rng: random.Random, models: Models) -> Call:
    return Call("GET", "/sample", {"model": rng.choice(models.names), "n": 0})


def bad_sigmas(rng: random.Random, models: Models) -> Call:
    sigma_min, sigma_max = models.sigma_range[models.names[0]]
    bad = rng.choice(
        (
            f"{sigma_max},abc,{sigma_min}",  # not a number
            f"{sigma_min},1,{sigma_max}",  # increasing
            f"{sigma_max},1,1,{sigma_min}",  # not strictly decreasing
            f"{sigma_max * 2},1,{sigma_min}",  # wrong end
            f"{sigma_max}",  # one level
            f"{sigma_max},nan,{sigma_min}",
            ",,,",
        )
    )
    return Call("GET", "/sample", {"model": models.names[0], "sampler": "multistep", "sigmas": bad})


def not_json(rng: random.Random, models: Models) -> Call:
    content = rng.choice((b"{not json", b"x=1&x=2", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b""))
    return Call("POST", "/logprob", content=content, headers={"content-type": "application/json"})


@cache
def too_many_points_body() -> bytes:
    return json.dumps({"x": [0.5] * (MAX_POST_POINTS + 1)}).encode()


@cache
def big_body_bytes() -> bytes:
    """About 20 MB of valid JSON: {"x": [0.1234567, ...]} (built once, on first use)."""
    return b'{"x": [' + b",".join([b"0.1234567"] * (BIG_BODY_BYTES // 10)) + b"]}"


def too_many_points(rng: random.Random, models: Models) -> Call:
    body = too_many_points_body()
    return Call("POST", "/logprob", content=body, headers={"content-type": "application/json"})


def big_body(rng: random.Random, models: Models) -> Call:
    return Call("POST", "/logprob", content=big_body_bytes(), headers={"content-type": "application/json"})


# Weights add up to 1,000: the hostile kinds are 1 % of the requests.
MIX = [
    Kind("sample onestep", 250, sample("onestep", 1)),
    Kind("sample multistep 2", 50, sample("multistep", 2)),
    Kind("sample multistep 4", 70, sample("multistep", 4)),
    Kind("sample multistep 8", 40, sample("multistep", 8)),
    Kind("sample gamma 4 γ0.3", 50, sample("gamma", 4, gamma=0.3)),
    Kind("sample euler 32", 30, sample("euler", 32)),
    Kind("sample heun 32", 30, sample("heun", 32)),
    Kind("sample swapped", 60, sample_swapped),
    Kind("sample sigmas=", 45, sample_sigmas),
    Kind("trajectory", 70, trajectory),
    Kind("evaluate", 20, evaluate),
    Kind("POST logprob onestep", 60, logprob_post("onestep", MAX_POST_POINTS)),
    Kind("POST logprob ode", 15, logprob_post("ode", 500)),
    Kind("GET logprob onestep", 30, logprob_get("onestep", MAX_GET_POINTS)),
    Kind("GET logprob ode", 10, logprob_get("ode", 20)),
    Kind("models", 50, fixed("/models")),
    Kind("model", 20, model_info),
    Kind("healthz", 45, fixed("/healthz")),
    Kind("readyz", 20, fixed("/readyz")),
    Kind("metrics", 10, fixed("/metrics")),
    Kind("density", 10, density),
    Kind("plot", 5, plot),
    Kind("hostile unknown model", 2, unknown_model, hostile=True),
    Kind("hostile n=0", 2, zero_n, hostile=True),
    Kind("hostile bad sigmas", 2, bad_sigmas, hostile=True),
    Kind("hostile not JSON", 2, not_json, hostile=True),
    Kind("hostile 10,001 points", 1, too_many_points, hostile=True),
    Kind("hostile 20 MB body", 1, big_body, hostile=True),
]


def chosen_kinds(patterns: list[str] | None) -> list[Kind]:
    """The kinds of the mix whose label matches one of `patterns` (regular expressions); all without."""
    if not patterns:
        return MIX
    return [kind for kind in MIX if any(re.search(pattern, kind.label) for pattern in patterns)]


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


# ---- report ----------------------------------------------------------------------------------------


def slope_after(rss: list[tuple[float, float]], warmup: float) -> tuple[float, int]:
    """Least-squares RSS slope in MB per 10 minutes over the samples at or after `warmup` seconds
    (load.py's `rss_slope`, which gives MB per minute), and how many samples it used."""
    after = [(t, int(mb * 2**20)) for t, mb in rss if t >= warmup]
    return rss_slope(after) * 10, len(after)


EXPECTED_LOG = "checkpoint rejected file=corrupt.safetensors"  # the reloader's corrupt file, each time
LOG_RECORD = re.compile(r"^(?:\d{4}-\d\d-\d\d [\d:,.]+ )?(CRITICAL|ERROR|WARNING)\b:?")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b")


def server_log_problems(log: str) -> dict[str, Any]:
    """What the server's log (level warning) reports: its error and warning records (but for the
    refusals of the reloader's corrupt file, counted apart), and the distinct exceptions that end
    its tracebacks, with counts."""
    records: Counter[str] = Counter()
    examples: list[str] = []
    exceptions: Counter[str] = Counter()
    expected = 0
    for line in log.splitlines():
        record = LOG_RECORD.match(line)
        if record is not None:
            if EXPECTED_LOG in line:
                expected += 1
                continue
            records[record.group(1)] += 1
            if len(examples) < 10:
                examples.append(line[:300])
        elif EXCEPTION_LINE.match(line):
            exceptions[line[:200]] += 1
    return {
        "errors": records["ERROR"] + records["CRITICAL"],
        "warnings": records["WARNING"],
        "tracebacks": log.count("Traceback (most recent call last)"),
        "examples": examples,
        "exceptions": dict(exceptions.most_common(10)),
        "corrupt_file_rejections": expected,
    }


def summarise(tally: SoakTally, args: argparse.Namespace, exit_code: int, log: str) -> dict[str, Any]:
    slope, used = slope_after(tally.rss, args.warmup)
    floor_slope, _ = slope_after(tally.rss_floor, args.warmup)
    hostile = {kind.label for kind in MIX if kind.hostile}
    every = [x for v in tally.latencies.values() for x in v]
    return {
        "duration_s": args.duration,
        "clients": args.clients,
        "think_s": args.think,
        "reload_every_s": args.reload_every,
        "sample_every_s": args.sample_every,
        "warmup_s": args.warmup,
        "seed": args.seed,
        "only": args.only,
        "cpus": len(os.sched_getaffinity(0)),
        "requests": tally.requests,
        "requests_per_second": tally.requests / args.duration,
        "legal_requests": sum(len(v) for k, v in tally.latencies.items() if k not in hostile),
        "hostile_requests": sum(len(v) for k, v in tally.latencies.items() if k in hostile),
        "latency": percentiles(every) if every else {},
        "by_kind": {
            label: {
                "requests": len(v),
                "hostile": label in hostile,
                "failures": tally.failed_by_kind[label],
                "statuses": {str(code): count for code, count in sorted(tally.statuses[label].items())},
                **percentiles(v),
            }
            for label, v in sorted(tally.latencies.items())
        },
        "legal_failures": tally.legal_failed,
        "legal_failure_examples": tally.failures[:10],
        "hostile_failures": tally.hostile_failed,
        "hostile_failure_examples": tally.hostile_failures[:10],
        "reloads": tally.reloads,
        "reload_failures": len(tally.reload_failures),
        "reload_failure_examples": tally.reload_failures[:10],
        "versions_served": len(tally.versions_seen),
        "rss_mb": [[round(t, 1), round(mb, 2)] for t, mb in tally.rss],
        "rss_floor_mb": [[round(t, 1), round(mb, 2)] for t, mb in tally.rss_floor],
        "rss_slope_mb_per_10min": slope,
        "rss_floor_slope_mb_per_10min": floor_slope,
        "rss_slope_samples": used,
        "max_slope_mb_per_10min": args.max_slope_mb_per_10min,
        "server_exit_code": exit_code,
        "server_died_during_run": tally.server_died,
        "server_log": server_log_problems(log),
    }


def print_report(result: dict[str, Any]) -> None:
    print()
    print(
        f"{result['clients']} clients for {result['duration_s']:g} s, reload every "
        f"{result['reload_every_s']:g} s, {result['cpus']} CPUs"
    )
    head = f"{'kind':<24} {'requests':>9} {'failed':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}  statuses"
    print(head)
    print("-" * len(head))
    for label, row in result["by_kind"].items():
        statuses = " ".join(f"{code}×{count}" for code, count in row["statuses"].items())
        print(
            f"{label:<24} {row['requests']:>9,} {row['failures']:>7} {row['p50_ms']:>9.1f} "
            f"{row['p99_ms']:>9.1f} {row['max_ms']:>9.1f}  {statuses}"
        )
    total = result["latency"]
    if total:  # none when the server died at once
        print(
            f"{'all':<24} {result['requests']:>9,} {'':>7} {total['p50_ms']:>9.1f} "
            f"{total['p99_ms']:>9.1f} {total['max_ms']:>9.1f}"
        )
    print("(statuses: HTTP status × requests; 0: no answer, a transport error)")
    print(
        f"requests: {result['requests']:,} ({result['requests_per_second']:.1f}/s): "
        f"{result['legal_requests']:,} legal, {result['hostile_requests']:,} hostile"
    )
    print(f"failed legal requests: {result['legal_failures']}")
    for failure in result["legal_failure_examples"][:5]:
        print(f"  {failure}")
    print(f"failed hostile requests (5xx or no answer): {result['hostile_failures']}")
    for failure in result["hostile_failure_examples"][:5]:
        print(f"  {failure}")
    print(
        f"reloads: {result['reloads']}, failed: {result['reload_failures']}; "
        f"versions of {SWAPPED} served: {result['versions_served']}"
    )
    for failure in result["reload_failure_examples"][:5]:
        print(f"  {failure}")
    series = ", ".join(f"{t:.0f} s {mb:.1f}" for t, mb in result["rss_mb"])
    print(f"server RSS (MB) by time: {series}")
    floors = ", ".join(f"{mb:.1f}" for _, mb in result["rss_floor_mb"])
    print(f"lowest RSS (MB) read each second over each interval: {floors}")
    verdict = "ok" if result["rss_slope_mb_per_10min"] <= result["max_slope_mb_per_10min"] else "TOO STEEP"
    print(
        f"RSS slope after {result['warmup_s']:g} s of warm-up: {result['rss_slope_mb_per_10min']:+.3f} MB "
        f"per 10 min over {result['rss_slope_samples']} samples "
        f"(limit {result['max_slope_mb_per_10min']:g}: {verdict}); "
        f"slope of the lowest readings: {result['rss_floor_slope_mb_per_10min']:+.3f} MB per 10 min"
    )
    log = result["server_log"]
    print(
        f"server exit code on SIGTERM: {result['server_exit_code']}; its log: {log['errors']} errors, "
        f"{log['warnings']} warnings, {log['tracebacks']} tracebacks "
        f"(besides {log['corrupt_file_rejections']} refusals of the reloader's corrupt file)"
    )
    for line in log["examples"][:5]:
        print(f"  {line}")
    for line, count in log["exceptions"].items():
        print(f"  {count} × {line}")


def passed(result: dict[str, Any]) -> bool:
    return (
        not result["server_died_during_run"]
        and result["legal_failures"] == 0
        and result["hostile_failures"] == 0
        and result["reload_failures"] == 0
        and result["server_exit_code"] == 0
        and result["rss_slope_mb_per_10min"] <= result["max_slope_mb_per_10min"]
    )


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
