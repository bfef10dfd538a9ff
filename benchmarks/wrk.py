"""HTTP load from wrk (https://github.com/wg/wrk, Debian's `wrk` package): a C event loop that keeps
`connections` keep-alive connections busy, each sending its next request as soon as the last answer
has arrived. A Lua script gives every request a fresh seed and reports wrk's own latency histogram
as one JSON line.

wrk rather than a Python client: on this 2-core machine an httpx driver saturates near 1,900
requests/s, below a bare FastAPI endpoint, so it measured itself. wrk drives a canned-response
server at tens of thousands of requests/s from one thread; `benchmarks/serve.py` measures that
figure on every run (`canned_server`) to show the generator is not the bottleneck.
"""

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Every request: the URL's path and query with `&seed=<counter>` appended (the counter starts at
# the thread's index × 10⁹, so threads never share a seed). `done` prints the summary as JSON.
SCRIPT = r"""
local counter = 0
local threads = {}
function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end
function init(args)
  counter = index * 1000000000
end
function request()
  counter = counter + 1
  return wrk.format(nil, wrk.path .. "&seed=" .. counter)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "microseconds": %d, "bytes": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"mean_us": %f, "errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(99), latency.mean, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class LoadStats:
    """One wrk run: completed requests, their rate, and the latency percentiles in ms."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    body_bytes: float  # per answer, headers included


def executable() -> str:
    """The path of wrk; RuntimeError saying how to install it when it is missing."""
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError(
            "wrk is not installed: apt-get install wrk (Debian) or see https://github.com/wg/wrk"
        )
    return found


def run(
    url: str, connections: int, seconds: float, headers: dict[str, str] | None = None, threads: int = 1
) -> LoadStats:
    """Load `url` (which must hold a query: the seed is appended with '&') with `connections`
    connections for `seconds`; RuntimeError if any request failed or answered other than 2xx."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(SCRIPT)
    try:
        command = [executable(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        command += ["--timeout", "120s", "-s", script.name]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        finished = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    finally:
        Path(script.name).unlink(missing_ok=True)
    line = next((x for x in finished.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if finished.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({finished.returncode}): {finished.stderr.strip() or finished.stdout}"
        )
    summary = json.loads(line.removeprefix("WRK_JSON "))
    if summary["errors"] or summary["non2xx"] or not summary["requests"]:
        raise RuntimeError(f"wrk on {url}: {summary['errors']} socket errors, {summary['non2xx']} non-2xx")
    elapsed = summary["microseconds"] / 1e6
    return LoadStats(
        requests=summary["requests"],
        seconds=elapsed,
        rps=summary["requests"] / elapsed,
        p50_ms=summary["p50_us"] / 1e3,
        p99_ms=summary["p99_us"] / 1e3,
        mean_ms=summary["mean_us"] / 1e3,
        body_bytes=summary["bytes"] / summary["requests"],
    )
