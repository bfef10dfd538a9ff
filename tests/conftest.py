"""Shared fixtures: tiny, untrained but valid checkpoints written with ctm_core's own saver.

`checkpoint_dir` is a fresh folder per test holding two models with different noise ranges;
`make_checkpoint` writes more (e.g. to corrupt or to vary the metadata).

CTM_REQUIRE_ALL_TESTS=1 (CI sets it) turns every skip into a failure, so that a test CI expects to
run (the browser tests, say, when Chromium is not where they look) cannot pass by not running. The
only skips left alone are those in `ALLOWED_SKIP_REASONS`: tests that cannot apply to the machine.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ctm_core.checkpoint import (
    Metrics,
    TaskInfo,
    TrainingRecord,
    build_model,
    checkpoint_metadata,
    save_checkpoint,
)
from ctm_core.config import NetworkConfig, NoiseConfig, TrainConfig

# Under mutation testing (docs/TESTING.md) workers are forked after collection has started torch's
# OpenMP pool, which then hangs: keep torch single-threaded there.
if "MUTANT_UNDER_TEST" in os.environ:
    torch.set_num_threads(1)

# Read once at import, before any test's `_clean_env` hides the CTM_* variables.
REQUIRE_ALL_TESTS = os.environ.get("CTM_REQUIRE_ALL_TESTS", "") not in ("", "0")
# Skips that stay skips under CTM_REQUIRE_ALL_TESTS: the test cannot apply to this machine at all.
ALLOWED_SKIP_REASONS = ("needs a machine without CUDA",)


def _refused_skip(reason: str) -> str | None:
    """The failure message for a skip that CTM_REQUIRE_ALL_TESTS refuses, or None if it is allowed."""
    if not REQUIRE_ALL_TESTS or any(allowed in reason for allowed in ALLOWED_SKIP_REASONS):
        return None
    return f"skipped, but CTM_REQUIRE_ALL_TESTS=1 requires it to run: {reason}"


def _fail_refused_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skipped report into a failure when CTM_REQUIRE_ALL_TESTS refuses its skip."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    message = _refused_skip(reason)
    if message is not None:
        report.outcome = "failed"
        report.longrepr = message


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        _fail_refused_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    """A whole module skipped at import (pytest.importorskip, allow_module_level) counts too."""
    report = yield
    if report.skipped:
        _fail_refused_skip(report)
    return report


TINY_NETWORK = NetworkConfig(width=16, depth=2)
# name → (noise range, has a teacher). Different ranges so tests can tell the models apart.
FIXTURE_MODELS: dict[str, tuple[NoiseConfig, bool]] = {
    "two_gmm_1D": (NoiseConfig(sigma_min=0.002, sigma_max=10.0, sigma_data=0.5), False),
    "gauss_1D": (NoiseConfig(sigma_min=0.01, sigma_max=5.0, sigma_data=1.0, rho=5.0), True),
}

MakeCheckpoint = Callable[..., Path]
# The metrics every fixture model records (its evaluation table: one row).
FIXTURE_METRICS = Metrics(rows=[{"label": "student onestep", "qW1": 1.25}])


def write_checkpoint(
    path: Path,
    *,
    noise: NoiseConfig,
    with_teacher: bool = False,
    seed: int = 0,
    network: NetworkConfig = TINY_NETWORK,
    metrics: Metrics | None = None,
) -> Path:
    """Save an untrained model with seeded weights at `path` (task name: the file's stem)."""
    assert noise.sigma_data is not None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_model(network, noise.sigma_data)
        teacher = build_model(network, noise.sigma_data) if with_teacher else None
    metadata = checkpoint_metadata(
        network=network,
        noise=noise,
        task=TaskInfo(name=path.stem, description=f"test model {path.stem}"),
        training=TrainingRecord.of(TrainConfig(seed=seed), {"phase": "done", "step": 0}),
        metrics=metrics if metrics is not None else FIXTURE_METRICS,
        created_at="2024-01-01T00:00:00+00:00",
    )
    save_checkpoint(path, student=student, teacher=teacher, metadata=metadata)
    return path


@pytest.fixture(scope="session")
def _fixture_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fixture_checkpoints")
    for seed, (name, (noise, with_teacher)) in enumerate(FIXTURE_MODELS.items()):
        write_checkpoint(folder / f"{name}.safetensors", noise=noise, with_teacher=with_teacher, seed=seed)
    return folder


@pytest.fixture
def checkpoint_dir(_fixture_checkpoints: Path, tmp_path: Path) -> Path:
    """A fresh folder with `two_gmm_1D.safetensors` and `gauss_1D.safetensors` (see FIXTURE_MODELS)."""
    folder = tmp_path / "checkpoints"
    shutil.copytree(_fixture_checkpoints, folder)
    return folder


@pytest.fixture
def checkpoint_models() -> dict[str, tuple[NoiseConfig, bool]]:
    """What `checkpoint_dir` holds: model name → (noise range, has a teacher)."""
    return FIXTURE_MODELS


@pytest.fixture
def make_checkpoint() -> MakeCheckpoint:
    """`make_checkpoint(path, noise=NoiseConfig(...), with_teacher=False, seed=0, ...)` writes one file."""
    return write_checkpoint


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the server's event loop)."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read CTM_* variables: keep the caller's environment out of every test."""
    for key in list(os.environ):
        if key.startswith("CTM_"):
            monkeypatch.delenv(key)
