"""Fast JSON responses: orjson writes numpy arrays directly, off the event loop when they are large.

Every error answer has one shape, `service.schemas.ErrorResponse`: `{"detail": "<one sentence>",
"errors": [{"loc": [...], "msg": "...", "type": "..."}, ...]}`, `errors` empty unless the request
failed validation. `error_response` builds it; `validation_errors` and `summarise` turn pydantic's
errors into its items and its `detail`.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio.to_thread
import orjson
from fastapi.responses import Response

# Above this many numbers, serialising takes milliseconds: do it in a worker thread.
_OFFLOAD_VALUES = 20_000
# Where FastAPI puts a parameter: the first item of a validation error's `loc`, left out of its name.
_SOURCES = frozenset({"query", "path", "body", "header", "cookie"})
_NAME_ECHO_LIMIT = 80
# A detail names this many invalid inputs at most (10,000 bad points would make it megabytes long).
_SUMMARY_ITEMS = 5


def dumps(content: Any) -> bytes:
    """orjson with numpy support (float32 arrays keep their shortest float32 repr; NaN becomes null)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


async def json_response(content: Any, values: int) -> Response:
    """A JSON response of `content` holding about `values` numbers."""
    body = dumps(content) if values < _OFFLOAD_VALUES else await anyio.to_thread.run_sync(dumps, content)
    return Response(body, media_type="application/json")


def error_content(detail: str, errors: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The body of an error answer (`service.schemas.ErrorResponse`)."""
    return {"detail": detail, "errors": list(errors)}


def error_response(
    status_code: int,
    detail: str,
    errors: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error answer: `error_content` as JSON with the given status and headers."""
    body = dumps(error_content(_text(detail), errors))
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def validation_errors(raw: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's error dicts as `ValidationErrorItem`s: loc, msg and type only.

    The `input` is dropped: it may be large, or not encodable as JSON (a body's bytes, a number
    parsed as inf), and the caller sent it.
    """
    return [
        {
            "loc": [part if isinstance(part, int) else _text(part) for part in error.get("loc", ())],
            "msg": _text(error.get("msg", "invalid value")),
            "type": _text(error.get("type", "value_error")),
        }
        for error in raw
    ]


def summarise(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence naming each invalid input with its error: 'n: Input should be ...; steps: ...'."""
    parts = [f"{_name(error['loc'])}: {error['msg']}" for error in errors[:_SUMMARY_ITEMS]]
    if len(errors) > _SUMMARY_ITEMS:
        parts.append(f"and {len(errors) - _SUMMARY_ITEMS} more invalid values")
    return "; ".join(parts) or "the request is not valid"


def _name(loc: Sequence[str | int]) -> str:
    """A parameter's name from its `loc`: ('query', 'n') → 'n', ('body', 'x', 3) → 'x[3]'."""
    path = list(loc[1:]) if len(loc) > 1 and loc[0] in _SOURCES else list(loc)
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    name = name or "body"
    return name if len(name) <= _NAME_ECHO_LIMIT else name[:_NAME_ECHO_LIMIT] + "…"


def _text(value: object) -> str:
    """`value` as a string JSON can carry: a lone surrogate (from a JSON "\\ud800") becomes '?'."""
    return str(value).encode("utf-8", "replace").decode("utf-8")
