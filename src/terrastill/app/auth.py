"""The bearer-token check every /api router depends on (one place for jobs, search, change)."""

# no "from __future__ import annotations": FastAPI must resolve the closure's Depends(bearer)


import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from terrastill.app.settings import Settings


def token_dependency(settings: Settings) -> Callable[..., None]:
    """A FastAPI dependency that accepts any request when the server has no token, and
    otherwise only ``Authorization: Bearer <token>`` (compared in constant time)."""
    bearer = HTTPBearer(auto_error=False, description="Set when the server has a token.")

    def require_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if settings.token is None:
            return
        given = creds.credentials.encode() if creds is not None else b""
        if not hmac.compare_digest(given, settings.token.encode()):
            raise HTTPException(
                401,
                "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token
