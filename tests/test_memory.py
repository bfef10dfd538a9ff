"""service.memory: glibc told not to hoard freed memory, and the heap trimmed while serving."""

import asyncio
import ctypes
import ctypes.util
from pathlib import Path

import pytest

from service import memory


def test_glibc_settings_apply_here() -> None:
    # This machine (and CI's, and the Docker image) run glibc: the settings must take.
    assert memory.limit_fragmentation() is True


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def test_trim_hands_freed_pages_back() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 40 MB in heap-sized blocks, touched; all freed but the last, which pins the heap's top so
    # that glibc cannot give the rest back by itself.
    blocks = [libc.malloc(64 * 1024) for _ in range(640)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in blocks[:-1]:
        libc.free(block)
    held = _rss_mb()
    memory.trim()
    assert held - _rss_mb() > 20  # the freed pages went back to the system
    libc.free(blocks[-1])


def test_the_trimmer_trims_while_open(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(1))

    async def serve_a_while() -> None:
        async with memory.memory_trimmer(interval=0.01):
            await asyncio.sleep(0.2)
        count = len(calls)
        await asyncio.sleep(0.05)
        assert len(calls) == count  # stopped with the context

    asyncio.run(serve_a_while())
    assert len(calls) >= 3
