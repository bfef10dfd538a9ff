"""ctm_core.runtime: the folded CTM runtime matches the eager model, and a row's value ignores its batch."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from test_monotone_runtime import randomised_model
from torch import nn

import ctm_core.runtime
from ctm_core.checkpoint import build_model
from ctm_core.config import NetworkConfig
from ctm_core.machine import usable_cpus
from ctm_core.parametrization import CTMParametrization
from ctm_core.rows import BLOCK_ROWS, ROW_ALIGN, ROWS, aligned
from ctm_core.runtime import (
    CACHE_ENTRIES,
    FoldedCTM,
    LevelCache,
    batch_invariant,
    folded_runtime,
    runtime_for,
    verify_runtime,
)

LEVELS = [(80.0, 0.002), (10.0, 0.5), (1.0, 0.999), (0.3, 0.3), (0.002, 0.002)]


@pytest.fixture
def model() -> CTMParametrization:
    """A default-size MLP (`kind="mlp"`: the folded MLP runtime's network) with a non-zero data mean."""
    torch.manual_seed(0)
    return build_model(NetworkConfig(kind="mlp"), sigma_data=0.5, data_mean=0.7).eval().requires_grad_(False)


@pytest.fixture(params=[1, 2, 3], ids=["1-thread", "2-threads", "3-threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """The runtime's row threads (and, for good measure, PyTorch's intra-op threads here)."""
    previous, previous_rows = torch.get_num_threads(), ROWS.threads
    torch.set_num_threads(request.param)
    ROWS.configure(request.param)
    yield request.param
    torch.set_num_threads(previous)
    ROWS.configure(previous_rows)


def test_aligned() -> None:
    assert [aligned(n) for n in (1, ROW_ALIGN, ROW_ALIGN + 1)] == [ROW_ALIGN, ROW_ALIGN, 2 * ROW_ALIGN]


@pytest.fixture(params=["onednn", "addmm"])
def matmul(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each path of the hidden layers' matrix products: oneDNN's linear, and BLAS addmm."""
    monkeypatch.setattr(ctm_core.runtime, "_ONEDNN_LINEAR", request.param == "onednn")
    return request.param


def test_onednn_linear_is_found_on_this_build() -> None:
    # The CPU wheel the project pins ships oneDNN; losing it would halve the runtime's speed.
    assert ctm_core.runtime._ONEDNN_LINEAR is torch.backends.mkldnn.is_available()


@pytest.mark.parametrize("n", [1, 5, 16, 1000, 5003])
def test_matches_the_eager_model(model: CTMParametrization, n: int, matmul: str) -> None:
    runtime = FoldedCTM(model)
    x = 3 * torch.randn(n, generator=torch.Generator().manual_seed(n))
    with torch.inference_mode():
        for t, s in LEVELS:
            t_, s_ = torch.tensor(t), torch.tensor(s)
            jump, eager_jump = runtime.jump(x, t_, s_), model.jump(x, t_, s_)
            denoised, eager_denoised = runtime.denoise(x, t_), model.denoise(x, t_)
            assert jump.shape == denoised.shape == (n,)
            torch.testing.assert_close(jump, eager_jump, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(denoised, eager_denoised, rtol=1e-5, atol=1e-5)


def test_jump_to_the_same_time_is_the_identity(model: CTMParametrization) -> None:
    x = 5 * torch.randn(333)
    for t in (0.002, 1.0, 80.0):
        assert torch.equal(FoldedCTM(model).jump(x, torch.tensor(t), torch.tensor(t)), x)


@pytest.mark.parametrize("kind", ["mlp", "monotone"])
def test_a_row_does_not_depend_on_the_rows_beside_it(
    model: CTMParametrization, threads: int, kind: str
) -> None:
    # Bit-identical alone and amid others, across blocks, at unaligned sizes and offsets, and the
    # same on any number of threads, for both served runtimes.
    runtime = folded_runtime(model if kind == "mlp" else randomised_model(0))
    x = 4 * torch.randn(3 * BLOCK_ROWS + 77, generator=torch.Generator().manual_seed(1))
    t, s = torch.tensor(20.0), torch.tensor(0.01)
    whole, whole_denoised = runtime.jump(x, t, s), runtime.denoise(x, t)
    for start, rows in [
        (0, 1),
        (3, 2),
        (7, 3),
        (11, 13),
        (100, 600),
        (100, 1000),
        (2000, 2 * BLOCK_ROWS + 5),
    ]:
        part = x[start : start + rows].clone()
        assert torch.equal(runtime.jump(part, t, s), whole[start : start + rows]), (start, rows)
        assert torch.equal(runtime.denoise(part, t), whole_denoised[start : start + rows]), (start, rows)
    assert batch_invariant(runtime)
    ROWS.configure(1)
    torch.set_num_threads(1)
    assert torch.equal(runtime.jump(x, t, s), whole)


class _Doubler(nn.Module):
    def forward(self, x_in: torch.Tensor, noise_t: torch.Tensor, noise_s: torch.Tensor) -> torch.Tensor:
        return 2 * x_in


def test_level_cache_keeps_the_recently_used_and_no_more() -> None:
    made: list[int] = []

    def maker(key: int) -> Callable[[], int]:
        def make() -> int:
            made.append(key)
            return key * 10

        return make

    cache: LevelCache[int, int] = LevelCache(entries=3)
    assert [cache.get(k, maker(k)) for k in (1, 2, 3)] == [10, 20, 30]
    assert cache.get(1, maker(1)) == 10  # a hit: 1 is now the most recently used
    cache.get(4, maker(4))  # drops 2, the least recently used
    assert len(cache) == 3
    cache.get(1, maker(1))
    cache.get(2, maker(2))
    assert made == [1, 2, 3, 4, 2]


def test_arbitrary_levels_keep_the_caches_bounded(model: CTMParametrization) -> None:
    """Requests with their own `sigmas` visit endless (t, s) pairs: memory must not follow them."""
    runtime = FoldedCTM(model)
    x = torch.linspace(-3, 3, 40)
    generator = torch.Generator().manual_seed(0)
    for _ in range(CACHE_ENTRIES + 50):
        t, s = sorted(torch.rand(2, generator=generator).mul(10).add(0.002).tolist(), reverse=True)
        runtime.jump(x, t, s)
    assert len(runtime._bias_cache) == CACHE_ENTRIES
    assert len(runtime._scaling_cache) == CACHE_ENTRIES
    torch.testing.assert_close(runtime.jump(x, t, s), model(x, torch.full_like(x, t), torch.full_like(x, s)))


def test_other_networks_run_eagerly_and_unbatched(model: CTMParametrization) -> None:
    runtime = runtime_for(model)
    assert isinstance(runtime, FoldedCTM) and batch_invariant(runtime)
    other = CTMParametrization(_Doubler(), sigma_data=0.5)
    assert runtime_for(other) is other


def test_verify_runtime_refuses_a_runtime_that_is_not_the_model(model: CTMParametrization) -> None:
    verify_runtime(FoldedCTM(model), model, 0.002, 80.0, 0.7)  # the true fold passes
    runtime = FoldedCTM(model)
    runtime.b_first = runtime.b_first + 1e-3  # a fold off by a little in its first layer's bias
    with pytest.raises(ValueError, match="differs from the model's"):
        verify_runtime(runtime, model, 0.002, 80.0, 0.7)


@pytest.mark.parametrize(
    ("cpu_max", "expected_cap"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("garbage", None), (None, None)],
)
def test_usable_cpus_honours_a_cgroup_quota(
    tmp_path: Path, cpu_max: str | None, expected_cap: int | None
) -> None:
    # A container's `cpus: 1.5` is a quota of 150,000 µs per 100,000 µs: 2 threads, not the host's.
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if expected_cap is None else min(affinity, expected_cap)
    assert usable_cpus(path) == expected
