"""Typed configuration of the network, the noise range and training: one place, with the defaults."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkConfig(_Strict):
    """The raw MLP F_θ and its time embedding.

    `init`: "pytorch" keeps nn.Linear's default initialisation (what the shipped models and the
    recipe study used); "he" draws the hidden layers' weights He-normal with zero biases, which
    keeps the input's signal through the layers and frees teachers that stay on the Gaussian
    denoiser's plateau (docs/RESULTS.md, section 5).
    """

    width: int = Field(128, ge=1, le=4096)
    depth: int = Field(4, ge=1, le=32)
    time_frequencies: int = Field(4, ge=1, le=64)
    max_frequency: float = Field(1.0, gt=0, le=1000)
    init: Literal["pytorch", "he"] = "pytorch"


class NoiseConfig(_Strict):
    """The diffusion's time range and schedule, and the data's scale and centre.

    sigma_data and data_mean None mean "measure them from the data". The prior is
    N(data_mean, σ_max²): the PF-ODE is shift-equivariant, and centring the latent on the data
    keeps data far from 0 (e.g. N(1, 0.2²)) from being biased by the latent's mismatch.

    The multi-step jump samplers (multistep, gamma) land their first jump at landing_ratio·σ_data
    and descend from there on the schedule (`ctm_core.schedules.landing_sigmas`); when that level
    is not inside (σ_min, σ_max), or landing_ratio is None, they use the schedule over the whole
    range, as the ODE solvers do. 0.013 is the middle of the band (0.010–0.016) in which more
    steps were no worse than one on all eight tasks (docs/RESULTS.md).
    """

    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(10.0, gt=0)
    sigma_data: float | None = Field(None, gt=0)
    data_mean: float | None = None
    rho: float = Field(7.0, gt=0)
    schedule: Literal["karras", "exponential", "linear"] = "karras"
    landing_ratio: float | None = Field(0.013, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "NoiseConfig":
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be below sigma_max")
        return self

    @property
    def landing(self) -> float | None:
        """Where the jump samplers' first jump lands, or None for the schedule over the whole range."""
        if self.landing_ratio is None or self.sigma_data is None:
            return None
        level = self.landing_ratio * self.sigma_data
        return level if self.sigma_min < level < self.sigma_max else None

    def schedule_kwargs(self) -> dict[str, float | str | None]:
        """The keyword arguments `ctm_core.samplers.sampling_sigmas` takes from this noise range."""
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "rho": self.rho,
            "schedule": self.schedule,
            "landing": self.landing,
        }

    def sampling_kwargs(self) -> dict[str, float | str | None]:
        """The keyword arguments `ctm_core.samplers.generate` takes from this noise range."""
        return {**self.schedule_kwargs(), "data_mean": self.data_mean or 0.0}


class TeacherConfig(_Strict):
    """Phase 1: the EDM teacher, trained with denoising score matching alone."""

    steps: int = Field(4000, ge=0)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(3e-3, gt=0)
    p_mean: float = -0.6
    p_std: float = Field(1.6, gt=0)
    eval_ema: float = Field(0.99, ge=0, lt=1)
    stable_target: bool = True
    reference_size: int = Field(0, ge=0)


class CTMConfig(_Strict):
    """Phase 2: the CTM student, soft consistency loss + λ_DSM·DSM."""

    steps: int = Field(2500, ge=0)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-2, gt=0)
    lambda_dsm: float = Field(0.1, ge=0)
    stable_target: bool = True
    intermediate_weight: float = Field(1.0, ge=0)
    target_ema: float = Field(0.0, ge=0, lt=1)
    eval_ema: float = Field(0.99, ge=0, lt=1)
    grid_points: int = Field(40, ge=3, le=4096)
    schedule_steps: tuple[int, ...] = Field((), max_length=64)
    end_probability: float = Field(0.3, ge=0, le=1)
    start_probability: float = Field(0.2, ge=0, le=1)
    direct_probability: float = Field(0.5, ge=0, le=1)
    pool_size: int = Field(8192, ge=16)
    scratch_max_jump: int = Field(1, ge=1)


class TrainConfig(_Strict):
    """Everything one training run needs; what is saved in the checkpoint's metadata."""

    mode: Literal["distill", "scratch"] = "distill"
    task: str | None = "two_gmm_1D"
    data: str | None = None
    holdout: float = Field(0.2, ge=0, lt=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    network: NetworkConfig = NetworkConfig()
    noise: NoiseConfig = NoiseConfig()
    teacher: TeacherConfig = TeacherConfig()
    ctm: CTMConfig = CTMConfig()


# From scratch there is no teacher: the target is the student's own jump, so it bootstraps. With a
# plain stop-gradient copy (target EMA 0) and distillation's learning rate it diverged; a slow
# target EMA and a gentler rate train (docs/RESULTS.md).
_SCRATCH_CTM = {"steps": 4000, "lr": 2e-3, "target_ema": 0.95}


def default_config(mode: str = "distill") -> TrainConfig:
    """The default recipe of a training mode ("distill" or "scratch")."""
    if mode == "scratch":
        return TrainConfig(mode="scratch", ctm=CTMConfig(**_SCRATCH_CTM))
    return TrainConfig(mode="distill")
