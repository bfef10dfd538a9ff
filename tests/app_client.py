"""An in-process app on a checkpoint folder, started (lifespan) and wrapped in an httpx client; and a
way to make concurrent requests queue up, deterministically, so that they are batched."""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from service.app import create_app
from service.config import Settings
from service.inference import InferenceEngine

T = TypeVar("T")
QUEUE_TIMEOUT_S = 60.0


@asynccontextmanager
async def serve(checkpoint_dir: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh app on `checkpoint_dir` with the given settings, as an httpx client."""
    app = create_app(Settings(checkpoint_dir=checkpoint_dir, **settings))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client


async def gather_while_held(engine: InferenceEngine, requests: Sequence[Awaitable[T]]) -> list[T]:
    """Await `requests` (each one sampling job, arriving together) while the engine's only inference
    thread (inference_threads=1) is held by an event: the first batch queues behind the held thread, the
    rest wait in the batcher. Once all of them are queued the thread is released, and they run in
    batches. No sleep decides whether they were queued in time. Meanwhile small batches go to the
    pool too (none runs inline on the event loop), so that every request queues."""
    release = threading.Event()
    inline_max = engine.inline_max_row_evals
    engine.inline_max_row_evals = 0
    held = asyncio.ensure_future(engine.call(release.wait, QUEUE_TIMEOUT_S))
    together = asyncio.ensure_future(asyncio.gather(*requests))
    try:
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        # Every job waits, or is in a batch queued behind the held thread.
        while (queued := engine._batcher.waiting + engine._batcher.running_jobs) < len(requests):
            if time.monotonic() > deadline or together.done():
                raise AssertionError(f"only {queued} of {len(requests)} jobs queued")
            await asyncio.sleep(0.002)
    finally:
        release.set()
    try:
        await held
        return await together
    finally:
        engine.inline_max_row_evals = inline_max
