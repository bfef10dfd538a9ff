"""Typed configuration of the network, the noise range and training: one place, with the defaults."""

import copy
import json
import math
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Seeds of sampling and training: any 63-bit integer (`ctm_core.seeding` gives each its own stream).
MAX_SEED = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkConfig(_Strict):
    """The raw network F_θ and its time embedding (`ctm_core.network`).

    `kind`: "monotone" (default) is non-decreasing in x by construction — `units` tanh units
    whose coefficients a conditioner MLP (`depth` × `width`) computes from the two times;
    "mlp" is a plain MLP of `depth` × `width` on (x, embeddings).
    `init` (MLP layers): "pytorch" keeps nn.Linear's default initialisation; "he" draws the
    hidden layers' weights He-normal with zero biases, which keeps the input's signal through
    the layers (the default MLP init left some seeds' teachers on the Gaussian plateau).
    """

    kind: Literal["monotone", "mlp"] = "monotone"
    width: int = Field(128, ge=1, le=4096)
    depth: int = Field(3, ge=1, le=32)
    units: int = Field(64, ge=1, le=4096)
    time_frequencies: int = Field(4, ge=1, le=64)
    max_frequency: float = Field(1.0, gt=0, le=1000)
    init: Literal["pytorch", "he"] = "he"


class NoiseConfig(_Strict):
    """The diffusion's time range and schedule, and the data's scale and centre.

    sigma_data and data_mean None mean "measure them from the data". The prior — the law of
    x_T at σ_max — is N(data_mean, σ_max² + σ_d²) (`prior_std`): the data convolved with
    N(0, σ_max²) has that mean and variance, and it is exact for Gaussian data (docs/CTM.md).

    `schedule` spaces the ODE solvers' steps (euler, heun; Karras by default) and
    `jump_schedule` the CTM jump samplers' (multistep, gamma), each over the whole range from
    σ_max to σ_min. "linear" for the jumps was chosen on training seeds 3 and 4, never on the
    reported or shipped models (docs/RESULTS.md): each jump of the student carries an error of
    the teacher's size, and a linear grid makes its long, best-trained jump — to σ_min — last.
    """

    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(10.0, gt=0)
    sigma_data: float | None = Field(None, gt=0)
    data_mean: float | None = None
    rho: float = Field(7.0, gt=0)
    schedule: Literal["karras", "exponential", "linear"] = "karras"
    jump_schedule: Literal["karras", "exponential", "linear"] = "linear"

    @model_validator(mode="after")
    def _ordered(self) -> "NoiseConfig":
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be below sigma_max")
        return self

    @property
    def prior_std(self) -> float:
        """The prior's std √(σ_max² + σ_d²) (σ_max alone until σ_d is measured)."""
        return math.hypot(self.sigma_max, self.sigma_data or 0.0)

    def schedule_kwargs(self) -> dict[str, float | str | None]:
        """The keyword arguments `ctm_core.samplers.sampling_sigmas` takes from this noise range."""
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "rho": self.rho,
            "schedule": self.schedule,
            "jump_schedule": self.jump_schedule,
        }

    def sampling_kwargs(self) -> dict[str, float | str | None]:
        """The keyword arguments `ctm_core.samplers.generate` takes from this noise range."""
        return {**self.schedule_kwargs(), "data_mean": self.data_mean or 0.0, "prior_std": self.prior_std}


class TeacherConfig(_Strict):
    """Phase 1: the EDM teacher, trained with denoising score matching alone."""

    steps: int = Field(4000, ge=0)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(3e-3, gt=0)
    p_mean: float = -0.6
    p_std: float = Field(1.6, gt=0)
    eval_ema: float = Field(0.99, ge=0, lt=1)
    stable_target: bool = True
    # Extra data values beside the batch in the stable target: 3,072 (4,096 in all) cut the
    # teacher's mode-mass error on the tuning seeds (docs/RESULTS.md); each costs ~1 ms per 1,000 steps.
    reference_size: int = Field(3072, ge=0)


class CTMConfig(_Strict):
    """Phase 2: the CTM student, soft consistency loss + λ_DSM·DSM."""

    steps: int = Field(2500, ge=0)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-2, gt=0)
    # A light DSM term keeps the denoiser g(x, t, t) (ODE samplers, the PF-ODE density) close
    # to the teacher's; at 0.1 it pulled the jumps off the teacher's flow (docs/RESULTS.md).
    lambda_dsm: float = Field(0.0005, ge=0)
    stable_target: bool = True
    intermediate_weight: float = Field(1.0, ge=0)
    end_weight: float = Field(0.0, ge=0)
    target_ema: float = Field(0.0, ge=0, lt=1)
    eval_ema: float = Field(0.99, ge=0, lt=1)
    grid_points: int = Field(40, ge=3, le=4096)
    schedule_steps: tuple[int, ...] = Field((), max_length=64)
    end_probability: float = Field(0.3, ge=0, le=1)
    start_probability: float = Field(0.2, ge=0, le=1)
    direct_probability: float = Field(0.8, ge=0, le=1)
    # How (t, u, s) are drawn (`ctm_core.trainer.draw_ctm_indices`). "s_first" (the paper's) lands
    # 5× more jumps between σ 0.3 and 3 and cut the worst path state by a quarter on the tuning
    # seeds, but the one-step density's KL rose on two_gmm_1D (docs/RESULTS.md): not the default.
    draw_order: Literal["u_first", "s_first"] = "u_first"
    pool_size: int = Field(8192, ge=16)
    pool_substeps: int = Field(4, ge=1, le=64)
    scratch_max_jump: int = Field(1, ge=1)


class RunConfig(_Strict):
    """A training run's settings apart from the model they build (`TrainConfig` adds the network
    and the noise range): what a checkpoint records of its run (`ctm_core.checkpoint.TrainingRecord`)."""

    mode: Literal["distill", "scratch"] = "distill"
    task: str | None = "two_gmm_1D"
    data: str | None = None
    holdout: float = Field(0.2, ge=0, lt=1)
    # With `data`: "bandwidth" stops the flow at the training values' cross-validated KDE
    # bandwidth (`ctm_core.bandwidth`: the served law is their KDE of that bandwidth); "noise"
    # keeps noise.sigma_min as set. Built-in tasks always keep noise.sigma_min.
    data_sigma_min: Literal["bandwidth", "noise"] = "bandwidth"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    teacher: TeacherConfig = TeacherConfig()
    ctm: CTMConfig = CTMConfig()


class TrainConfig(RunConfig):
    """Everything one training run needs: the run's settings, the network and the noise range."""

    network: NetworkConfig = NetworkConfig()
    noise: NoiseConfig = NoiseConfig()


# From scratch there is no teacher: the target is the student's own jump, so it bootstraps. With a
# plain stop-gradient copy (target EMA 0) and distillation's learning rate it diverged; a slow
# target EMA and a gentler rate train (docs/RESULTS.md).
_SCRATCH_CTM = {"steps": 4000, "lr": 2e-3, "target_ema": 0.95}


def default_config(mode: str = "distill") -> TrainConfig:
    """The default recipe of a training mode ("distill" or "scratch")."""
    if mode == "scratch":
        return TrainConfig(mode="scratch", ctm=CTMConfig(**_SCRATCH_CTM))
    return TrainConfig(mode="distill")


def with_overrides(config: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """`config` with dotted `KEY=VALUE` overrides (`ctm.steps=2000`, `network.width=64`); see
    `config_from_raw`."""
    return config_from_raw(config.model_dump(), overrides)


def config_from_raw(raw: dict[str, Any], overrides: Iterable[str] = ()) -> TrainConfig:
    """A `TrainConfig` from the fields of one (`raw`, a `model_dump`) with dotted `KEY=VALUE`
    overrides applied; a value is read as JSON when it parses as JSON, else as a string. ValueError
    naming the first bad one: not KEY=VALUE ("--set expects ..." is the CLI's word for it), an
    unknown field, or a value a field refuses ("invalid setting ...")."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"--set: unknown field {key!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"--set: unknown field {key!r}")
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"invalid setting {where}: {first['msg']}") from None
