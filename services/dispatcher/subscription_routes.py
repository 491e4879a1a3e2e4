"""Email subscriptions on the status page (placeholder: being built)."""

from __future__ import annotations

from fastapi import APIRouter

subscription_routes = APIRouter(prefix="/status", include_in_schema=False)
