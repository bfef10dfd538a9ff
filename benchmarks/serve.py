"""Serving benchmark: /sample and /trajectory latency and throughput, beside the limit and the floor.

One run measures, for each case (endpoint, sampler, n) and each concurrency c, with the same
async httpx client code (c clients, each an `httpx.AsyncClient` on one keep-alive connection,
sending its next request when the last one's body has arrived):

- service: the real server, `python -m service`, started as a subprocess on loopback;
- floor: a bare FastAPI endpoint on uvicorn (same host, log level and worker count) that returns
  the service's own response for that case, precomputed: what HTTP and JSON alone cost;
- limit: the same sampler called in-process (`service.inference.run_job`: the runtime the service
  uses, no HTTP, no JSON), one call at a time, with the service's threads per batch.

It prints p50/p99 latency, requests/s and samples/s of each, the ratios to the limit and the
floor, the throughput with 1 and 2 worker processes (CTM_WORKERS), and the server's time to
ready (200 on /readyz) and resident memory with every model of the checkpoint folder loaded.
A concurrency whose first round alone would take longer than --budget seconds is skipped. The
service gets this process's CTM_* variables (e.g. CTM_INFERENCE_THREADS, CTM_BATCH_MAX_ROWS).

    python benchmarks/serve.py                   # the full matrix, a few minutes
    python benchmarks/serve.py --quick           # a smaller matrix, under a minute
"""

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0
FLOOR_PAYLOADS_ENV = "CTM_BENCH_FLOOR_PAYLOADS"
DEFAULT_MODEL = "two_gmm_1D"


@dataclass(frozen=True)
class Case:
    """One kind of request: endpoint, sampler, steps, n."""

    path: str
    sampler: str
    steps: int
    n: int

    @property
    def label(self) -> str:
        steps = "" if self.sampler == "onestep" else f" {self.steps}"
        return f"{self.path} {self.sampler}{steps} n={self.n:,}"

    def query(self, model: str) -> str:
        """The query string, without the seed (the client appends a fresh one to every request)."""
        return f"model={model}&sampler={self.sampler}&steps={self.steps}&n={self.n}"


SAMPLERS = (("onestep", 1), ("multistep", 4), ("heun", 18))
CASES = [Case("/sample", s, k, n) for n in (1, 100, 1000, 100_000) for s, k in SAMPLERS]
CASES.append(Case("/trajectory", "multistep", 4, 1000))
QUICK_CASES = [
    Case("/sample", "onestep", 1, 1),
    Case("/sample", "onestep", 1, 1000),
    Case("/sample", "multistep", 4, 1000),
    Case("/sample", "onestep", 1, 100_000),
    Case("/trajectory", "multistep", 4, 1000),
]
# Throughput per worker count: small requests (HTTP-bound) and large ones (compute-bound).
WORKER_CASES = [
    (Case("/sample", "onestep", 1, 1), 64),
    (Case("/sample", "onestep", 1, 1000), 64),
    (Case("/sample", "multistep", 4, 1000), 64),
    (Case("/sample", "onestep", 1, 100_000), 8),
]


@dataclass
class Stats:
    """Latencies of one measurement window, and what they add up to."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    rps: float
    samples_per_s: float

    @classmethod
    def of(cls, latencies: list[float], seconds: float, n: int) -> "Stats":
        ms = np.asarray(latencies) * 1e3
        rps = len(latencies) / seconds
        p50, p99 = (float(v) for v in np.percentile(ms, [50, 99]))
        return cls(len(latencies), seconds, p50, p99, rps, rps * n)


@dataclass
class Row:
    """One case at one concurrency: the service, the floor and the limit."""

    case: str
    n: int
    concurrency: int
    service: Stats | None
    floor: Stats | None
    limit: Stats
    body_bytes: int
    skipped: str = ""


@dataclass
class ServerInfo:
    """How long a server took to answer 200 on /readyz, and its resident memory (all its processes)."""

    workers: int
    ready_s: float
    rss_ready_mb: float
    rss_end_mb: float = 0.0
    rss_peak_mb: float = 0.0
    models: int = 0


@dataclass
class Report:
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    servers: list[ServerInfo] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)


# ---- the floor: a bare endpoint returning precomputed bodies ---------------------------------------


def floor_app() -> Any:
    """The floor server's app: GET /sample and /trajectory answer the body recorded for their query
    (the seed, sent last, is ignored). Run by uvicorn as `benchmarks.serve:floor_app` (factory)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    folder = Path(os.environ[FLOOR_PAYLOADS_ENV])
    index = json.loads((folder / "index.json").read_text())
    bodies = {key: (folder / name).read_bytes() for key, name in index.items()}
    app = FastAPI()

    async def answer(request: Request) -> Response:
        query = request.scope["query_string"].decode().partition("&seed=")[0]
        return Response(bodies[f"{request.scope['path']}?{query}"], media_type="application/json")

    app.add_api_route("/sample", answer, methods=["GET"])
    app.add_api_route("/trajectory", answer, methods=["GET"])
    return app


# ---- servers ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's worker processes), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def memory_mb(pid: int, key: str = "VmRSS") -> float:
    """The sum of `key` (VmRSS: resident now; VmHWM: peak resident) over `pid`'s process tree, in MB."""
    total = 0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith(f"{key}:")), 0)
    return total / 1024


class Server:
    """A server subprocess on a free loopback port, ready when `ready_path` answers 200."""

    def __init__(
        self, command: list[str], env: dict[str, str], log_path: Path, workers: int, ready_path: str
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        start = time.perf_counter()
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(ready_path)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.perf_counter() - start
        if workers > 1:
            # Workers start together; the 200 came from the first one. Give the others as long again.
            time.sleep(self.ready_s)

    def _wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                log = self.log_path.read_text()
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{log}")
            try:
                if httpx.get(f"{self.base_url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {START_TIMEOUT_S} s:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def rss_mb(self) -> float:
        return memory_mb(self.process.pid)

    def peak_rss_mb(self) -> float:
        return memory_mb(self.process.pid, "VmHWM")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def server_env(log_level: str, workers: int) -> dict[str, str]:
    """This process's environment (CTM_* variables included: they configure the service, e.g.
    CTM_INFERENCE_THREADS) with the log level and worker count of this measurement."""
    return os.environ | {"CTM_LOG_LEVEL": log_level, "CTM_WORKERS": str(workers), "PYTHONUNBUFFERED": "1"}


def start_service(folder: Path, log_level: str, workers: int, log_path: Path) -> Server:
    """`python -m service` on `folder`, with CTM_WORKERS and CTM_LOG_LEVEL set and defaults otherwise."""
    command = [sys.executable, "-m", "service", "--checkpoint-dir", str(folder)]
    return Server(command, server_env(log_level, workers), log_path, workers, "/readyz")


def start_floor(payloads: Path, log_level: str, workers: int, log_path: Path) -> Server:
    """The floor app on uvicorn with the service's settings (host, log level, workers; uvicorn's
    defaults otherwise, as `python -m service` uses them)."""
    command = [sys.executable, "-m", "uvicorn", "benchmarks.serve:floor_app", "--factory"]
    command += ["--host", "127.0.0.1", "--log-level", log_level, "--workers", str(workers)]
    env = server_env(log_level, workers) | {FLOOR_PAYLOADS_ENV: str(payloads)}
    return Server(command, env, log_path, workers, "/openapi.json")


# ---- the client ---------------------------------------------------------------------------------------


async def drive(
    base_url: str, case: Case, model: str, concurrency: int, seconds: float, min_requests: int
) -> Stats:
    """`concurrency` clients send `case` back to back for `seconds` (and at least `min_requests`
    requests in all), after a warm-up request on each; every request has a fresh seed.

    Each concurrent client is its own `httpx.AsyncClient` with one keep-alive connection: one
    client with 64 pooled connections spends its time in its pool (on this machine 88 requests/s
    against the floor, against 731 with a client per connection).
    """
    url = f"{base_url}{case.path}?{case.query(model)}&seed="
    seeds = iter(range(1, 1 << 62))
    clients = [
        httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=1)) for _ in range(concurrency)
    ]
    try:

        async def one(client: httpx.AsyncClient) -> float:
            start = time.perf_counter()
            try:
                response = await client.get(f"{url}{next(seeds)}")
            except httpx.RemoteProtocolError:
                # A connection idle past the server's keep-alive timeout (5 s: the warm-up round of
                # a slow case at c = 64 takes longer) can be closed as the request goes out; a
                # client then reconnects and sends it again, as any HTTP client does for a GET.
                start = time.perf_counter()
                response = await client.get(f"{url}{next(seeds)}")
            if response.status_code != 200:
                raise RuntimeError(f"{case.label}: {response.status_code} {response.text[:200]}")
            return time.perf_counter() - start

        await asyncio.gather(*(one(client) for client in clients))
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def client_loop(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < deadline or len(latencies) < min_requests:
                latencies.append(await one(client))

        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for client in clients))
        return Stats.of(latencies, time.perf_counter() - start, case.n)
    finally:
        for client in clients:
            await client.aclose()


def measure_http(base_url: str, case: Case, model: str, concurrency: int, args: argparse.Namespace) -> Stats:
    return asyncio.run(drive(base_url, case, model, concurrency, args.seconds, args.min_requests))


def fetch_body(base_url: str, case: Case, model: str) -> bytes:
    response = httpx.get(f"{base_url}{case.path}?{case.query(model)}&seed=0", timeout=300)
    response.raise_for_status()
    return response.content


# ---- the limit: the same sampler in-process ----------------------------------------------------------


def measure_limit(model: Any, case: Case, seconds: float, min_requests: int, device: Any) -> Stats:
    """`run_job` called back to back in this process (one warm-up call first)."""
    from service.inference import SamplingJob, run_job

    def job(seed: int) -> Any:
        return SamplingJob(
            model=model,
            sampler=case.sampler,
            steps=case.steps,
            n=case.n,
            seed=seed,
            noise="random",
            gamma=0.5,
        )  # type: ignore[arg-type]

    run_job(job(0), device)
    latencies: list[float] = []
    seed = 1
    begin = time.perf_counter()
    deadline = begin + seconds
    while time.perf_counter() < deadline or len(latencies) < min_requests:
        start = time.perf_counter()
        run_job(job(seed), device)
        latencies.append(time.perf_counter() - start)
        seed += 1
    return Stats.of(latencies, time.perf_counter() - begin, case.n)


# ---- checkpoints ------------------------------------------------------------------------------------


def prepare_checkpoints(folder: Path | None, scratch: Path) -> tuple[Path, str]:
    """The folder to serve, and how it was chosen: the given one, `checkpoints/` when it holds any
    checkpoint, else `scratch` filled with one untrained default-size (4×128) model per built-in task."""
    if folder is not None:
        return folder, f"{folder}"
    shipped = REPO_ROOT / "checkpoints"
    if any(shipped.glob("*.safetensors")):
        return shipped, "checkpoints/ (the shipped models)"
    import torch

    from ctm_core.checkpoint import build_model, checkpoint_metadata, save_checkpoint
    from ctm_core.config import NetworkConfig, NoiseConfig
    from ctm_core.tasks import TASKS

    scratch.mkdir(parents=True, exist_ok=True)
    network = NetworkConfig()
    noise = NoiseConfig(sigma_data=0.5, data_mean=0.0)
    for seed, name in enumerate(TASKS):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student = build_model(network, 0.5)
            teacher = build_model(network, 0.5)
        metadata = checkpoint_metadata(
            network=network, noise=noise, task={"name": name, "description": f"benchmark model {name}"}
        )
        save_checkpoint(scratch / f"{name}.safetensors", student=student, teacher=teacher, metadata=metadata)
    return scratch, f"untrained {network.depth}×{network.width} models, one per built-in task ({len(TASKS)})"


# ---- output -----------------------------------------------------------------------------------------


def machine_info(service_threads: int, checkpoints: str) -> dict[str, Any]:
    import torch

    from ctm_core.machine import cpu_name, usable_cpus

    cpu, usable = cpu_name(), usable_cpus()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": service_threads,
        "checkpoints": checkpoints,
        "load_average_start": os.getloadavg(),
    }


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _rate(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def table(rows: list[Row]) -> str:
    """The main table: one line per case and concurrency."""
    head = (
        f"{'case':<31}{'c':>3} | {'service p50':>11}{'p99':>8}{'req/s':>8}{'samples/s':>10} | "
        f"{'floor p50':>9}{'p99':>8}{'req/s':>8} | {'limit p50':>9}{'p99':>8}{'req/s':>8} | "
        f"{'p50 ÷ limit':>11}{'p50 − l − f':>12}{'req/s ÷ floor':>14}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        lim = row.limit
        start = f"{row.case:<31}{row.concurrency:>3} | "
        if row.service is None or row.floor is None:
            lines.append(f"{start}{'skipped: ' + row.skipped:<37} | {'':<25} | "
                         f"{_ms(lim.p50_ms):>9}{_ms(lim.p99_ms):>8}{_rate(lim.rps):>8} |")  # fmt: skip
            continue
        svc, flo = row.service, row.floor
        extra = svc.p50_ms - lim.p50_ms - flo.p50_ms
        lines.append(
            f"{start}{_ms(svc.p50_ms):>11}{_ms(svc.p99_ms):>8}"
            f"{_rate(svc.rps):>8}{_rate(svc.samples_per_s):>10} | "
            f"{_ms(flo.p50_ms):>9}{_ms(flo.p99_ms):>8}{_rate(flo.rps):>8} | "
            f"{_ms(lim.p50_ms):>9}{_ms(lim.p99_ms):>8}{_rate(lim.rps):>8} | "
            f"{svc.p50_ms / lim.p50_ms:>11.2f}{extra:>+12.3f}{svc.rps / flo.rps:>14.2f}"
        )
    return "\n".join(lines)


def find(rows: list[Row], label: str, concurrency: int) -> Row | None:
    return next((r for r in rows if r.case == label and r.concurrency == concurrency), None)


def checks(report: Report) -> list[tuple[str, bool | None, str]]:
    """The performance targets, from this run: (target, met, measured)."""
    out: list[tuple[str, bool | None, str]] = []
    row = find(report.rows, Case("/sample", "onestep", 1, 1000).label, 1)
    if row and row.service and row.floor:
        bound = row.limit.p50_ms + row.floor.p50_ms + 0.5
        out.append(
            (
                "n=1000 onestep c=1: service p50 ≤ limit p50 + floor p50 + 0.5 ms",
                row.service.p50_ms <= bound,
                f"{row.service.p50_ms:.3f} ms ≤ {row.limit.p50_ms:.3f} + {row.floor.p50_ms:.3f} + 0.5 "
                f"= {bound:.3f} ms",
            )
        )
    row = find(report.rows, Case("/sample", "onestep", 1, 1).label, 64)
    if row and row.service and row.floor:
        ratio = row.service.rps / row.floor.rps
        out.append(
            (
                "n=1 onestep c=64: service req/s ≥ 0.7 × floor req/s",
                ratio >= 0.7,
                f"{row.service.rps:.0f} / {row.floor.rps:.0f} req/s = {ratio:.2f}",
            )
        )
    row = find(report.rows, Case("/sample", "onestep", 1, 100_000).label, 1)
    if row and row.service:
        ratio = row.service.p50_ms / row.limit.p50_ms
        out.append(
            (
                "n=100,000 onestep c=1: service p50 ≤ 1.5 × limit p50",
                ratio <= 1.5,
                f"{row.service.p50_ms:.1f} / {row.limit.p50_ms:.1f} ms = {ratio:.2f}",
            )
        )
    one = next((s for s in report.servers if s.workers == 1), None)
    if one is not None:
        out.append(
            (
                f"1 worker, {one.models} models loaded: resident memory ≤ 400 MB",
                max(one.rss_end_mb, one.rss_ready_mb) <= 400,
                f"{one.rss_ready_mb:.0f} MB at ready, {one.rss_end_mb:.0f} MB after the run "
                f"(peak {one.rss_peak_mb:.0f} MB)",
            )
        )
        out.append(
            ("1 worker: ready (200 on /readyz) ≤ 5 s after start", one.ready_s <= 5, f"{one.ready_s:.2f} s")
        )
    return out


# ---- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Report:

    from ctm_core.machine import resolve_device
    from service.config import Settings
    from service.inference import torch_threads_for, use_threads
    from service.registry import load_model

    work = Path(tempfile.mkdtemp(prefix="ctm-bench-serve-"))
    try:
        folder, described = prepare_checkpoints(args.checkpoint_dir, work / "checkpoints")
        models = sorted(p.stem for p in folder.glob("*.safetensors"))
        model_name = args.model or (DEFAULT_MODEL if DEFAULT_MODEL in models else models[0])
        settings = Settings(workers=1)
        device = resolve_device(settings.device)
        threads = torch_threads_for(settings)
        use_threads(threads)  # the limit runs as the service's batches do
        report = Report(machine_info(threads, described))
        cases = QUICK_CASES if args.quick else CASES
        if args.only:
            cases = [c for c in cases if any(re.search(pattern, c.label) for pattern in args.only)]
        m = report.machine
        print(
            f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), Python {m['python']}, "
            f"torch {m['torch']}; {threads} thread(s) per batch in the service and in the limit; "
            f"load average {m['load_average_start'][0]:.2f}",
            flush=True,
        )
        print(
            f"models: {described}; requests name {model_name}; device {device}; log level {args.log_level}",
            flush=True,
        )

        service = start_service(folder, args.log_level, 1, work / "service.log")
        info = ServerInfo(1, service.ready_s, service.rss_mb(), models=len(models))
        report.servers.append(info)
        print(f"service ready in {service.ready_s:.2f} s, {info.rss_ready_mb:.0f} MB resident", flush=True)
        floor = None
        try:
            payloads = work / "payloads"
            payloads.mkdir()
            index, sizes = {}, {}
            for i, case in enumerate(cases):
                body = fetch_body(service.base_url, case, model_name)
                (payloads / f"{i}.json").write_bytes(body)
                index[f"{case.path}?{case.query(model_name)}"] = f"{i}.json"
                sizes[case] = len(body)
            (payloads / "index.json").write_text(json.dumps(index))
            floor = start_floor(payloads, args.log_level, 1, work / "floor.log")
            model = load_model(folder / f"{model_name}.safetensors", device)

            print(flush=True)
            print(table([]), flush=True)
            for case in cases:
                limit = measure_limit(model, case, args.seconds, args.min_requests, device)
                first_p50: float | None = None
                for concurrency in args.concurrency:
                    if first_p50 is not None and concurrency * first_p50 / 1e3 > args.budget:
                        skipped = f"c × {_ms(first_p50)} ms > {args.budget:g} s"
                        row = Row(case.label, case.n, concurrency, None, None, limit, sizes[case], skipped)
                    else:
                        svc = measure_http(service.base_url, case, model_name, concurrency, args)
                        flo = measure_http(floor.base_url, case, model_name, concurrency, args)
                        first_p50 = first_p50 if first_p50 is not None else svc.p50_ms
                        row = Row(case.label, case.n, concurrency, svc, flo, limit, sizes[case])
                    report.rows.append(row)
                    print(table([row]).splitlines()[2], flush=True)
            info.rss_end_mb = service.rss_mb()
            info.rss_peak_mb = service.peak_rss_mb()
        finally:
            service.stop()
            if floor is not None:
                floor.stop()

        if args.workers:
            print(flush=True)
            for workers in args.workers:
                server = start_service(folder, args.log_level, workers, work / f"service-{workers}.log")
                try:
                    entry = ServerInfo(workers, server.ready_s, server.rss_mb(), models=len(models))
                    if workers != 1:
                        report.servers.append(entry)
                    for case, concurrency in WORKER_CASES:
                        stats = measure_http(server.base_url, case, model_name, concurrency, args)
                        report.workers.append(
                            {
                                "workers": workers,
                                "case": case.label,
                                "concurrency": concurrency,
                                **asdict(stats),
                            }
                        )
                    entry.rss_end_mb = server.rss_mb()
                    print(
                        f"{workers} worker(s): ready in {server.ready_s:.2f} s; "
                        f"resident {entry.rss_end_mb:.0f} MB (all processes)",
                        flush=True,
                    )
                finally:
                    server.stop()
        report.machine["load_average_end"] = os.getloadavg()
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_summary(report: Report) -> None:
    print()
    print("Throughput by worker processes (CTM_WORKERS):")
    by_case: dict[tuple[str, int], dict[int, float]] = {}
    for entry in report.workers:
        by_case.setdefault((entry["case"], entry["concurrency"]), {})[entry["workers"]] = entry["rps"]
    counts = sorted({e["workers"] for e in report.workers})
    if counts:
        head = f"{'case':<31}{'c':>3} | " + "".join(f"{f'{w} worker req/s':>16}" for w in counts)
        head += f"{f'{counts[-1]} ÷ {counts[0]}':>8}" if len(counts) > 1 else ""
        print(head)
        for (label, concurrency), rps in by_case.items():
            line = f"{label:<31}{concurrency:>3} | " + "".join(f"{_rate(rps.get(w, 0)):>16}" for w in counts)
            if len(counts) > 1 and rps.get(counts[0]):
                line += f"{rps.get(counts[-1], 0) / rps[counts[0]]:>8.2f}"
            print(line)
    print()
    load = report.machine.get("load_average_end", (0.0,))[0]
    print(f"load average at the end: {load:.2f}")
    print("Targets (this run):")
    for target, met, measured in checks(report):
        print(f"  [{'met' if met else 'NOT met'}] {target}: {measured}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/serve.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="serve this folder (default: checkpoints/ when it holds *.safetensors, else untrained "
        "4×128 models, one per built-in task)",
    )
    p.add_argument(
        "--model", default=None, help=f"model the requests name (default: {DEFAULT_MODEL} or the first)"
    )
    p.add_argument("--seconds", type=float, default=1.0, help="measured seconds per case and concurrency")
    p.add_argument("--min-requests", type=int, default=3, help="fewest requests per measurement")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64], help="concurrent clients")
    p.add_argument(
        "--budget",
        type=float,
        default=8.0,
        help="skip a concurrency c when c × the case's p50 at the lowest concurrency exceeds this (s)",
    )
    p.add_argument(
        "--workers", type=int, nargs="*", default=[1, 2], help="worker counts of the throughput section"
    )
    p.add_argument("--log-level", default="warning", help="log level of both servers")
    p.add_argument("--quick", action="store_true", help="five cases instead of thirteen")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="REGEX",
        help="only the cases whose label (e.g. '/sample heun 18 n=1,000') matches one of these",
    )
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        report = run(args)
    except RuntimeError as exc:
        print(f"serve benchmark: {exc}", file=sys.stderr)
        return 1
    print_summary(report)
    print(f"\nfinished in {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
