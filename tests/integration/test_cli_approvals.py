"""``clarion approvals``: against a dispatcher serving on loopback, with its ops token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import cast
from urllib.parse import urlsplit

import pytest
from redis import Redis as SyncRedis
from typer.testing import CliRunner

from services.cli import app
from services.dispatcher.app import create_app
from services.dispatcher.approvals import PendingApproval
from shared.contracts import APPROVAL_EVENT, ApprovalGranted
from shared.settings import Settings
from shared.streams import APPROVALS, PENDING_APPROVALS
from tests.support.asgi import serving_in_thread
from tests.support.builders import T0, make_incident_opened
from tests.support.plans import make_plan
from tests.support.streams import decode_entry

OPS = "ops-secret"


@pytest.fixture
def dispatcher(
    redis_url: str, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> Iterator[SyncRedis]:
    """A dispatcher on a free loopback port; the CLI finds it through the environment."""
    client = SyncRedis.from_url(redis_url)
    client.flushdb()
    settings = make_settings(ops_token=OPS)
    app_ = create_app(settings, plan=make_plan(approval=["SEV1"]))
    with serving_in_thread(app_, lifespan="on") as url:
        monkeypatch.setenv("CLARION_DISPATCHER_PORT", str(urlsplit(url).port))
        monkeypatch.setenv("CLARION_OPS_TOKEN", OPS)
        yield client
    client.close()


def hold_one(redis: SyncRedis) -> PendingApproval:
    event = make_incident_opened()
    pending = PendingApproval(
        event_id=event.event_id,
        incident_id=event.incident_id,
        event_type=event.type,
        event_json=event.model_dump_json(),
        requested_at=T0,
        auto_publish_at=T0 + timedelta(minutes=10),
        held=2,
        preview_title="Investigating: A major outage",
        preview_text="We are investigating a major outage.",
    )
    redis.hset(PENDING_APPROVALS, event.event_id, pending.model_dump_json())
    return pending


def test_list_says_when_nothing_waits(dispatcher: SyncRedis) -> None:
    result = CliRunner().invoke(app, ["approvals", "list"])

    assert result.exit_code == 0, result.output
    assert "Nothing is waiting for approval." in result.output


def test_list_shows_a_held_event_and_approve_releases_it(dispatcher: SyncRedis) -> None:
    pending = hold_one(dispatcher)
    runner = CliRunner()

    listed = runner.invoke(app, ["approvals", "list", "--json"])
    approved = runner.invoke(app, ["approvals", "approve", pending.event_id, "--by", "alice"])

    assert listed.exit_code == 0, listed.output
    assert pending.event_id in listed.output
    assert "Investigating: A major outage" in listed.output
    assert approved.exit_code == 0, approved.output
    assert f"Approved 2 held message(s) of {pending.event_id}" in approved.output
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], dispatcher.xrange(APPROVALS))
    grants = [APPROVAL_EVENT.validate_json(decode_entry(fields)) for _, fields in entries]
    assert grants
    assert isinstance(grants[-1], ApprovalGranted)
    assert (grants[-1].event_id, grants[-1].by, grants[-1].automatic) == (
        pending.event_id,
        "alice",
        False,
    )


def test_approving_an_unknown_event_fails_clearly(dispatcher: SyncRedis) -> None:
    result = CliRunner().invoke(app, ["approvals", "approve", "no-such-event"])

    assert result.exit_code == 1
    assert "404" in result.output
    assert "nothing is waiting for approval" in result.output


def test_a_wrong_token_is_refused(dispatcher: SyncRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_OPS_TOKEN", "wrong")

    result = CliRunner().invoke(app, ["approvals", "list"])

    assert result.exit_code == 1
    assert "401" in result.output
