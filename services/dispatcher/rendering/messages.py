"""One event, one audience, one channel: the message, in that channel's shape and limits.

Templates are looked up most specific first, so a plan can override one audience's
message on one channel for one event, or a whole channel, or the shared phrases:
``<audience>/<channel>/<event>``, ``<audience>/<channel>/message``,
``<channel>/<event>``, ``<channel>/message``, then the channel family's
(``short/`` for SMS and social posts) and the root ``message``.

Short channels (SMS, Mastodon, Bluesky, X) render two blocks: ``body``, which may
be shortened to fit, and ``keep`` (next update, link, timestamp), which always
survives whole. A shortened message says so (``shortened``), and the delivery
log records it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from services.dispatcher.rendering.engine import TemplateEngine
from services.dispatcher.rendering.limits import fit, limit_for
from services.dispatcher.rendering.values import (
    DispatchEvent,
    RenderContext,
    event_time,
    kind_of,
    promised_next_update,
    template_values,
)
from shared.contracts import Incident
from shared.plan import ChannelName

SHIPPED_TEMPLATES: Final = Path(__file__).resolve().parent.parent / "templates"

SHORT_CHANNELS: Final = frozenset(
    {ChannelName.SMS, ChannelName.MASTODON, ChannelName.BLUESKY, ChannelName.X}
)
SLACK_HEADER_MAX: Final = 150
SLACK_SECTION_MAX: Final = 3000
DISCORD_TITLE_MAX: Final = 256
DISCORD_DESCRIPTION_MAX: Final = 4096
STATUS_COLOURS: Final = {
    "investigating": 0xD1242F,
    "identified": 0xBC4C00,
    "monitoring": 0x9A6700,
    "resolved": 0x1A7F37,
}


@dataclass(frozen=True)
class RenderedMessage:
    """What a channel driver sends. ``title`` is the email subject or status page title."""

    channel: str
    title: str
    text: str
    html: str | None = None
    payload: Mapping[str, Any] | None = None  # the JSON body for chat and webhooks
    status: str | None = None  # the status page state
    shortened: bool = False
    notes: tuple[str, ...] = field(default=())  # how it was shortened, for the log
    next_update_at: datetime | None = None  # the status page shows the promise it makes

    @property
    def subject(self) -> str:
        return self.title


def engine_for(templates_dir: str | None) -> TemplateEngine:
    """The plan's templates over the shipped ones."""
    search = [Path(templates_dir)] if templates_dir else []
    return TemplateEngine([*search, SHIPPED_TEMPLATES])


class Renderer:
    """Renders the messages of an event, once per (audience, channel).

    The renderings of one event share their work: the template values of each audience
    are made once, and each template is rendered once per audience (the plain text of
    an email and of a webhook is one rendering). Templates see nothing but the values,
    so a template rendered again with them would give the same text (the ``random``
    filter aside: it now picks once per event and audience). What is shared is kept for
    the event rendered last, recognised by its objects (the event and incident are
    frozen), until another event comes.
    """

    def __init__(self, context: RenderContext, engine: TemplateEngine | None = None) -> None:
        self.context = context
        self.engine = engine or engine_for(context.plan.templates_dir)
        self._found: dict[tuple[str, ...], str] = {}  # template lookups, made once each
        self._last: _EventRenderings | None = None

    def render(
        self,
        event: DispatchEvent,
        incident: Incident,
        audience: str,
        channel: ChannelName,
    ) -> RenderedMessage:
        """The message for ``audience`` on ``channel``; raises RenderFailed or MessageTooLong."""
        texts = self._texts(event, incident, audience)
        lookup = _Lookup(self.engine, audience, channel, kind_of(event).value, self._found)
        if channel is ChannelName.EMAIL:  # the subject is its title
            return RenderedMessage(
                channel=channel,
                title=_one_line(texts.render(lookup.find("subject", ".txt.j2"))),
                text=texts.render(lookup.find("message", ".txt.j2")).strip() + "\n",
                html=texts.render(lookup.find("message", ".html.j2")),
            )
        title = _one_line(texts.render(lookup.find("title", ".txt.j2")))
        if channel in SHORT_CHANNELS:
            return self._short(lookup, channel, title, texts)
        if channel is ChannelName.STATUS_PAGE:
            return RenderedMessage(
                channel=channel,
                title=title,
                text=texts.render(lookup.find("message", ".md.j2")).strip(),
                status=incident.status.value,
                next_update_at=promised_next_update(event),
            )
        return self._json_channel(
            lookup, channel=channel, title=title, texts=texts, event=event, incident=incident
        )

    def _texts(self, event: DispatchEvent, incident: Incident, audience: str) -> _Texts:
        """``audience``'s values and renderings for ``event``, made once per event."""
        last = self._last
        if last is None or last.event is not event or last.incident is not incident:
            last = self._last = _EventRenderings(event, incident)
        texts = last.audiences.get(audience)
        if texts is None:
            public = self.context.plan.audiences[audience].public
            values = template_values(event, incident, self.context, audience, public)
            texts = last.audiences[audience] = _Texts(self.engine, values)
        return texts

    def _json_channel(
        self,
        lookup: _Lookup,
        *,
        channel: ChannelName,
        title: str,
        texts: _Texts,
        event: DispatchEvent,
        incident: Incident,
    ) -> RenderedMessage:
        """Slack, Discord, a chat webhook or a signed webhook: a JSON body with the words."""
        values = texts.values
        if channel is ChannelName.SLACK:
            safe = slack_escaped(values)  # incident words never become mentions or links
            return _slack(title, self.engine.render(lookup.find("message", ".md.j2"), safe), safe)
        if channel is ChannelName.DISCORD:
            text = texts.render(lookup.find("message", ".md.j2"))
            return _discord(title, text, values, event)
        text = texts.render(lookup.find("message", ".txt.j2")).strip()
        if channel is ChannelName.CHAT_WEBHOOK:
            return RenderedMessage(channel, title, text, payload=_chat_json(title, text, values))
        return RenderedMessage(
            channel, title, text, payload=_webhook_json(title, text, event, incident, values)
        )

    def _short(
        self, lookup: _Lookup, channel: ChannelName, title: str, texts: _Texts
    ) -> RenderedMessage:
        name = lookup.find("message", ".txt.j2")
        blocks = self.engine.blocks(name)
        if {"body", "keep"} <= blocks:
            body = texts.render(name, "body")
            keep = texts.render(name, "keep")
        else:
            body, keep = texts.render(name), ""
        limit = limit_for(channel, max_sms_segments=self.context.plan.sms_max_segments)
        assert limit is not None
        fitted = fit(_one_line(body), _one_line(keep), limit)
        notes = (f"shortened to {fitted.measured} of {limit.limit} {limit.unit}",)
        return RenderedMessage(
            channel,
            title,
            fitted.text,
            shortened=fitted.shortened,
            notes=notes if fitted.shortened else (),
        )


@dataclass(frozen=True)
class _Texts:
    """One audience's values for an event, and the templates rendered with them so far."""

    engine: TemplateEngine
    values: dict[str, Any]
    rendered: dict[tuple[str, str | None], str] = field(default_factory=dict)

    def render(self, name: str, block: str | None = None) -> str:
        """Template ``name`` (or one ``block`` of it), rendered the first time it is asked for."""
        key = (name, block)
        text = self.rendered.get(key)
        if text is None:
            if block is None:
                text = self.engine.render(name, self.values)
            else:
                text = self.engine.render_block(name, block, self.values)
            self.rendered[key] = text
        return text


@dataclass(frozen=True)
class _EventRenderings:
    """The event rendered last (kept, so its objects are not mistaken for another's)."""

    event: DispatchEvent
    incident: Incident
    audiences: dict[str, _Texts] = field(default_factory=dict)


@dataclass(frozen=True)
class _Lookup:
    engine: TemplateEngine
    audience: str
    channel: ChannelName
    event: str
    found: dict[tuple[str, ...], str] = field(default_factory=dict)
    """Answers already looked up (each lookup reads template files from disk)."""

    def find(self, stem: str, extension: str) -> str:
        key = (self.audience, self.channel.value, self.event, stem, extension)
        name = self.found.get(key)
        if name is None:
            name = self.found[key] = self._search(stem, extension)
        return name

    def _search(self, stem: str, extension: str) -> str:
        channel = self.channel.value
        family = "short" if self.channel in SHORT_CHANNELS else channel
        names = [
            f"{self.audience}/{channel}/{self.event}{extension}",
            f"{self.audience}/{channel}/{stem}{extension}",
            f"{channel}/{self.event}{extension}",
            f"{channel}/{stem}{extension}",
            f"{family}/{stem}{extension}",
            f"{stem}{extension}",
        ]
        if stem != "message":  # an event-specific name is only for the message itself
            names = [n for n in names if not n.endswith(f"/{self.event}{extension}")]
        found = self.engine.first_existing(list(dict.fromkeys(names)))
        return found or names[-1]  # a missing template fails to render, naming itself


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[: limit - 1].rstrip() + "…", True


_BLANK_RUNS = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    return _BLANK_RUNS.sub("\n\n", text.strip())


def slack_escaped(value: Any) -> Any:
    """``value`` with ``&``, ``<`` and ``>`` escaped in every string, as Slack's mrkdwn wants."""
    if isinstance(value, str):
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if isinstance(value, Mapping):
        return {k: slack_escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [slack_escaped(v) for v in value]
    return value


def _slack(title: str, text: str, values: Mapping[str, Any]) -> RenderedMessage:
    header, cut_header = _clip(title, SLACK_HEADER_MAX)
    section, cut_section = _clip(_tidy(text), SLACK_SECTION_MAX)
    payload = {
        "text": f"{slack_escaped(title)}: {section}"[:SLACK_SECTION_MAX],
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": header}},
            {"type": "section", "text": {"type": "mrkdwn", "text": section}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"{values['org']} · {values['sev']} · "
                        f"{values['status']} · {values['timestamp']}",
                    }
                ],
            },
        ],
    }
    shortened = cut_header or cut_section
    notes = ("clipped to Slack's block limits",) if shortened else ()
    return RenderedMessage(
        ChannelName.SLACK, title, section, payload=payload, shortened=shortened, notes=notes
    )


def _discord(
    title: str, text: str, values: Mapping[str, Any], event: DispatchEvent
) -> RenderedMessage:
    heading, cut_title = _clip(title, DISCORD_TITLE_MAX)
    description, cut_text = _clip(_tidy(text), DISCORD_DESCRIPTION_MAX)
    payload = {
        "embeds": [
            {
                "title": heading,
                "description": description,
                "url": values["status_url"],
                "timestamp": event_time(event).isoformat(),
                "color": STATUS_COLOURS.get(values["status"], 0x59636E),
                "footer": {"text": f"{values['org']} · {values['sev']} · {values['status']}"},
            }
        ],
        "allowed_mentions": {"parse": []},  # never ping @everyone from an alert's words
    }
    shortened = cut_title or cut_text
    notes = ("clipped to Discord's embed limits",) if shortened else ()
    return RenderedMessage(
        ChannelName.DISCORD, title, description, payload=payload, shortened=shortened, notes=notes
    )


def _chat_json(title: str, text: str, values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "title": title,
        "text": text,
        "incident_id": values["incident_id"],
        "severity": values["sev"],
        "status": values["status"],
        "event": values["kind"],
        "status_url": values["status_url"],
    }


def _webhook_json(
    title: str,
    text: str,
    event: DispatchEvent,
    incident: Incident,
    values: Mapping[str, Any],
) -> dict[str, Any]:
    """A stable, documented body: the event, the incident as this audience sees it, the words."""
    next_update = None if values["next_update"] is None else event.next_update_at
    return {
        "type": f"incident.{values['kind']}",
        "event_id": event.event_id,
        "occurred_at": event_time(event).isoformat(),
        "incident": {
            "id": incident.id,
            "title": values["title"],
            "impact": incident.impact,
            "severity": incident.severity.sev,
            "status": incident.status.value,
            "service": incident.service,
            "components": list(incident.components),
            "opened_at": incident.opened_at.isoformat(),
            "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
            "postmortem_url": incident.postmortem_url,
        },
        "message": {"title": title, "text": text},
        "next_update_at": next_update.isoformat() if next_update else None,
        "status_url": values["status_url"],
    }
