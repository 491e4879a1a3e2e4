"""The SMS channel: Twilio or a generic HTTP gateway, as ``CLARION_SMS_PROVIDER`` says."""

from __future__ import annotations

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.sms_gateway import SmsGatewayChannel
from services.dispatcher.channels.sms_twilio import TwilioSmsChannel

SmsChannel = TwilioSmsChannel | SmsGatewayChannel


def build_sms_channel(ctx: DriverContext) -> SmsChannel:
    """The driver for ``settings.sms_provider`` (``twilio`` by default, or ``gateway``).

    Either answers NotConfigured until its credentials are set, so the pipeline
    keeps SMS in the local outbox meanwhile.
    """
    if ctx.settings.sms_provider == "gateway":
        return SmsGatewayChannel(ctx)
    return TwilioSmsChannel(ctx)
