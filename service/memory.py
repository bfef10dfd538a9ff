"""Resident memory that follows the load down again: glibc's allocator, told not to hoard.

Requests allocate and free arrays from a few kB to tens of MB (n = 100,000 samples; a trajectory's
states and its JSON), on several threads. glibc then keeps freed memory: each thread's arena holds
its free chunks, and after a large block is freed its threshold for serving blocks by mmap rises
(up to 32 MB), so later large blocks come from the heaps and fragment them. Resident memory creeps
up for hours under a steady mix (docs/RELIABILITY.md, "Soak"). Three settings bound that:

- a fixed mmap threshold (1 MiB): blocks that large are always mapped, and unmapped when freed;
- at most 2 arenas, whatever the number of threads;
- `malloc_trim(0)` every `TRIM_EVERY_S` seconds, which hands free pages back to the system.

Where the C library is not glibc, nothing is changed.
"""

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import AsyncIterator

import anyio.to_thread

from service.lifecycle import in_background

logger = logging.getLogger(__name__)

TRIM_EVERY_S = 60.0
MMAP_THRESHOLD_BYTES = 1 << 20
MAX_ARENAS = 2
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
_M_ARENA_MAX = -8


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_fragmentation() -> bool:
    """Fix glibc's mmap threshold and cap its arenas (before the sampling threads start); False
    where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    libc.mallopt(_M_ARENA_MAX, MAX_ARENAS)
    return True


def trim() -> None:
    """Give free heap pages back to the system."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


async def _trim_forever(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await anyio.to_thread.run_sync(trim)


@contextlib.asynccontextmanager
async def memory_trimmer(interval: float = TRIM_EVERY_S) -> AsyncIterator[None]:
    """While open, trim the heap every `interval` seconds (off the event loop)."""
    if _glibc() is None:
        yield
        return
    async with in_background(_trim_forever(interval), name="ctm-malloc-trim"):
        yield
