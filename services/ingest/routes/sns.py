"""``POST /v1/alerts/sns``: AWS SNS HTTP(S) notifications, CloudWatch alarms above all.

The message signature is the credential: every message is verified against
its AWS signing certificate (fetched only from the configured AWS hosts) before
anything else happens. Basic auth in the subscription URL is checked too when
``CLARION_SNS_BASIC_AUTH`` is set. A subscription confirmation is confirmed by
visiting its ``SubscribeURL`` (only on the same AWS hosts).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from services.ingest.openapi_docs import json_body
from services.ingest.routes.webhooks import ANSWERS, AcceptedAnswer, answer
from services.ingest.security import BASIC_AUTH, CREDENTIAL_IN_BODY
from services.ingest.sns_signature import confirm_subscription, require_known_topic
from services.ingest.sources import sns as source
from services.ingest.sources.sns import (
    MESSAGE_TYPE_HEADER,
    SnsNotification,
    SnsSubscriptionConfirmation,
)
from services.ingest.state import State
from shared.errors import InvalidPayload
from shared.http_errors import field_errors
from shared.logs import get_logger

SOURCE = source.SOURCE

log = get_logger("clarion.ingest")

sns = APIRouter(prefix="/v1/alerts", tags=["webhooks"], dependencies=[Depends(BASIC_AUTH)])


@sns.post(
    "/sns",
    status_code=202,
    summary="AWS SNS HTTP(S) notifications (CloudWatch alarms)",
    response_model=AcceptedAnswer,
    description="Verifies each message's signature (SignatureVersion 1 and 2) and confirms "
    "subscriptions. Answers 200 to subscription and unsubscribe confirmations, 202 to "
    "notifications.",
    responses=ANSWERS,
    openapi_extra=json_body(SnsNotification, "sns_notification.json") | CREDENTIAL_IN_BODY,
)
async def sns_webhook(request: Request, state: State) -> Response:
    async with state.intake.session(request, SOURCE) as session:
        await session.read()
        if state.settings.sns_basic_auth is not None:
            session.authenticate()
        try:
            message = source.message_from(session.json(), request.headers.get(MESSAGE_TYPE_HEADER))
        except ValidationError as exc:
            raise InvalidPayload(field_errors(exc)) from exc
        await state.sns.verify(message)
        require_known_topic(message, state.settings.sns_topic_arns)
        await state.intake.limiter.check(SOURCE)
        if not isinstance(message, SnsNotification):
            session.status = 200
            if isinstance(message, SnsSubscriptionConfirmation):
                return await _confirm(state, message)
            log.info("sns.unsubscribed", topic_arn=message.topic_arn)
            return JSONResponse({"status": "ignored", "type": message.type}, 200)
        alerts = source.parse(message, state.severities(SOURCE, source.SEVERITIES))
        accepted = await state.accept(alerts)
    return answer(SOURCE, len(alerts), accepted, state)


async def _confirm(state: State, message: SnsSubscriptionConfirmation) -> JSONResponse:
    if not state.settings.sns_confirm_subscriptions:
        log.warning("sns.subscription_not_confirmed", topic_arn=message.topic_arn)
        return JSONResponse({"status": "pending", "type": message.type}, 200)
    await confirm_subscription(state.http, message, state.settings.sns_cert_url_pattern)
    log.info("sns.subscription_confirmed", topic_arn=message.topic_arn)
    return JSONResponse({"status": "confirmed", "type": message.type}, 200)
