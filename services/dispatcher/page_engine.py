"""Clarion's own HTML pages (status page, subscriptions, ops) render with the message engine:
sandboxed, autoescaped, with room for long histories."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fastapi.responses import HTMLResponse

from services.dispatcher.rendering.engine import TemplateEngine
from services.dispatcher.rendering.messages import SHIPPED_TEMPLATES

PAGES: Final = TemplateEngine([SHIPPED_TEMPLATES], max_output_chars=5_000_000)


def html_page(
    template: str,
    values: Mapping[str, Any],
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """``template`` (under ``templates/``) rendered with ``values``, as an HTML response."""
    return HTMLResponse(
        PAGES.render(template, dict(values)), status_code=status_code, headers=headers
    )
