"""`python -m service` whose sampling of one marked request is held in flight until a test releases it.

Usage (tests/real_server.py, `running_server(..., hold=folder)`): python tests/held_server.py FOLDER
[service flags]. A job of exactly `HELD_N` samples writes FOLDER/started, then samples again and
again, for real, until FOLDER/release exists, and answers with its last result (the same samples:
sampling is deterministic). So a test can act while a request is certainly being sampled — probe the
server, send it SIGTERM — without betting on how long a large request takes. Other requests run as
usual. Only for tests: one worker process (the patch lives in this process).
"""

import sys
import time
from pathlib import Path
from typing import Any

from service import inference
from service.__main__ import main

HELD_N = 20_011  # the marked request's n: nothing else in the tests asks for it
HOLD_LIMIT_S = 120.0  # a test that never releases fails instead of hanging


def hold(folder: Path) -> None:
    real_run_batch = inference.run_batch

    def held_run_batch(jobs: list[Any], *args: Any, **kwargs: Any) -> Any:
        if not any(job.n == HELD_N for job in jobs):
            return real_run_batch(jobs, *args, **kwargs)
        (folder / "started").touch()
        deadline = time.monotonic() + HOLD_LIMIT_S
        while True:
            result = real_run_batch(jobs, *args, **kwargs)
            if (folder / "release").exists():
                return result
            if time.monotonic() > deadline:
                raise RuntimeError(f"held request never released ({folder / 'release'} missing)")

    inference.run_batch = held_run_batch


if __name__ == "__main__":
    hold(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
