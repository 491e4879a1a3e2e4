"""What the ops pages show, decided on fixed times and records, without Redis or HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.dispatcher.dead_letters import ReplayResult, ReplayStatus
from services.dispatcher.delivery_query import QueryError, decode_cursor, encode_cursor
from services.dispatcher.ops_overdue import (
    GRACE,
    audience_cadence,
    build_overview,
    expected_audiences,
)
from services.dispatcher.ops_views import (
    DeliveryFilters,
    Flash,
    datetime_local,
    dead_letter_row,
    decode_flash,
    delivery_row,
    encode_flash,
    event_label,
    filter_problem,
    latest_per_delivery,
    moment,
    outbox_row,
    replay_all_flash,
    replay_flash,
    who_heard_what,
)
from services.dispatcher.outbox import OutboxMessage
from shared.contracts import DeliveryRecorded, DeliveryStatus, Severity
from tests.support.builders import make_incident, make_resolved_incident
from tests.support.plans import make_plan

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)
PLAN = make_plan(
    audiences={
        "customers": {"public": True, "email": ["alice@example.com"], "status_page": True},
        "team": {"email": ["oncall@example.com"]},
        "execs": {"email": ["boss@example.com"]},
    },
    routes=[
        {"name": "everyone", "audiences": ["customers", "team"]},
        {"name": "execs hear the start and end", "audiences": ["execs"], "events": ["opened"]},
    ],
)


def record(**overrides: Any) -> DeliveryRecorded:
    values: dict[str, Any] = {
        "delivery_id": "d-1",
        "incident_id": "inc-1",
        "event_id": "inc-1:1:incident.opened",
        "channel": "email",
        "recipient": "a***@example.com",
        "status": DeliveryStatus.SENT,
        "attempt": 1,
        "audience": "customers",
        "started_at": NOW,
        "recorded_at": NOW,
    }
    return DeliveryRecorded.model_validate(values | overrides)


# Overdue audiences


def test_an_audience_is_overdue_once_the_cadence_and_the_grace_have_passed() -> None:
    last = NOW - HOUR
    on_time = audience_cadence(
        "team", opened_at=NOW - 3 * HOUR, last_sent_at=last, cadence=HOUR, now=NOW + GRACE
    )
    late = audience_cadence(
        "team",
        opened_at=NOW - 3 * HOUR,
        last_sent_at=last,
        cadence=HOUR,
        now=NOW + GRACE + timedelta(seconds=1),
    )

    assert on_time.due_at == NOW
    assert not on_time.overdue
    assert on_time.late_by is None
    assert late.overdue
    assert late.late_by == GRACE + timedelta(seconds=1)


def test_an_audience_never_sent_anything_is_overdue_a_grace_after_the_opening() -> None:
    opened = NOW - timedelta(minutes=2)
    fresh = audience_cadence("team", opened_at=opened, last_sent_at=None, cadence=HOUR, now=NOW)
    stale = audience_cadence(
        "team", opened_at=opened - timedelta(seconds=1), last_sent_at=None, cadence=HOUR, now=NOW
    )

    assert fresh.due_at == opened
    assert not fresh.overdue
    assert stale.overdue


def test_a_severity_without_a_cadence_is_never_overdue_while_open() -> None:
    result = audience_cadence(
        "team", opened_at=NOW - 48 * HOUR, last_sent_at=None, cadence=None, now=NOW
    )

    assert not result.overdue
    assert result.due_at is None


def test_expected_audiences_are_those_the_plan_sends_scheduled_updates_to() -> None:
    incident = make_incident(severity=Severity.ERROR)

    assert expected_audiences(incident, PLAN, NOW) == ("customers", "team")


def test_internal_only_severities_expect_no_update_for_public_audiences() -> None:
    incident = make_incident(severity=Severity.INFO)
    plan = make_plan(
        audiences=PLAN.model_dump(mode="json")["audiences"],
        routes=[{"name": "everyone", "audiences": ["customers", "team"]}],
        severities={
            **{s.sev: {"name": s.value, "update_every": "1h"} for s in Severity},
            "SEV4": {"name": "minor", "update_every": "4h", "internal_only": True},
        },
    )

    assert expected_audiences(incident, plan, NOW) == ("team",)


def test_the_overview_lists_open_incidents_and_marks_overdue_audiences() -> None:
    late = make_incident(id="inc-late", severity=Severity.ERROR, opened_at=NOW - 3 * HOUR)
    quiet = make_incident(id="inc-quiet", severity=Severity.WARNING, opened_at=NOW - HOUR)
    over = make_resolved_incident(id="inc-over", opened_at=NOW - 5 * HOUR)
    last_sent = {
        "inc-late": {"customers": NOW - timedelta(minutes=90), "team": NOW - timedelta(minutes=10)},
        "inc-quiet": {"team": NOW - timedelta(minutes=5)},
    }

    view = build_overview([late, quiet, over], last_sent, PLAN, NOW)

    assert [i.id for i in view.incidents] == ["inc-late", "inc-quiet"]
    assert view.overdue == 1
    first = view.incidents[0]
    assert first.severity == "SEV2"
    assert first.cadence_words == "every 1 hour"
    rows = {row.name: row for row in first.audiences}
    assert rows["customers"].overdue
    assert rows["customers"].words == "Overdue by about 30 minutes"
    assert rows["customers"].tone == "critical"
    assert rows["customers"].due == moment(NOW - timedelta(minutes=30), ZoneInfo("UTC"))
    assert not rows["team"].overdue
    assert rows["team"].words == "On schedule"
    assert view.incidents[1].overdue == 0


# The delivery log's filters


def test_filters_become_a_delivery_log_query() -> None:
    cursor = encode_cursor((1_700_000_000_000, 3))
    filters = DeliveryFilters.of(
        {
            "incident_id": " inc-1 ",
            "channel": "sms",
            "status": "failed",
            "audience": "team",
            "since": "2026-11-23T14:00",
            "until": "2026-11-23T16:00:00+01:00",
            "limit": "20",
            "before": cursor,
            "unknown": "ignored",
        }
    )

    query = filters.query()

    assert query.incident_id == "inc-1"
    assert query.channels == {"sms"}
    assert query.statuses == {DeliveryStatus.FAILED}
    assert query.audiences == {"team"}
    assert query.since == datetime(2026, 11, 23, 14, 0, tzinfo=UTC)  # no zone: UTC
    assert query.until == datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    assert query.limit == 20
    assert query.before == decode_cursor(cursor)


def test_no_filters_query_the_newest_page() -> None:
    query = DeliveryFilters.of({}).query()

    assert (query.incident_id, query.channels, query.statuses, query.since) == (
        None,
        frozenset(),
        frozenset(),
        None,
    )
    assert query.limit == 50


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "delivered"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-23T15:00", "until": "2026-11-23T14:00"}, "until"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"before": "not-a-cursor"}, "before"),
    ],
)
def test_invalid_filters_name_the_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(QueryError) as caught:
        DeliveryFilters.of(params).query()
    assert caught.value.field == field
    assert filter_problem(caught.value).startswith(
        {"status": "Status", "since": "Since", "until": "Until", "limit": "Per page"}.get(
            field, "Page"
        )
    )


def test_page_links_keep_the_filters_and_change_the_cursor() -> None:
    filters = DeliveryFilters.of({"incident_id": "inc 1", "status": "sent", "before": "old"})

    assert filters.href("next") == "/ops/deliveries?incident_id=inc+1&status=sent&before=next"
    assert filters.href() == "/ops/deliveries?incident_id=inc+1&status=sent"
    assert DeliveryFilters().href() == "/ops/deliveries"


def test_a_filter_time_shows_in_a_datetime_local_input_as_utc() -> None:
    assert datetime_local("2026-11-23T15:00:00+01:00") == "2026-11-23T14:00:00"
    assert datetime_local("2026-11-23T14:00") == "2026-11-23T14:00:00"
    assert datetime_local("nonsense") == ""
    assert datetime_local("") == ""


def test_a_delivery_row_keeps_the_recipient_masked_and_joins_error_and_note() -> None:
    row = delivery_row(
        record(
            recipient="alice@example.com",  # were it ever unmasked, the page masks it
            status=DeliveryStatus.RETRYING,
            error="SMTP 451",
            note="will retry",
        ),
        ZoneInfo("Europe/Berlin"),
    )

    assert row.recipient == "a***@example.com"
    assert row.tone == "minor"
    assert row.detail == "SMTP 451 will retry"
    assert row.recorded == moment(NOW, ZoneInfo("Europe/Berlin"))
    assert row.recorded.text == "2026-11-23 15:30:00 CET"
    assert row.incident_href == "/ops/incidents/inc-1"


# Who heard what


def test_each_delivery_shows_its_latest_status() -> None:
    older = record(status=DeliveryStatus.RETRYING, recorded_at=NOW)
    newer = record(status=DeliveryStatus.SENT, attempt=2, recorded_at=NOW + timedelta(minutes=1))

    assert latest_per_delivery([newer, older]) == [newer]
    assert latest_per_delivery([older, newer]) == [newer]


def test_who_heard_what_groups_by_event_then_audience_and_channel() -> None:
    opened, update = "inc-1:1:incident.opened", "inc-1:update:1"
    later = NOW + timedelta(minutes=30)
    records = [  # newest first, as the log lists them
        record(delivery_id="u-sms", event_id=update, channel="sms", recipient="+*******4567",
               audience="team", status=DeliveryStatus.FAILED, error="invalid number",
               started_at=later, recorded_at=later),
        record(delivery_id="o-team", event_id=opened, recipient="o***@example.com",
               audience="team", attempt=2, recorded_at=NOW + timedelta(minutes=2)),
        record(delivery_id="o-team", event_id=opened, recipient="o***@example.com",
               audience="team", status=DeliveryStatus.RETRYING, recorded_at=NOW),
        record(delivery_id="o-page", event_id=opened, channel="status_page",
               recipient="status-page"),
        record(delivery_id="o-alice", event_id=opened),
    ]  # fmt: skip

    events = who_heard_what(records, "inc-1", ZoneInfo("UTC"))

    assert [(e.event_id, e.label, e.summary) for e in events] == [
        (opened, "Opened (revision 1)", "3 sent"),
        (update, "Scheduled update #1", "1 failed"),
    ]
    heard = [
        (g.audience, g.channel, [(h.recipient, h.status, h.attempt) for h in g.recipients])
        for g in events[0].groups
    ]
    assert heard == [
        ("customers", "email", [("a***@example.com", "sent", 1)]),
        ("customers", "status_page", [("status-page", "sent", 1)]),
        ("team", "email", [("o***@example.com", "sent", 2)]),
    ]
    [group] = events[1].groups
    assert (group.audience, group.channel) == ("team", "sms")
    assert group.recipients[0].detail == "invalid number"
    assert group.recipients[0].tone == "critical"


@pytest.mark.parametrize(
    ("event_id", "label"),
    [
        ("inc-1:1:incident.opened", "Opened (revision 1)"),
        ("inc-1:4:incident.severity_changed", "Severity changed (revision 4)"),
        ("inc-1:update:12", "Scheduled update #12"),
        ("inc-1:ack-overdue:SEV1", "ack-overdue:SEV1"),
        ("ev-other", "ev-other"),
    ],
)
def test_event_labels(event_id: str, label: str) -> None:
    assert event_label(event_id, "inc-1") == label


# Dead letters, flashes and the outbox


def test_a_dead_delivery_row_says_what_died_and_where_to_replay_it() -> None:
    view = {
        "id": "1700000000000-0",
        "kind": "delivery",
        "reason": "retries exhausted",
        "error": "HTTP 503",
        "dead_at": NOW.isoformat(),
        "stream": "clarion:deliveries:sms",
        "group": "dispatcher",
        "replayed_at": None,
        "incident_id": "inc-1",
        "channel": "sms",
        "audience": "team",
        "recipient": "+*******4567",
        "attempt": 5,
    }

    row = dead_letter_row(view, ZoneInfo("UTC"))

    assert row.what == "sms to +*******4567 (team), attempt 5"
    assert row.replay_href == "/ops/dead-letters/1700000000000-0/replay"
    assert row.replayed is None
    replayed = dead_letter_row(view | {"replayed_at": NOW.isoformat()}, ZoneInfo("UTC"))
    assert replayed.replayed == moment(NOW, ZoneInfo("UTC"))


def test_replay_flashes_say_what_happened() -> None:
    done = replay_flash("1-0", ReplayResult(ReplayStatus.REPLAYED, "queued as attempt 3"))
    again = replay_flash("1-0", ReplayResult(ReplayStatus.ALREADY_REPLAYED, "replayed before"))

    assert done == Flash("Replayed dead letter 1-0: queued as attempt 3.", "ok")
    assert again == Flash("Dead letter 1-0 was not replayed: replayed before.", "minor")
    assert replay_flash("9-9", None).tone == "critical"
    counts = dict.fromkeys(ReplayStatus, 0) | {ReplayStatus.REPLAYED: 2, ReplayStatus.NOT_DEAD: 1}
    assert replay_all_flash(counts).text == "Replayed 2 of 3 dead letters (1 not dead)."
    assert replay_all_flash(dict.fromkeys(ReplayStatus, 0)).text == "There was nothing to replay."


def test_a_flash_survives_its_cookie_and_garbage_is_ignored() -> None:
    flash = Flash("Replayed <b>1</b>; ok", "minor")

    assert decode_flash(encode_flash(flash)) == flash
    assert decode_flash("!!!") is None
    assert decode_flash(None) is None
    assert decode_flash(encode_flash(Flash("x", "tone-of-my-choice"))) is None


def test_an_outbox_row_masks_the_recipient() -> None:
    message = OutboxMessage(
        channel="email",
        to="alice@example.com",
        subject="Investigating: a partial outage",
        text="We are looking into it.",
        message_id="m-1",
        queued_at=NOW,
        incident_id="inc-1",
    )

    row = outbox_row(message, ZoneInfo("UTC"))

    assert row.to == "a***@example.com"
    assert row.reason == "no credentials configured"
    assert row.queued.iso == NOW.isoformat()
