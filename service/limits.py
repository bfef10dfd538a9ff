"""Request limits that protect the process: sizes bounded before parsing, and a work budget.

- `RequestSizeMiddleware` refuses, before any of it is parsed, a URL longer than CTM_MAX_URL_BYTES
  (414), headers larger than CTM_MAX_HEADER_BYTES (431), and a body larger than CTM_MAX_BODY_BYTES
  (413): at once when its Content-Length says so, and as soon as a chunked body passes the limit.
  The body is never held: a 413 either closes the connection or lets uvicorn discard the rest
  (`DISCARD_FACTOR`).
  The HTTP parser itself (uvicorn's h11) buffers at most `parser_buffer_bytes` of request line and
  headers, so no request holds more than that much memory before these checks run.
- `check_work` refuses up front a request whose network evaluations (rows × evaluations per row)
  exceed CTM_MAX_WORK, so that every request the service accepts can finish within its time limit.
"""

from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.responses import error_response
from service.config import Settings

# A 413 for a body of at most this many times CTM_MAX_BODY_BYTES leaves the connection open, and
# uvicorn reads and discards the rest of the body (never holding it), so that a client that reads
# only after sending still gets the answer; a larger body gets the 413 and the connection closed.
DISCARD_FACTOR = 64


def parser_buffer_bytes(settings: Settings) -> int:
    """The HTTP parser's bound on request line plus headers: room for both limits, so that a request
    just over either is answered 414 or 431 by the middleware; one far over (beyond this many bytes)
    is closed by the parser with 400 before the application sees it."""
    return 2 * (settings.max_url_bytes + settings.max_header_bytes)


class BodyTooLarge(HTTPException):
    """A body that passed the limit while it was read; an HTTPException, so FastAPI's body reading
    re-raises it as it is (other errors there become 400) and its handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            _body_detail(limit),
            headers={"Connection": "close"},  # the rest of the body is never read
        )


def _body_detail(limit: int) -> str:
    return (
        f"the request body is larger than the limit of {limit} bytes (CTM_MAX_BODY_BYTES); "
        "POST /logprob takes at most 10,000 points, about 250 kB"
    )


class RequestSizeMiddleware:
    """ASGI middleware: 414, 431 or 413 with a `detail` for a request over the size limits."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_url_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            code, detail = refusal
            close = code != status.HTTP_413_CONTENT_TOO_LARGE or self._closes(scope)
            headers = {"Connection": "close"} if close else None
            response = error_response(code, detail, headers=headers)
            await response(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive), send)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        url = len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])
        if url > self.max_url_bytes:
            return (
                status.HTTP_414_URI_TOO_LONG,
                f"the URL is {url} bytes, over the limit of {self.max_url_bytes} (CTM_MAX_URL_BYTES); "
                "send fewer query values (POST /logprob takes many points in its body)",
            )
        headers = scope["headers"]
        size = sum(len(name) + len(value) for name, value in headers)
        if size > self.max_header_bytes:
            return (
                status.HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"the request headers are {size} bytes, over the limit of {self.max_header_bytes} "
                "(CTM_MAX_HEADER_BYTES)",
            )
        for name, value in headers:
            # h11 has checked that Content-Length is a number and that there is only one.
            if name == b"content-length" and int(value) > self.max_body_bytes:
                return status.HTTP_413_CONTENT_TOO_LARGE, _body_detail(self.max_body_bytes)
        return None

    def _closes(self, scope: Scope) -> bool:
        """Whether a 413 should close the connection rather than let uvicorn read and discard the
        rest of the body: for a body far over the limit. Many clients (httpx among them) read the
        answer only once they have sent the whole body, and a connection closed under them loses
        the 413; a body of a few limits is cheap to discard, one of gigabytes is not."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                return int(value) > DISCARD_FACTOR * self.max_body_bytes
        return True  # chunked: no end in sight

    def _bounded(self, receive: Receive) -> Receive:
        """`receive` that raises `BodyTooLarge` once the body read so far passes the limit (a chunked
        body, or one longer than its Content-Length said)."""
        limit = self.max_body_bytes
        seen = 0

        async def receive_bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return receive_bounded


def check_work(
    rows: int, evaluations: int, budget: int, *, rows_name: str, evaluations_name: str, instead: str
) -> None:
    """422 when `rows` × `evaluations` network evaluations exceed the budget (CTM_MAX_WORK).

    The names are the request's own words ("n", "NFE"); `instead` says how to need fewer
    evaluations per row.
    """
    work = rows * evaluations
    if work <= budget:
        return
    raise HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"this request needs {rows_name} × {evaluations_name} = {rows} × {evaluations} = {work} network "
        f"evaluations, over the budget of {budget} per request (CTM_MAX_WORK); at {evaluations_name} "
        f"{evaluations} the budget allows {rows_name} ≤ {budget // evaluations}, or {instead}",
    )
