"""Scenario: schemathesis against ingest's own OpenAPI, with every check, on a real Valkey.

Ingest serves ``/openapi.json``; every operation in it is fuzzed with schema-valid and
schema-breaking requests, and each answer goes through all of schemathesis' checks.
The document declares its security schemes (``CLARION_INGEST_TOKEN`` as a bearer token
on webhooks, ``CLARION_OPS_TOKEN`` on the operator API), and schemathesis puts the token
each operation asks for on its cases (:mod:`tests.reliability.fuzz_auth`), except on the
negative cases that break the credential itself: those go out without it, or with a
garbled one, exactly as generated, and must be refused. The ``ignored_auth`` check probes
the cases that carry the token; on top of that, every such case is sent again without a
credential and with a wrong one, and must be refused.

Lost: a 5xx, a transport error, a request that got in without its credential, or one that
was refused with it. The checks of the document itself against the answers run in their
own test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import httpx
import pytest
import requests
from hypothesis import given
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, Response
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
    status_code_conformance,
)

from shared.settings import Settings
from tests.reliability.fuzz_auth import (
    BEARER_TOKENS,
    INGEST_TOKEN,
    OPS_TOKEN,
    Credential,
    authenticating_schema,
    credential_of,
    requires_credential,
    wrong_credential,
)
from tests.reliability.hostile import hostile_settings, ingest_served
from tests.reliability.scale import Outcome, report, sized

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase, OpenApiOperation

pytestmark = pytest.mark.integration

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
SHOWN: Final = 3  # how many lost requests a failing run shows in full


@dataclass
class Findings:
    """What a run saw: answers by operation and status, credentials by operation, and
    what went wrong."""

    sent: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    credentials: Counter[tuple[str, Credential]] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    probes: int = 0
    let_in: int = 0
    """Requests without a valid credential (dropped or probing) answered below 400."""
    refused_otherwise: Counter[tuple[str, int]] = field(default_factory=Counter)

    def lose(self, what: str, case: OpenApiCase, detail: str = "") -> None:
        """Count ``what`` as lost; keep the first few with the request that lost it."""
        self.lost.append(what)
        if len(self.shown) < SHOWN:
            self.shown.append(f"{what}\n{detail}\n{case.as_curl_command()}".strip())

    def outcome(self, scenario: str) -> Outcome:
        dropped = sum(n for (_, kind), n in self.credentials.items() if kind is Credential.DROPPED)
        notes = [f"{len(self.statuses)} (operation, status) pairs seen"]
        if dropped or self.probes:
            notes.append(
                f"{dropped} cases generated and {self.probes} probes sent without a valid "
                f"credential: {self.let_in or 'none'} let in"
            )
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

    def labels(self, *, protected: bool = False) -> set[str]:
        """Every operation's label (``POST /v1/alerts/grafana``), or only those the
        document says take no request without a credential header."""
        return {
            f"{method.upper()} {path}"
            for path, operations in self.document["paths"].items()
            for method, operation in operations.items()
            if not protected or (operation.get("security") and all(operation["security"]))
        }


@pytest.fixture(scope="module")
def api(redis_url: str, test_plan_path: Path) -> Iterator[Api]:
    settings = Settings(
        _env_file=None,
        redis_url=redis_url,
        plan=test_plan_path,
        ingest_token=INGEST_TOKEN,
        ops_token=OPS_TOKEN,
        ingest_rate_limit="1000000/second",
        sns_cert_url_pattern=r"^https://sns\.invalid/",  # nothing is ever fetched
        log_format="json",
    )
    with ingest_served(settings) as url:
        document = httpx.get(f"{url}/openapi.json", timeout=30.0).json()
        yield Api(url, document)


def refused_without_credentials(
    session: requests.Session, case: OpenApiCase, base_url: str, found: Findings
) -> None:
    """Send ``case`` again with no credential and with a wrong one: never let in (a 2xx,
    a 5xx: lost), and refused with 401/403 (PagerDuty: its 400) before anything else."""
    path = case.operation.path
    kwargs = case.as_transport_kwargs(base_url=base_url)
    headers = {k: v for k, v in kwargs["headers"].items() if k.lower() != "authorization"}
    refusals = REFUSALS | ({PAGERDUTY_REFUSAL} if path == ROUTING_KEY else set())
    for label, extra in (("no credential", {}), ("a wrong token", wrong_credential(case))):
        status = session.request(**{**kwargs, "headers": {**headers, **extra}}).status_code
        found.probes += 1
        found.let_in += status < 400
        if not 400 <= status < 500:
            found.lose(f"{case.method} {path} sent again with {label}: {status}", case)
        elif status not in refusals:
            found.refused_otherwise[(path, status)] += 1


def judge_credential(
    case: OpenApiCase, credential: Credential, status: int, found: Findings
) -> None:
    """The answer to ``case`` itself, for what it carried: the token must get it past
    auth, and no case of an operation that needs a credential may get in without it."""
    label = case.operation.label
    needed = requires_credential(case.operation)
    if credential is Credential.CARRIED and status == 401:
        found.lose(f"{label}: 401 with its valid token", case)
    elif credential is Credential.NOT_ASKED and needed:
        found.lose(f"{label}: sent without the credential it needs", case)
    elif credential is Credential.DROPPED and needed:
        if status < 400:
            found.let_in += 1
            found.lose(f"{label}: {status} without a valid credential", case)
        elif status < 500 and status not in REFUSALS:
            found.refused_otherwise[(case.operation.path, status)] += 1


Validate: TypeAlias = "Callable[[OpenApiCase, Response], None]"


def fuzz(api: Api, examples: int, validate: Validate, *, probe_auth: bool) -> Findings:
    """Run every operation of ``api`` in both generation modes; ``validate`` runs the checks."""
    schema = authenticating_schema(api.document)
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
    operation: OpenApiOperation, mode: GenerationMode, examples: int
) -> Callable[[Callable[[OpenApiCase], None]], Callable[[], None]]:
    """A decorator running its function on ``examples`` generated cases of ``operation``."""

    def decorate(body: Callable[[OpenApiCase], None]) -> Callable[[], None]:
        @hostile_settings(max_examples=examples)
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: OpenApiCase) -> None:
            body(case)

        return run

    return decorate


def try_case(
    api: Api,
    session: requests.Session,
    case: OpenApiCase,
    found: Findings,
    validate: Validate,
    probe_auth: bool,
) -> None:
    """Send one case as generated (its credential, if any, is already on it), check the
    answer, then probe without the credential."""
    label = case.operation.label
    credential = credential_of(case)
    found.sent += 1
    found.credentials[(label, credential)] += 1
    try:
        response = case.call(base_url=api.url, session=session)
    except requests.RequestException as exc:
        found.lose(f"{label}: {type(exc).__name__}", case)
        return
    found.statuses[(label, response.status_code)] += 1
    if response.status_code >= 500:
        found.lose(f"{label}: {response.status_code}", case, response.text[:300])
    judge_credential(case, credential, response.status_code, found)
    try:
        validate(case, response)
    except (Failure, FailureGroup) as error:
        for failure in failures_of(error):
            found.lose(f"{label}: {failure.title}", case, str(failure.message)[:300])
    if probe_auth and credential is Credential.CARRIED:
        refused_without_credentials(session, case, api.url, found)


def test_fuzzing_ingest_finds_no_5xx_and_no_way_around_auth(api: Api) -> None:
    def every_check_but_the_document_gaps(case: OpenApiCase, response: Response) -> None:
        case.validate_response(
            response,
            excluded_checks=list(DOCUMENT_GAPS),
            transport_kwargs={"base_url": api.url},
        )

    found = fuzz(api, sized(8, 200), every_check_but_the_document_gaps, probe_auth=True)

    outcome = report(found.outcome("fuzz: schemathesis on ingest's OpenAPI, every check"))
    assert {operation for operation, _ in found.statuses} == api.labels()
    assert outcome.lost == 0, "\n\n".join([*outcome.notes, *found.shown])
    assert any(status == 202 for _, status in found.statuses)  # some cases got all the way in
    for operation in api.labels(protected=True):  # each went with its token and without
        assert found.credentials[(operation, Credential.CARRIED)] > 0, operation
        assert found.credentials[(operation, Credential.DROPPED)] > 0, operation
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
    def document_checks(case: OpenApiCase, response: Response) -> None:
        # A body that is its own credential (a routing key, an AWS signature) cannot be
        # valid by schema alone: only the statuses are checked there.
        credential_in_body = case.operation.path in (ROUTING_KEY, *SIGNED)
        case.validate_response(
            response,
            checks=[status_code_conformance] if credential_in_body else list(DOCUMENT_GAPS),
            transport_kwargs={"base_url": api.url},
        )

    found = fuzz(api, sized(3, 100), document_checks, probe_auth=False)

    outcome = report(found.outcome("fuzz: ingest's OpenAPI documents its answers"))
    assert outcome.lost == 0, "\n\n".join([*outcome.notes, *found.shown])


def test_the_openapi_document_declares_how_to_authenticate(api: Api) -> None:
    schemes = api.document.get("components", {}).get("securitySchemes", {})
    protected = [
        operation
        for path, operations in api.document["paths"].items()
        if path not in PUBLIC and path not in SIGNED
        for operation in operations.values()
    ]

    # The fuzzer's tokens go by these scheme names: a renamed scheme would go untested.
    assert all(schemes.get(name, {}).get("scheme") == "bearer" for name in BEARER_TOKENS)
    assert all(operation.get("security") for operation in protected)
