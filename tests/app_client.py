"""An in-process app on a checkpoint folder, started (lifespan) and wrapped in an httpx client."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from service.app import create_app
from service.config import Settings


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
