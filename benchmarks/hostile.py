"""Hostile sizes against one real worker: huge bodies, the largest legal work, and timed-out work.

Starts `python -m service` (one worker, the shipped checkpoints) and measures what
docs/RELIABILITY.md ("Hostile sizes") records:

1. bodies: a 400 MB POST /logprob, announced by Content-Length and streamed, then the same sent
   chunked: seconds until the 413, and the server's resident memory before and after;
2. /healthz while the largest legal requests run (a 10,000-point POST /logprob with the ODE
   density and an n = 100,000 /sample, each in a loop): /healthz latency p50, p99 and max;
3. the largest requests the work budget admits (CTM_MAX_WORK), one sampler at a time: seconds
   each, against the request timeout;
4. a request that times out (CTM_REQUEST_TIMEOUT_S=2, about 7 s of work): seconds from the 503
   until the process is idle (under 5 % of a core over 100 ms).

    python -m benchmarks.hostile               # about 2 minutes
    python -m benchmarks.hostile --json out.json

Exits 1 when a target is missed (413 within 1 s and growth under 20 MB; /healthz p99 ≤ 50 ms;
every admitted request within the timeout; idle within 1 s of a timeout).
"""

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import REPO_ROOT, Server, server_env
from service.config import Settings

BODY_BYTES = 400_000_000
CHUNK = b"0.5, " * 13_107  # 65,535 bytes of a JSON list that never ends


@contextmanager
def service(env: dict[str, str], log_path: Path) -> Iterator[Server]:
    command = [sys.executable, "-m", "service", "--checkpoint-dir", str(REPO_ROOT / "checkpoints")]
    server = Server(command, server_env("warning", 1) | env, log_path, 1, "/readyz")
    try:
        yield server
    finally:
        server.stop()


def huge_body(server: Server, chunked: bool) -> dict[str, Any]:
    """Stream a 400 MB POST /logprob body until the server answers or closes; seconds until its
    status line, and the server's resident memory before and after."""
    framing = b"transfer-encoding: chunked" if chunked else f"content-length: {BODY_BYTES}".encode()
    head = b"POST /logprob HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n" + framing + b"\r\n\r\n"
    piece = (f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n") if chunked else CHUNK
    rss_before = server.rss_mb()
    answer = bytearray()
    sent = 0
    answered_at = None
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setblocking(False)
        started = time.perf_counter()
        pending = memoryview(head)
        writing = True
        while answered_at is None and time.perf_counter() - started < 60:
            try:
                data = sock.recv(65536)
                if not data:
                    break  # closed
                answer.extend(data)
                if b"\r\n" in answer:
                    answered_at = time.perf_counter()
            except BlockingIOError:
                pass
            except OSError:
                break
            if not writing or (sent >= BODY_BYTES and not pending):
                time.sleep(0.001)
                continue
            if not pending:
                pending = memoryview(piece)
            try:
                written = sock.send(pending)
                pending, sent = pending[written:], sent + written
            except BlockingIOError:
                time.sleep(0.0005)
            except OSError:
                writing = False  # the server stopped reading and closed: wait for its answer
    time.sleep(0.5)
    return {
        "status": bytes(answer.split(b"\r\n", 1)[0]).decode(errors="replace"),
        "seconds_to_answer": None if answered_at is None else answered_at - started,
        "body_sent_mb": sent / 1e6,
        "rss_before_mb": rss_before,
        "rss_after_mb": server.rss_mb(),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def healthz_under_load(server: Server, seconds: float) -> dict[str, Any]:
    """Poll /healthz every 20 ms while two clients loop over the largest legal requests."""
    stop = threading.Event()
    done: dict[str, list[float]] = {"logprob": [], "sample": []}
    statuses: list[int] = []
    points = [-3.0 + 6.0 * i / 9999 for i in range(10_000)]

    def loop(name: str, call: Callable[[httpx.Client], httpx.Response]) -> None:
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            while not stop.is_set():
                start = time.perf_counter()
                statuses.append(call(client).status_code)
                done[name].append(time.perf_counter() - start)

    workers = [
        threading.Thread(
            target=loop, args=("logprob", lambda c: c.post("/logprob", json={"x": points, "sampler": "ode"}))
        ),
        threading.Thread(
            target=loop,
            args=(
                "sample",
                lambda c: c.get("/sample", params={"n": 100_000, "sampler": "multistep", "steps": 8}),
            ),
        ),
    ]
    for worker in workers:
        worker.start()
    latencies = []
    time.sleep(1.0)  # both loops busy
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
    stop.set()
    for worker in workers:
        worker.join()
    return {
        "healthz_requests": len(latencies),
        "healthz_p50_ms": 1000 * statistics.median(latencies),
        "healthz_p99_ms": 1000 * percentile(latencies, 0.99),
        "healthz_max_ms": 1000 * max(latencies),
        "logprob_done": len(done["logprob"]),
        "logprob_median_s": statistics.median(done["logprob"]) if done["logprob"] else None,
        "sample_done": len(done["sample"]),
        "sample_median_s": statistics.median(done["sample"]) if done["sample"] else None,
        "non_200": sum(code != 200 for code in statuses),
    }


def largest_admitted(server: Server, settings: Settings) -> list[dict[str, Any]]:
    """The largest request the budget admits per sampler (n = CTM_MAX_N, steps to fill the budget),
    then the same plus one step, which must be refused."""
    n = settings.max_n
    rows = []
    with httpx.Client(base_url=server.base_url, timeout=settings.request_timeout_s + 30) as client:
        for sampler in ("multistep", "gamma", "euler", "heun"):
            evaluations = settings.max_work // n
            steps = (evaluations + 1) // 2 if sampler == "heun" else evaluations
            steps = min(steps, settings.max_steps)
            params = {"sampler": sampler, "steps": steps, "n": n, "seed": 1}
            start = time.perf_counter()
            response = client.get("/sample", params=params)
            seconds = time.perf_counter() - start
            refused = client.get("/sample", params=params | {"steps": steps + 1}).status_code
            rows.append(
                {
                    "sampler": sampler,
                    "n": n,
                    "steps": steps,
                    "status": response.status_code,
                    "seconds": seconds,
                    "one_more_step": refused,
                }
            )
    return rows


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def idle_after_timeout(server: Server) -> dict[str, Any]:
    """Seconds from a 503 (timeout) until the process uses under 5 % of a core over 100 ms."""
    params = {"sampler": "heun", "steps": 500, "n": 100_000}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        start = time.perf_counter()
        status = client.get("/sample", params=params).status_code
        answered = time.perf_counter()
    pid = server.process.pid
    previous, at = cpu_seconds(pid), time.perf_counter()
    idle_after = None
    while time.perf_counter() - answered < 10:
        time.sleep(0.1)
        now, t = cpu_seconds(pid), time.perf_counter()
        if (now - previous) / (t - at) < 0.05:
            idle_after = t - answered
            break
        previous, at = now, t
    return {"status": status, "answered_after_s": answered - start, "idle_after_s": idle_after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hostile",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--healthz-seconds", type=float, default=20.0, help="how long to poll /healthz under load"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    settings = Settings()
    results: dict[str, Any] = {
        "settings": {
            k: getattr(settings, k) for k in ("max_body_bytes", "max_work", "request_timeout_s", "max_n")
        }
    }
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        with service({}, log) as server:
            results["ready_s"] = server.ready_s
            print("1. 400 MB bodies", flush=True)
            results["bodies"] = {
                "content_length": huge_body(server, chunked=False),
                "chunked": huge_body(server, chunked=True),
            }
            print(json.dumps(results["bodies"], indent=2), flush=True)
            print(
                f"2. /healthz while the largest legal requests run ({args.healthz_seconds:g} s)", flush=True
            )
            results["healthz"] = healthz_under_load(server, args.healthz_seconds)
            print(json.dumps(results["healthz"], indent=2), flush=True)
            print("3. the largest requests the work budget admits", flush=True)
            results["admitted"] = largest_admitted(server, settings)
            for row in results["admitted"]:
                print(f"   {row}", flush=True)
        with service({"CTM_REQUEST_TIMEOUT_S": "2"}, log) as server:
            print("4. a request that times out (CTM_REQUEST_TIMEOUT_S=2)", flush=True)
            results["timeout"] = idle_after_timeout(server)
            print(json.dumps(results["timeout"], indent=2), flush=True)
    checks = {
        "413 within 1 s, memory growth < 20 MB": all(
            case["status"].startswith("HTTP/1.1 413")
            and case["seconds_to_answer"] is not None
            and case["seconds_to_answer"] < 1
            and case["rss_after_mb"] - case["rss_before_mb"] < 20
            for case in results["bodies"].values()
        ),
        "/healthz p99 ≤ 50 ms under the largest legal requests": results["healthz"]["healthz_p99_ms"] <= 50,
        "every admitted request within the timeout, one step more refused": all(
            row["status"] == 200
            and row["seconds"] < settings.request_timeout_s
            and row["one_more_step"] == 422
            for row in results["admitted"]
        ),
        "idle within 1 s of a timeout": results["timeout"]["status"] == 503
        and results["timeout"]["idle_after_s"] is not None
        and results["timeout"]["idle_after_s"] <= 1,
    }
    results["checks"] = checks
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
