"""The reloads of the load and soak tests: untrained checkpoints to serve, and a reloader that swaps
one model between two versions, adds and removes another and drops in a corrupt file, calling
POST /admin/reload after each change."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import torch

from ctm_core.checkpoint import (
    TaskInfo,
    atomic_write_bytes,
    build_model,
    checkpoint_metadata,
    save_checkpoint,
)
from ctm_core.config import NetworkConfig, NoiseConfig

if TYPE_CHECKING:
    from benchmarks.load import Tally

SWAPPED = "swapped"  # the model whose file the reloader replaces, back and forth
EPHEMERAL = "ephemeral"  # added and removed by the reloader; clients never ask for it
UNTRAINED = ("two_gmm_1D", "gauss_1D")  # untrained models the load test's mix asks for


# ---- checkpoints ---------------------------------------------------------------------------------


def checkpoint_bytes(folder: Path, name: str, noise: NoiseConfig, seed: int) -> bytes:
    """An untrained model of the default architecture, saved as `name` (task `name`), as bytes."""
    assert noise.sigma_data is not None
    network = NetworkConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_model(network, noise.sigma_data)
    path = folder / f".{name}.{seed}.build"
    metadata = checkpoint_metadata(
        network=network,
        noise=noise,
        task=TaskInfo(name=name, description=f"load-test model {name}"),
    )
    save_checkpoint(path, student=student, teacher=None, metadata=metadata)
    data = path.read_bytes()
    path.unlink()
    return data


def prepare_checkpoints(
    folder: Path, extra: Path | None, untrained: Sequence[str] = UNTRAINED
) -> tuple[dict[str, bytes], bytes]:
    """Write the served models into `folder`: `extra`'s checkpoints, then an untrained model for each
    name in `untrained` (replacing a copied one of that name), then the swapped model; return the
    swapped model's two versions and the ephemeral model."""
    folder.mkdir(parents=True, exist_ok=True)
    if extra is not None:
        for path in sorted(extra.glob("*.safetensors")):
            shutil.copyfile(path, folder / path.name)
    noise = NoiseConfig(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    for seed, name in enumerate(untrained):
        atomic_write_bytes(folder / f"{name}.safetensors", checkpoint_bytes(folder, name, noise, seed))
    versions = {}
    for seed in (10, 11):
        data = checkpoint_bytes(folder, SWAPPED, noise, seed)
        versions[_sha256(data)] = data
    first = next(iter(versions.values()))
    atomic_write_bytes(folder / f"{SWAPPED}.safetensors", first)
    return versions, checkpoint_bytes(folder, EPHEMERAL, noise, 12)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def reloader_loop(
    client: httpx.AsyncClient,
    folder: Path,
    versions: dict[str, bytes],
    ephemeral: bytes,
    token: str,
    every: float,
    stop_at: float,
    tally: Tally,
) -> None:
    """Each round changes the folder one way, then asks for a reload and checks what it reports."""
    swapped = folder / f"{SWAPPED}.safetensors"
    contents = list(versions.values())
    headers = {"Authorization": f"Bearer {token}"}
    round_ = 0
    while time.monotonic() < stop_at:
        await asyncio.sleep(every)
        round_ += 1
        step = round_ % 4
        if step in (0, 2):
            atomic_write_bytes(swapped, contents[round_ // 2 % 2])
        elif step == 1:
            atomic_write_bytes(folder / f"{EPHEMERAL}.safetensors", ephemeral)
            (folder / "corrupt.safetensors").write_bytes(b"\x80\x04 not a checkpoint" * 8)
        else:
            (folder / f"{EPHEMERAL}.safetensors").unlink(missing_ok=True)
            (folder / "corrupt.safetensors").unlink(missing_ok=True)
        try:
            response = await client.post("/admin/reload", headers=headers, timeout=60)
            if response.status_code != 200:
                tally.reload_failures.append(f"reload status {response.status_code}: {response.text[:200]}")
            elif response.json()["models"].get(SWAPPED) not in versions:
                tally.reload_failures.append(f"reload left {SWAPPED} at an unknown version")
        except httpx.HTTPError as exc:
            tally.reload_failures.append(f"reload: {type(exc).__name__}: {exc}")
        tally.reloads += 1
