"""Access: the optional API key (every endpoint but the probes), the admin token, CORS, their OpenAPI entries.

Both secrets travel only in headers, never in the URL, so the access log (method, path and query)
never holds them, and `Settings` keeps them as SecretStr, so no repr or log line shows them. They
are compared in constant time: `hmac.compare_digest` over SHA-256 digests, so neither the content
nor the length of a wrong guess changes how long the comparison takes.
"""

import hashlib
import hmac
from collections.abc import Callable, Collection
from typing import Any

from fastapi import HTTPException, Request, status
from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.encoding import EXPOSED_HEADERS
from service.api.responses import error_response
from service.config import Settings

# Probes answer without the key, so that an orchestrator needs no secret to check the process.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
API_KEY_HEADER = "X-API-Key"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
_KEY_HELP = f"missing or wrong API key: send 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>'"


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class Secret:
    """A secret to check presented values against in constant time."""

    def __init__(self, secret: SecretStr) -> None:
        self._digest = _digest(secret.get_secret_value().encode())

    def matches(self, presented: str | None) -> bool:
        """True when `presented` is the secret; a missing value takes as long to refuse as a wrong one."""
        # Header values arrive decoded as latin-1: encoding back gives the bytes sent (a UTF-8 key matches).
        given = _digest((presented or "").encode("latin-1", "replace"))
        return hmac.compare_digest(given, self._digest) and presented is not None


def bearer_token(headers: Headers) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class APIKeyMiddleware:
    """ASGI middleware: 401 for any request but the probes that lacks the API key."""

    def __init__(self, app: ASGIApp, api_key: SecretStr) -> None:
        self.app = app
        self.key = Secret(api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            headers = Headers(scope=scope)
            # Either header may carry the key; with both CTM_API_KEY and CTM_ADMIN_TOKEN set, an admin
            # call sends the key as X-API-Key and the admin token as the bearer token.
            # Both are checked (no short circuit), so the time taken does not say which one was sent.
            bearer_ok = self.key.matches(bearer_token(headers))
            header_ok = self.key.matches(headers.get(API_KEY_HEADER))
            if not (bearer_ok or header_ok):
                response = error_response(status.HTTP_401_UNAUTHORIZED, _KEY_HELP, headers=_CHALLENGE)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def admin_token_dependency(token: SecretStr) -> Callable[[Request], None]:
    """A dependency that refuses (401) a request whose bearer token is not `token`."""
    secret = Secret(token)

    def require_admin_token(request: Request) -> None:
        if not secret.matches(bearer_token(request.headers)):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or wrong admin token: send 'Authorization: Bearer <CTM_ADMIN_TOKEN>'",
                headers=_CHALLENGE,
            )

    return require_admin_token


def cors_options(settings: Settings) -> dict[str, Any]:
    """CORSMiddleware's arguments: the configured origins, the API's methods and credential headers."""
    return {
        "allow_origins": settings.cors_origins,
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Authorization", API_KEY_HEADER],
        # A page reading a binary answer needs its fields, which come in headers.
        "expose_headers": EXPOSED_HEADERS,
        "allow_credentials": False,
    }


def unauthorized_response(description: str) -> dict[str, Any]:
    """An OpenAPI 401 response with an `ErrorResponse` body."""
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


def document_access(schema: dict[str, Any], settings: Settings, admin_paths: Collection[str]) -> None:
    """Declare the security schemes of the API key and the admin token, and 401 where they are needed."""
    schemes: dict[str, Any] = {}
    if settings.api_key is not None:
        schemes["apiKeyBearer"] = {"type": "http", "scheme": "bearer", "description": "CTM_API_KEY"}
        schemes["apiKeyHeader"] = {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
    if settings.admin_token is not None:
        schemes["adminToken"] = {"type": "http", "scheme": "bearer", "description": "CTM_ADMIN_TOKEN"}
    if not schemes:
        return
    schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(schemes)
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            if path in admin_paths:  # the admin token is the bearer token; the API key goes in X-API-Key
                requirement = {name: [] for name in ("adminToken", "apiKeyHeader") if name in schemes}
                operation["security"] = [requirement]
            elif path not in PUBLIC_PATHS and settings.api_key is not None:
                operation["security"] = [{"apiKeyBearer": []}, {"apiKeyHeader": []}]
            else:
                continue
            operation["responses"].setdefault(
                "401", unauthorized_response("The API key (CTM_API_KEY) or admin token is missing or wrong.")
            )
