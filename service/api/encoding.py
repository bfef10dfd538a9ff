"""Binary answers of /sample and /trajectory, chosen with the request's `Accept` header.

JSON stays the default. A client that asks for one of the binary types gets the array's float32
values as they were computed, with the answer's other fields in headers:

- `application/octet-stream`: the values, float32 little-endian, row-major, nothing else;
- `application/x-npy`: the same array as a .npy file (`numpy.load` reads it).

The array is the samples, shape (n,), for /sample, and the paths, shape (n, levels), for
/trajectory (as JSON's `paths`). The headers: `CTM-Shape` ("1000" or "1000,5"), `CTM-Model`,
`CTM-Model-Sha256`, `CTM-Sampler`, `CTM-Steps`, `CTM-NFE`, `CTM-N`, `CTM-Seed`, `CTM-Noise`, and
for /trajectory `CTM-Sigmas` (the levels, comma-separated, each written so that it parses back to
the same float64).
"""

import io
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from fastapi import HTTPException, status
from fastapi.responses import Response

JSON = "application/json"
NPY = "application/x-npy"
RAW = "application/octet-stream"
Encoding = Literal["application/json", "application/x-npy", "application/octet-stream"]
ENCODINGS: tuple[Encoding, ...] = (JSON, NPY, RAW)
# The answer's fields sent as headers, by the JSON field they repeat.
HEADER_NAMES = {
    "model": "CTM-Model",
    "model_sha256": "CTM-Model-Sha256",
    "sampler": "CTM-Sampler",
    "steps": "CTM-Steps",
    "nfe": "CTM-NFE",
    "n": "CTM-N",
    "seed": "CTM-Seed",
    "noise": "CTM-Noise",
    "sigmas": "CTM-Sigmas",
}
SHAPE_HEADER = "CTM-Shape"
EXPOSED_HEADERS = [SHAPE_HEADER, *HEADER_NAMES.values()]
# The 200 answer's binary media types, for the routes' OpenAPI `responses`.
BINARY_CONTENT: dict[str, Any] = {
    NPY: {"schema": {"type": "string", "format": "binary"}},
    RAW: {"schema": {"type": "string", "format": "binary"}},
}


def negotiate(accept: str | None) -> Encoding:
    """The encoding `accept` prefers (highest q, then the order given; JSON for none, */* or
    application/*); 406 when it accepts none of JSON, .npy and raw float32."""
    if not accept:
        return JSON
    best: tuple[float, Encoding] | None = None  # the first item of the highest q wins
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        quality = _quality(params)
        if quality <= 0:
            continue
        if media in ("*/*", "application/*"):
            chosen: Encoding | None = JSON
        else:
            chosen = next((encoding for encoding in ENCODINGS if encoding == media), None)
        if chosen is not None and (best is None or quality > best[0]):
            best = (quality, chosen)
    if best is None:
        shown = accept if len(accept) <= 80 else accept[:80] + "…"
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"this endpoint answers {', '.join(ENCODINGS)}; the request's Accept ({shown!r}) "
            "takes none of them",
        )
    return best[1]


def _quality(params: str) -> float:
    """The q of one Accept item's parameters (1 when absent or unreadable)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 1.0
    return 1.0


def binary_response(array: np.ndarray, fields: Mapping[str, Any], encoding: Encoding) -> Response:
    """`array` as float32 (raw little-endian or .npy), the answer's other `fields` in headers."""
    values = np.ascontiguousarray(array, dtype="<f4")
    headers = {SHAPE_HEADER: ",".join(str(size) for size in values.shape)}
    for name, value in fields.items():
        headers[HEADER_NAMES[name]] = _header_value(value)
    if encoding == NPY:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, values, allow_pickle=False)
        body = buffer.getvalue()
    else:
        body = values.tobytes()
    return Response(body, media_type=encoding, headers=headers)


def _header_value(value: Any) -> str:
    """A field as header text: numbers in full (repr), a list comma-separated."""
    if isinstance(value, np.ndarray | list | tuple):
        return ",".join(repr(float(v)) for v in value)
    return str(value)
