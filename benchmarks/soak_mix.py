"""The soak test's traffic (benchmarks/soak.py): each kind of request, legal and hostile, and its weight."""

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from benchmarks.reloads import SWAPPED

MAX_N = 100_000  # the service's default CTM_MAX_N
MAX_TRAJECTORY_VALUES = 1_000_000  # its default CTM_MAX_TRAJECTORY_VALUES
MAX_POST_POINTS = 10_000  # POST /logprob's limit
MAX_GET_POINTS = 100  # GET /logprob's limit
BIG_BODY_BYTES = 20 * 2**20

# ---- the mix -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One HTTP request to send: GET with `params`, or POST with a `json` body or raw `content`."""

    method: str
    path: str
    params: dict[str, Any] | list[tuple[str, Any]] | None = None
    json: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] | None = None

    def describe(self) -> str:
        """A short account of the request for failure messages (no bodies)."""
        if self.content is not None:
            return f"{self.method} {self.path} ({len(self.content):,}-byte body)"
        if self.json is not None:
            shown = {k: (f"[{len(v)} values]" if isinstance(v, list) else v) for k, v in self.json.items()}
            return f"{self.method} {self.path} {shown}"
        return f"{self.method} {self.path} {self.params or ''}"


@dataclass(frozen=True)
class Models:
    """What the mix may ask for: the served models (shipped ones) and each one's noise range."""

    names: list[str]
    sigma_range: dict[str, tuple[float, float]]  # name -> (sigma_min, sigma_max)


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix: label, weight, and how to build one (sizes drawn each time)."""

    label: str
    weight: int
    build: Callable[[random.Random, Models], Call]
    hostile: bool = False


def size(rng: random.Random, most: int = MAX_N) -> int:
    """n for one request: log-uniform from 1 to 10,000 mostly; 10,001 to 100,000 one time in 20
    (half of those the maximum). Capped at `most`."""
    if rng.random() < 0.95:
        n = int(10 ** rng.uniform(0, 4))
    else:
        n = MAX_N if rng.random() < 0.5 else rng.randint(10_001, MAX_N)
    return max(1, min(n, most))


def seed(rng: random.Random) -> int:
    return rng.randrange(2**62)


def sample(sampler: str, steps: int, **extra: Any) -> Callable[[random.Random, Models], Call]:
    def build(rng: random.Random, models: Models) -> Call:
        params = {"model": rng.choice(models.names), "sampler": sampler, "steps": steps}
        params |= {"n": size(rng), "seed": seed(rng), "noise": rng.choice(("random", "quantile")), **extra}
        return Call("GET", "/sample", params)

    return build


def sample_swapped(rng: random.Random, models: Models) -> Call:
    sampler, steps = rng.choice((("onestep", 1), ("multistep", 2), ("multistep", 4)))
    params = {"model": SWAPPED, "sampler": sampler, "steps": steps, "n": size(rng, 1000), "seed": seed(rng)}
    return Call("GET", "/sample", params)


def sigma_levels(rng: random.Random, sigma_min: float, sigma_max: float, levels: int) -> list[str]:
    """`levels` strictly decreasing noise levels from sigma_max to sigma_min, geometric with jitter."""
    inner = sorted((rng.uniform(0.05, 0.95) for _ in range(levels - 2)), reverse=True)
    ratio = sigma_min / sigma_max
    middle = [f"{sigma_max * ratio ** (1 - u):.6g}" for u in inner]
    # Rounded inner levels may collide; keep them strictly decreasing and inside the range.
    values = [repr(sigma_max)]
    for text in middle:
        if sigma_min < float(text) < float(values[-1]):
            values.append(text)
    return [*values, repr(sigma_min)]


def sample_sigmas(rng: random.Random, models: Models) -> Call:
    model = rng.choice(models.names)
    sampler = rng.choice(("onestep", "multistep", "gamma", "euler", "heun"))
    levels = sigma_levels(rng, *models.sigma_range[model], 2 if sampler == "onestep" else rng.randint(2, 12))
    params: list[tuple[str, Any]] = [("model", model), ("sampler", sampler), ("n", size(rng))]
    params += [
        ("seed", seed(rng)),
        *([("gamma", 0.3)] if sampler == "gamma" else []),
    ]  # no steps: sigmas fix them
    if rng.random() < 0.5:
        params.append(("sigmas", ",".join(levels)))  # comma-separated
    else:
        params += [("sigmas", level) for level in levels]  # repeated
    return Call("GET", "/sample", params)


TRAJECTORY_SAMPLERS = [("onestep", 1), ("multistep", 2), ("multistep", 4), ("multistep", 8)]
TRAJECTORY_SAMPLERS += [("gamma", 4), ("euler", 32), ("heun", 32)]


def trajectory(rng: random.Random, models: Models) -> Call:
    model = rng.choice(models.names)
    sampler, steps = rng.choice(TRAJECTORY_SAMPLERS)
    n = size(rng, MAX_TRAJECTORY_VALUES // (steps + 1))
    params: dict[str, Any] = {"model": model, "sampler": sampler, "steps": steps, "n": n, "seed": seed(rng)}
    if sampler == "gamma":
        params["gamma"] = 0.3
    if sampler != "onestep" and rng.random() < 0.25:
        levels = sigma_levels(rng, *models.sigma_range[model], steps + 1 if steps <= 8 else 9)
        params["sigmas"] = ",".join(levels)
        del params["steps"]  # the sigmas fix the steps; the service refuses both
    return Call("GET", "/trajectory", params)


def evaluate(rng: random.Random, models: Models) -> Call:
    sampler, steps = rng.choice((("onestep", 1), ("multistep", 4), ("heun", 32)))
    params = {"model": rng.choice(models.names), "sampler": sampler, "steps": steps, "n": size(rng, 20_000)}
    return Call("GET", "/evaluate", params | {"seed": seed(rng)})


def points(rng: random.Random, count: int) -> list[float]:
    return [round(rng.uniform(-6.0, 6.0), 6) for _ in range(count)]


def logprob_post(density: str, most: int) -> Callable[[random.Random, Models], Call]:
    def build(rng: random.Random, models: Models) -> Call:
        count = int(10 ** rng.uniform(0, np.log10(most)))
        body = {"model": rng.choice(models.names), "x": points(rng, count), "sampler": density}
        return Call("POST", "/logprob", json=body)

    return build


def logprob_get(density: str, most: int) -> Callable[[random.Random, Models], Call]:
    def build(rng: random.Random, models: Models) -> Call:
        params: list[tuple[str, Any]] = [("model", rng.choice(models.names)), ("sampler", density)]
        params += [("x", x) for x in points(rng, rng.randint(1, most))]
        return Call("GET", "/logprob", params)

    return build


def fixed(path: str) -> Callable[[random.Random, Models], Call]:
    return lambda rng, models: Call("GET", path)


def model_info(rng: random.Random, models: Models) -> Call:
    return Call("GET", f"/models/{rng.choice(models.names)}")


def density(rng: random.Random, models: Models) -> Call:
    return Call("GET", f"/models/{rng.choice(models.names)}/density", {"points": rng.randint(2, 2000)})


def plot(rng: random.Random, models: Models) -> Call:
    params = {"model": rng.choice(models.names), "n": size(rng, 2000), "sampler": "multistep", "steps": 2}
    return Call("GET", "/plot.png", params)


# ---- hostile requests: any 4xx is fine, a 5xx or a dropped connection is not ----------------------


def unknown_model(rng: random.Random, models: Models) -> Call:
    return Call("GET", "/sample", {"model": f"no-such-model-{rng.randrange(10**6)}", "n": 10})


def zero_n(rng: random.Random, models: Models) -> Call:
    return Call("GET", "/sample", {"model": rng.choice(models.names), "n": 0})


def bad_sigmas(rng: random.Random, models: Models) -> Call:
    sigma_min, sigma_max = models.sigma_range[models.names[0]]
    bad = rng.choice(
        (
            f"{sigma_max},abc,{sigma_min}",  # not a number
            f"{sigma_min},1,{sigma_max}",  # increasing
            f"{sigma_max},1,1,{sigma_min}",  # not strictly decreasing
            f"{sigma_max * 2},1,{sigma_min}",  # wrong end
            f"{sigma_max}",  # one level
            f"{sigma_max},nan,{sigma_min}",
            ",,,",
        )
    )
    return Call("GET", "/sample", {"model": models.names[0], "sampler": "multistep", "sigmas": bad})


def not_json(rng: random.Random, models: Models) -> Call:
    content = rng.choice((b"{not json", b"x=1&x=2", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b""))
    return Call("POST", "/logprob", content=content, headers={"content-type": "application/json"})


@cache
def too_many_points_body() -> bytes:
    return json.dumps({"x": [0.5] * (MAX_POST_POINTS + 1)}).encode()


@cache
def big_body_bytes() -> bytes:
    """About 20 MB of valid JSON: {"x": [0.1234567, ...]} (built once, on first use)."""
    return b'{"x": [' + b",".join([b"0.1234567"] * (BIG_BODY_BYTES // 10)) + b"]}"


def too_many_points(rng: random.Random, models: Models) -> Call:
    body = too_many_points_body()
    return Call("POST", "/logprob", content=body, headers={"content-type": "application/json"})


def big_body(rng: random.Random, models: Models) -> Call:
    return Call("POST", "/logprob", content=big_body_bytes(), headers={"content-type": "application/json"})


# Weights add up to 1,000: the hostile kinds are 1 % of the requests.
MIX = [
    Kind("sample onestep", 250, sample("onestep", 1)),
    Kind("sample multistep 2", 50, sample("multistep", 2)),
    Kind("sample multistep 4", 70, sample("multistep", 4)),
    Kind("sample multistep 8", 40, sample("multistep", 8)),
    Kind("sample gamma 4 γ0.3", 50, sample("gamma", 4, gamma=0.3)),
    Kind("sample euler 32", 30, sample("euler", 32)),
    Kind("sample heun 32", 30, sample("heun", 32)),
    Kind("sample swapped", 60, sample_swapped),
    Kind("sample sigmas=", 45, sample_sigmas),
    Kind("trajectory", 70, trajectory),
    Kind("evaluate", 20, evaluate),
    Kind("POST logprob onestep", 60, logprob_post("onestep", MAX_POST_POINTS)),
    Kind("POST logprob ode", 15, logprob_post("ode", 500)),
    Kind("GET logprob onestep", 30, logprob_get("onestep", MAX_GET_POINTS)),
    Kind("GET logprob ode", 10, logprob_get("ode", 20)),
    Kind("models", 50, fixed("/models")),
    Kind("model", 20, model_info),
    Kind("healthz", 45, fixed("/healthz")),
    Kind("readyz", 20, fixed("/readyz")),
    Kind("metrics", 10, fixed("/metrics")),
    Kind("density", 10, density),
    Kind("plot", 5, plot),
    Kind("hostile unknown model", 2, unknown_model, hostile=True),
    Kind("hostile n=0", 2, zero_n, hostile=True),
    Kind("hostile bad sigmas", 2, bad_sigmas, hostile=True),
    Kind("hostile not JSON", 2, not_json, hostile=True),
    Kind("hostile 10,001 points", 1, too_many_points, hostile=True),
    Kind("hostile 20 MB body", 1, big_body, hostile=True),
]


def chosen_kinds(patterns: list[str] | None) -> list[Kind]:
    """The kinds of the mix whose label matches one of `patterns` (regular expressions); all without."""
    if not patterns:
        return MIX
    return [kind for kind in MIX if any(re.search(pattern, kind.label) for pattern in patterns)]
