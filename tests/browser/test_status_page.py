"""The public status page in a real Chromium: what a customer reads during an outage.

The system runs as processes (tests/browser/conftest.py); one incident is open, with
the operator's "identified" update. Selectors are what a reader sees (roles, labels,
text), never the page's CSS structure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Page, expect

from tests.browser.artifacts import is_png
from tests.browser.clarion_system import ServedIncident
from tests.browser.conftest import OpenPage

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]

DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
}
DEVICES = {"desktop": DESKTOP, "phone": PHONE}
STATUS_WORDS = ("investigating", "identified")  # the opening update's, then the operator's


async def _open(page: Page, url: str) -> None:
    response = await page.goto(url)
    assert response is not None, url
    assert response.status == 200, url


async def _shown_times(page: Page) -> set[datetime]:
    """Every ``<time datetime=...>`` on the page, as moments (zone-independent)."""
    values: list[str | None] = await page.get_by_role("time").evaluate_all(
        "nodes => nodes.map(node => node.getAttribute('datetime'))"
    )
    return {datetime.fromisoformat(v).astimezone(UTC) for v in values if v}


async def _shows_the_timeline(page: Page, incident: ServedIncident) -> None:
    """Title, the operator's words, the status as a word, and every update's time."""
    await expect(page.get_by_role("heading", name=incident.title).first).to_be_visible()
    await expect(page.get_by_text(incident.update_message).first).to_be_visible()
    # Status is never a colour alone: each update's status is there as a word.
    for word in STATUS_WORDS:
        shown = page.get_by_text(re.compile(rf"\b{word}\b", re.IGNORECASE)).first
        await expect(shown).to_be_visible()
    await expect(page.get_by_role("time").first).to_be_visible()
    assert set(incident.posted) <= await _shown_times(page), "an update's time is missing"


async def test_the_status_page_shows_the_incident_its_update_and_when(
    open_page: OpenPage, incident: ServedIncident
) -> None:
    page = await open_page(**DESKTOP)
    await _open(page, incident.status_url)
    await _shows_the_timeline(page, incident)
    # The visible timestamp says which zone it is in, as every customer message must.
    first_time = await page.get_by_role("time").first.inner_text()
    assert re.search(r"\d{1,2}:\d{2}", first_time), first_time
    assert re.search(r"\b[A-Z]{2,5}\b|[+-]\d{2}:?\d{2}", first_time), first_time


async def test_each_incident_has_its_own_page_with_the_same_timeline(
    open_page: OpenPage, incident: ServedIncident
) -> None:
    page = await open_page(**DESKTOP)
    await _open(page, incident.status_url)
    await page.get_by_role("link", name=incident.title).first.click()
    await expect(page).to_have_url(incident.dispatcher_url + incident.page_path)
    await _shows_the_timeline(page, incident)


async def test_the_status_page_also_shows_times_in_the_readers_zone(
    open_page: OpenPage, incident: ServedIncident
) -> None:
    page = await open_page(**DESKTOP, timezone_id="Asia/Tokyo", locale="en-US")
    await _open(page, incident.status_url)
    posted = incident.posted[-1]
    utc, tokyo = posted.astimezone(UTC), posted.astimezone(ZoneInfo("Asia/Tokyo"))
    hour12 = tokyo.hour % 12 or 12
    body = page.locator("body")
    # The server's own rendering stays (readers without JavaScript) ...
    await expect(body).to_contain_text(f"{utc:%H:%M}")
    # ... and the reader's local time (UTC+9, so never the same clock time) is added.
    local = rf"(?<!\d)(?:{tokyo:%H:%M}|0?{hour12}:{tokyo:%M}\s?[AP]M)"
    await expect(body).to_contain_text(re.compile(local))
    await expect(body).to_contain_text(re.compile(r"Asia/Tokyo|Japan|JST|GMT\+9|UTC\+9"))


@pytest.mark.parametrize(
    ("which", "device"),
    [
        ("status", "desktop"),
        ("status", "phone"),
        ("incident", "desktop"),
        ("incident", "phone"),
    ],
)
async def test_the_pages_fit_the_screen_without_sideways_scrolling(
    open_page: OpenPage,
    incident: ServedIncident,
    screenshot: Callable[..., Path],
    which: str,
    device: str,
) -> None:
    context = DEVICES[device]
    page = await open_page(**context)
    path = (
        incident.status_url if which == "status" else incident.dispatcher_url + incident.page_path
    )
    await _open(page, path)
    await expect(page.get_by_text(incident.update_message).first).to_be_visible()
    shot = screenshot()  # first: a failing layout is worth seeing
    await page.screenshot(path=shot, full_page=True)
    assert shot.is_file(), shot
    assert is_png(shot), shot

    widths: dict[str, int] = await page.evaluate(
        "() => ({scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth})"
    )
    # A phone browser zooms out to fit content wider than the screen: innerWidth grows.
    assert widths["inner"] == context["viewport"]["width"], f"zoomed out on a {device}: {widths}"
    assert widths["scroll"] <= widths["inner"], f"sideways scrolling on a {device}: {widths}"
