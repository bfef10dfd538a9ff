"""Service settings: one pydantic-settings class read from `CTM_*` environment variables and CLI flags.

This module imports neither torch nor FastAPI, so `python -m service --help` stays fast.
"""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DeviceName = Literal["cpu", "cuda", "auto"]
# The models shipped with the project, beside the installed packages (a clone, or an editable install).
SHIPPED_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


# Defaults computed when the settings are read, as a reader should understand them (help, docs).
FACTORY_DEFAULTS = {"checkpoint_dir": "./checkpoints, else the shipped models"}


def default_checkpoint_dir() -> Path:
    """./checkpoints when the working directory has one, else the shipped models: the server
    serves something wherever it is started."""
    here = Path("checkpoints")
    return here if here.is_dir() or not SHIPPED_CHECKPOINTS.is_dir() else SHIPPED_CHECKPOINTS


LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Everything the server can be told; each field `x` is read from the variable `CTM_X`."""

    model_config = SettingsConfigDict(env_prefix="CTM_", extra="ignore", frozen=True)

    checkpoint_dir: Path = Field(
        default_factory=default_checkpoint_dir,
        description="Folder whose *.safetensors are served; default ./checkpoints, or the shipped "
        "models where the working directory has none.",
    )
    default_model: str = Field("two_gmm_1D", min_length=1, description="Model for requests that name none.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    device: DeviceName = Field("cpu", description="'auto' picks cuda when available, else cpu.")
    log_level: LogLevel = Field(
        "info", description="Least severe level of the server's log lines (uvicorn's and the service's)."
    )

    # Request limits: larger requests are refused with 422 naming the limit.
    max_n: int = Field(100_000, ge=1, description="Most samples per request.")
    max_steps: int = Field(1_000, ge=1, description="Most sampler steps per request.")
    max_trajectory_values: int = Field(
        1_000_000, ge=2, description="Most values n × (steps + 1) in one /trajectory response."
    )
    max_work: int = Field(
        100_000_000,
        ge=1,
        description="Most network evaluations one request may ask for: rows × evaluations per row "
        "(n × NFE for sampling; points × the density's evaluations for /logprob). About 7 s of one "
        "core's time for the shipped models (docs/RELIABILITY.md); larger requests get 422 up front.",
    )
    # Sizes bounded before anything is parsed (`service.limits`): 413, 414 or 431 over them.
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body in bytes; the largest legal one (POST /logprob, 10,000 "
        "points) is about 250 kB.",
    )
    max_url_bytes: int = Field(
        32_768,
        ge=1024,
        description="Longest path plus query string in bytes; 1,001 comma-separated sigmas take about 22 kB.",
    )
    max_header_bytes: int = Field(
        16_384, ge=1024, description="Most bytes of header names and values in one request."
    )

    # Threads and batching (docs/PERFORMANCE.md): sharing a batch's rows out, not each op, keeps
    # concurrent batches from oversubscribing the CPUs.
    inference_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Threads of the dedicated sampling pool: batches that run at the same time in one "
        "process.",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads a batch's rows are shared out to, each PyTorch op single-threaded; 0: the "
        "CPUs available divided by the workers, at least 1 (concurrent batches share them).",
    )
    batch_max_rows: int = Field(
        16384,
        ge=0,
        le=1_000_000,
        description="Requests that wait together for the pool and share model, sampler, steps and γ "
        "run as one batch of at most this many samples; 0: no batching.",
    )

    # Lifecycle (docs/RELIABILITY.md).
    request_timeout_s: float = Field(
        60.0, ge=0, description="Seconds a request may take before it is answered 503; 0: no limit."
    )
    reload_poll_s: float = Field(
        0.0,
        ge=0,
        description="Seconds between looks at the checkpoint directory for new, replaced or removed files "
        "(hot reload); 0: reload only on POST /admin/reload.",
    )

    # Access. Secrets are SecretStr, so they never show in a repr, a log line or an error message;
    # an empty variable counts as unset.
    api_key: SecretStr | None = Field(
        None,
        description="When set, every endpoint but /healthz and /readyz needs it, as "
        "'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
    )
    admin_token: SecretStr | None = Field(
        None, description="Enables POST /admin/reload, which needs it as 'Authorization: Bearer <token>'."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser, comma-separated; empty: CORS off.",
    )

    @field_validator("log_level", "device", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_key", "admin_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    def to_env(self) -> dict[str, str]:
        """These settings as `CTM_*` variables, for worker processes that read them from the environment."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list):
                value = ",".join(value)
            env[f"CTM_{name.upper()}"] = str(value)
        return env
