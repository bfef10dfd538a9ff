"""Fast JSON responses: orjson writes numpy arrays directly, off the event loop when they are large."""

from typing import Any

import anyio.to_thread
import orjson
from fastapi.responses import Response

# Above this many numbers, serialising takes milliseconds: do it in a worker thread.
_OFFLOAD_VALUES = 20_000


def dumps(content: Any) -> bytes:
    """orjson with numpy support (float32 arrays keep their shortest float32 repr; NaN becomes null)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


async def json_response(content: Any, values: int) -> Response:
    """A JSON response of `content` holding about `values` numbers."""
    body = dumps(content) if values < _OFFLOAD_VALUES else await anyio.to_thread.run_sync(dumps, content)
    return Response(body, media_type="application/json")
