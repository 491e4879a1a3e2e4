"""Credentials for fuzzing ingest's API, supplied the way schemathesis documents it.

Ingest's ``/openapi.json`` names a security scheme for every protected operation
(:mod:`services.ingest.security`). Schemathesis' OpenAPI-aware auth maps a token to each
scheme name; it then puts the token an operation asks for on every case it generates,
except on a negative case whose credential is the very thing it broke (left out, emptied
or garbled). That case goes out as generated, to show that auth cannot be skipped, and a
case that carries the token is marked as explicitly authenticated, so schemathesis'
``ignored_auth`` check probes it without a credential and with a wrong one.

Nothing here adds a credential when a case is sent: that would put the token back on
the cases meant to go without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.schemas import OpenApiSchema

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase, OpenApiOperation

INGEST_TOKEN: Final = "fuzz-ingest-t0ken"
OPS_TOKEN: Final = "fuzz-ops-t0ken"
BEARER_TOKENS: Final[Mapping[str, str]] = {"ingestToken": INGEST_TOKEN, "opsToken": OPS_TOKEN}
"""The token for each bearer scheme ingest's document declares, by scheme name."""
REJECTIONS: Final = (
    *(str(s) for s in (400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429)),
    "5xx",  # counted as refused here; the no-5xx check fails those on its own
)
"""What answers a schema-breaking request: schemathesis' list, and 413."""


class Credential(StrEnum):
    """What a generated case carries for its operation's security."""

    CARRIED = "carried"
    """The token the operation asks for, put on by schemathesis."""
    DROPPED = "dropped"
    """Left out, emptied or garbled on purpose: a negative case about auth itself."""
    NOT_ASKED = "not asked"
    """No credential: the operation asks for none we hold (public, or signed by AWS)."""


def authenticating_schema(document: dict[str, Any]) -> OpenApiSchema:
    """``document`` loaded so that each generated case gets its operation's token, unless
    the case was generated without it on purpose."""
    schemes = {name: {"bearer": token} for name, token in BEARER_TOKENS.items()}
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": schemes},
            # A schema-breaking body too large to read is refused with a 413: a rejection.
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
        }
    )
    return schemathesis.openapi.from_dict(document, config=config)


def credential_of(case: OpenApiCase) -> Credential:
    """Whether ``case`` carries its token, went without it on purpose, or needs none."""
    if case.operation.schema.is_security_param_negated(case):
        return Credential.DROPPED
    sent = case.headers.get("Authorization")
    if sent in {f"Bearer {token}" for token in BEARER_TOKENS.values()}:
        return Credential.CARRIED
    return Credential.NOT_ASKED


def requires_credential(operation: OpenApiOperation) -> bool:
    """Whether the document says ``operation`` takes no request without a credential
    header (no empty alternative such as a routing key or signature in the body)."""
    raw: Mapping[str, Any] = operation.definition.raw
    document: Mapping[str, Any] = operation.schema.raw_schema
    requirements = raw.get("security", document.get("security", []))
    return bool(requirements) and all(requirements)


def wrong_credential(case: OpenApiCase) -> dict[str, str]:
    """An ``Authorization`` header that looks like the case's token but is not it."""
    sent = str(case.headers.get("Authorization", "Bearer "))
    return {"Authorization": sent.replace("Bearer ", "Bearer wrong-", 1)}
