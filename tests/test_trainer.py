"""ctm_core.trainer: index draws, the LR schedule, a real (tiny) run, and exact resumption."""

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ctm_core.checkpoint import TaskInfo, checkpoint_metadata, load_checkpoint, save_checkpoint
from ctm_core.config import CTMConfig, NetworkConfig, NoiseConfig, TeacherConfig, TrainConfig
from ctm_core.tasks import get_task
from ctm_core.trainer import Trainer, cosine_lr, draw_ctm_indices, refine_grid

TASK = get_task("two_gmm_1D")
TINY = NetworkConfig(width=16, depth=2)
# The first layer of each kind's network, to see training move the weights.
FIRST_LAYER = {"monotone": "net.trunk.0.weight", "mlp": "net.mlp.0.weight"}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: far faster for a 16-wide network on a busy machine (as the CLI's default)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- draw_ctm_indices --------------------------------------------------------------------------


def _exact_probabilities(
    n_grid: int, end_p: float, start_p: float, direct_p: float, order: str = "u_first"
) -> dict[str, float]:
    """P(k = N−1), P(n = 0), P(m = k) by enumerating the documented distribution."""
    last = n_grid - 1
    p_n = np.full(last, (1 - start_p) / last)
    p_n[0] += start_p
    p_k_last = p_m_last = p_m_eq_k = 0.0
    if order == "s_first":
        for n in range(last):
            for k in range(n + 1, n_grid):  # k uniform in (n, N−1], or N−1 with end_p
                pk = p_n[n] * ((1 - end_p) / (last - n) + end_p * (k == last))
                p_k_last += pk * (k == last)
                # m uniform in (n, k]: m = k by that draw with 1/(k − n), or by the direct draw.
                p_m_eq_k += pk * (direct_p + (1 - direct_p) / (k - n))
        return {"k_last": p_k_last, "n_first": p_n[0], "m_eq_k": p_m_eq_k}
    for n in range(last):
        for m in range(n + 1, n_grid):  # m uniform in (n, N−1]
            pm = p_n[n] / (last - n)
            uniform_k_last = 1 / (n_grid - m)  # k uniform in [m, N−1]
            k_last = end_p + (1 - end_p) * uniform_k_last
            p_k_last += pm * k_last
            p_m_last += pm * (m == last)
            # Without the direct draw, m = k when k = m in the uniform draw, or m = N−1 = k.
            natural = (1 - end_p) * uniform_k_last + end_p * (m == last)
            p_m_eq_k += pm * (direct_p + (1 - direct_p) * natural)
    return {"k_last": p_k_last, "n_first": p_n[0], "m_eq_k": p_m_eq_k}


@pytest.mark.parametrize("order", ["u_first", "s_first"])
@pytest.mark.parametrize(
    ("n_grid", "end_p", "start_p", "direct_p"),
    [(40, 0.5, 0.0, 0.0), (18, 0.0, 0.0, 0.0), (10, 0.25, 0.3, 0.4), (3, 0.5, 0.5, 0.5), (40, 1.0, 1.0, 1.0)],
)
def test_ctm_indices_are_ordered_and_follow_the_probabilities(
    n_grid: int, end_p: float, start_p: float, direct_p: float, order: str
) -> None:
    batch = 100_000
    gen = torch.Generator().manual_seed(0)
    n, m, k = draw_ctm_indices(batch, n_grid, end_p, gen, start_p, direct_p, order)
    assert n.shape == m.shape == k.shape == (batch,)
    assert n.dtype == m.dtype == k.dtype == torch.int64
    assert bool((n >= 0).all() and (n < m).all() and (m <= k).all() and (k <= n_grid - 1).all())
    # Every allowed value is reached (up to the forced ones).
    if start_p < 1:
        assert set(n.unique().tolist()) == set(range(n_grid - 1))
    if direct_p < 1:
        assert set(m.unique().tolist()) == set(range(1, n_grid))

    expected = _exact_probabilities(n_grid, end_p, start_p, direct_p, order)
    observed = {
        "k_last": (k == n_grid - 1).double().mean().item(),
        "n_first": (n == 0).double().mean().item(),
        "m_eq_k": (m == k).double().mean().item(),
    }
    for key, p in expected.items():
        tolerance = 5 * math.sqrt(max(p * (1 - p), 0.0) / batch) + 1e-9
        assert observed[key] == pytest.approx(p, abs=tolerance), key


def test_end_probability_share_beyond_the_natural_one() -> None:
    gen = torch.Generator().manual_seed(3)
    natural = (draw_ctm_indices(50_000, 40, 0.0, gen)[2] == 39).double().mean().item()
    with_end = (draw_ctm_indices(50_000, 40, 0.5, gen)[2] == 39).double().mean().item()
    exact_natural = _exact_probabilities(40, 0.0, 0.0, 0.0)["k_last"]
    assert natural == pytest.approx(exact_natural, abs=0.01)  # ≈ 0.25 = E[1/(N − m)]
    assert with_end == pytest.approx(0.5 + 0.5 * exact_natural, abs=0.01)


def test_s_first_draws_the_landing_level_uniformly_below_t() -> None:
    """Kim et al. 2023, Alg. 1: given t (and no forced end), s is uniform over the levels below t."""
    gen = torch.Generator().manual_seed(5)
    n, _, k = draw_ctm_indices(200_000, 12, 0.0, gen, 0.0, 0.0, "s_first")
    chosen = k[n == 2]
    counts = torch.bincount(chosen, minlength=12)[3:].double()
    expected = len(chosen) / 9
    assert bool((counts - expected).abs().max() < 5 * math.sqrt(expected))


def test_ctm_indices_are_reproducible_from_the_generator() -> None:
    a = draw_ctm_indices(64, 20, 0.5, torch.Generator().manual_seed(7), 0.2, 0.1)
    b = draw_ctm_indices(64, 20, 0.5, torch.Generator().manual_seed(7), 0.2, 0.1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---- cosine_lr ---------------------------------------------------------------------------------


def test_cosine_lr_endpoints() -> None:
    base, total, warmup, floor = 2e-3, 1000, 100, 0.02
    lrs = [cosine_lr(base, step, total, warmup, floor) for step in range(total + 1)]
    assert lrs[0] == pytest.approx(base / warmup)
    assert lrs[49] == pytest.approx(base * 0.5)
    assert lrs[warmup - 1] == pytest.approx(base)
    assert lrs[warmup] == pytest.approx(base)
    assert lrs[(warmup + total) // 2] == pytest.approx(base * (floor + (1 - floor) / 2))
    assert lrs[total] == pytest.approx(base * floor)
    assert cosine_lr(base, 5 * total, total, warmup, floor) == pytest.approx(base * floor)
    assert all(a < b for a, b in itertools.pairwise(lrs[:warmup]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[warmup:]))
    assert cosine_lr(1.0, 0, 10, warmup=0) == pytest.approx(1.0)


# ---- a real, seconds-long run ------------------------------------------------------------------


def _config(**overrides) -> TrainConfig:
    # σ_d = 0.5 (EDM's value) rather than the task's std ≈ 1.53: with the std, c_skip·x is already
    # the best linear denoiser (loss ≈ 1) and a 16-wide MLP sits on that plateau for ~1000 steps;
    # with 0.5 the loss must fall visibly as the network learns the data's scale.
    base = {
        "seed": 0,
        "network": TINY,
        "noise": NoiseConfig(sigma_data=0.5, data_mean=0.0),
        "teacher": TeacherConfig(steps=150, batch_size=256, lr=1e-2),
        "ctm": CTMConfig(steps=100, batch_size=256, pool_size=512, grid_points=18),
    }
    return TrainConfig.model_validate(base | overrides)


def _trainer(config: TrainConfig) -> Trainer:
    return Trainer(config, TASK.sample, torch.device("cpu"), progress=False)


def test_real_training_run() -> None:
    config = _config()
    trainer = _trainer(config)
    calls: list[tuple[str, int]] = []
    state = trainer.run(hook=lambda t, phase, step: calls.append((phase, step)))

    assert state.phase == "done"
    assert calls == [("teacher", i) for i in range(1, 151)] + [("ctm", i) for i in range(1, 101)]
    teacher, ctm = np.array(state.losses["teacher"]), np.array(state.losses["ctm"])
    assert teacher.shape == (150,) and ctm.shape == (100,)
    assert np.isfinite(teacher).all() and np.isfinite(ctm).all() and (ctm > 0).all()
    assert teacher[-30:].mean() < 0.7 * teacher[:30].mean(), (teacher[:30].mean(), teacher[-30:].mean())
    assert state.wall_seconds > 0
    # The teacher pool holds Heun trajectories from the prior N(0, σ_max² + σ_d²) on the training grid.
    pool = trainer.teacher_pool()
    assert pool.shape == (18, 512)
    assert torch.isfinite(pool).all()
    assert pool[0].std().item() == pytest.approx(math.sqrt(10.0**2 + 0.5**2), rel=0.1)
    assert pool[-1].abs().max().item() < pool[0].abs().max().item()


@pytest.mark.parametrize("kind", ["monotone", "mlp"])
def test_student_starts_from_the_teachers_evaluation_weights(kind: str) -> None:
    config = _config(
        network=TINY.model_copy(update={"kind": kind}),
        teacher=TeacherConfig(steps=20, batch_size=64, lr=1e-2),
        ctm=CTMConfig(steps=0, batch_size=64, pool_size=64),
    )
    trainer = _trainer(config)
    initial = {k: v.clone() for k, v in trainer.online.state_dict().items()}
    trainer.run()
    teacher = trainer.teacher_eval.state_dict()
    for model in (trainer.online, trainer.student_eval, trainer.target):
        for key, value in model.state_dict().items():
            assert torch.equal(value, teacher[key]), key
    # The teacher phase moved the teacher's EMA away from the initial weights.
    assert not torch.equal(teacher[FIRST_LAYER[kind]], initial[FIRST_LAYER[kind]])


def test_ctm_phase_uses_the_configured_loss_weights() -> None:
    """The consistency loss takes ctm.intermediate_weight and ctm.end_weight (default 1 and 0: the
    comparison at s only)."""
    ctm = CTMConfig(steps=0, batch_size=64, pool_size=64, intermediate_weight=0.3, end_weight=2.0)
    trainer = _trainer(_config(ctm=ctm))
    assert (trainer.consistency.intermediate_weight, trainer.consistency.end_weight) == (0.3, 2.0)
    assert trainer.consistency.sigma_min == trainer.config.noise.sigma_min
    defaults = _trainer(_config()).consistency
    assert (defaults.intermediate_weight, defaults.end_weight) == (1.0, 0.0)


# ---- the teacher pool ----------------------------------------------------------------------------


class _GaussianTeacher:
    """The exact denoiser of N(μ, σ²) data, standing in for a trained teacher."""

    def __init__(self, mu: float, sigma: float) -> None:
        self.mu, self.sigma = mu, sigma

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.mu + self.sigma**2 / (self.sigma**2 + t**2) * (x - self.mu)


def _gaussian_pool(substeps: int, pool_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool, grid) of a trainer whose teacher is exact for N(0.4, 1.5²) data, σ_max = 2."""
    noise = NoiseConfig(sigma_max=2.0, sigma_data=1.5, data_mean=0.4)
    ctm = CTMConfig(pool_size=pool_size, grid_points=8, pool_substeps=substeps)
    trainer = _trainer(_config(noise=noise, ctm=ctm))
    trainer.teacher_eval = _GaussianTeacher(0.4, 1.5)
    return trainer.teacher_pool(), trainer.grid.double()


def test_teacher_pool_starts_from_the_wide_prior() -> None:
    """x_T ~ N(μ, σ_max² + σ_d²) = N(0.4, 2.5²); the narrow N(0.4, 2²) would be 20 standard errors off."""
    pool, _ = _gaussian_pool(4)
    x_T = pool[0].double()
    assert x_T.mean().item() == pytest.approx(0.4, abs=4 * 2.5 / math.sqrt(4096))
    assert x_T.std().item() == pytest.approx(2.5, abs=4 * 2.5 / math.sqrt(2 * 4096))


def test_teacher_pool_follows_the_exact_flow_and_substeps_refine_it() -> None:
    """Each row is the closed-form Gaussian flow μ + (x_T − μ)·√(σ² + t_i²)/√(σ² + σ_max²) of its
    first row, up to Heun's error, which pool_substeps Heun steps per interval shrink ~substeps²."""
    errors = {}
    for substeps in (1, 4):
        pool, grid = _gaussian_pool(substeps, pool_size=256)
        assert pool.shape == (8, 256)
        scale = torch.sqrt(1.5**2 + grid[:, None] ** 2) / math.sqrt(1.5**2 + 2.0**2)
        exact = 0.4 + (pool[0].double() - 0.4) * scale
        errors[substeps] = (pool.double() - exact).abs().max().item()
    assert errors[1] > 0.05  # one Heun step per interval of an 8-point grid is visibly off
    assert errors[4] < 0.01 and errors[1] > 10 * errors[4]  # second order: ≈ 16×


def test_refine_grid_inserts_karras_levels_between_the_grid_points() -> None:
    grid = torch.tensor([80.0, 5.0, 0.3, 0.002], dtype=torch.float64)
    assert torch.equal(refine_grid(grid, 1), grid)
    fine = refine_grid(grid, 4, rho=7.0)
    assert fine.shape == (13,)  # 4 levels per interval, and the last point
    assert torch.equal(fine[::4], grid)  # the original levels at every 4th position
    assert (fine.diff() < 0).all()
    i = torch.arange(4, dtype=torch.float64)
    for j, (hi, lo) in enumerate([(80.0, 5.0), (5.0, 0.3), (0.3, 0.002)]):
        expected = (hi ** (1 / 7) + i / 4 * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7  # Karras et al., eq. 5
        torch.testing.assert_close(fine[4 * j : 4 * j + 4], expected, rtol=1e-12, atol=0)


def test_scratch_mode_trains_the_student_alone() -> None:
    config = _config(mode="scratch", ctm=CTMConfig(steps=30, batch_size=64, scratch_max_jump=3))
    trainer = _trainer(config)
    state = trainer.run()
    assert state.phase == "done"
    assert state.losses["teacher"] == [] and len(state.losses["ctm"]) == 30
    assert np.isfinite(state.losses["ctm"]).all()
    assert trainer._pool is None  # no teacher trajectories in scratch mode


# ---- resumable state ---------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _stop_at(phase: str, step: int):
    def hook(trainer: Trainer, p: str, s: int) -> None:
        if (p, s) == (phase, step):
            raise _Stop

    return hook


def _snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    # state_tensors() shares storage with the live weights and Adam moments: copy before training on.
    return {k: v.clone() for k, v in trainer.state_tensors().items()}


def _assert_same_run(a: Trainer, b: Trainer) -> None:
    for name in ("online", "target", "teacher_eval", "student_eval"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"
    oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert oa["state"].keys() == ob["state"].keys() and len(oa["state"]) == len(list(a.online.parameters()))
    for index, slots in oa["state"].items():
        for key, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob["state"][index][key])), (index, key)
    assert [g["lr"] for g in oa["param_groups"]] == [g["lr"] for g in ob["param_groups"]]
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert (a.state.phase, a.state.step) == (b.state.phase, b.state.step)


@pytest.mark.parametrize(("phase", "step"), [("teacher", 15), ("ctm", 15)])
@pytest.mark.parametrize("via_file", [False, True])
def test_restore_continues_exactly(phase: str, step: int, via_file: bool, tmp_path: Path) -> None:
    config = _config(
        teacher=TeacherConfig(steps=40, batch_size=64, lr=1e-2),
        ctm=CTMConfig(steps=40, batch_size=64, pool_size=128, grid_points=12, target_ema=0.5),
    )
    original = _trainer(config)
    with pytest.raises(_Stop):
        original.run(hook=_stop_at(phase, step))
    tensors, meta = _snapshot(original), original.state_metadata()
    assert meta == {"phase": phase, "step": step}
    student = original.student_eval
    if via_file:  # the path the CLI takes: safetensors on disk
        path = tmp_path / "state.safetensors"
        metadata = checkpoint_metadata(
            network=config.network, noise=config.noise, task=TaskInfo(name="t", description="d")
        )
        save_checkpoint(
            path, student=student, teacher=original.teacher_eval, metadata=metadata, state=tensors
        )
        ckpt = load_checkpoint(path)
        tensors, student = ckpt.state, ckpt.student

    # A second trainer with different live state: restore must overwrite all of it.
    resumed = _trainer(config)
    torch.randn(1000, generator=resumed.generator)
    with torch.no_grad():
        for p in resumed.online.parameters():
            p.add_(1.0)
    resumed.restore(tensors, meta, student)

    original_losses = len(original.state.losses[phase])
    with pytest.raises(_Stop):
        original.run(hook=_stop_at(phase, step + 10))
    with pytest.raises(_Stop):
        resumed.run(hook=_stop_at(phase, step + 10))
    _assert_same_run(original, resumed)
    assert resumed.state.losses[phase] == original.state.losses[phase][original_losses:]
    assert len(resumed.state.losses[phase]) == 10

    # ... and to the end of the run.
    original.run()
    resumed.run()
    _assert_same_run(original, resumed)
    assert resumed.state.phase == "done"


def test_state_tensors_cover_what_resuming_needs() -> None:
    trainer = _trainer(_config(teacher=TeacherConfig(steps=10, batch_size=16)))
    with pytest.raises(_Stop):
        trainer.run(hook=_stop_at("teacher", 3))
    tensors = trainer.state_tensors()
    prefixes = {k.split(".", 1)[0] for k in tensors}
    assert prefixes == {"online", "target", "teacher_eval", "optim", "rng"}
    n_weights = len(trainer.online.state_dict())
    assert sum(k.startswith("online.") for k in tensors) == n_weights
    assert all(v.device.type == "cpu" for v in tensors.values())
    assert tensors["rng"].dtype == torch.uint8
    assert sum(k.startswith("optim.") for k in tensors) == 3 * n_weights  # step, exp_avg, exp_avg_sq
    assert torch.equal(tensors["optim.0.step"], torch.tensor(3.0))
