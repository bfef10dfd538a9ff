"""The shipped checkpoints: every built-in task has one, and its one-step map is checked against the
exact 1D flow (quality, order, the prior) rather than against its own recorded numbers."""

from pathlib import Path

import numpy as np
import pytest
import torch
from app_client import serve

from ctm_core.checkpoint import FORMAT_VERSION, load_checkpoint
from ctm_core.exact import exact_flow
from ctm_core.metrics import quantile_w1
from ctm_core.samplers import generate, latent
from ctm_core.tasks import TASKS, get_task

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
N = 20_000
# Regression guards for the shipped (seed-0) models: 1.3× their one-step qW1 as trained (rounded
# up), so a change that makes them worse fails while a BLAS's rounding does not. Re-derived when the
# recipe changed to 4,096 stable-target values (6 Dec 2026): two_gmm_1D's seed-0 model is 0.0054
# (0.0036 before; over seeds 0–4 both recipes average 0.0044). The exact-CTM targets (0.003 on
# two_gmm_1D, 0.008 on many_modes_1D, 0.004 elsewhere, mean over seeds 0–2) and which of them hold
# are in docs/RESULTS.md: two_gmm_1D, heavy_tailed_1D and uneven_two_gmm_1D miss.
ONE_STEP_GUARD = {
    "bounded_1D": 0.0023,
    "heavy_tailed_1D": 0.0080,
    "many_modes_1D": 0.0056,
    "single_gaussian_1D": 0.0006,
    "skewed_1D": 0.0030,
    "three_gmm_1D": 0.0030,
    "two_gmm_1D": 0.0071,
    "uneven_two_gmm_1D": 0.0067,
}

pytestmark = pytest.mark.anyio


def _onestep(task: str) -> tuple[np.ndarray, np.ndarray]:
    """(quantile latents, one-step outputs) of the shipped model, in latent order, float64."""
    ckpt = load_checkpoint(CHECKPOINTS / f"{task}.safetensors")
    noise = ckpt.noise
    x_T = latent(N, noise.data_mean or 0.0, noise.prior_std, "quantile", torch.Generator())
    with torch.no_grad():
        y = ckpt.student.jump(x_T, torch.tensor(noise.sigma_max), torch.tensor(noise.sigma_min))
    return x_T.double().numpy(), y.double().numpy()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_has_a_valid_small_current_checkpoint(task: str) -> None:
    ckpt = load_checkpoint(CHECKPOINTS / f"{task}.safetensors")
    assert ckpt.format_version == FORMAT_VERSION
    assert ckpt.metadata.task.name == task
    assert ckpt.teacher is not None  # distilled: the benchmarks compare the teacher's ODE
    assert ckpt.size_bytes < 1_000_000
    assert ckpt.metadata.network.kind == "monotone"
    # The prior the model was trained with is the marginal's: N(data mean, σ_max² + σ_d²).
    prior_mean = ckpt.noise.data_mean
    assert prior_mean == pytest.approx(get_task(task).mean, abs=0.05 * get_task(task).std)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_one_step_is_within_the_bound_of_the_exact_law_and_never_folds(task: str) -> None:
    _, y = _onestep(task)
    assert np.all(np.diff(y) >= 0), f"{int(np.sum(np.diff(y) < 0))} of {N} ordered latents out of order"
    assert quantile_w1(y, get_task(task)) <= ONE_STEP_GUARD[task]


@pytest.mark.parametrize("task", ["two_gmm_1D", "three_gmm_1D", "uneven_two_gmm_1D"])
def test_one_step_follows_the_exact_flow_of_the_same_latents(task: str) -> None:
    """Point by point, not only in distribution: each latent lands near where the exact flow sends it."""
    x_T, y = _onestep(task)
    noise = load_checkpoint(CHECKPOINTS / f"{task}.safetensors").noise
    truth = exact_flow(get_task(task), x_T, noise.sigma_max, noise.sigma_min)
    assert np.mean(np.abs(y - truth)) <= ONE_STEP_GUARD[task]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_recorded_quality_is_what_the_samplers_give_now(task: str) -> None:
    """The metadata's rows were made with today's prior and schedules, so /models tells the truth."""
    ckpt = load_checkpoint(CHECKPOINTS / f"{task}.safetensors")
    rows = {r["label"]: r["qW1"] for r in ckpt.metadata.metrics.rows or []}
    kwargs = ckpt.noise.sampling_kwargs()
    trajectory = generate(ckpt.student, "multistep", 2, N, noise="quantile", **kwargs)
    # A recorded value, kept on purpose (the metadata must describe the shipped file). 1e-5: the
    # float32 network moves each sample by ~1e-7 relative under another BLAS or CPU, and the mean
    # |error| of 20,000 samples by far less; a wrong prior moves it by ~4e-3 (docs/CTM.md).
    assert quantile_w1(trajectory.samples, get_task(task)) == pytest.approx(
        rows["student multistep 2"], abs=1e-5
    )


async def test_served_two_gmm_one_step_quantiles_are_close_to_the_target() -> None:
    """GET /sample?n=20000&noise=quantile from the shipped default model, against the exact law."""
    async with serve(CHECKPOINTS) as client:
        response = await client.get("/sample", params={"n": N, "noise": "quantile"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "two_gmm_1D" and body["nfe"] == 1
    samples = np.asarray(body["samples"])
    assert np.all(np.diff(samples) >= 0)  # ordered latents, a monotone map: ordered samples
    assert quantile_w1(samples, get_task("two_gmm_1D")) <= ONE_STEP_GUARD["two_gmm_1D"]
