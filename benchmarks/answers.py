"""Do the same requests give the same answers, bit for bit, as another version of the service?

Starts the service's app in-process on a checkpoint folder and sends it a fixed set of requests over
HTTP (the API is the contract that outlives refactors, not the library's names): /sample for every
model, sampler, n in {1, 7, 1000}, seed in {0, 12345}, without `steps` and with a few explicit ones;
/trajectory, /logprob (both densities) and a few requests at the edges of the rules. Each answer is
recorded as the SHA-256 of its float arrays (samples, paths, sigmas, x, logprob as float64), or as its
status code when it is not 200; timings and metadata are ignored.

    python -m benchmarks.answers --checkpoints checkpoints --out new.json
    PYTHONPATH=/tmp/old python benchmarks/answers.py --checkpoints /tmp/old/checkpoints --out old.json
    python -m benchmarks.answers --compare old.json new.json     # exit 1 if any answer differs

With PYTHONPATH at another version's worktree (and run as a file, not with -m, which would put this
folder first), it answers with that version's code: the first line printed names the packages used.
A differing answer equal to one the first file gave another request is shown beside it.
"""

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np

SAMPLERS = ("onestep", "multistep", "gamma", "euler", "heun")
# Explicit steps per sampler: today's default (so that a changed default shows as such) and another.
STEPS: dict[str, tuple[int, ...]] = {
    "onestep": (1,),
    "multistep": (4, 9),
    "gamma": (4, 9),
    "euler": (256, 10),
    "heun": (64, 10),
}
SIZES = (1, 7, 1000)
SEEDS = (0, 12345)
FLOAT_FIELDS = ("samples", "sigmas", "paths", "x", "logprob")
LOGPROB_X = [*np.linspace(-4.0, 4.0, 33).tolist(), -50.0, 50.0, 1e6]
Request = tuple[str, str, dict[str, Any] | None]  # (method, path with query, JSON body)
Models = dict[str, dict[str, Any]]  # name → its /models entry


def url(path: str, **query: Any) -> str:
    """`path` with the query's given (not None) parameters; lists repeat their name."""
    return f"{path}?{urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)}"


def requests(models: Models) -> Iterator[Request]:
    """The fixed requests, for `models` (the samplers each takes as /models lists them)."""
    for model, info in models.items():
        for sampler in (s for s in SAMPLERS if s in info["samplers"]):
            for n in SIZES:
                for seed in SEEDS:
                    for steps in (None, *STEPS[sampler]):
                        yield (
                            "GET",
                            url("/sample", model=model, sampler=sampler, n=n, seed=seed, steps=steps),
                            None,
                        )
        yield "GET", url("/sample", model=model, sampler="gamma", steps=4, gamma=0.3, n=7, seed=0), None
        for sampler, steps in (("onestep", None), ("multistep", None), ("multistep", 4)):
            yield (
                "GET",
                url("/sample", model=model, sampler=sampler, steps=steps, noise="quantile", n=7),
                None,
            )
        for density in ("onestep", "ode"):
            yield "POST", "/logprob", {"model": model, "x": LOGPROB_X, "sampler": density}
    for model in list(models)[:2]:
        noise = models[model]["noise"]
        for sampler, steps in ((None, None), ("onestep", None), ("multistep", 4), ("gamma", 4), ("heun", 10)):
            yield "GET", url("/trajectory", model=model, sampler=sampler, steps=steps, n=7, seed=0), None
        sigmas = f"{noise['sigma_max']},2,0.5,{noise['sigma_min']}"
        for sampler in ("multistep", "euler"):
            yield "GET", url("/trajectory", model=model, sampler=sampler, sigmas=sigmas, n=7, seed=0), None
        for density in ("onestep", "ode"):
            yield "GET", url("/logprob", model=model, x=[-1.5, 0.0, 1.5], sampler=density), None
    # At the edges of the rules (refusals that a refactor may have changed on purpose).
    first, info = next(iter(models.items()))
    ends = f"{info['noise']['sigma_max']},{info['noise']['sigma_min']}"
    yield "GET", url("/sample", model=first, sampler="onestep", steps=3, n=7, seed=0), None
    yield "GET", url("/sample", model=first, sampler="multistep", gamma=0.3, steps=4, n=7, seed=0), None
    yield "GET", url("/sample", model=first, sampler="multistep", step=8, n=7, seed=0), None
    yield "GET", url("/sample", model=first, sampler="multistep", steps=4, sigmas=ends, n=7, seed=0), None
    yield "GET", url("/sample", model="no_such_model", n=7, seed=0), None
    yield "GET", url("/sample", n=7, seed=0), None
    yield "POST", "/logprob", {"model": first, "x": []}


def floats(value: Any) -> Any:
    """A JSON array's numbers as floats, null (a non-finite log-density) as NaN."""
    if isinstance(value, list):
        return [floats(v) for v in value]
    return math.nan if value is None else float(value)


def digest(answer: dict[str, Any]) -> str:
    """SHA-256 of the answer's float arrays: each one's name, shape and float64 bytes."""
    h = hashlib.sha256()
    for name in FLOAT_FIELDS:
        if name in answer:
            array = np.asarray(floats(answer[name]), dtype=np.float64)
            h.update(f"{name}{array.shape}".encode())
            h.update(array.tobytes())
    return "sha256:" + h.hexdigest()


def record(checkpoints: Path) -> dict[str, str]:
    """Every request's digest (or status), keyed by method, path and query, and body."""
    from fastapi.testclient import TestClient

    import ctm_core
    import service
    from service.app import create_app
    from service.config import Settings

    print(f"service from {service.__file__}, ctm_core from {ctm_core.__file__}", flush=True)
    settings = Settings(
        checkpoint_dir=checkpoints,
        inference_threads=1,
        torch_threads=1,
        request_timeout_s=0,
        log_level="warning",
    )
    results: dict[str, str] = {}
    with TestClient(create_app(settings)) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        print(f"{len(models)} models: {', '.join(models)}", flush=True)
        for method, target, body in requests(models):
            response = client.request(method, target, json=body, headers={"Accept": "application/json"})
            key = f"{method} {target}" + ("" if body is None else " " + json.dumps(body, sort_keys=True))
            ok = response.status_code == 200
            results[key] = digest(response.json()) if ok else f"status:{response.status_code}"
    return results


def compare(old: dict[str, str], new: dict[str, str], show: int | None = None) -> int:
    """Print the keys that match, differ, or are in one file only; 1 if any differ. A differing
    answer that the first file gave to other requests names them (a changed default shows so)."""
    old_requests: dict[str, list[str]] = {}
    for key, value in sorted(old.items()):
        old_requests.setdefault(value, []).append(key)
    same = sorted(k for k in old.keys() & new.keys() if old[k] == new[k])
    differ = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    only_old, only_new = sorted(old.keys() - new.keys()), sorted(new.keys() - old.keys())
    print(f"compared {len(old.keys() & new.keys())}: {len(same)} identical, {len(differ)} differ")
    print(f"only in the first file: {len(only_old)}; only in the second: {len(only_new)}")
    for title, keys in (
        ("identical", same),
        ("DIFFER", differ),
        ("only first", only_old),
        ("only second", only_new),
    ):
        for key in keys[:show] if title == "identical" else keys:
            detail = f"  {old.get(key, '-')[:20]} → {new.get(key, '-')[:20]}" if title == "DIFFER" else ""
            print(f"{title}: {key}{detail}")
            if title == "DIFFER" and new[key].startswith("sha256:"):
                for other in old_requests.get(new[key], [])[:2]:
                    print(f"    = the first file's answer to {other}")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="folder served")
    parser.add_argument("--out", type=Path, help="write {request: digest or status} here (JSON)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"), help="compare two files")
    parser.add_argument("--show", type=int, help="with --compare: identical keys to list (default all)")
    args = parser.parse_args(argv)
    if args.compare:
        old, new = (json.loads(p.read_text()) for p in args.compare)
        return compare(old, new, args.show)
    results = record(args.checkpoints)
    text = json.dumps(results, indent=1, sort_keys=True) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"{len(results)} answers → {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
