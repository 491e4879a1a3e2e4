"""Scenario: schemathesis against ingest's own OpenAPI, with every check, on a real Valkey.

Ingest serves ``/openapi.json``; every operation in it is fuzzed with schema-valid and
schema-breaking requests, and each answer goes through all of schemathesis' checks.
The document declares its security schemes (a bearer token: ``CLARION_INGEST_TOKEN``
on webhooks, ``CLARION_OPS_TOKEN`` on the operator API; basic auth where sources take
it), and schemathesis' ``ignored_auth`` check probes them; on top of that, every case is
sent again without a credential and with a wrong one, and must be refused.

Lost: a 5xx, a transport error, or a request that got in without its credential. The
checks of the document itself against the answers run in their own test.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
    status_code_conformance,
)

from shared.settings import Settings
from tests.reliability.hostile import hostile_settings, ingest_served
from tests.reliability.scale import Outcome, report, sized

pytestmark = pytest.mark.integration

TOKEN: Final = "fuzz-ingest-t0ken"
OPS_TOKEN: Final = "fuzz-ops-t0ken"
PUBLIC: Final = frozenset({"/healthz", "/readyz", "/metrics"})
"""Operations anyone may call: probes and Prometheus scraping."""
SIGNED: Final = frozenset({"/v1/alerts/sns"})
"""Authenticated by the message's AWS signature, not by a header."""
ROUTING_KEY: Final = "/v2/enqueue"
"""PagerDuty's drop-in: the routing key in the body is the credential (the bearer token
works too), and a request without one is PagerDuty's 400, not a 401."""
REFUSALS: Final = frozenset({401, 403})
PAGERDUTY_REFUSAL: Final = 400  # PagerDuty's own answer to an unknown routing key
DOCUMENT_GAPS: Final = (status_code_conformance, positive_data_acceptance, negative_data_rejection)


def is_operator(path: str) -> bool:
    return path.startswith(("/v1/incidents", "/v1/rejections"))


def credential(path: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {OPS_TOKEN if is_operator(path) else TOKEN}"}


def with_declared_security(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` declaring the bearer token each protected operation enforces."""
    declared = copy.deepcopy(document)
    schemes = declared.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {"type": "http", "scheme": "bearer"}
    for path, operations in declared["paths"].items():
        if path in PUBLIC or path in SIGNED or path == ROUTING_KEY:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}]
    return declared


@dataclass
class Findings:
    """What a run saw: answers by operation and status, and what went wrong."""

    sent: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    probes: int = 0
    refused_otherwise: Counter[tuple[str, int]] = field(default_factory=Counter)

    def outcome(self, scenario: str) -> Outcome:
        notes = [f"{len(self.statuses)} (operation, status) pairs seen"]
        if self.probes:
            notes.append(f"{self.probes} probes without a valid credential, none let in")
        if self.refused_otherwise:
            shown = ", ".join(f"{p}: {s}" for p, s in sorted(self.refused_otherwise))
            notes.append(f"refused without credential by another 4xx first: {shown}")
        if self.skipped:
            notes.append(f"no negative cases for {', '.join(sorted(set(self.skipped)))}")
        kinds = Counter(self.lost).most_common(5)
        return Outcome(
            scenario,
            sent=self.sent,
            delivered=self.sent - len(self.lost),
            lost=len(self.lost),
            notes=notes + [f"{n} x {what}" for what, n in kinds],
        )


def failures_of(error: Failure | FailureGroup) -> list[Failure]:
    return list(error.exceptions) if isinstance(error, FailureGroup) else [error]


@dataclass(frozen=True)
class Api:
    url: str
    document: dict[str, Any]


@pytest.fixture(scope="module")
def api(redis_url: str, test_plan_path: Path) -> Iterator[Api]:
    settings = Settings(
        _env_file=None,
        redis_url=redis_url,
        plan=test_plan_path,
        ingest_token=TOKEN,
        ops_token=OPS_TOKEN,
        ingest_rate_limit="1000000/second",
        sns_cert_url_pattern=r"^https://sns\.invalid/",  # nothing is ever fetched
        log_format="json",
    )
    with ingest_served(settings) as url:
        document = httpx.get(f"{url}/openapi.json", timeout=30.0).json()
        yield Api(url, document)


def refused_without_credentials(
    session: requests.Session, kwargs: dict[str, Any], path: str, found: Findings
) -> None:
    """Send the case again with no credential and with a wrong one: never let in (a 2xx,
    a 5xx: lost), and refused with 401/403 (PagerDuty: its 400) before anything else."""
    headers = {k: v for k, v in kwargs["headers"].items() if k.lower() != "authorization"}
    wrong = "wrong-" + (OPS_TOKEN if is_operator(path) else TOKEN)
    refusals = REFUSALS | ({PAGERDUTY_REFUSAL} if path == ROUTING_KEY else set())
    for label, extra in (
        ("no credential", {}),
        ("a wrong token", {"Authorization": f"Bearer {wrong}"}),
    ):
        status = session.request(**{**kwargs, "headers": {**headers, **extra}}).status_code
        found.probes += 1
        if not 400 <= status < 500:
            found.lost.append(f"{kwargs['method']} {path} with {label}: {status}")
        elif status not in refusals:
            found.refused_otherwise[(path, status)] += 1


Validate = Callable[[Any, Any, dict[str, str]], None]


def fuzz(api: Api, examples: int, validate: Validate, *, probe_auth: bool) -> Findings:
    """Run every operation of ``api`` in both generation modes; ``validate`` runs the checks."""
    schema = schemathesis.openapi.from_dict(with_declared_security(api.document))
    found = Findings()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if isinstance(result, Err):  # the document itself is broken: say so
                raise result.err()
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run = cases_of(operation, mode, examples)(
                    lambda case: try_case(api, session, case, found, validate, probe_auth)
                )
                try:
                    run()
                except Unsatisfiable:  # nothing to break in an operation without inputs
                    found.skipped.append(operation.label)
    return found


def cases_of(
    operation: Any, mode: GenerationMode, examples: int
) -> Callable[[Callable[[Any], None]], Callable[[], None]]:
    """A decorator running its function on ``examples`` generated cases of ``operation``."""

    def decorate(body: Callable[[Any], None]) -> Callable[[], None]:
        @hostile_settings(max_examples=examples)
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            body(case)

        return run

    return decorate


def try_case(
    api: Api,
    session: requests.Session,
    case: Any,
    found: Findings,
    validate: Validate,
    probe_auth: bool,
) -> None:
    """Send one case with its credential, check the answer, then probe without it."""
    path = case.operation.path
    headers = {} if path in PUBLIC else credential(path)
    found.sent += 1
    try:
        response = case.call(base_url=api.url, session=session, headers=headers)
    except requests.RequestException as exc:
        found.lost.append(f"{case.method} {path}: {type(exc).__name__}")
        return
    found.statuses[(case.operation.label, response.status_code)] += 1
    if response.status_code >= 500:
        found.lost.append(f"{case.method} {path}: {response.status_code}")
    try:
        validate(case, response, headers)
    except (Failure, FailureGroup) as error:
        for failure in failures_of(error):
            found.lost.append(f"{case.method} {path}: {failure.title}")
    if probe_auth and path not in PUBLIC and path not in SIGNED:
        kwargs = case.as_transport_kwargs(base_url=api.url, headers=headers)
        refused_without_credentials(session, kwargs, path, found)


def test_fuzzing_ingest_finds_no_5xx_and_no_way_around_auth(api: Api) -> None:
    def every_check_but_the_document_gaps(
        case: Any, response: Any, headers: dict[str, str]
    ) -> None:
        case.validate_response(
            response,
            excluded_checks=list(DOCUMENT_GAPS),
            headers=headers,
            transport_kwargs={"base_url": api.url, "headers": headers},
        )

    found = fuzz(api, sized(8, 200), every_check_but_the_document_gaps, probe_auth=True)

    outcome = report(found.outcome("fuzz: schemathesis on ingest's OpenAPI, every check"))
    operations = {operation for operation, _ in found.statuses}
    assert len(operations) == sum(len(ops) for ops in api.document["paths"].values())
    assert any(status == 202 for _, status in found.statuses)  # some cases got all the way in
    assert outcome.lost == 0, outcome.notes
    assert found.probes > 0


def test_without_the_ops_token_the_body_is_not_looked_at(api: Api) -> None:
    response = httpx.post(
        f"{api.url}/v1/incidents/inc-1/acknowledge",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=30.0,
    )

    assert response.status_code == 401, response.text


def test_the_openapi_document_describes_what_ingest_answers(api: Api) -> None:
    def document_checks(case: Any, response: Any, headers: dict[str, str]) -> None:
        # A body that is its own credential (a routing key, an AWS signature) cannot be
        # valid by schema alone: only the statuses are checked there.
        credential_in_body = case.operation.path in (ROUTING_KEY, *SIGNED)
        case.validate_response(
            response,
            checks=[status_code_conformance] if credential_in_body else list(DOCUMENT_GAPS),
            headers=headers,
            transport_kwargs={"base_url": api.url, "headers": headers},
        )

    found = fuzz(api, sized(3, 100), document_checks, probe_auth=False)

    outcome = report(found.outcome("fuzz: ingest's OpenAPI documents its answers"))
    assert outcome.lost == 0, outcome.notes


def test_the_openapi_document_declares_how_to_authenticate(api: Api) -> None:
    schemes = api.document.get("components", {}).get("securitySchemes", {})
    protected = [
        operation
        for path, operations in api.document["paths"].items()
        if path not in PUBLIC and path not in SIGNED
        for operation in operations.values()
    ]

    assert any(scheme.get("scheme") == "bearer" for scheme in schemes.values())
    assert all(operation.get("security") for operation in protected)
