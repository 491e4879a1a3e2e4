"""``/status/feed.atom`` and ``/status/feed.rss``: the status page for feed readers.

One entry per incident (open ones and those resolved in the last 90 days), newest
change first; the entry's id is the incident's stable page, its content the whole
timeline, and its ``updated`` time moves with every update, so readers show it again.
The XML is written by feedgen.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Protocol

from feedgen.feed import FeedGenerator
from markupsafe import escape

from services.dispatcher.status_page_store import StatusPageIncident
from services.dispatcher.status_presenter import STATE_WORDS, markdown_html
from services.dispatcher.status_summary import IncidentUrl, last_change
from services.dispatcher.status_view import StatusPage, latest_update

MAX_ENTRIES: Final = 50


class FeedWriter(Protocol):
    """:func:`atom_feed` or :func:`rss_feed`."""

    def __call__(
        self, page: StatusPage, *, page_url: str, self_url: str, incident_url: IncidentUrl
    ) -> bytes: ...


def feed_incidents(page: StatusPage) -> list[StatusPageIncident]:
    """The incidents a feed lists, the most recently changed first."""
    incidents = [*page.open, *page.history]
    incidents.sort(key=_changed, reverse=True)
    return incidents[:MAX_ENTRIES]


def build_feed(
    page: StatusPage, *, page_url: str, self_url: str, incident_url: IncidentUrl
) -> FeedGenerator:
    feed = FeedGenerator()
    feed.id(page_url)
    feed.title(f"{page.organization} status")
    feed.subtitle(f"Incidents and updates from {page.organization}: {page.indicator.description}")
    feed.author({"name": page.organization})
    feed.link(href=page_url, rel="alternate")
    feed.link(href=self_url, rel="self")
    feed.language("en")
    feed.updated(last_change(page))
    feed.generator("Clarion")
    for incident in reversed(feed_incidents(page)):  # feedgen prepends: newest ends first
        _entry(feed, incident, incident_url(incident.id))
    return feed


def atom_feed(
    page: StatusPage, *, page_url: str, self_url: str, incident_url: IncidentUrl
) -> bytes:
    feed = build_feed(page, page_url=page_url, self_url=self_url, incident_url=incident_url)
    return bytes(feed.atom_str(pretty=True))


def rss_feed(page: StatusPage, *, page_url: str, self_url: str, incident_url: IncidentUrl) -> bytes:
    feed = build_feed(page, page_url=page_url, self_url=self_url, incident_url=incident_url)
    return bytes(feed.rss_str(pretty=True))


def _entry(feed: FeedGenerator, incident: StatusPageIncident, url: str) -> None:
    entry = feed.add_entry()
    entry.id(url)
    entry.guid(url, permalink=True)
    entry.title(f"{STATE_WORDS[incident.state.value]}: {incident.title}")
    entry.link(href=url, rel="alternate")
    entry.published(incident.opened_at)
    entry.updated(_changed(incident))
    html = _timeline_html(incident)
    entry.content(html, type="html")
    entry.description(html)


def _timeline_html(incident: StatusPageIncident) -> str:
    parts = [f"<p>{escape(incident.impact)}</p>"]
    for update in incident.updates:
        words = STATE_WORDS[update.state.value]
        when = update.posted_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        parts.append(
            f"<p><strong>{escape(words)}</strong> ({when})</p>{markdown_html(update.body)}"
        )
    if incident.postmortem_url:
        link = escape(incident.postmortem_url)
        parts.append(f'<p>Post-mortem: <a href="{link}">{link}</a></p>')
    return "\n".join(parts)


def _changed(incident: StatusPageIncident) -> datetime:
    latest = latest_update(incident)
    candidates = [incident.updated_at] + ([latest.posted_at] if latest else [])
    return max(candidates)
