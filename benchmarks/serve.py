"""Serving benchmark: the served /sample and /trajectory beside the compute limit and the HTTP floor.

Load comes from wrk (`benchmarks/wrk.py`; `apt-get install wrk`), every request with a fresh seed.
For each case (endpoint, sampler, n, concurrent connections, JSON or raw float32) it measures:

- service: the real server, `python -m service` on the checkpoint folder (every model loaded);
- floor: a bare FastAPI endpoint on uvicorn with the service's flags (h11, log level, one worker)
  answering the service's own answer for that case (body and headers), recorded beforehand: what
  HTTP, FastAPI and moving the bytes cost with no work at all;
- limit: the same sampling in-process through the library (`ctm_core.load(...).sample` or
  `.trajectory`: the runtime the service uses, no HTTP, no encoding), one call at a time, with the
  service's threads.

Service and floor run alternately, `--rounds` times each; the table shows the median of the rounds.
Before them, wrk loads a canned-response server (the most trivial endpoint there is) with 64
connections: the rate it reaches is what the generator can drive on this machine, printed beside
the fastest service rate. Then the targets of this run, and the server's time to ready and
resident memory with all models loaded.

    python -m benchmarks.serve            # about 4 minutes
    python -m benchmarks.serve --quick    # one round of 2 s per case, about a minute
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import wrk
from benchmarks.harness import REPO_ROOT, Server, server_env, start_service

FLOOR_PAYLOADS_ENV = "CTM_BENCH_FLOOR_PAYLOADS"
DEFAULT_MODEL = "two_gmm_1D"
RAW = "application/octet-stream"
CANNED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@dataclass(frozen=True)
class Case:
    """One kind of request at one concurrency."""

    path: str
    sampler: str
    steps: int
    n: int
    connections: int
    binary: bool = False

    @property
    def label(self) -> str:
        steps = "" if self.sampler == "onestep" else f" {self.steps}"
        body = "raw" if self.binary else "json"
        return f"{self.path} {self.sampler}{steps} n={self.n:,} c={self.connections} {body}"

    @property
    def query(self) -> str:
        """The query without the seed (wrk appends a fresh one to every request)."""
        return f"{self.path}?model={{model}}&sampler={self.sampler}&steps={self.steps}&n={self.n}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Accept": RAW} if self.binary else {}


CASES = [
    Case("/sample", "onestep", 1, 1, 64),
    Case("/sample", "onestep", 1, 1, 1),
    Case("/sample", "onestep", 1, 1000, 1),
    Case("/sample", "onestep", 1, 1000, 1, binary=True),
    Case("/sample", "onestep", 1, 1000, 64),
    Case("/sample", "multistep", 4, 1000, 1),
    Case("/sample", "onestep", 1, 100_000, 1),
    Case("/sample", "onestep", 1, 100_000, 1, binary=True),
    Case("/trajectory", "multistep", 4, 1000, 1),
    Case("/trajectory", "multistep", 4, 1000, 1, binary=True),
]


@dataclass
class Row:
    case: str
    service: wrk.LoadStats
    floor: wrk.LoadStats
    limit_p50_ms: float
    rounds: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Report:
    machine: dict[str, Any]
    generator_rps: float = 0.0
    ready_s: float = 0.0
    rss_ready_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rows: list[Row] = field(default_factory=list)


# ---- the floor and the canned server ---------------------------------------------------------------


def floor_app() -> Any:
    """The floor: GET /sample and /trajectory answer the recorded answer (body, media type, CTM-*
    headers) of their query and Accept; the seed, last in the query, is ignored. Run by uvicorn as
    `benchmarks.serve:floor_app` (factory)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    folder = Path(os.environ[FLOOR_PAYLOADS_ENV])
    index = json.loads((folder / "index.json").read_text())
    answers = {key: ((folder / item["file"]).read_bytes(), item["headers"]) for key, item in index.items()}
    app = FastAPI()

    async def answer(request: Request) -> Response:
        query = request.scope["query_string"].decode().partition("&seed=")[0]
        body, headers = answers[f"{request.scope['path']}?{query}|{request.headers.get('accept', '')}"]
        return Response(body, headers=headers)

    app.add_api_route("/sample", answer, methods=["GET"])
    app.add_api_route("/trajectory", answer, methods=["GET"])
    return app


def serve_canned(port: int) -> None:
    """Answer every request on `port` with the same 2-byte 200, from one asyncio protocol: no
    parsing, no framework (requests are assumed to arrive whole, as wrk's small GETs do)."""

    class Canned(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(CANNED * data.count(b"\r\n\r\n"))  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


def start_floor(payloads: Path, log_level: str, log_path: Path) -> Server:
    """The floor app on uvicorn with the flags `python -m service` gives it (h11, host, log level)."""
    command = [sys.executable, "-m", "uvicorn", "benchmarks.serve:floor_app", "--factory", "--http", "h11"]
    command += ["--host", "127.0.0.1", "--log-level", log_level]
    env = server_env(log_level, 1) | {FLOOR_PAYLOADS_ENV: str(payloads)}
    return Server(command, env, log_path, 1, "/openapi.json")


def record_answers(base_url: str, cases: list[Case], model: str, folder: Path) -> None:
    """Each case's answer from the service (seed 0), for the floor to replay."""
    index = {}
    for i, case in enumerate(cases):
        url = case.query.format(model=model)
        response = httpx.get(f"{base_url}{url}&seed=0", headers=case.headers, timeout=300)
        response.raise_for_status()
        (folder / f"{i}.body").write_bytes(response.content)
        kept = {k: v for k, v in response.headers.items() if k == "content-type" or k.startswith("ctm-")}
        index[f"{url}|{case.headers.get('Accept', '')}"] = {"file": f"{i}.body", "headers": kept}
    (folder / "index.json").write_text(json.dumps(index))


# ---- the limit: the same sampling through the library -----------------------------------------------


def library_model(path: Path) -> Any:
    """The model as the library loads it (`ctm_core.load`), sampling with the service's row threads."""
    import ctm_core
    from service.config import Settings
    from service.inference import torch_threads_for, use_threads

    use_threads(torch_threads_for(Settings()))
    return ctm_core.load(path)


def measure_limit(model: Any, case: Case, seconds: float) -> float:
    """The p50 in ms of the library's own call for `case` on `model` (`library_model`), back to back
    for `seconds` (≥ 5 calls) after a warm-up call."""
    call = model.trajectory if case.path == "/trajectory" else model.sample
    call(case.n, sampler=case.sampler, steps=case.steps, seed=0)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        call(case.n, sampler=case.sampler, steps=case.steps, seed=len(times) + 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# ---- the run ----------------------------------------------------------------------------------------


def machine_info(checkpoints: Path) -> dict[str, Any]:
    import torch

    from ctm_core.machine import cpu_name, usable_cpus

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cpus(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "checkpoints": str(checkpoints),
        "load_average_start": os.getloadavg()[0],
    }


def _median(stats: list[wrk.LoadStats]) -> wrk.LoadStats:
    """The median of each field over rounds."""
    return wrk.LoadStats(**{k: statistics.median(getattr(s, k) for s in stats) for k in asdict(stats[0])})


def run(args: argparse.Namespace) -> Report:
    folder: Path = args.checkpoint_dir
    models = sorted(p.stem for p in folder.glob("*.safetensors"))
    if not models:
        raise RuntimeError(f"no *.safetensors in {folder}")
    model = args.model or (DEFAULT_MODEL if DEFAULT_MODEL in models else models[0])
    cases = [c for c in CASES if not args.only or any(p in c.label for p in args.only)]
    report = Report(machine_info(folder))
    m = report.machine
    print(
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), Python {m['python']}, "
        f"torch {m['torch']}; load average {m['load_average_start']:.2f}\n"
        f"models: {len(models)} in {folder}; requests name {model}; log level {args.log_level}; "
        f"{args.rounds} round(s) of {args.seconds:g} s per case and server",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="ctm-bench-serve-"))
    wrk.executable()  # fail early, with the install hint
    service = start_service(folder, args.log_level, 1, work / "service.log")
    report.ready_s, report.rss_ready_mb = service.ready_s, service.rss_mb()
    print(f"service ready in {service.ready_s:.2f} s, {report.rss_ready_mb:.0f} MB resident", flush=True)
    servers = [service]
    try:
        (work / "payloads").mkdir()
        record_answers(service.base_url, cases, model, work / "payloads")
        floor = start_floor(work / "payloads", args.log_level, work / "floor.log")
        servers.append(floor)
        canned_command = [sys.executable, "-m", "benchmarks.serve", "--canned"]
        canned = Server(canned_command, dict(os.environ), work / "canned.log", 1, "/")
        servers.append(canned)
        report.generator_rps = wrk.run(f"{canned.base_url}/?", 64, args.seconds).rps
        canned.stop()
        print(f"wrk against a canned-response server, 64 connections: {report.generator_rps:,.0f} req/s\n")
        library = library_model(folder / f"{model}.safetensors")
        print(header(), flush=True)
        for case in cases:
            limit = measure_limit(library, case, args.seconds)
            url = case.query.format(model=model)
            got: dict[str, list[wrk.LoadStats]] = {"service": [], "floor": []}
            for _ in range(args.rounds):
                for name, server in (("service", service), ("floor", floor)):
                    got[name].append(
                        wrk.run(server.base_url + url, case.connections, args.seconds, case.headers)
                    )
            row = Row(case.label, _median(got["service"]), _median(got["floor"]), limit)
            row.rounds = [
                {"service_rps": s.rps, "floor_rps": f.rps} for s, f in zip(*got.values(), strict=True)
            ]
            report.rows.append(row)
            print(line(row), flush=True)
        report.rss_end_mb, report.rss_peak_mb = service.rss_mb(), service.peak_rss_mb()
    finally:
        for server in servers:
            server.stop()
    m["load_average_end"] = os.getloadavg()[0]
    return report


# ---- output -----------------------------------------------------------------------------------------


def header() -> str:
    return (
        f"{'case':<40} | {'service p50':>11} {'p99':>7} {'req/s':>7} | {'floor p50':>9} {'req/s':>7} | "
        f"{'limit p50':>9} | {'÷ limit':>7} {'− l − f':>8} {'÷ floor':>7}"
    )


def line(row: Row) -> str:
    s, f, lim = row.service, row.floor, row.limit_p50_ms
    return (
        f"{row.case:<40} | {s.p50_ms:>11.3f} {s.p99_ms:>7.2f} {s.rps:>7.0f} | "
        f"{f.p50_ms:>9.3f} {f.rps:>7.0f} | "
        f"{lim:>9.3f} | {s.p50_ms / lim:>7.2f} {s.p50_ms - lim - f.p50_ms:>+8.3f} {s.rps / f.rps:>7.2f}"
    )


def checks(report: Report) -> list[tuple[str, bool, str]]:
    """The targets (docs/PERFORMANCE.md), from this run: (target, met, measured)."""
    rows = {row.case: row for row in report.rows}
    out: list[tuple[str, bool, str]] = []
    if row := rows.get(Case("/sample", "onestep", 1, 1, 64).label):
        ratio = row.service.rps / row.floor.rps
        measured = f"{row.service.rps:,.0f} / {row.floor.rps:,.0f} req/s = {ratio:.2f}"
        out.append(("n=1 onestep, 64 connections: service ≥ 0.8 × the floor's req/s", ratio >= 0.8, measured))
    if row := rows.get(Case("/sample", "onestep", 1, 1000, 1).label):
        bound = row.limit_p50_ms + row.floor.p50_ms + 0.3
        measured = (
            f"{row.service.p50_ms:.3f} ≤ {row.limit_p50_ms:.3f} + {row.floor.p50_ms:.3f} + 0.3 = {bound:.3f}"
        )
        out.append(
            (
                "n=1,000 onestep, 1 connection: p50 ≤ limit + floor + 0.3 ms",
                row.service.p50_ms <= bound,
                measured,
            )
        )
    if row := rows.get(Case("/sample", "onestep", 1, 100_000, 1).label):
        ratio = row.service.p50_ms / row.limit_p50_ms
        measured = f"{row.service.p50_ms:.2f} / {row.limit_p50_ms:.2f} ms = {ratio:.2f}"
        out.append(("n=100,000 onestep, JSON: p50 ≤ 1.3 × limit", ratio <= 1.3, measured))
    if row := rows.get(Case("/sample", "onestep", 1, 100_000, 1, binary=True).label):
        bound = 1.05 * row.limit_p50_ms + 1.0
        measured = f"{row.service.p50_ms:.2f} ≤ 1.05 × {row.limit_p50_ms:.2f} + 1 = {bound:.2f} ms"
        out.append(
            (
                "n=100,000 onestep, raw float32: p50 ≤ 1.05 × limit + 1 ms",
                row.service.p50_ms <= bound,
                measured,
            )
        )
    if report.rows:
        fastest = max(row.service.rps for row in report.rows)
        ratio = report.generator_rps / fastest
        measured = f"{report.generator_rps:,.0f} vs {fastest:,.0f} req/s = {ratio:.1f}×"
        out.append(("wrk drives a canned server ≥ 3 × the fastest service rate", ratio >= 3, measured))
    peak = max(report.rss_ready_mb, report.rss_end_mb)
    memory = f"{report.rss_ready_mb:.0f} MB at ready, {report.rss_end_mb:.0f} MB after the run"
    out.append(("resident memory ≤ 400 MB, all models loaded", peak <= 400, memory))
    out.append(("ready (200 on /readyz) ≤ 2 s after start", report.ready_s <= 2, f"{report.ready_s:.2f} s"))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serve",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint-dir", type=Path, default=REPO_ROOT / "checkpoints", help="the models to serve"
    )
    p.add_argument("--model", default=None, help=f"the model requests name (default: {DEFAULT_MODEL})")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds of each wrk run")
    p.add_argument("--rounds", type=int, default=3, help="alternating service/floor runs per case")
    p.add_argument("--log-level", default="warning", help="log level of the service and the floor")
    p.add_argument("--quick", action="store_true", help="one round of 2 s per case")
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT", help="the cases whose label holds TEXT")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results here")
    p.add_argument("--canned", action="store_true", help=argparse.SUPPRESS)  # run the canned server
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.canned:
        serve_canned(args.port)
        return 0
    if args.quick:
        args.rounds, args.seconds = 1, 2.0
    started = time.perf_counter()
    try:
        report = run(args)
    except RuntimeError as exc:
        print(f"serve benchmark: {exc}", file=sys.stderr)
        return 1
    print(f"\nload average: {report.machine['load_average_start']:.2f} at the start, "
          f"{report.machine['load_average_end']:.2f} at the end")  # fmt: skip
    print("Targets (this run):")
    for target, met, measured in checks(report):
        print(f"  [{'met' if met else 'NOT met'}] {target}: {measured}")
    print(f"\nfinished in {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
