"""ctm_core.runtime.FoldedMonotone: the folded runtime of a `MonotoneNetwork` matches the eager model,
keeps its guarantees (G(x, t, t) = x, non-decreasing in x), and a row's value ignores its batch."""

import os
import time

import pytest
import torch

from ctm_core.checkpoint import build_model
from ctm_core.config import NetworkConfig
from ctm_core.network import MonotoneNetwork
from ctm_core.parametrization import CTMParametrization
from ctm_core.rows import ROWS
from ctm_core.runtime import FoldedMonotone, batch_invariant, runtime_for

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# Noise levels from σ_min to σ_max, each with targets from σ_min to itself (s = t included).
TIMES = torch.logspace(torch.log10(torch.tensor(SIGMA_MIN)), torch.log10(torch.tensor(SIGMA_MAX)), 9)
PAIRS = [(t, torch.clamp(t * frac, min=SIGMA_MIN)) for t in TIMES for frac in (0.0, 0.01, 0.5, 0.999, 1.0)]


def randomised_model(seed: int) -> CTMParametrization:
    """A fresh default (monotone) model with a non-zero data mean and its weights pushed off their
    initialisation, so that the units' amplitudes, slopes and offsets and the gate vary with (t, s)."""
    torch.manual_seed(seed)
    model = build_model(NetworkConfig(), sigma_data=0.5, data_mean=0.7).eval().requires_grad_(False)
    assert isinstance(model.net, MonotoneNetwork)
    with torch.no_grad():
        for name, parameter in model.net.named_parameters():
            # The head's weights start at a tenth of PyTorch's scale (`MonotoneNetwork`); pushed
            # by as much as the trunk's, the units' log-amplitudes would reach e³ per unit, far
            # from a trained model's (Σ_k a_k ≈ 2 on the shipped two_gmm_1D).
            parameter.add_((0.03 if name.startswith("head.") else 0.3) * torch.randn_like(parameter))
    return model


@pytest.fixture
def model() -> CTMParametrization:
    return randomised_model(0)


def assert_matches(folded: torch.Tensor, eager: torch.Tensor, x: torch.Tensor) -> None:
    """Equal up to a few float32 roundings of the terms summed (the folded sums group them
    differently): of order 1 + max(|x|, |G|). Measured: under 3.3e-7 of that here."""
    assert folded.shape == eager.shape and folded.dtype == eager.dtype
    scale = 1 + max(float(x.abs().max()), float(eager.abs().max()))
    torch.testing.assert_close(folded, eager, rtol=1e-6, atol=2e-6 * scale)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [1, 5, 16, 1000, 5003])
def test_matches_the_eager_model(seed: int, n: int) -> None:
    model = randomised_model(seed)
    runtime = FoldedMonotone(model)
    x = 0.7 + 4 * torch.randn(n, generator=torch.Generator().manual_seed(n))
    with torch.inference_mode():
        for t, s in PAIRS:
            assert_matches(runtime.jump(x, t, s), model.jump(x, t, s), x)
            assert_matches(runtime.denoise(x, t), model.denoise(x, t), x)
        # Python floats work as well as 0-dim tensors.
        assert_matches(runtime.jump(x, 3.0, 0.25), model.jump(x, torch.tensor(3.0), torch.tensor(0.25)), x)


def test_jump_to_the_same_time_is_the_identity(model: CTMParametrization) -> None:
    runtime = FoldedMonotone(model)
    x = 5 * torch.randn(333)
    for t in [*TIMES.tolist(), 0.3, 1.0]:
        assert torch.equal(runtime.jump(x, torch.tensor(t), torch.tensor(t)), x)
        assert torch.equal(runtime.jump(x, t, t), x)


def test_non_decreasing_in_x(model: CTMParametrization) -> None:
    # A wide sorted grid and a dense one (neighbours a few ulp apart) around the data's mean.
    wide = torch.linspace(-200.0, 200.0, 20_001)
    dense = 0.7 + torch.linspace(-1e-4, 1e-4, 4_001)
    runtime = FoldedMonotone(model)
    for x in (wide, dense):
        for t, s in PAIRS:
            assert (runtime.jump(x, t, s).diff() >= 0).all(), (float(t), float(s))
        for t in TIMES:
            assert (runtime.denoise(x, t).diff() >= 0).all(), float(t)


@pytest.mark.parametrize("intra_op_threads", [3, 5])
def test_a_multithreaded_caller_gets_the_same_rows(model: CTMParametrization, intra_op_threads: int) -> None:
    # Calls under PARALLEL_MIN_ROWS run in the caller: with 3 or 5 intra-op threads there, MKL's
    # threaded matrix-vector product would cut rows into chunks that are not multiples of 4.
    runtime = FoldedMonotone(model)
    x = 4 * torch.randn(2500, generator=torch.Generator().manual_seed(2))
    t, s = torch.tensor(5.0), torch.tensor(0.1)
    previous, previous_rows = torch.get_num_threads(), ROWS.threads
    try:
        torch.set_num_threads(1)
        ROWS.configure(1)
        whole = runtime.jump(x, t, s)
        torch.set_num_threads(intra_op_threads)
        ROWS.configure(intra_op_threads)
        for rows in range(16, 2049, 112):
            assert torch.equal(runtime.jump(x[7 : 7 + rows].clone(), t, s), whole[7 : 7 + rows]), rows
        assert torch.get_num_threads() == intra_op_threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(previous)
        ROWS.configure(previous_rows)


def test_the_conditioner_runs_once_per_pair(
    model: CTMParametrization, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = FoldedMonotone(model)
    calls = []
    coefficients = model.net.coefficients
    monkeypatch.setattr(model.net, "coefficients", lambda *args: calls.append(1) or coefficients(*args))
    x = torch.randn(100)
    for _ in range(3):
        runtime.jump(x, 2.0, 0.5)
        runtime.denoise(x, 2.0)
        runtime.jump(x, 2.0, 2.0)  # (t, t): the denoiser's coefficients
    assert len(calls) == 2


def test_it_serves_a_monotone_model_and_batches_it(model: CTMParametrization) -> None:
    runtime = runtime_for(model)
    assert isinstance(runtime, FoldedMonotone) and batch_invariant(runtime)


def test_timing_100k_rows(model: CTMParametrization) -> None:
    """Prints (asserts nothing about) one jump of 100,000 rows, folded and eager, on the threads
    configured here and on one thread (`pytest -s`); the eager model's OpenMP ops suffer most when
    another process holds a core."""
    runtime = FoldedMonotone(model)
    x = 0.7 + 3 * torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    t, s = torch.tensor(2.5), torch.tensor(0.01)
    previous, previous_rows = torch.get_num_threads(), ROWS.threads
    print(f"\nload average {os.getloadavg()[0]:.2f}; 100,000 rows, one jump, median (best) of 15:")
    try:
        for threads in sorted({previous, 1}, reverse=True):
            torch.set_num_threads(threads)
            ROWS.configure(threads)
            medians = {}
            for name, jump in (("folded", runtime.jump), ("eager", model.jump)):
                with torch.inference_mode():
                    jump(x, t, s)  # warm-up (and the folded runtime's cache)
                    seconds = []
                    for _ in range(15):
                        start = time.perf_counter()
                        jump(x, t, s)
                        seconds.append(time.perf_counter() - start)
                medians[name] = median = sorted(seconds)[len(seconds) // 2]
                print(f"  {threads} thread(s) {name:>6}: {1e3 * median:7.2f} ms ({1e3 * min(seconds):.2f})")
            print(f"  {threads} thread(s) eager ÷ folded: {medians['eager'] / medians['folded']:.1f}×")
    finally:
        torch.set_num_threads(previous)
        ROWS.configure(previous_rows)
