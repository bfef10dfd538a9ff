"""A newcomer's first ten minutes, from the README as printed, on a fresh clone.

    python .ci/newcomer.py            # clones this checkout's HEAD into a scratch folder
    python .ci/newcomer.py --keep     # and leaves the folder there to look at

Takes the README's code blocks and runs them in a fresh `git clone` of HEAD: the serve command
(a new virtual environment, `pip install -e .`, the server on port 8000), every curl line, the
Python API block, the offline CLI line, the HTTP client block, then the two lines that train on
your own CSV and serve the result (with a `my.csv` of 2,000 values from two clusters written
first, as a user would bring). Each must exit 0 and answer what the README says it answers.
Exits 1 naming the first block that failed, with its output. `.ci/run` runs this after the tests.

Not run: the test command (`.ci/run` runs it verbatim) and the CPU-index install line (PyTorch's
index is not reachable from CI's network; it differs from the serve command only in the index).
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PORT = 8000
READY_TIMEOUT_S = 300.0  # the serve command installs the package first


class Failed(Exception):
    """A README block did not work as printed."""


def code_blocks(readme: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", readme, re.DOTALL)]


def run(command: str, cwd: Path, what: str, timeout: float = 600.0) -> str:
    """`command` in bash with the clone's virtual environment active; its stdout, or Failed."""
    done = subprocess.run(
        ["bash", "-c", f". .venv/bin/activate && {command}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-3000:]
        raise Failed(f"{what}: exit {done.returncode}\n$ {command}\n{output}")
    return done.stdout


def python_with(block: str, condition: str) -> str:
    """A shell command that runs a README Python block, then asserts `condition` on its names."""
    return f"python - <<'EOF'\n{block}\nassert {condition}\nEOF"


def start(command: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """`command` in the background (its own process group), output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def get_json(path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=10) as answer:
        return json.loads(answer.read())


def wait_ready(process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Failed(f"{what}: the server exited with {process.returncode}\n{log.read_text()[-3000:]}")
        try:
            if get_json("/readyz").get("status") == "ready":
                return
        except OSError:
            pass
        time.sleep(1.0)
    raise Failed(f"{what}: not ready after {READY_TIMEOUT_S:.0f} s\n{log.read_text()[-3000:]}")


def check(condition: bool, what: str, detail: str) -> None:
    if not condition:
        raise Failed(f"{what}: {detail}")


def newcomer(clone: Path) -> None:
    blocks = code_blocks((clone / "README.md").read_text())
    bash = [text.strip() for lang, text in blocks if lang == "bash"]
    python = [text for lang, text in blocks if lang == "python"]
    serve = next(b for b in bash if b.endswith("python -m service"))
    curls = [line for b in bash for line in b.splitlines() if line.startswith("curl ")]
    offline = next(b for b in bash if b.startswith("python -m ctm_core.sample "))
    train, serve_mine = next(b for b in bash if b.startswith("python -m ctm_core.train ")).splitlines()
    api = next(b for b in python if "ctm_core.load(" in b)
    client = next(b for b in python if "CTMClient" in b)
    log = clone / "server.log"

    print(f"1. install and serve: {serve}", flush=True)
    started = time.monotonic()
    server = start(serve, clone, log)
    try:
        wait_ready(server, log, "the serve command")
        print(f"   ready in {time.monotonic() - started:.0f} s", flush=True)
        check(len(curls) >= 5, "the README", f"expected five curl lines, found {len(curls)}")
        for line in curls:
            print(f"2. {line.split('#')[0].strip()}", flush=True)
            answer = json.loads(run(line, clone, line))
            check(isinstance(answer, dict) and "detail" not in answer, line, f"answered {str(answer)[:300]}")
        print("3. the Python API block", flush=True)
        run(python_with(api, "x.shape == (1000,) and path.paths.shape == (5, 5)"), clone, "API")
        print(f"4. {offline}", flush=True)
        run(offline, clone, "the offline CLI")
        rows = (clone / "samples.csv").read_text().splitlines()
        check(rows[0] == "x" and len(rows) == 1001, "samples.csv", f"{len(rows)} lines, header {rows[0]!r}")
        served = get_json("/sample?n=1000&seed=0")["samples"]
        check(
            np.array_equal(np.array(rows[1:], dtype=np.float32), np.array(served, dtype=np.float32)),
            "samples.csv",
            "differs from the service's /sample?n=1000&seed=0",
        )
        print("5. the HTTP client block", flush=True)
        run(python_with(client, "x.shape == (1000,) and logp.shape == (2,)"), clone, "client")
    finally:
        stop(server)

    print(f"6. {train}", flush=True)
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-2.0, 0.5, 1200), rng.normal(1.5, 0.3, 800)])
    np.savetxt(clone / "my.csv", values, fmt="%.6f")
    started = time.monotonic()
    report = run(train, clone, "training on my.csv", timeout=1200)
    print(f"   trained in {time.monotonic() - started:.0f} s", flush=True)
    check(serve_mine in report, "the trainer's report", f"does not print {serve_mine!r}")
    print(f"7. {serve_mine}", flush=True)
    server = start(f". .venv/bin/activate && {serve_mine}", clone, log)
    try:
        wait_ready(server, log, "serving runs/")
        answer = get_json("/sample?n=2000&seed=0")
        check(answer["model"] == "my", "/sample on runs/", f"served model {answer['model']!r}")
        samples = np.array(answer["samples"])
        check(
            abs(float(np.mean(samples < 0)) - 0.6) < 0.05,
            "/sample on runs/",
            f"{np.mean(samples < 0):.3f} of the samples in the left cluster, which holds 0.6 of my.csv",
        )
    finally:
        stop(server)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch clone")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ctm-newcomer-"))
    clone = scratch / "ctm-serve"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    started = time.monotonic()
    try:
        newcomer(clone)
    except (Failed, subprocess.TimeoutExpired) as exc:
        print(f"newcomer check FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"scratch clone kept in {clone}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"newcomer check passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
