"""Who may call ingest, as route dependencies that /openapi.json and /docs show.

Two kinds of caller:

* **Webhook senders** present ``CLARION_INGEST_TOKEN`` (or their source's own token)
  as a bearer token, or their source's basic auth; Grafana and generic senders may
  sign the body instead, PagerDuty senders may put a routing key in it, and SNS
  messages are signed by AWS. A webhook route can only check these once it has read
  the body (signatures cover it, and a refused body is sampled), so it checks them
  itself (:mod:`services.ingest.credentials`): :data:`INGEST_TOKEN` and
  :data:`BASIC_AUTH` only declare the schemes, and do nothing when called.
* **Operators** present ``CLARION_OPS_TOKEN`` as a bearer token. :data:`OPERATOR`
  declares that scheme *and* checks it, before anything reads the request body.

OpenAPI cannot say "a key in the body": an operation whose credential may be
there (PagerDuty's routing key, the SNS message's own signature) lists
:data:`CREDENTIAL_IN_BODY` as its last alternative. Grafana's and Standard
Webhooks' signature headers are told in their routes' descriptions.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBase, HTTPBearer
from fastapi.openapi.models import SecurityBase as SecuritySchemeModel
from fastapi.security.base import SecurityBase

from services.ingest.state import get_state


class DeclaredScheme(SecurityBase):
    """A security scheme for OpenAPI only: the route checks the credential itself."""

    def __init__(self, scheme_name: str, model: SecuritySchemeModel) -> None:
        self.scheme_name = scheme_name
        self.model = model

    async def __call__(self) -> None:
        """Nothing to check yet: the route does, once it has read the body."""


class OperatorToken(SecurityBase):
    """The ops token as a bearer token (loopback clients only when it is not set)."""

    def __init__(self) -> None:
        self.scheme_name = "opsToken"
        self.model = HTTPBearer(
            description="`CLARION_OPS_TOKEN`. When it is not set, the operator API "
            "answers clients on the same host only, without a token."
        )

    async def __call__(self, request: Request) -> None:
        get_state(request).operator_auth(request)


INGEST_TOKEN: Final = DeclaredScheme(
    "ingestToken",
    HTTPBearer(
        description="`CLARION_INGEST_TOKEN`, or the source's own `CLARION_<SOURCE>_TOKEN`. "
        "With no ingest credential set at all, clients on the same host need none."
    ),
)
BASIC_AUTH: Final = DeclaredScheme(
    "basicAuth",
    HTTPBase(
        scheme="basic",
        description="The source's `CLARION_<SOURCE>_BASIC_AUTH` (`user:password`).",
    ),
)
OPERATOR: Final = OperatorToken()

WEBHOOK_AUTH: Final = (Depends(INGEST_TOKEN), Depends(BASIC_AUTH))
"""The dependencies of a webhook route: a bearer token or basic auth (or a signature)."""
OPERATOR_AUTH: Final = (Depends(OPERATOR),)
"""The dependencies of an operator route: the ops token, checked first."""
Operator = Annotated[None, Depends(OPERATOR)]
"""A parameter that is there only to make a dependency run after :data:`OPERATOR`."""

CREDENTIAL_IN_BODY: Final[dict[str, Any]] = {"security": [{}]}
"""An ``openapi_extra``: no header is needed, the credential being in the body (a
PagerDuty routing key, an SNS message's signature)."""
