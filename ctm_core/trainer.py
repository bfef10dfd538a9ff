"""The training loop: EDM teacher (phase 1), then the CTM student (phase 2); owns optimiser and EMAs.

Distillation precomputes the teacher's PF-ODE trajectories once (Heun on a fine Karras grid from
x_T drawn from the prior): every x_t and solver solution x_u the consistency loss needs is then a table
look-up, which is what makes a CTM step cost about as much as a DSM step.
"""

import contextlib
import copy
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm import tqdm

from ctm_core.checkpoint import build_model
from ctm_core.config import MAX_SEED, TrainConfig
from ctm_core.distributed import Group, ReplicatedModel, rank_seed, state_digest
from ctm_core.ema import ema_update
from ctm_core.losses import ConsistencyLoss, DSMLoss
from ctm_core.parametrization import CTMParametrization
from ctm_core.samplers import latent, pf_ode_drift, sample_heun, sampling_sigmas
from ctm_core.schedules import karras_sigmas
from ctm_core.seeding import seeded_generator

# Called with (phase, step) after each step; returning True asks the loop to save a checkpoint.
StepHook = Callable[["Trainer", str, int], None]


@dataclass
class TrainState:
    """Where a run stands: which phase, how many steps of it are done, the losses seen."""

    phase: str = "teacher"
    step: int = 0
    losses: dict[str, list[float]] = field(default_factory=lambda: {"teacher": [], "ctm": []})
    wall_seconds: float = 0.0


def cosine_lr(base: float, step: int, total: int, warmup: int = 100, floor: float = 0.02) -> float:
    """Linear warm-up, then cosine decay from `base` to `floor`·base at the last step."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def training_grid(config: TrainConfig) -> torch.Tensor:
    """The CTM time grid, σ_max → σ_min, float64: a Karras grid of `grid_points`, merged with the
    sampling schedules of `schedule_steps` steps so that the jumps the samplers make are trained."""
    noise, ctm = config.noise, config.ctm
    parts = [karras_sigmas(ctm.grid_points, noise.sigma_min, noise.sigma_max, noise.rho)]
    parts += [sampling_sigmas("multistep", k, **noise.schedule_kwargs()) for k in ctm.schedule_steps]
    merged = torch.cat(parts).unique()  # sorted ascending, exact duplicates (the ends) removed
    return merged.flip(0)


def refine_grid(grid: torch.Tensor, substeps: int, rho: float = 7.0) -> torch.Tensor:
    """`grid` (decreasing) with `substeps` − 1 levels inserted in each interval, Karras-spaced
    (eq. 5) within it; the original levels stay at every substeps-th position."""
    if substeps == 1:
        return grid
    parts = [
        karras_sigmas(substeps + 1, float(lo), float(hi), rho)[:-1] for hi, lo in itertools.pairwise(grid)
    ]
    return torch.cat([*parts, grid[-1:]])


def draw_ctm_indices(
    batch: int,
    n_grid: int,
    end_probability: float,
    generator: torch.Generator,
    start_probability: float = 0.0,
    direct_probability: float = 0.0,
    order: Literal["u_first", "s_first"] = "u_first",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid indices n < m ≤ k for (t, u, s) = (t_n, t_m, t_k) on a grid of n_grid points.

    n is uniform over all but the last point. With `order` "s_first" (Kim et al. 2023, Alg. 1)
    s is uniform in (t, σ_min] and then u uniform in (t, s]; with "u_first" u is uniform in
    (t, σ_min] and then s uniform in [u, σ_min], which lands most jumps near σ_min. Either way s
    is σ_min with probability `end_probability`; with `start_probability` t is σ_max (where
    one-step sampling starts), and with `direct_probability` u = s, so the target is the
    solver's own solution at s.
    """
    n = torch.randint(0, n_grid - 1, (batch,), generator=generator)
    n = torch.where(torch.rand(batch, generator=generator) < start_probability, 0, n)
    first = n + 1 + (torch.rand(batch, generator=generator) * (n_grid - 1 - n)).long()
    if order == "s_first":
        k = torch.where(torch.rand(batch, generator=generator) < end_probability, n_grid - 1, first)
        m = n + 1 + (torch.rand(batch, generator=generator) * (k - n)).long()
    else:
        m = first
        k = m + (torch.rand(batch, generator=generator) * (n_grid - m)).long()
        k = torch.where(torch.rand(batch, generator=generator) < end_probability, n_grid - 1, k)
    m = torch.where(torch.rand(batch, generator=generator) < direct_probability, k, m)
    return n, m, k


class ReplicaMismatch(RuntimeError):
    """The ranks of a distributed run no longer hold the same weights (a bug, never expected)."""


class Trainer:
    """Owns the networks, the optimiser, the EMAs and the loop of one training run.

    With a distributed `group` (torchrun), every rank runs this loop on its own data stream (seed
    from `rank_seed`); DistributedDataParallel averages the gradients, so the weights, EMAs and
    teacher stay identical on every rank (checked at the end of each phase), and the recorded
    losses are averaged over the ranks. `amp` trains under bfloat16 autocast (CUDA).
    """

    def __init__(
        self,
        config: TrainConfig,
        sample_data: Callable[[int, torch.Generator], torch.Tensor],
        device: torch.device,
        progress: bool = True,
        group: Group | None = None,
        amp: bool = False,
    ) -> None:
        self.config = config
        self.sample_data = sample_data
        self.device = device
        self.progress = progress
        self.group = group or Group()
        self.amp = amp
        self.replicas_sha256: str | None = None  # set by the end-of-phase check of a distributed run
        noise = config.noise
        if noise.sigma_data is None or noise.data_mean is None:
            raise ValueError("config.noise.sigma_data and data_mean must be measured before training")
        sigma_data = noise.sigma_data
        self.grid = training_grid(config).to(device, torch.float32)

        torch.manual_seed(config.seed)  # weight initialisation (every device's generator) ...
        torch.default_generator.set_state(seeded_generator(config.seed).get_state())  # ... all 63 bits
        self.generator = seeded_generator(rank_seed(config.seed, self.group.rank))
        self.online = build_model(config.network, sigma_data, noise.data_mean).to(device)
        self.teacher_eval: CTMParametrization = _frozen_copy(self.online)
        self.student_eval: CTMParametrization = _frozen_copy(self.online)
        self.target: CTMParametrization = _frozen_copy(self.online)
        # What the losses train: the online network itself, or its DistributedDataParallel view.
        self.model: CTMParametrization | ReplicatedModel = (
            ReplicatedModel(self.online, device) if self.group.distributed else self.online
        )
        self.optimizer = self._new_optimizer(config.teacher.lr)
        self.state = TrainState(phase="teacher" if config.mode == "distill" else "ctm")
        self._pool: torch.Tensor | None = None

        self.dsm_teacher = DSMLoss(
            config.teacher.p_mean, config.teacher.p_std, sigma_data, noise.sigma_min, noise.sigma_max
        )
        self.consistency = ConsistencyLoss(
            noise.sigma_min, config.ctm.intermediate_weight, config.ctm.end_weight
        )

    # ---- the loop -------------------------------------------------------------------------
    def run(self, hook: StepHook | None = None) -> TrainState:
        """Train to the configured number of steps (resuming where the state stands)."""
        if self.state.phase == "teacher":
            self._loop("teacher", self.config.teacher.steps, self._teacher_step, hook)
            self.verify_replicas()
            self._start_ctm()
        if self.state.phase == "ctm":
            if self.config.mode == "distill":
                self.teacher_pool()  # before the progress bar: it is a one-off cost
            self._loop("ctm", self.config.ctm.steps, self._ctm_step, hook)
            self.verify_replicas()
            self.state.phase = "done"
        return self.state

    def verify_replicas(self) -> None:
        """Distributed runs: check that every rank holds rank 0's online weights, EMAs and teacher
        bit for bit (raise ReplicaMismatch otherwise) and record their sha256."""
        if not self.group.distributed:
            return
        models = (self.online, self.target, self.student_eval, self.teacher_eval)
        flat = torch.cat([p.detach().reshape(-1) for m in models for p in m.state_dict().values()])
        if not self.group.identical(flat):
            raise ReplicaMismatch(f"the {self.group.world_size} ranks hold different weights")
        self.replicas_sha256 = state_digest(self.student_eval, self.teacher_eval)

    def _loop(self, phase: str, total: int, step_fn: Callable[[int], float], hook: StepHook | None) -> None:
        base_lr = self.config.teacher.lr if phase == "teacher" else self.config.ctm.lr
        bar = tqdm(
            total=total,
            initial=self.state.step,
            desc=f"{phase:>7}",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
        )
        started = time.perf_counter()
        running = None
        losses = self.state.losses[phase]
        averaged = len(losses)  # losses[averaged:] are this rank's own, not yet averaged over ranks
        try:
            while self.state.step < total:
                for group in self.optimizer.param_groups:
                    group["lr"] = cosine_lr(base_lr, self.state.step, total)
                loss = step_fn(self.state.step)
                losses.append(loss)
                if not self.group.distributed:
                    running = loss if running is None else 0.98 * running + 0.02 * loss
                self.state.step += 1
                bar.update(1)
                if self.state.step % 50 == 0:
                    if self.group.distributed:  # one all_reduce per 50 steps, not one per step
                        running = self._average_losses(losses, averaged, running)
                        averaged = len(losses)
                    bar.set_postfix(loss=f"{running:.4g}")
                if hook is not None:
                    hook(self, phase, self.state.step)
            if self.group.distributed:
                self._average_losses(losses, averaged, running)
        finally:
            self.state.wall_seconds += time.perf_counter() - started
            bar.close()

    def _average_losses(self, losses: list[float], start: int, running: float | None) -> float | None:
        """Replace losses[start:] by their means over the ranks; return the running mean updated."""
        if len(losses) > start:
            losses[start:] = self.group.mean(torch.tensor(losses[start:])).tolist()
            for loss in losses[start:]:
                running = loss if running is None else 0.98 * running + 0.02 * loss
        return running

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast when training with mixed precision, else nothing at all."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _teacher_step(self, step: int) -> float:
        cfg = self.config.teacher
        x0 = self.sample_data(cfg.batch_size, self.generator).to(self.device)
        reference = None
        if cfg.stable_target:
            reference = x0
            if cfg.reference_size:
                extra = self.sample_data(cfg.reference_size, self.generator).to(self.device)
                reference = torch.cat([x0, extra])
        with self._autocast():
            loss = self.dsm_teacher(self.model, x0, self.generator, reference)
        self._optimise(loss)
        ema_update(self.teacher_eval, self.online, self.config.teacher.eval_ema)
        return loss.item()

    def _start_ctm(self) -> None:
        """Phase 2 starts from the teacher: the student is initialised with its EMA weights."""
        self.online.load_state_dict(self.teacher_eval.state_dict())
        self.student_eval.load_state_dict(self.teacher_eval.state_dict())
        self.target.load_state_dict(self.teacher_eval.state_dict())
        self.optimizer = self._new_optimizer(self.config.ctm.lr)
        self.state.phase, self.state.step = "ctm", 0

    def _ctm_step(self, step: int) -> float:
        cfg = self.config.ctm
        batch = cfg.batch_size
        n, m, k = draw_ctm_indices(
            batch,
            len(self.grid),
            cfg.end_probability,
            self.generator,
            cfg.start_probability,
            cfg.direct_probability,
            cfg.draw_order,
        )
        if self.config.mode == "distill":
            pool = self.teacher_pool()
            rows = torch.randint(0, pool.shape[1], (batch,), generator=self.generator)
            x_t, x_u = pool[n, rows], pool[m, rows]
        else:
            # From scratch: x_t from the data, and the solver is one Heun step with the EMA student.
            m = torch.minimum(
                n + 1 + torch.randint(0, cfg.scratch_max_jump, (batch,), generator=self.generator), k
            )
            x0 = self.sample_data(batch, self.generator).to(self.device)
            x_t = x0 + self.grid[n] * torch.randn(batch, generator=self.generator).to(self.device)
            x_u = self._heun_step(x_t, self.grid[n], self.grid[m])
        t, u, s = self.grid[n], self.grid[m], self.grid[k]
        with self._autocast():
            loss = self.consistency(self.model, self.target, x_t, t, x_u, u, s)
            if cfg.lambda_dsm > 0:
                x0 = self.sample_data(batch, self.generator).to(self.device)
                reference = x0 if cfg.stable_target else None
                loss = loss + cfg.lambda_dsm * self.dsm_teacher(self.model, x0, self.generator, reference)
        self._optimise(loss)
        ema_update(self.target, self.online, cfg.target_ema)
        ema_update(self.student_eval, self.online, cfg.eval_ema)
        return loss.item()

    @torch.no_grad()
    def _heun_step(self, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One Heun step of the PF-ODE from t to u (per element) with the target's denoiser."""
        d = pf_ode_drift(x, self.target.denoise(x, t), t)
        x_euler = x + (u - t) * d
        d_next = pf_ode_drift(x_euler, self.target.denoise(x_euler, u), u)
        return x + (u - t) * 0.5 * (d + d_next)

    def teacher_pool(self) -> torch.Tensor:
        """The teacher's Heun trajectories on the training grid, shape (grid_points, pool_size).

        Solved with `pool_substeps` Heun steps between grid levels (Karras-spaced), so the
        targets carry the teacher's error rather than the solver's. Seeded from the run's seed
        alone, and broadcast from rank 0: the same on every rank."""
        if self._pool is None:
            cfg = self.config.ctm
            pool_gen = seeded_generator((self.config.seed + 1) % (MAX_SEED + 1))
            noise = self.config.noise
            x_T = latent(cfg.pool_size, noise.data_mean or 0.0, noise.prior_std, "random", pool_gen)
            fine = refine_grid(self.grid.double().cpu(), cfg.pool_substeps)
            with torch.inference_mode():
                traj = sample_heun(self.teacher_eval, x_T.to(self.device), fine)
            # The solve's states on the training grid: every pool_substeps-th level.
            self._pool = self.group.broadcast(traj.states[:: cfg.pool_substeps].clone())
        return self._pool

    def _optimise(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _new_optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.online.parameters(), lr=lr)

    # ---- resumable state ------------------------------------------------------------------
    def state_tensors(self, all_ranks: bool = True) -> dict[str, torch.Tensor]:
        """Everything beyond the shipped weights that resuming needs, as flat tensors.

        The random state is rank 0's under "rng" and rank r's under "rng.r": gathering those is a
        collective (every rank calls this at the same step), skipped with `all_ranks=False`.
        """
        tensors = {f"online.{k}": v for k, v in self.online.state_dict().items()}
        tensors |= {f"target.{k}": v for k, v in self.target.state_dict().items()}
        tensors |= {f"teacher_eval.{k}": v for k, v in self.teacher_eval.state_dict().items()}
        for index, slots in self.optimizer.state_dict()["state"].items():
            for key, value in slots.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        tensors["rng"] = self.generator.get_state()
        if self.group.distributed and all_ranks:
            states = self.group.all_gather(self.generator.get_state())
            tensors["rng"] = states[0]
            tensors |= {f"rng.{rank}": state for rank, state in enumerate(states) if rank > 0}
        return tensors

    def state_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"phase": self.state.phase, "step": self.state.step}
        if self.group.world_size > 1:
            meta["world_size"] = self.group.world_size
        return meta

    def restore(
        self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], student: CTMParametrization
    ) -> bool:
        """Load what `state_tensors` saved (plus the evaluation student) to continue a run.

        Returns whether this rank's random state was saved; if not (the run was saved by fewer
        processes, or by rank 0 alone on Ctrl-C), the rank starts its stream afresh from its seed.
        """

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

        self.online.load_state_dict(part("online."))
        self.target.load_state_dict(part("target."))
        self.teacher_eval.load_state_dict(part("teacher_eval."))
        self.student_eval.load_state_dict(student.state_dict())
        self.state.phase, self.state.step = str(meta["phase"]), int(meta["step"])
        lr = self.config.teacher.lr if self.state.phase == "teacher" else self.config.ctm.lr
        self.optimizer = self._new_optimizer(lr)
        optim = self.optimizer.state_dict()
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in part("optim.").items():
            index, key = name.split(".", 1)
            slots.setdefault(int(index), {})[key] = value
        optim["state"] = slots
        self.optimizer.load_state_dict(optim)
        rank = self.group.rank
        rng = tensors.get("rng" if rank == 0 else f"rng.{rank}")
        if rng is None:
            self.generator.set_state(seeded_generator(rank_seed(self.config.seed, rank)).get_state())
            return False
        self.generator.set_state(rng)
        return True


def _frozen_copy(model: CTMParametrization) -> CTMParametrization:
    return copy.deepcopy(model).requires_grad_(False)
