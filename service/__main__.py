"""`python -m service` / `ctm-serve`: serve the checkpoints over HTTP with uvicorn.

Flags override the `CTM_*` environment variables, which override the defaults in `service.config`.
"""

import argparse
import math
import os
import sys

from pydantic import ValidationError

from service.config import FACTORY_DEFAULTS, Settings

# The settings with a flag (field, flag, help); every other setting is set through its CTM_* variable.
FLAGS = (
    ("host", "--host", "interface to bind"),
    ("port", "--port", "TCP port (0: any free port)"),
    ("workers", "--workers", "uvicorn worker processes"),
    ("checkpoint_dir", "--checkpoint-dir", "folder of *.safetensors checkpoints"),
    ("default_model", "--default-model", "model used when a request names none"),
    ("device", "--device", "cpu, cuda or auto"),
    ("log_level", "--log-level", "critical, error, warning, info or debug"),
)


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings.model_fields
    flagged = {field for field, _, _ in FLAGS}
    by_environment = ", ".join(f"CTM_{field.upper()}" for field in defaults if field not in flagged)
    parser = argparse.ArgumentParser(
        prog="ctm-serve",
        description="Serve CTM checkpoints (every *.safetensors in the checkpoint directory) over HTTP. "
        f"Each flag overrides its CTM_* environment variable; the other settings ({by_environment}) are "
        "set through the environment (docs/SERVING.md lists them all).",
    )
    for field, flag, text in FLAGS:
        # No argparse types or defaults: Settings validates, and an absent flag defers to the environment.
        default = FACTORY_DEFAULTS.get(field, defaults[field].default)
        parser.add_argument(flag, dest=field, help=f"{text} [CTM_{field.upper()}; default: {default}]")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, validate the settings, run uvicorn; exit non-zero with one line on bad settings."""
    args = build_parser().parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"ctm-serve: invalid settings: {problems}", file=sys.stderr)
        return 2

    import uvicorn  # imported late so that --help and bad flags answer fast

    from ctm_core.machine import DeviceError, resolve_device

    try:
        resolve_device(settings.device, setting="CTM_DEVICE")
    except DeviceError as exc:
        print(f"ctm-serve: {exc}", file=sys.stderr)
        return 2

    from service.lifecycle import exit_zero_after_sigterm
    from service.limits import parser_buffer_bytes

    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # h11 (not httptools, when installed): it bounds the bytes it buffers before the app sees a
        # request, so an endless header cannot grow the process (service.limits).
        "http": "h11",
        "h11_max_incomplete_event_size": parser_buffer_bytes(settings),
    }
    if settings.request_timeout_s:
        # On SIGTERM in-flight requests finish; none outlives its time limit, so neither does the stop.
        common["timeout_graceful_shutdown"] = math.ceil(settings.request_timeout_s) + 5
    with exit_zero_after_sigterm():
        if settings.workers > 1:
            # Worker processes rebuild the app from the import string and read the settings from the
            # environment.
            os.environ.update(settings.to_env())
            uvicorn.run("service.app:create_app", factory=True, workers=settings.workers, **common)
        else:
            from service.app import create_app

            uvicorn.run(create_app(settings), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
