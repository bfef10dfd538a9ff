"""The machine a run happens on: CPU model and usable CPUs (benchmark reports, thread counts), and
the device a run uses."""

import math
import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may run on, capped by a cgroup v2 CPU quota (a container's `cpus:`),
    which the affinity mask does not show."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or one we cannot read: no quota known
        pass
    return cpus


class DeviceError(ValueError):
    """A device was asked for that this machine does not have."""


def resolve_device(name: str, local_rank: int | None = None, setting: str = "--device") -> torch.device:
    """cpu, cuda, or (auto) cuda when available; under torchrun (`local_rank`), CUDA means this
    node's GPU number LOCAL_RANK. DeviceError naming `setting` when the device is missing."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{setting} cuda: PyTorch sees no CUDA device (use cpu or auto)")
    if name == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(
                f"LOCAL_RANK {local_rank}: this node has {torch.cuda.device_count()} CUDA device(s); "
                "start at most that many processes per node"
            )
        return torch.device("cuda", local_rank)
    return torch.device(name)
