"""Service settings: one pydantic-settings class read from `CTM_*` environment variables and CLI flags.

This module imports neither torch nor FastAPI, so `python -m service --help` stays fast.
"""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_SEED = 2**63 - 1
DeviceName = Literal["cpu", "cuda", "auto"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Everything the server can be told; each field `x` is read from the variable `CTM_X`."""

    model_config = SettingsConfigDict(env_prefix="CTM_", extra="ignore", frozen=True)

    checkpoint_dir: Path = Field(Path("checkpoints"), description="Folder whose *.safetensors are served.")
    default_model: str = Field("two_gmm_1D", min_length=1, description="Model for requests that name none.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    device: DeviceName = Field("cpu", description="'auto' picks cuda when available, else cpu.")
    log_level: LogLevel = "info"

    # Request limits: larger requests are refused with 422 naming the limit.
    max_n: int = Field(100_000, ge=1, description="Most samples per request.")
    max_steps: int = Field(1_000, ge=1, description="Most sampler steps per request.")
    max_trajectory_values: int = Field(
        1_000_000, ge=2, description="Most values n × (steps + 1) in one /trajectory response."
    )

    # Threads. Sampling runs on a dedicated pool of `inference_threads` threads (concurrent jobs per
    # process); each job's PyTorch ops use `torch_threads` intra-op threads. 0 means
    # CPUs available / (workers × inference_threads), at least 1, so the process does not oversubscribe.
    inference_threads: int = Field(2, ge=1, le=64)
    torch_threads: int = Field(0, ge=0, le=256)

    @field_validator("log_level", "device", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def to_env(self) -> dict[str, str]:
        """These settings as `CTM_*` variables, for worker processes that read them from the environment."""
        return {f"CTM_{name.upper()}": str(value) for name, value in self.model_dump().items()}
