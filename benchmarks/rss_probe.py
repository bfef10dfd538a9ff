"""Run `ctm_core.train` in this process and record its peak resident memory, split by kind.

    python -m benchmarks.rss_probe OUT -- --data values.npy --eval-n 0 ...
    torchrun --standalone --nproc_per_node=2 -m benchmarks.rss_probe OUT -- --data values.npy ...

A thread polls /proc/self/status every 20 ms and keeps "VmHWM RssAnon RssFile" in OUT/rss.<RANK>
(KiB: the peak resident set, and the peaks of its private anonymous part and of its file-backed
part: mapped files such as a memory-mapped .npy, and the shared libraries).
File-backed pages of the same file are one copy in the page cache, whatever the process count.
Used by benchmarks/train_speed.py; Linux only.
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from ctm_core.train import main as train_main

_FIELDS = ("VmHWM", "RssAnon", "RssFile")


def read_status() -> dict[str, int]:
    """The memory fields of /proc/self/status, in KiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in _FIELDS:
            values[key] = int(rest.split()[0])
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rss_probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="folder for rss.<RANK>")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the training flags")
    args = parser.parse_args(argv)
    flags = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args

    target = args.out / f"rss.{os.environ.get('RANK', '0')}"
    peaks = read_status()
    lock = threading.Lock()

    def record() -> None:
        """Raise the peaks to the current values; the file always holds the peaks so far (a
        torchrun worker ends with os._exit, without atexit handlers)."""
        with lock:
            now = read_status()
            if any(now[key] > peaks[key] for key in _FIELDS) or not target.exists():
                peaks.update({key: max(peaks[key], now[key]) for key in _FIELDS})
                # Replaced whole, never truncated: the process may end at any moment.
                partial = target.parent / f".{target.name}.partial"
                partial.write_text(" ".join(str(peaks[key]) for key in _FIELDS) + "\n")
                os.replace(partial, target)

    def poll() -> None:
        while True:
            record()
            time.sleep(0.02)

    record()
    threading.Thread(target=poll, daemon=True).start()
    code = train_main(flags)
    record()
    return code


if __name__ == "__main__":
    sys.exit(main())
