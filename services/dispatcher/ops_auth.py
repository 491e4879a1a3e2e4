"""Who may read and act on the ops API and the ops pages: holders of CLARION_OPS_TOKEN."""

from __future__ import annotations

from fastapi import Request

from services.dispatcher.state import get_state
from shared.auth import check_bearer


async def require_ops_token(request: Request) -> None:
    """When an ops token is configured, /v1/* needs ``Authorization: Bearer <token>``."""
    check_bearer(request.headers.get("authorization"), get_state(request).settings.ops_token)
