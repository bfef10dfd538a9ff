import numpy as np
import pytest
import torch

from ctm_core.schedules import exponential_sigmas, get_sigmas, karras_sigmas, linear_sigmas


@pytest.mark.parametrize("schedule", [karras_sigmas, exponential_sigmas, linear_sigmas])
def test_endpoints_exact_and_strictly_decreasing(schedule):
    sigmas = schedule(18, 0.002, 10.0, 7.0)
    assert sigmas.shape == (18,)
    assert sigmas[0].item() == 10.0 and sigmas[-1].item() == 0.002
    assert (sigmas[1:] < sigmas[:-1]).all()


def test_karras_matches_formula():
    n, lo, hi, rho = 5, 0.002, 80.0, 7.0
    i = torch.arange(n, dtype=torch.float64)
    expected = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    torch.testing.assert_close(karras_sigmas(n, lo, hi, rho), expected, rtol=1e-12, atol=1e-12)


def test_exponential_is_log_linear_and_linear_is_linear():
    log_steps = exponential_sigmas(6, 0.01, 10.0).log().diff()
    torch.testing.assert_close(log_steps, torch.full_like(log_steps, log_steps[0].item()))
    steps = linear_sigmas(6, 0.01, 10.0).diff()
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()))


def test_two_points_are_the_ends():
    assert get_sigmas("karras", 2, 0.002, 10.0).tolist() == [10.0, 0.002]


@pytest.mark.parametrize(
    ("n", "lo", "hi", "message"),
    [
        (1, 0.002, 10.0, "at least 2 points, got 1"),
        (5, 0.0, 10.0, "0 < sigma_min < sigma_max"),
        (5, 10.0, 1.0, "0 < sigma_min < sigma_max"),
        (5, 3.0, 3.0, "0 < sigma_min < sigma_max"),
    ],
)
@pytest.mark.parametrize("schedule", [karras_sigmas, exponential_sigmas, linear_sigmas])
def test_bad_arguments_raise(schedule, n, lo, hi, message):
    with pytest.raises(ValueError, match=message):
        schedule(n, lo, hi)


def test_rho_defaults_to_seven_as_in_edm():
    # Karras et al. (2022) eq. 5 with ρ = 7, written out here.
    i = torch.arange(9, dtype=torch.float64)
    expected = (80.0 ** (1 / 7) + i / 8 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(karras_sigmas(9, 0.002, 80.0), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(get_sigmas("karras", 9, 0.002, 80.0), expected, rtol=1e-12, atol=1e-12)


def test_exponential_matches_a_float64_geometric_sequence():
    expected = torch.from_numpy(np.geomspace(10.0, 0.01, 7))
    torch.testing.assert_close(exponential_sigmas(7, 0.01, 10.0), expected, rtol=1e-12, atol=0)


def test_unknown_schedule_names_choices():
    with pytest.raises(ValueError, match="karras"):
        get_sigmas("cosine", 5, 0.002, 10.0)


@pytest.mark.parametrize("name", ["karras", "exponential", "linear"])
def test_get_sigmas_names_the_schedules(name):
    schedule = {"karras": karras_sigmas, "exponential": exponential_sigmas, "linear": linear_sigmas}[name]
    assert torch.equal(get_sigmas(name, 7, 0.002, 10.0, 5.0), schedule(7, 0.002, 10.0, 5.0))


def test_linear_matches_formula():
    i = torch.arange(6, dtype=torch.float64)
    expected = 10.0 + i / 5 * (0.002 - 10.0)
    torch.testing.assert_close(linear_sigmas(6, 0.002, 10.0), expected, rtol=1e-12, atol=1e-12)
