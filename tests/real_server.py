"""The real server, `python -m service`, as a subprocess on a free loopback port, for tests."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.harness import free_port, wait_ready

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


def wait_for_file(path: Path, timeout_s: float = 60.0) -> None:
    """Return once `path` exists; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear in {timeout_s} s")
        time.sleep(0.01)


@contextmanager
def running_server(
    checkpoint_dir: Path, log_path: Path, env: dict[str, str] | None = None, hold: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(base URL, process) once /healthz answers; the caller's CTM_* variables are dropped, `env`
    added. At the end a server still running gets SIGTERM, then SIGKILL after 10 s.

    `hold`: a folder; the server is tests/held_server.py, which keeps a request of
    `held_server.HELD_N` samples in flight from the moment it writes hold/started until the test
    creates hold/release; the end of the block releases it too."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CTM_")} | (env or {})
    if hold is None:
        command = [sys.executable, "-m", "service"]
    else:
        hold.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(REPO_ROOT / "tests" / "held_server.py"), str(hold)]
    command += ["--port", str(port), "--checkpoint-dir", str(checkpoint_dir)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(process, f"{base_url}/healthz", log_path, START_TIMEOUT_S)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield base_url, process
    finally:
        if hold is not None:
            (hold / "release").touch()  # a request still held would keep a graceful stop waiting
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
