"""The HTTP checks of docker/smoke.py: one container (/healthz, /readyz, a seeded /sample), and
replicas behind nginx (every replica answers, alike; a checkpoint added to their shared folder
serves on each within the reload poll interval).

Standard library only, as docker/smoke.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from engine import CheckFailed


def get(base: str, path: str) -> tuple[int, bytes, float, str]:
    """GET base + path: status, body, milliseconds and X-Served-By; CheckFailed unless the status is 200."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(base + path, timeout=30) as r:
            status, body, served_by = r.status, r.read(), r.headers.get("X-Served-By") or ""
    except urllib.error.HTTPError as e:
        status, body, served_by = e.code, e.read(), e.headers.get("X-Served-By") or ""
    except OSError as e:
        raise CheckFailed(f"GET {path}: {e}") from e
    ms = (time.perf_counter() - start) * 1000
    if status != 200:
        source = f" (from {served_by})" if served_by else ""
        raise CheckFailed(f"GET {path} -> {status}{source}: {body[:500].decode(errors='replace')}")
    return status, body, ms, served_by


def _flat(x: Any) -> Iterator[Any]:
    if isinstance(x, list):
        for y in x:
            yield from _flat(y)
    else:
        yield x


def one_container(port: str, expected: int) -> None:
    """/healthz, /readyz (`expected` models loaded) and /sample?n=5&seed=1 (5 finite samples)."""
    base = f"http://127.0.0.1:{port}"
    status, body, ms, _ = get(base, "/healthz")
    print(f"    GET /healthz -> {status} ({ms:.0f} ms): {body[:200].decode(errors='replace')}")

    status, body, ms, _ = get(base, "/readyz")
    models = json.loads(body).get("models", [])
    print(f"    GET /readyz -> {status} ({ms:.0f} ms): models {models}")
    if len(models) != expected:
        raise CheckFailed(f"expected {expected} model(s) loaded, got {len(models)}")

    status, body, ms, _ = get(base, "/sample?n=5&seed=1")
    data = json.loads(body)
    samples = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(samples, list) or len(samples) != 5:
        raise CheckFailed(f"expected 'samples' with 5 entries: {str(data)[:300]}")
    values = list(_flat(samples))
    if not values or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise CheckFailed(f"samples are not finite numbers: {samples}")
    shown = ", ".join(f"{v:.4f}" for v in values[:5])
    print(
        f"    GET /sample?n=5&seed=1 -> {status} ({ms:.0f} ms): {len(samples)} samples [{shown}]", flush=True
    )
    extra = {k: v for k, v in data.items() if k != "samples"}
    if extra:
        print(f"    other fields: {json.dumps(extra)[:200]}", flush=True)


def from_every_replica(base: str, path: str, replicas: dict[str, str]) -> Any:
    """GET path through nginx until every replica (name -> address) has answered; their bodies must
    be equal. The answer."""
    by_address = {address: name for name, address in replicas.items()}
    answers: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for _ in range(20 * len(replicas)):
        _, body, _, served_by = get(base, path)
        if not served_by:
            raise CheckFailed(f"GET {path}: no X-Served-By header")
        address = served_by.split(",")[-1].strip().rsplit(":", 1)[0]  # the last one tried answered
        if address not in by_address:
            raise CheckFailed(f"GET {path}: X-Served-By {served_by} is none of the replicas {replicas}")
        name = by_address[address]
        counts[name] = counts.get(name, 0) + 1
        answers.setdefault(name, json.loads(body))
        if len(answers) == len(replicas):
            break
    missing = sorted(set(replicas) - set(answers))
    if missing:
        raise CheckFailed(
            f"GET {path}: {missing} never answered in {sum(counts.values())} requests ({counts})"
        )
    firsts = list(answers.values())
    if any(answer != firsts[0] for answer in firsts[1:]):
        raise CheckFailed(f"GET {path}: replicas answered differently: {answers}")
    shown = ", ".join(f"{name} ×{count}" for name, count in sorted(counts.items()))
    print(f"    GET {path} -> 200 from every replica ({shown}), identical answers", flush=True)
    return firsts[0]


# Runs inside a replica (its own python): says whether the model is served yet, waits for a line on
# stdin (the file is in place), then asks the replica's own /models every 0.1 s and prints the time
# the model appeared, or "timeout".
WATCH = """if 1:
    import json, sys, time, urllib.request
    name, limit = sys.argv[1], float(sys.argv[2])
    def names():
        with urllib.request.urlopen("http://127.0.0.1:8000/models", timeout=10) as r:
            return [m["name"] for m in json.load(r)["models"]]
    print("present" if name in names() else "absent", flush=True)
    sys.stdin.readline()  # the file is in place
    end = time.time() + limit
    while time.time() < end:
        if name in names():
            print(time.time(), flush=True)
            break
        time.sleep(0.1)
    else:
        print("timeout", flush=True)
"""


def hot_reload(source: str, target: str, poll: float, replicas: dict[str, str]) -> None:
    """Copy `source` to `target` in the shared folder and check that every replica serves it within
    one poll interval (+ 5 s for loading the file on a busy machine)."""
    added = os.path.basename(target).removesuffix(".safetensors")
    limit = 2 * poll + 15
    watchers = {
        replica: subprocess.Popen(
            ["docker", "exec", "-i", replica, "python", "-c", WATCH, added, str(limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for replica in replicas
    }
    seen: dict[str, float] = {}
    try:
        for replica, proc in watchers.items():
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "absent":
                raise CheckFailed(f"{replica}: {added} should not be served yet: {line or 'watcher failed'}")
        # A temporary name, then a rename, as ctm_core's checkpoint writer does.
        tmp = os.path.join(os.path.dirname(target), f".{added}.tmp")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        t0 = time.time()
        for proc in watchers.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for replica, proc in watchers.items():
            out, _ = proc.communicate(timeout=limit + 30)
            line = out.strip()
            if proc.returncode != 0 or line in ("", "timeout"):
                why = line or proc.returncode
                raise CheckFailed(f"{replica}: {added} not served within {limit:g} s of the copy ({why})")
            seen[replica] = float(line) - t0
    finally:
        for proc in watchers.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    shown = ", ".join(f"{replica} {seconds:.1f} s" for replica, seconds in sorted(seen.items()))
    print(
        f"    {os.path.basename(target)} copied into the shared folder; in /models of {shown}"
        f" (CTM_RELOAD_POLL_S={poll:g})",
        flush=True,
    )
    late = {replica: s for replica, s in seen.items() if s > poll + 5}
    if late:
        raise CheckFailed(f"later than the poll interval ({poll:g} s) + 5 s: {late}")


def through_nginx(
    port: str, first: str, source: str, target: str, poll: float, replicas: dict[str, str]
) -> None:
    """Through nginx: /nginx-health; /readyz and a seeded /sample of `first` answered by every replica
    (name -> address), alike; then `source` copied to `target` in the shared folder serves on each
    within the poll interval, and a seeded /sample of it is again alike."""
    base = f"http://127.0.0.1:{port}"
    _, body, _, _ = get(base, "/nginx-health")
    print(f"    GET /nginx-health -> 200: {body.decode().strip()}")
    ready = from_every_replica(base, "/readyz", replicas)
    print(f"      models {ready.get('models')}")
    name = os.path.basename(first).removesuffix(".safetensors")
    sample = from_every_replica(base, f"/sample?model={name}&n=5&seed=1", replicas)
    print(
        f"      {name}: sha256 {sample['model_sha256'][:12]}, samples {str(sample['samples'])[:80]}",
        flush=True,
    )

    hot_reload(source, target, poll, replicas)
    added = os.path.basename(target).removesuffix(".safetensors")
    sample = from_every_replica(base, f"/sample?model={added}&n=5&seed=1", replicas)
    print(
        f"      {added}: sha256 {sample['model_sha256'][:12]}, samples {str(sample['samples'])[:80]}",
        flush=True,
    )
