"""What the serving benchmarks share: a server subprocess on a free port, ready when a path answers
200, and the resident memory of its process tree."""

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0


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


def wait_ready(
    process: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float = START_TIMEOUT_S
) -> None:
    """Return once `url` answers 200; RuntimeError with the server's log if `process` exits first
    or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready in {timeout_s} s:\n{log_path.read_text()}")
        time.sleep(0.02)


class Server:
    """A server subprocess on a free loopback port (`command` + `--port N`), ready when `ready_path`
    answers 200; `ready_s` is the time from start to that answer."""

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
            wait_ready(self.process, f"{self.base_url}{ready_path}", log_path)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.perf_counter() - start
        if workers > 1:
            # Workers start together; the 200 came from the first one. Give the others as long again.
            time.sleep(self.ready_s)

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


def machine_line(threads: int) -> str:
    """The machine a benchmark ran on, in one line: CPU, cores, Python, torch and its threads."""
    import torch

    from ctm_core.machine import cpu_name, usable_cpus

    return (
        f"{cpu_name()}, {os.cpu_count()} cores ({usable_cpus()} usable), Python "
        f"{platform.python_version()}, torch {torch.__version__}, {threads} torch thread(s)"
    )
