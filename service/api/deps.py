"""Shared FastAPI dependencies: the service container, bearer schemes, the admin check."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import Forbidden, Unauthorized
from ..serving import Services

__all__ = ["Services", "admin_bearer", "bearer", "check_admin", "get_services"]

bearer = HTTPBearer(auto_error=False, description="Tenant API key: `Authorization: Bearer dn_...`")
admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminToken", description="The DYNANOISE_ADMIN_TOKEN value."
)


async def get_services(request: Request) -> Services:
    # async: FastAPI would run a plain function in the thread pool, a hop per request.
    services: Services = request.app.state.services
    return services


def check_admin(services: Services, credentials: HTTPAuthorizationCredentials | None) -> None:
    token = services.settings.admin_token
    if token is None or not token.get_secret_value():
        raise Forbidden("the admin API is disabled: set DYNANOISE_ADMIN_TOKEN to enable it")
    if credentials is None or not hmac.compare_digest(
        credentials.credentials.encode(), token.get_secret_value().encode()
    ):
        raise Unauthorized("invalid admin token")
