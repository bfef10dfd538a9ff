"""Training in several processes under torchrun: the process group, the choice of backend and
precision, per-rank seeds, and the few collectives the trainer needs.

Every collective here moves plain tensors (all_reduce, broadcast, all_gather): nothing is pickled,
so none of torch's `*_object` collectives is used. One process (plain `python -m ctm_core.train`)
gets `Group()`, whose methods return at once without touching torch.distributed.
"""

import hashlib
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

BACKENDS = ("auto", "gloo", "nccl")
AMP_CHOICES = ("auto", "on", "off")
# A rank waits this long in a collective for a peer before giving up (torchrun itself ends the
# others when one exits, so this only bounds a peer that hangs).
TIMEOUT = timedelta(minutes=10)
_MESSAGE_BYTES = 2048  # an error message shared by `first_error`, UTF-8, truncated to this


class LaunchError(ValueError):
    """torchrun's environment, the backend or the precision asked for cannot be used here."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch, from RANK, WORLD_SIZE and LOCAL_RANK."""

    rank: int
    world_size: int
    local_rank: int


def launch_from_env(env: Mapping[str, str] = os.environ) -> Launch | None:
    """The torchrun launch this process belongs to, or None when it was started on its own."""
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", env["RANK"]))
    except (KeyError, ValueError):
        raise LaunchError(
            "RANK and WORLD_SIZE must both be set to integers (start several processes with torchrun)"
        ) from None
    if not (world >= 1 and 0 <= rank < world and local_rank >= 0):
        raise LaunchError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank} are inconsistent")
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if not env.get(key)]
    if missing:
        raise LaunchError(f"{' and '.join(missing)} not set (start several processes with torchrun)")
    return Launch(rank, world, local_rank)


def resolve_backend(choice: str, device: torch.device) -> str:
    """`auto`: nccl for CUDA, gloo for the CPU; an explicit choice is checked against the device."""
    if choice not in BACKENDS:
        raise LaunchError(f"--dist-backend must be one of {', '.join(BACKENDS)}, got {choice!r}")
    backend = ("nccl" if device.type == "cuda" else "gloo") if choice == "auto" else choice
    if backend == "nccl" and device.type != "cuda":
        raise LaunchError("--dist-backend nccl needs CUDA devices; on the CPU use gloo (or auto)")
    available = dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()
    if not available:
        raise LaunchError(f"this torch build has no {backend} backend")
    return backend


def resolve_amp(choice: str, device: torch.device, bf16_supported: bool | None = None) -> bool:
    """Whether to train under bf16 autocast: `auto` is on for CUDA and off on the CPU."""
    if choice not in AMP_CHOICES:
        raise LaunchError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {choice!r}")
    if device.type != "cuda":
        if choice == "on":
            raise LaunchError("--amp on needs --device cuda (mixed precision only helps on a GPU)")
        return False
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if choice == "on" and not bf16_supported:
        raise LaunchError("--amp on: this GPU has no bfloat16 support")
    return choice == "on" or (choice == "auto" and bf16_supported)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s data and noise: rank 0 keeps `seed`, so that one process trains
    exactly as it always did; the others get independent streams (NumPy's SeedSequence)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


def state_digest(*modules: nn.Module) -> str:
    """sha256 of the modules' state dicts (keys in order, then each tensor's bytes)."""
    digest = hashlib.sha256()
    for module in modules:
        for key, value in module.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Group:
    """This process's view of the training processes; the default is one process on its own.

    `comm_device` is where the collectives' tensors go (a CUDA device for nccl, the CPU for gloo).
    """

    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    comm_device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """True under torchrun (even with one process): a process group exists."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, shows the progress bar and writes files."""
        return self.rank == 0

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of `values` over the ranks (float64, on the CPU)."""
        values = values.detach().to(torch.float64)
        if not self.distributed:
            return values.cpu()
        buffer = values.to(self.comm_device)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return (buffer / self.world_size).cpu()

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every rank (same shape and dtype everywhere), on tensor's device."""
        if not self.distributed:
            return tensor
        buffer = tensor.detach().to(self.comm_device).contiguous()
        dist.broadcast(buffer, src=0)
        return buffer.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor` (same shape everywhere), on the CPU, in rank order."""
        if not self.distributed:
            return [tensor.detach().cpu()]
        buffer = tensor.detach().to(self.comm_device).contiguous()
        parts = [torch.empty_like(buffer) for _ in range(self.world_size)]
        dist.all_gather(parts, buffer)
        return [part.cpu() for part in parts]

    def all_true(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on every rank."""
        if not self.distributed:
            return flag
        buffer = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.comm_device)
        dist.all_reduce(buffer, op=dist.ReduceOp.MIN)
        return bool(buffer.item())

    def identical(self, tensor: torch.Tensor) -> bool:
        """True on every rank when every rank's `tensor` equals rank 0's bit for bit."""
        if not self.distributed:
            return True
        reference = self.broadcast(tensor)
        return self.all_true(torch.equal(reference, tensor))

    def first_error(self, message: str | None) -> str | None:
        """Agree on failure: every rank gets the message of the lowest rank that has one, or None.

        Call it on every rank at the same point; a rank's own message is kept as it is.
        """
        if not self.distributed:
            return message
        failed = torch.tensor([self.rank if message else self.world_size], device=self.comm_device)
        dist.all_reduce(failed, op=dist.ReduceOp.MIN)
        first = int(failed.item())
        if first == self.world_size:
            return None
        data = torch.zeros(_MESSAGE_BYTES, dtype=torch.uint8, device=self.comm_device)
        if self.rank == first and message:
            raw = message.encode()[:_MESSAGE_BYTES]
            data[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(self.comm_device)
        dist.broadcast(data, src=first)
        shared = bytes(data.cpu().numpy()).rstrip(b"\0").decode(errors="replace")
        return message or f"rank {first}: {shared}"

    def describe(self) -> dict[str, int | str]:
        """What the checkpoint records of the launch."""
        return {"world_size": self.world_size, "backend": self.backend or "none"}


@contextmanager
def process_group(launch: Launch | None, backend: str, device: torch.device) -> Iterator[Group]:
    """The process group of a torchrun launch for the duration of the block, torn down after it
    (also on errors); without a launch, one process on its own and torch.distributed untouched."""
    if launch is None:
        yield Group()
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        comm = device if backend == "nccl" else torch.device("cpu")
        yield Group(launch.rank, launch.world_size, backend, comm)
    finally:
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a torchrun worker now, with stdout and stderr flushed, skipping the interpreter's
    finalization: gloo's worker threads may still be releasing the tensors of the last
    collective, and one that needs the GIL while the interpreter finalizes aborts the process
    ("terminate called without an active exception"; pytorch/pytorch#190489). Call it once
    every file is written and the process group is destroyed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Calls(nn.Module):
    """DistributedDataParallel synchronises gradients only through forward(): the losses' jump and
    denoise calls are routed through it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, denoise: bool = False
    ) -> torch.Tensor:
        return self.model.denoise(x, t) if denoise else self.model(x, t, s)


class ReplicatedModel:
    """A CTMParametrization seen through DistributedDataParallel: `jump` and `denoise`, as the losses
    call them, with gradients averaged over the ranks in backward()."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        device_ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_Calls(model), device_ids=device_ids)

    def jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.ddp(x, t, s)

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.ddp(x, t, t, denoise=True)
