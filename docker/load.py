"""The load of docker/replica_kill.py: clients that send idempotent GETs through nginx, each GET's
outcome (status, which replicas nginx tried, latency), and a table of their statistics per phase.

Standard library only, as docker/replica_kill.py.
"""

from __future__ import annotations

import http.client
import random
import statistics
import threading
import time
from dataclasses import dataclass

# (weight, path): idempotent GETs only. Small requests, so that the run measures the failover
# rather than the CPUs; seeds vary per request (see `pick_path`).
REQUEST_MIX: list[tuple[int, str]] = [
    (4, "/sample?n=100&sampler=onestep"),
    (2, "/sample?n=1000&sampler=onestep"),
    (3, "/sample?n=200&sampler=multistep&steps=4"),
    (2, "/trajectory?n=20&sampler=multistep&steps=4"),
    (2, "/healthz"),
    (1, "/models"),
]


@dataclass
class Outcome:
    """One GET through nginx."""

    start: float
    end: float
    path: str
    status: int  # 0: transport error
    served_by: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def addresses(self) -> list[str]:
        """Replica addresses nginx tried, in order (the last one answered)."""
        return [
            a.strip().rsplit(":", 1)[0] for a in self.served_by.replace(" : ", ",").split(",") if a.strip()
        ]

    @property
    def retried(self) -> bool:
        return len(self.addresses) > 1


def pick_path(rng: random.Random) -> str:
    path = rng.choices([p for _, p in REQUEST_MIX], weights=[w for w, _ in REQUEST_MIX])[0]
    if path.startswith(("/sample", "/trajectory")):
        path += f"&seed={rng.randrange(1 << 31)}"
    return path


def client(
    host: str, port: int, timeout: float, seed: int, stop: threading.Event, out: list[Outcome]
) -> None:
    """Send GETs on one keep-alive connection until `stop`; reconnect after an error."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    while not stop.is_set():
        path = pick_path(rng)
        start = time.monotonic()
        status, served_by, error = 0, "", ""
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            status, served_by = response.status, response.getheader("X-Served-By", "")
            if status != 200:
                error = body[:200].decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            conn.close()
        out.append(Outcome(start, time.monotonic(), path, status, served_by, error))
    conn.close()


PHASE_KEYS = ["phase", "gets", "failed", "retried", "p50_ms", "p99_ms", "rps"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def row(label: str, outcomes: list[Outcome], seconds: float) -> list[str]:
    latencies = [(o.end - o.start) * 1000 for o in outcomes]
    return [
        label,
        str(len(outcomes)),
        str(sum(not o.ok for o in outcomes)),
        str(sum(o.retried for o in outcomes if o.ok)),
        f"{percentile(latencies, 50):.0f}",
        f"{percentile(latencies, 99):.0f}",
        f"{len(outcomes) / seconds:.0f}" if seconds > 0 else "-",
    ]


def print_table(rows: list[list[str]]) -> None:
    header = ["phase", "GETs", "failed", "retried", "p50 ms", "p99 ms", "req/s"]  # PHASE_KEYS, for people
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for i, r in enumerate([header, *rows]):
        print(
            "  "
            + "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
