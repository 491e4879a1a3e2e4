from __future__ import annotations

import copy
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from services.ingest.grouping import group_alerts
from services.ingest.severity import configured
from services.ingest.sources.generic import (
    EXAMPLES,
    MAX_ALERTS,
    SEVERITIES,
    VISIBLE,
    GenericAlert,
    GenericWebhook,
    fingerprint_of,
    group_key_of,
    json_schema,
    parse,
    severity_of,
)
from shared.contracts import AlertStatus, Severity
from tests.conftest import load_fixture
from tests.support.strategies import json_values

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "schemas" / "generic-alert-v1.schema.json"
DOC_FILE = ROOT / "docs" / "sources" / "generic.md"
FIRING = "generic_alert_v1_firing.json"
RESOLVED = "generic_alert_v1_resolved.json"


def committed_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return schema


SCHEMA_VALIDATOR = Draft202012Validator(committed_schema())


def doc_examples() -> list[Any]:
    """Every JSON body in the doc: ```json blocks and the curl command's here-document."""
    text = DOC_FILE.read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)
    blocks += re.findall(r"<<'EOF'\n(.*?)\nEOF\n", text, flags=re.DOTALL)
    return [json.loads(block) for block in blocks]


def model(data: Any) -> GenericWebhook:
    return GenericWebhook.model_validate(data)


def one(**fields: Any) -> dict[str, Any]:
    return {"version": "1", "alerts": [{"title": "Disk almost full on web-3", **fields}]}


def errors(data: Any) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as info:
        model(data)
    return [e["loc"] for e in info.value.errors()]


# -- schema and documentation stay in step with the model ---------------------------------


def test_committed_schema_is_what_the_model_generates() -> None:
    assert committed_schema() == json_schema(), (
        "regenerate: python -m services.ingest.sources.generic "
        "> docs/schemas/generic-alert-v1.schema.json"
    )


def test_committed_schema_is_a_valid_2020_12_schema_with_id_and_examples() -> None:
    schema = committed_schema()

    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "urn:clarion:schema:generic-alert:v1"
    assert schema["title"]
    assert schema["description"]
    assert schema["examples"] == list(EXAMPLES)


def test_the_doc_has_examples() -> None:
    assert len(doc_examples()) >= 3


@pytest.mark.parametrize("example", [*EXAMPLES, *doc_examples()])
def test_every_example_is_valid_for_the_schema_and_parses(example: dict[str, Any]) -> None:
    SCHEMA_VALIDATOR.validate(example)

    assert parse(model(example))


@pytest.mark.parametrize(
    "data",
    [
        {"alerts": [{"title": "x"}]},
        {"version": "2", "alerts": [{"title": "x"}]},
        {"version": "1", "alerts": []},
        {"version": "1", "title": "x"},
        one(title=""),
        one(title="   "),
        one(title="x" * 501),
        {"version": "1", "alerts": [{"description": "no title"}]},
        one(status="alerting"),
        one(url="ftp://example.org/x"),
        one(labels={f"k{i}": "v" for i in range(65)}),
        one(labels={"": "v"}),
        one(labels={"k": 1}),
        one(fingerprint="f" * 256),
    ],
)
def test_the_schema_and_the_model_reject_the_same_bodies(data: dict[str, Any]) -> None:
    assert not SCHEMA_VALIDATOR.is_valid(data)
    with pytest.raises(ValidationError):
        model(data)


# -- parsing ------------------------------------------------------------------------------


def test_firing_fixture_parses_with_every_field() -> None:
    (alert,) = parse(model(load_fixture(FIRING)))

    assert alert.source == "generic"
    assert alert.status is AlertStatus.FIRING
    assert alert.severity is Severity.ERROR
    assert alert.summary == "Checkout page returns errors"
    assert alert.description == "3 of 5 probes in eu-west-1 got HTTP 500 in the last 5 minutes."
    assert alert.fingerprint == "checkout-page-eu-west-1"
    assert alert.group_key == f"generic:{hashlib.sha256(b'checkout').hexdigest()}"
    assert alert.service == "checkout"
    assert alert.impact == "Some customers cannot complete a purchase."
    assert alert.labels == {"probe": "checkout-page", "region": "eu-west-1"}
    assert alert.annotations == {
        "runbook_url": "https://runbooks.example.org/checkout",
        "sender": "synthetic-checks",
    }
    assert alert.starts_at == datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
    assert alert.ends_at is None
    assert alert.generator_url == "https://probes.example.org/checks/checkout-page"


def test_resolved_fixture_ends_the_same_alert_in_the_same_group() -> None:
    (firing,) = parse(model(load_fixture(FIRING)))
    (resolved,) = parse(model(load_fixture(RESOLVED)))

    assert resolved.status is AlertStatus.RESOLVED
    assert resolved.ends_at == datetime(2026, 11, 23, 14, 42, tzinfo=UTC)
    assert (resolved.fingerprint, resolved.group_key) == (firing.fingerprint, firing.group_key)


def test_fixtures_are_the_schema_examples() -> None:
    assert [load_fixture(FIRING), load_fixture(RESOLVED)] == list(EXAMPLES[:2])


def test_defaults_for_a_title_only_alert() -> None:
    (alert,) = parse(model(one()))

    canonical = '{"labels":{},"title":"Disk almost full on web-3"}'
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert alert.status is AlertStatus.FIRING
    assert alert.severity is Severity.WARNING
    assert alert.fingerprint == fingerprint
    assert alert.group_key == f"generic:{hashlib.sha256(fingerprint.encode()).hexdigest()}"
    assert (alert.description, alert.service, alert.impact, alert.generator_url) == (
        "",
        None,
        None,
        None,
    )
    assert alert.annotations == {}


def test_derived_fingerprint_is_stable_and_follows_labels_and_title() -> None:
    first = parse(model(one(labels={"host": "web-3"})))[0].fingerprint

    assert parse(model(one(labels={"host": "web-3"}, status="resolved")))[0].fingerprint == first
    assert parse(model(one(labels={"host": "web-4"})))[0].fingerprint != first
    assert (
        parse(model(one(title="Disk full on web-3", labels={"host": "web-3"})))[0].fingerprint
        != first
    )


def test_long_fingerprints_are_hashed() -> None:
    long = "f" * 200

    (alert,) = parse(model(one(fingerprint=long)))

    assert alert.fingerprint == hashlib.sha256(long.encode()).hexdigest()


def test_summary_stands_in_for_title_and_title_wins() -> None:
    only_summary = {"version": "1", "alerts": [{"summary": "  Disk \n almost full "}]}

    assert parse(model(only_summary))[0].summary == "Disk almost full"
    assert parse(model(one(summary="Other words")))[0].summary == "Disk almost full on web-3"


def test_service_and_impact_fall_back_to_labels_and_annotations() -> None:
    data = one(labels={"service": "search"}, annotations={"customer_impact": "Search is slow."})

    (alert,) = parse(model(data))

    assert (alert.service, alert.impact) == ("search", "Search is slow.")


def test_alerts_of_a_body_may_belong_to_several_groups() -> None:
    data = {
        "version": "1",
        "alerts": [
            {"title": "a", "group": "g1"},
            {"title": "b", "group": "g2"},
            {"title": "c", "group": "g1"},
        ],
    }

    groups = group_alerts(parse(model(data)))

    assert [[a.summary for a in g.alerts] for g in groups.values()] == [["a", "c"], ["b"]]
    assert list(groups) == [group_key_of(a) for a in model(data).alerts[:2]]


def test_unknown_fields_and_nulls_are_ignored() -> None:
    data = one(severity=None, labels=None, description=None, status=None, newer={"x": 1})
    data["sent_by"] = "cron"
    data["source"] = None

    (alert,) = parse(model(data))

    assert (alert.severity, alert.status) == (Severity.WARNING, AlertStatus.FIRING)
    assert (alert.labels, alert.description) == ({}, "")


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ("SEV1", Severity.CRITICAL),
        ("sev2", Severity.ERROR),
        ("SEV3", Severity.WARNING),
        ("SEV4", Severity.INFO),
        ("critical", Severity.CRITICAL),
        ("Error", Severity.ERROR),
        ("warning", Severity.WARNING),
        ("info", Severity.INFO),
        ("P1", Severity.CRITICAL),
        ("high", Severity.ERROR),
        ("low", Severity.INFO),
        ("whatever", Severity.WARNING),
    ],
)
def test_severity_words_map_to_clarion_severities(severity: str, expected: Severity) -> None:
    assert parse(model(one(severity=severity)))[0].severity is expected


def test_severity_label_is_the_fallback_and_overrides_apply() -> None:
    labelled = GenericAlert.model_validate({"title": "x", "labels": {"priority": "p1"}})
    severities = configured("generic", SEVERITIES, {"*": {"whatever": Severity.CRITICAL}})

    assert severity_of(labelled) is Severity.CRITICAL
    assert parse(model(one(severity="whatever")), severities)[0].severity is Severity.CRITICAL


# -- bad bodies name the field ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"alerts": [{"title": "x"}]}, ("version",)),
        ({"version": 1, "alerts": [{"title": "x"}]}, ("version",)),
        ({"version": "1"}, ("alerts",)),
        ({"version": "1", "title": "x"}, ("alerts",)),
        ({"version": "1", "alerts": []}, ("alerts",)),
        ({"version": "1", "alerts": [{"title": "x"}] * (MAX_ALERTS + 1)}, ("alerts",)),
        ({"version": "1", "alerts": [{"description": "x"}]}, ("alerts", 0)),
        (one(title="x" * 501), ("alerts", 0, "title")),
        (one(title=" \n "), ("alerts", 0, "title")),
        (one(status="acknowledged"), ("alerts", 0, "status")),
        (one(labels={f"k{i}": "v" for i in range(65)}), ("alerts", 0, "labels")),
        (one(labels={"k": "v" * 1025}), ("alerts", 0, "labels", "k")),
        (one(starts_at="2026-11-23T14:30:00"), ("alerts", 0, "starts_at")),
        (one(url="www.example.org"), ("alerts", 0, "url")),
        (one(impact="x" * 1001), ("alerts", 0, "impact")),
        ({**one(), "source": "s" * 101}, ("source",)),
    ],
)
def test_bad_bodies_name_the_field(data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert errors(data) == [loc]


def test_a_missing_title_says_so() -> None:
    with pytest.raises(ValidationError) as info:
        model({"version": "1", "alerts": [{"severity": "SEV1"}]})

    assert "title (or summary)" in info.value.errors()[0]["msg"]


def test_fingerprint_of_is_pure() -> None:
    alert = GenericAlert.model_validate({"title": "x", "labels": {"b": "2", "a": "1"}})
    again = GenericAlert.model_validate({"labels": {"a": "1", "b": "2"}, "title": "x"})

    assert fingerprint_of(alert) == fingerprint_of(again)


# -- any JSON either fails validation or parses -------------------------------------------


@given(json_values)
def test_any_json_body_is_rejected_or_parsed(value: Any) -> None:
    try:
        payload = model(value)
    except ValidationError:
        return
    parse(payload)


_ALERT_FIELDS = sorted(GenericAlert.model_fields)


@given(st.sampled_from(["version", "source", "alerts", *_ALERT_FIELDS]), json_values)
def test_any_field_of_an_example_may_hold_any_json(field: str, value: Any) -> None:
    data = copy.deepcopy(EXAMPLES[0])
    target = data["alerts"][0] if field in _ALERT_FIELDS else data
    target[field] = value
    try:
        payload = model(data)
    except ValidationError:
        return
    assert len(parse(payload)) == 1


@given(st.sampled_from(["version", "source", "alerts", *_ALERT_FIELDS]), json_values)
def test_what_the_schema_accepts_the_model_accepts(field: str, value: Any) -> None:
    data = copy.deepcopy(EXAMPLES[0])
    target = data["alerts"][0] if field in _ALERT_FIELDS else data
    target[field] = value
    # The schema cannot say "with a UTC offset"; the model insists on one.
    if field in ("starts_at", "ends_at") or not SCHEMA_VALIDATOR.is_valid(data):
        return
    model(data)


@pytest.mark.parametrize("title", ["\x1e", "\x1c\x1d\x1f", "\x85", " \ufeff ", "\u3000\t"])
def test_a_title_of_separators_or_a_bom_alone_is_blank_as_the_schema_says(title: str) -> None:
    """The schema's pattern (ECMA-262) and the model agree on what is white space."""
    assert json.dumps(VISIBLE) in json.dumps(json_schema())
    with pytest.raises(ValidationError, match="must not be blank"):
        GenericAlert.model_validate({"title": title, "status": "firing"})
