"""Run `ctm_core.train` in this process and record its peak resident memory, split by kind.

    python -m benchmarks.rss_probe OUT -- --data values.npy --eval-n 0 ...
    torchrun --standalone --nproc_per_node=2 -m benchmarks.rss_probe OUT -- --data values.npy ...

A thread polls /proc/self/status every 20 ms; at exit the process writes "VmHWM RssAnon RssFile"
(KiB: the peak resident set, and the peaks of its private anonymous part and of its file-backed
part: mapped files such as a memory-mapped .npy, and the shared libraries) to OUT/rss.<RANK>.
File-backed pages of the same file are one copy in the page cache, whatever the process count.
Used by benchmarks/train_speed.py; Linux only.
"""

import argparse
import atexit
import os
import sys
import threading
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

    peaks = read_status()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.02):
            for key, value in read_status().items():
                peaks[key] = max(peaks[key], value)

    def report() -> None:
        stop.set()
        for key, value in read_status().items():
            peaks[key] = max(peaks[key], value)
        target = args.out / f"rss.{os.environ.get('RANK', '0')}"
        target.write_text(" ".join(str(peaks[key]) for key in _FIELDS) + "\n")

    threading.Thread(target=poll, daemon=True).start()
    atexit.register(report)
    return train_main(flags)


if __name__ == "__main__":
    sys.exit(main())
