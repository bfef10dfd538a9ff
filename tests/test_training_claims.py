"""What training claims, measured: the CTM phase moves the shipped student towards the exact flow, the
evaluation EMAs follow their definition, and every default loss term reaches the gradient.

The runs are seconds long (a 2×16 conditioner, 16 units, a 12-point grid). To see the CTM phase
alone, the teacher's trajectories are the exact PF-ODE flow of N(μ, σ²) data in closed form,
μ + (x_T − μ)·√(σ² + t²)/√(σ² + σ_max²) (docs/CTM.md), instead of a trained teacher's Heun solve:
whatever the student learns is then measured against the truth, not against a teacher's error.
"""

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ctm_core.config import CTMConfig, NetworkConfig, NoiseConfig, TeacherConfig, TrainConfig
from ctm_core.samplers import latent
from ctm_core.tasks import get_task
from ctm_core.trainer import Trainer

TASK = get_task("single_gaussian_1D")  # N(1, 0.2²): the data mean is not 0
MU, SIGMA = TASK.mean, TASK.std
TINY = NetworkConfig(width=16, depth=2, units=16)
NOISE = NoiseConfig(sigma_data=SIGMA, data_mean=MU)
# (t, s) jumps the error is measured on: one-step, and from/to intermediate levels.
JUMPS = [(10.0, 0.002), (10.0, 2.0), (5.0, 0.002), (5.0, 1.0), (2.0, 0.002), (2.0, 0.5), (1.0, 0.002)]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: far faster for a 16-wide network on a busy machine (as the CLI's default)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(teacher_steps: int = 0, **ctm: object) -> TrainConfig:
    ctm_config = {"steps": 80, "batch_size": 128, "pool_size": 512, "grid_points": 12} | ctm
    return TrainConfig(
        seed=0,
        network=TINY,
        noise=NOISE,
        teacher=TeacherConfig(steps=teacher_steps, batch_size=128),
        ctm=CTMConfig.model_validate(ctm_config),
    )


def _exact_gaussian_jump(x: np.ndarray, t: float, s: float) -> np.ndarray:
    return MU + (x - MU) * math.sqrt(SIGMA**2 + s**2) / math.sqrt(SIGMA**2 + t**2)


def _exact_pool(trainer: Trainer) -> torch.Tensor:
    """The exact flow's states on the training grid from x_T ~ N(μ, σ_max² + σ²), (grid, pool)."""
    noise, cfg = trainer.config.noise, trainer.config.ctm
    x_T = latent(cfg.pool_size, MU, noise.prior_std, "random", torch.Generator().manual_seed(1)).double()
    grid = trainer.grid.double()
    scale = torch.sqrt(SIGMA**2 + grid[:, None] ** 2) / math.sqrt(SIGMA**2 + noise.sigma_max**2)
    return (MU + (x_T[None, :] - MU) * scale).float()


def _jump_errors(model: torch.nn.Module) -> np.ndarray:
    """Mean |G(x, t, s) − G*(x, t, s)| over 1,000 quantiles x of the marginal N(μ, σ² + t²), per jump."""
    n = 1000
    z = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).numpy()
    errors = []
    for t, s in JUMPS:
        x = MU + math.sqrt(SIGMA**2 + t**2) * z
        with torch.no_grad():
            got = model.jump(torch.tensor(x, dtype=torch.float32), torch.tensor(t), torch.tensor(s))
        errors.append(np.abs(got.double().numpy() - _exact_gaussian_jump(x, t, s)).mean())
    return np.array(errors)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ctm_phase_moves_the_shipped_student_towards_the_exact_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    """80 CTM steps on exact targets: the shipped (evaluation-EMA) student's jumps land ~10× closer
    to the exact flow than its starting point, the teacher's weights (seen over seeds 0–4: 0.07–0.12
    of the start; a student that never left the teacher scores 1)."""
    trainer = Trainer(_config(eval_ema=0.9), TASK.sample, torch.device("cpu"), progress=False)
    pool = _exact_pool(trainer)
    monkeypatch.setattr(trainer, "teacher_pool", lambda: pool)
    start = _jump_errors(trainer.student_eval)
    assert start.mean() > 0.03  # the untrained network is visibly off: there is something to learn
    state = trainer.run()
    assert state.phase == "done" and len(state.losses["ctm"]) == 80

    trained = _jump_errors(trainer.student_eval)
    assert trained.mean() < 0.3 * start.mean(), (start, trained)
    assert trained.max() < start.max()
    # The shipped student is not the teacher: not its weights, not its jumps.
    teacher = trainer.teacher_eval.state_dict()
    moved = [k for k, v in trainer.student_eval.state_dict().items() if not torch.equal(v, teacher[k])]
    assert moved, "the shipped student still holds the teacher's weights"
    assert np.abs(_jump_errors(trainer.teacher_eval) - start).max() == 0.0  # the teacher stayed put


def test_evaluation_emas_follow_their_definition() -> None:
    """At every step, eval ← r·eval + (1 − r)·θ (docs/CTM.md): the teacher's during phase 1, the
    student's during phase 2, where it starts from the teacher's EMA; the default rates."""
    config = _config(teacher_steps=4, steps=4, pool_size=64)
    rates = {"teacher": config.teacher.eval_ema, "ctm": config.ctm.eval_ema}
    assert rates == {"teacher": 0.99, "ctm": 0.99}
    trainer = Trainer(config, TASK.sample, torch.device("cpu"), progress=False)
    previous = {"teacher": _weights(trainer.teacher_eval)}
    checked: list[tuple[str, int]] = []

    def hook(t: Trainer, phase: str, step: int) -> None:
        ema = t.teacher_eval if phase == "teacher" else t.student_eval
        if phase == "ctm" and step == 1:
            previous["ctm"] = previous["teacher"]  # phase 2 starts from the teacher's EMA
            assert all(torch.equal(v, previous["teacher"][k]) for k, v in _weights(t.teacher_eval).items())
        online, now, before, r = _weights(t.online), _weights(ema), previous[phase], rates[phase]
        for key, value in now.items():
            expected = r * before[key] + (1 - r) * online[key]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=f"{phase} {step} {key}")
        assert any(not torch.equal(now[k], before[k]) for k in now), f"{phase} {step}: the EMA did not move"
        previous[phase] = now
        checked.append((phase, step))

    trainer.run(hook=hook)
    assert checked == [("teacher", i) for i in range(1, 5)] + [("ctm", i) for i in range(1, 5)]


def _first_ctm_gradient(**ctm: object) -> dict[str, torch.Tensor]:
    """The online network's gradient in the first CTM step (the hook runs after the optimiser step;
    the gradient stays until the next step zeroes it)."""
    config = _config(teacher_steps=0, steps=1, pool_size=64)
    config = config.model_copy(update={"ctm": config.ctm.model_copy(update=ctm)})
    trainer = Trainer(config, TASK.sample, torch.device("cpu"), progress=False)
    grads: dict[str, torch.Tensor] = {}

    def hook(t: Trainer, phase: str, step: int) -> None:
        for name, p in t.online.named_parameters():
            grads[name] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()

    trainer.run(hook=hook)
    return grads


def test_each_default_loss_term_reaches_the_gradient() -> None:
    """The default CTM loss is intermediate_weight·(consistency at s) + λ_DSM·DSM (end_weight 0).
    The gradient of a step is the sum of its terms' gradients (the random draws are the same: the
    consistency draws come first, and zeroing a weight skips no draw but DSM's own), and each
    term's share is non-zero, so dropping either changes the gradient."""
    defaults = CTMConfig()
    assert (defaults.intermediate_weight, defaults.end_weight) == (1.0, 0.0) and defaults.lambda_dsm > 0
    total = _first_ctm_gradient()
    consistency_only = _first_ctm_gradient(lambda_dsm=0.0)
    dsm_only = _first_ctm_gradient(intermediate_weight=0.0)
    norm = {name: float(g.norm()) for name, g in total.items()}
    assert sum(norm.values()) > 0
    for part in (consistency_only, dsm_only):
        assert sum(float(g.norm()) for g in part.values()) > 0
        assert any(not torch.allclose(part[k], total[k], rtol=1e-3, atol=0) for k in total)
    for name, g in total.items():
        torch.testing.assert_close(
            consistency_only[name] + dsm_only[name], g, rtol=1e-4, atol=1e-6 * max(norm[name], 1e-3)
        )
    # The end-point term (weight 0 by default) reaches it too when it is switched on.
    with_end = _first_ctm_gradient(end_weight=1.0)
    assert any(not torch.allclose(with_end[k], total[k], rtol=1e-3, atol=0) for k in total)
