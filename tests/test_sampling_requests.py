"""ctm_core.sampling: a request's defaults and refusals, and γ-sampling's fresh noise, against
values written out here (the rules the Python API, the CLI and the service share)."""

import numpy as np
import pytest
import torch

from ctm_core.config import MAX_SEED, NoiseConfig
from ctm_core.samplers import DEFAULT_GAMMA, sample_gamma, sampling_sigmas
from ctm_core.sampling import SampleRequest, check_request, sample_request
from ctm_core.schedules import karras_sigmas, linear_sigmas

NOISE = NoiseConfig(sigma_min=0.002, sigma_max=10.0, sigma_data=0.5, data_mean=0.0)


def test_a_bare_request_is_one_random_onestep_sample_set_with_a_drawn_seed() -> None:
    request = sample_request(NOISE, n=5)
    assert (request.sampler, request.steps, request.noise, request.sigmas) == ("onestep", 1, "random", None)
    assert 0 <= request.seed <= MAX_SEED
    assert sample_request(NOISE, n=5, sampler="gamma").gamma == DEFAULT_GAMMA
    assert sample_request(NOISE, n=5, sampler="multistep", max_steps=2).steps == 2  # a server's cap


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise": "sobol"}, r"^unknown noise mode 'sobol'; choose 'random' or 'quantile'$"),
        ({"seed": -1}, rf"^seed must be in \[0, {MAX_SEED}\], got -1$"),
        ({"seed": MAX_SEED + 1}, rf"^seed must be in \[0, {MAX_SEED}\], got {MAX_SEED + 1}$"),
        ({"sampler": "gamma", "gamma": 1.5}, r"^gamma must be in \[0, 1\], got 1.5$"),
        ({"sampler": "gamma", "gamma": -0.1}, r"^gamma must be in \[0, 1\], got -0.1$"),
        (
            {"sampler": "multistep", "steps": 2, "sigmas": [10.0, 0.002]},
            r"^give either steps or sigmas, not both: the sigmas fix the steps$",
        ),
        ({"sampler": "heun", "gamma": 0.2}, r"^gamma applies to sampler=gamma only; the heun sampler"),
    ],
)
def test_refusals_name_the_rule(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_request(NOISE, n=5, **kwargs)
    assert sample_request(NOISE, n=5, sampler="gamma", gamma=1.0).gamma == 1.0  # the ends are legal


def test_a_checked_request_with_the_wrong_number_of_sigmas_says_sigmas() -> None:
    request = SampleRequest(sampler="onestep", steps=2, n=3, seed=0, sigmas=(10.0, 1.0, 0.002))
    with pytest.raises(ValueError, match=r"takes exactly 2 sigmas \(σ_max and σ_min\), got 3"):
        check_request(request)


def test_the_schedules_rho_is_edms_seven_by_default() -> None:
    got = sampling_sigmas("heun", 6, sigma_min=0.002, sigma_max=10.0)
    torch.testing.assert_close(got, karras_sigmas(7, 0.002, 10.0, 7.0), rtol=0, atol=0)
    torch.testing.assert_close(
        sampling_sigmas("multistep", 6, sigma_min=0.002, sigma_max=10.0), linear_sigmas(7, 0.002, 10.0)
    )


class _Collapse:
    """A jump to 0 from anywhere: what γ-sampling's state holds after a step is its fresh noise."""

    def jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0])
def test_gamma_sampling_renoises_with_gamma_times_the_level(gamma: float) -> None:
    # Algorithm 3: jump to √(1 − γ²)·τ, then add N(0, τ² − (1 − γ²)·τ²) = N(0, (γ·τ)²) noise.
    sigmas = torch.tensor([10.0, 4.0, 1.0, 0.002], dtype=torch.float64)
    x = torch.zeros(400_000)
    states = sample_gamma(_Collapse(), x, sigmas, torch.Generator().manual_seed(0), gamma=gamma).states
    for level, state in zip(sigmas[1:-1].tolist(), states[1:-1], strict=True):
        expected = gamma * level if gamma < 1 else np.sqrt(level**2 - 0.002**2)  # γ = 1: s clamps to σ_min
        assert state.std().item() == pytest.approx(expected, rel=0.005)
    assert torch.equal(states[-1], torch.zeros_like(x))  # the last jump lands on σ_min: no noise
