"""The ops pages under /ops (placeholder: being built)."""

from __future__ import annotations

from fastapi import APIRouter

ops_pages = APIRouter(prefix="/ops", include_in_schema=False)
