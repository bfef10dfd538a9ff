"""ctm_core.losses: DSM equals its equation; the consistency loss vanishes on consistent jumps."""

import copy
import math

import pytest
import torch
from torch import nn

from ctm_core.checkpoint import build_model
from ctm_core.config import NetworkConfig
from ctm_core.losses import ConsistencyLoss, DSMLoss
from ctm_core.parametrization import CTMParametrization

SIGMA_DATA = 0.5
SIGMA_MIN, SIGMA_MAX = 0.002, 10.0


def _model(seed: int = 0, sigma_data: float = SIGMA_DATA, kind: str = "monotone") -> CTMParametrization:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(NetworkConfig(kind=kind, width=16, depth=2), sigma_data)


# ---- DSM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["monotone", "mlp"])
def test_dsm_equals_a_hand_computation(kind: str) -> None:
    """Recompute t, λ(t) and the noise from an identically seeded generator, D from c_skip/c_out/c_in
    and the raw network's (F, ρ): D = c_skip·(1 − ρ)·x_t + c_out·F (ρ = 0 for the MLP, no gate)."""
    model = _model(0, kind=kind)
    p_mean, p_std = 0.0, 4.0  # wide, so that both ends of the clamp are exercised
    loss_fn = DSMLoss(p_mean, p_std, SIGMA_DATA, SIGMA_MIN, SIGMA_MAX)
    x0 = torch.linspace(-2.0, 2.0, 64)
    loss = loss_fn(model, x0, torch.Generator().manual_seed(123))

    gen = torch.Generator().manual_seed(123)
    rnd = torch.randn(64, generator=gen)
    eps = torch.randn(64, generator=gen)
    t = torch.exp(p_mean + p_std * rnd)
    assert (t < SIGMA_MIN).any() and (t > SIGMA_MAX).any()
    t = t.clamp(SIGMA_MIN, SIGMA_MAX)
    x_t = x0 + t * eps
    sd2 = SIGMA_DATA**2
    c_skip = sd2 / (t**2 + sd2)
    c_out = t * SIGMA_DATA / torch.sqrt(t**2 + sd2)
    c_in = 1 / torch.sqrt(t**2 + sd2)
    with torch.no_grad():
        raw, gate = model.net(c_in * x_t, torch.log(t) / 4, torch.log(t) / 4)
    assert (gate is None) == (kind == "mlp")
    skip = c_skip if gate is None else c_skip * (1 - gate)
    denoised = skip * x_t + c_out * raw
    weight = (t**2 + sd2) / (t * SIGMA_DATA) ** 2
    expected = float(torch.mean(weight.double() * (denoised.double() - x0.double()) ** 2))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.requires_grad and loss.ndim == 0


def test_dsm_consumes_exactly_two_draws_and_is_reproducible() -> None:
    loss_fn = DSMLoss(-0.6, 1.6, SIGMA_DATA, SIGMA_MIN, SIGMA_MAX)
    model, x0 = _model(0), torch.randn(32, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(5)
    first = loss_fn(model, x0, gen).item()
    reference = torch.Generator().manual_seed(5)
    torch.randn(32, generator=reference)
    torch.randn(32, generator=reference)
    assert torch.equal(gen.get_state(), reference.get_state())
    assert loss_fn(model, x0, torch.Generator().manual_seed(5)).item() == first
    assert loss_fn(model, x0, gen).item() != first  # the stream moved on


class _ConstantDenoiser:
    def __init__(self, value: float) -> None:
        self.value = value

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)


class _GaussianDenoiser:
    """The exact posterior mean for data N(0, σ_d²): D(x, t) = σ_d²/(σ_d² + t²)·x."""

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return SIGMA_DATA**2 / (SIGMA_DATA**2 + t**2) * x


def test_dsm_is_zero_for_a_perfect_denoiser_of_a_point_mass() -> None:
    loss_fn = DSMLoss(-0.6, 1.6, SIGMA_DATA, SIGMA_MIN, SIGMA_MAX)
    x0 = torch.full((100,), 1.25)
    assert loss_fn(_ConstantDenoiser(1.25), x0, torch.Generator().manual_seed(0)).item() == 0.0
    assert loss_fn(_ConstantDenoiser(0.25), x0, torch.Generator().manual_seed(0)).item() > 0.1


def test_dsm_of_the_optimal_gaussian_denoiser_is_one() -> None:
    """With EDM's λ(t), the optimum for N(0, σ_d²) data is E[λ·Var(x₀|x_t)] = 1 at every t."""
    loss_fn = DSMLoss(-0.6, 1.6, SIGMA_DATA, SIGMA_MIN, SIGMA_MAX)
    gen = torch.Generator().manual_seed(0)
    x0 = SIGMA_DATA * torch.randn(200_000, generator=gen, dtype=torch.float64)
    loss = loss_fn(_GaussianDenoiser(), x0, gen).item()
    assert loss == pytest.approx(1.0, abs=0.02)  # Monte Carlo std ≈ √2/√200000 ≈ 0.003


# ---- consistency -------------------------------------------------------------------------------


def _batch(n: int = 48, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(1)
    t = torch.exp(torch.empty(n, dtype=dtype).uniform_(math.log(0.05), math.log(SIGMA_MAX), generator=gen))
    u = t * torch.empty(n, dtype=dtype).uniform_(0.1, 0.9, generator=gen)
    s = u * torch.empty(n, dtype=dtype).uniform_(0.05, 1.0, generator=gen)
    s = s.clamp_min(SIGMA_MIN)
    x_t = torch.randn(n, generator=gen, dtype=dtype) * t
    return x_t, t, u, s


def test_consistency_is_zero_when_the_target_is_the_models_own_jump() -> None:
    """model = target, u = s and x_u = G(x_t, t, s): G(x_u, s, s) = x_u, so estimate = target."""
    model = _model(0).requires_grad_(False)
    loss_fn = ConsistencyLoss(SIGMA_MIN)
    x_t, t, _, s = _batch()
    with torch.no_grad():
        x_u = model.jump(x_t, t, s)
        loss = loss_fn(model, model, x_t, t, x_u, s, s)
    assert loss.item() < 1e-10
    # ... and clearly positive once the solver's answer differs.
    with torch.no_grad():
        assert loss_fn(model, model, x_t, t, x_u + 0.5, s, s).item() > 1e-3


class _SemigroupJump(nn.Module):
    """G(x, t, s) = x·(s/t)^a: exactly consistent, G(G(x, t, u), u, s) = G(x, t, s) for every u."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x * (s / t) ** self.a


def test_consistency_is_zero_for_an_exactly_consistent_model_at_any_u() -> None:
    loss_fn = ConsistencyLoss(SIGMA_MIN)
    model = _SemigroupJump(0.8)
    x_t, t, u, s = _batch(dtype=torch.float64)
    with torch.no_grad():
        x_u = model.jump(x_t, t, u)
    assert loss_fn(model, model, x_t, t, x_u, u, s).item() < 1e-10
    # A differently scaled target is inconsistent with the model: the loss sees it.
    assert loss_fn(model, _SemigroupJump(0.5), x_t, t, x_u, u, s).item() > 1e-6


@pytest.mark.parametrize(("intermediate", "end"), [(1.0, 0.0), (0.0, 1.0), (0.7, 0.4), (2.0, 3.0)])
def test_consistency_weights_against_closed_form_jumps(intermediate: float, end: float) -> None:
    """With G(x, t, s) = x·(s/t)^a (model a = 0.8, target a = 0.5) every term has a closed form:
    w_i·mean(Δ²) + w_e·mean((Δ·(σ_min/s)^0.5)²), Δ = x_t·(s/t)^0.8 − x_u·(s/u)^0.5."""
    loss_fn = ConsistencyLoss(SIGMA_MIN, intermediate_weight=intermediate, end_weight=end)
    x_t, t, u, s = _batch(dtype=torch.float64)
    x_u = 0.6 * x_t + 0.2
    loss = loss_fn(_SemigroupJump(0.8), _SemigroupJump(0.5), x_t, t, x_u, u, s).item()
    at_s = x_t * (s / t) ** 0.8 - x_u * (s / u) ** 0.5  # G_θ(x_t, t, s) − G_sg(x_u, u, s)
    at_end = at_s * (SIGMA_MIN / s) ** 0.5  # both pushed on by the target's jump s → σ_min
    expected = intermediate * float((at_s**2).mean()) + end * float((at_end**2).mean())
    assert loss == pytest.approx(expected, rel=1e-12)
    # Positional order is (σ_min, intermediate_weight, end_weight); the defaults are the paper's loss.
    assert ConsistencyLoss(SIGMA_MIN, intermediate, end)(
        _SemigroupJump(0.8), _SemigroupJump(0.5), x_t, t, x_u, u, s
    ).item() == pytest.approx(expected, rel=1e-12)
    paper = ConsistencyLoss(SIGMA_MIN)(_SemigroupJump(0.8), _SemigroupJump(0.5), x_t, t, x_u, u, s)
    assert paper.item() == pytest.approx(float((at_end**2).mean()), rel=1e-12)


class _NoEndJump(_SemigroupJump):
    """A target that refuses any jump to σ_min: with end_weight 0 the loss must not ask for one."""

    def jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        assert not bool((s == SIGMA_MIN).any()), "jumped to σ_min"
        return super().jump(x, t, s)


def test_end_weight_zero_skips_the_jump_to_sigma_min() -> None:
    x_t, t, u, s = _batch(dtype=torch.float64)
    s = s.clamp_min(2 * SIGMA_MIN)
    loss_fn = ConsistencyLoss(SIGMA_MIN, intermediate_weight=1.0, end_weight=0.0)
    loss = loss_fn(_SemigroupJump(0.8), _NoEndJump(0.5), x_t, t, 0.6 * x_t, u, s)
    assert loss.item() > 0
    with pytest.raises(AssertionError, match="σ_min"):
        ConsistencyLoss(SIGMA_MIN, 1.0, 1.0)(_SemigroupJump(0.8), _NoEndJump(0.5), x_t, t, 0.6 * x_t, u, s)


def test_intermediate_gradient_is_that_of_the_direct_comparison_at_s() -> None:
    """With end_weight 0 the gradient is that of mean((G_θ(x_t, t, s) − G_sg(x_u, u, s))²) alone."""
    model, target = _model(0), _model(1).requires_grad_(False)
    x_t, t, u, s = _batch()
    x_u = 0.5 * x_t
    loss_fn = ConsistencyLoss(SIGMA_MIN, intermediate_weight=1.0, end_weight=0.0)
    loss_fn(model, target, x_t, t, x_u, u, s).backward()
    reference = copy.deepcopy(model)
    reference.zero_grad(set_to_none=True)
    with torch.no_grad():
        goal = target.jump(x_u, u, s)
    ((reference.jump(x_t, t, s) - goal) ** 2).mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_consistency_equals_a_hand_computation() -> None:
    model, target = _model(0), _model(1).requires_grad_(False)
    loss_fn = ConsistencyLoss(SIGMA_MIN)
    x_t, t, u, s = _batch()
    x_u = x_t * 0.7 + 0.1
    loss = loss_fn(model, target, x_t, t, x_u, u, s)
    end = torch.full_like(s, SIGMA_MIN)
    with torch.no_grad():
        estimate = target.jump(model.jump(x_t, t, s), s, end)
        goal = target.jump(target.jump(x_u, u, s), s, end)
    assert loss.item() == pytest.approx(float(((estimate - goal) ** 2).mean()), rel=1e-6)
    # At s = σ_min the outer jumps are the identity: d(G_θ(x_t, t, σ_min), G_sg(x_u, u, σ_min)).
    s_end = torch.full_like(s, SIGMA_MIN)
    at_end = loss_fn(model, target, x_t, t, x_u, u, s_end).item()
    with torch.no_grad():
        direct = ((model.jump(x_t, t, s_end) - target.jump(x_u, u, s_end)) ** 2).mean().item()
    assert at_end == pytest.approx(direct, rel=1e-6)


def test_gradient_flows_only_into_the_online_model() -> None:
    model = _model(0)
    target = copy.deepcopy(_model(1)).requires_grad_(False)
    loss_fn = ConsistencyLoss(SIGMA_MIN)
    x_t, t, u, s = _batch()
    x_u = (0.5 * x_t).requires_grad_(True)
    loss = loss_fn(model, target, x_t, t, x_u, u, s)
    loss.backward()

    assert all(p.grad is not None for p in model.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0
    assert all(p.grad is None for p in target.parameters())
    assert x_u.grad is None, "the target branch must be stop-gradient"

    # The gradient is that of d(G_sg(G_θ(x_t, t, s), s, σ_min), fixed goal): it passes through G_sg.
    reference = copy.deepcopy(model)
    reference.zero_grad(set_to_none=True)
    end = torch.full_like(s, SIGMA_MIN)
    with torch.no_grad():
        goal = target.jump(target.jump(x_u, u, s), s, end)
    ((target.jump(reference.jump(x_t, t, s), s, end) - goal) ** 2).mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


class _PosteriorMeanModel:
    """A 'model' whose denoiser is the exact float32 posterior mean over fixed reference points."""

    def __init__(self, points: torch.Tensor) -> None:
        self.points = points

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            logits = -((x.double()[:, None] - self.points.double()[None, :]) ** 2) / (
                2 * t.double()[:, None] ** 2
            )
            return (torch.softmax(logits, dim=1) @ self.points.double()).float()


def test_stable_target_is_float32_under_bf16_autocast() -> None:
    """Under bf16 autocast the stable target must still be the float32 posterior mean: a model that
    returns exactly that mean scores (almost) zero. In bf16 the mean is off by up to ~1e-2."""
    points = torch.linspace(-1.5, 1.5, 257)
    loss_fn = DSMLoss(-1.2, 1.2, SIGMA_DATA, SIGMA_MIN, SIGMA_MAX)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(_PosteriorMeanModel(points), points, torch.Generator().manual_seed(0), points)
    assert loss.dtype == torch.float32
    assert float(loss) < 1e-8


class _RecordingDenoiser:
    """Records the noise levels DSM draws; denoises to 0."""

    def __init__(self) -> None:
        self.t = torch.empty(0)

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.t = t
        return torch.zeros_like(x)


def test_dsm_draws_log_t_from_n_of_p_mean_and_p_std() -> None:
    # EDM's training distribution: ln t ~ N(P_mean, P_std²), clamped to [σ_min, σ_max] (wide here).
    model = _RecordingDenoiser()
    loss = DSMLoss(p_mean=-0.6, p_std=1.2, sigma_data=0.5, sigma_min=1e-6, sigma_max=1e6)
    loss(model, torch.zeros(200_000), torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    log_t = model.t.log()
    assert log_t.mean().item() == pytest.approx(-0.6, abs=0.01)
    assert log_t.std().item() == pytest.approx(1.2, abs=0.01)
