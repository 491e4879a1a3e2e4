"""Email subscriptions, the pure parts: addresses, component choices, who hears an incident,
how subscribers join the fan-out, and the confirmation email's words."""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.dispatcher.fanout import (
    SUPPRESSED_RESOLVED,
    SUPPRESSED_UNSUBSCRIBED,
    Delivery,
    EmailSubscribers,
    delivery_id_for,
    email_reach,
    plan_deliveries,
)
from services.dispatcher.subscription_mail import compose_confirmation, confirm_url, scope_words
from services.dispatcher.subscriptions import (
    PENDING_FOR,
    InvalidAddress,
    PendingSubscription,
    Subscriber,
    Subscription,
    audience_of,
    canonical_address,
    chosen_components,
    hears,
    parse_address,
    well_formed_token,
)
from shared.contracts import Incident, Severity
from shared.plan import ChannelName, Plan, parse_plan
from tests.support.builders import (
    T0,
    make_incident,
    make_incident_opened,
    make_resolved_incident,
    make_update_due,
)
from tests.support.plans import make_plan, plan_data

ALICE = "alice@example.com"
BOB = "bob@example.com"
SUB = "sub@example.org"
COMPONENTS = ("Website", "Checkout", "API")
PLAN_COMPONENTS = [
    {"name": "Website", "services": ["web"]},
    {"name": "Checkout", "services": ["checkout-api"]},
    {"name": "API", "services": ["api"]},
]
AUDIENCES: dict[str, Any] = {
    "customers": {"public": True, "subscribers": True, "email": [ALICE], "status_page": True},
    "engineering": {"email": [BOB]},
}


def plan_with(audiences: dict[str, Any] = AUDIENCES, **overrides: Any) -> Plan:
    routes = overrides.pop("routes", [{"audiences": list(audiences)}])
    return make_plan(audiences=audiences, routes=routes, components=PLAN_COMPONENTS, **overrides)


def emails(deliveries: list[Delivery]) -> list[tuple[str, str]]:
    return [(d.audience, d.recipient) for d in deliveries if d.channel is ChannelName.EMAIL]


def opened(**incident: Any) -> tuple[Any, Incident]:
    subject = make_incident(**incident)
    return make_incident_opened(subject, event_id="ev-1", occurred_at=T0), subject


# Addresses


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("alice@example.com", "alice@example.com"),
        ("  Alice@Example.COM \n", "Alice@example.com"),  # the local part is the owner's
        ("first.last+status@mail.example.co.uk", "first.last+status@mail.example.co.uk"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("user@bücher.example", "user@xn--bcher-kva.example"),
    ],
)
def test_a_typed_address_is_stored_stripped_with_its_domain_in_lower_case(
    typed: str, stored: str
) -> None:
    assert parse_address(typed) == stored


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "alice",
        "alice@",
        "@example.com",
        "alice@example",
        "alice@@example.com",
        "Alice <alice@example.com>",
        "alice@example.com, bob@example.com",
        "alice@exa mple.com",
        "alice@example.com\r\nBcc: eve@example.com",
        '"alice"@example.com',
        "alice..x@example.com",
        ".alice@example.com",
        "alice@-example.com",
        "alice@127.0.0.1",
        "a" * 65 + "@example.com",
        "alice@" + "a" * 250 + ".com",
        "ålice@example.com",
    ],
)
def test_what_is_not_a_plain_address_is_refused(typed: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_address(typed)


def test_canonical_form_only_lowers_the_domain_and_never_raises() -> None:
    assert canonical_address(" Bob@EXAMPLE.com ") == "Bob@example.com"
    assert canonical_address("not an address") == "not an address"


def test_only_tokens_of_our_shape_are_looked_up() -> None:
    assert well_formed_token("A" * 43)
    assert well_formed_token("abc-_" + "x" * 38)
    assert not well_formed_token("")
    assert not well_formed_token("A" * 42)
    assert not well_formed_token("A" * 42 + "=")
    assert not well_formed_token("A" * 44)


# Choosing components


def test_chosen_components_take_the_plans_names_in_the_plans_order() -> None:
    assert chosen_components(["api", " CHECKOUT "], COMPONENTS) == ("Checkout", "API")
    assert chosen_components([], COMPONENTS) == ()
    assert chosen_components(["API", "api"], COMPONENTS) == ("API",)


def test_a_component_the_plan_does_not_have_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'Billing'"):
        chosen_components(["API", "Billing"], COMPONENTS)


@pytest.mark.parametrize(
    ("chosen", "touched", "heard"),
    [
        ((), ("Checkout",), True),  # subscribed to everything
        ((), (), True),
        (("Checkout",), (), True),  # an incident touching no component reaches everyone
        (("Checkout",), ("Checkout",), True),
        (("checkout",), ("Checkout", "API"), True),  # names compare without case
        (("Website",), ("Checkout", "API"), False),
        (("Website", "API"), ("API",), True),
        (("Billing",), ("API",), True),  # every choice left the plan: hear everything
        (("Billing", "Website"), ("API",), False),  # one choice is still there
    ],
)
def test_who_hears_an_incident(
    chosen: tuple[str, ...], touched: tuple[str, ...], heard: bool
) -> None:
    assert hears(chosen, touched, COMPONENTS) is heard


def test_the_audience_of_an_incident_is_sorted_and_filtered() -> None:
    def subscriber(address: str, *components: str) -> Subscriber:
        return Subscriber(address, Subscription(components=components, subscribed_at=T0))

    everyone = [
        subscriber("z@example.com"),
        subscriber("a@example.com", "Checkout"),
        subscriber("m@example.com", "Website"),
    ]

    assert audience_of(everyone, ("Checkout",), COMPONENTS) == ["a@example.com", "z@example.com"]
    assert audience_of(everyone, (), COMPONENTS) == [
        "a@example.com",
        "m@example.com",
        "z@example.com",
    ]


# Subscribers in the fan-out


def test_subscribers_are_email_recipients_of_the_audiences_that_take_them() -> None:
    event, incident = opened()
    deliveries = plan_deliveries(
        event, incident, plan_with(), EmailSubscribers(addresses=(SUB, "z@example.net"))
    )

    assert emails(deliveries) == [
        ("customers", ALICE),
        ("customers", SUB),
        ("customers", "z@example.net"),
        ("engineering", BOB),
    ]
    heard = next(d for d in deliveries if d.recipient == SUB)
    assert heard.public
    assert heard.idempotency_key == f"ev-1:email:{SUB}"
    assert heard.delivery_id == delivery_id_for(f"ev-1:email:{SUB}")
    assert heard.suppressed_reason is None


def test_without_subscribers_the_plan_alone_decides() -> None:
    event, incident = opened()

    assert emails(plan_deliveries(event, incident, plan_with())) == [
        ("customers", ALICE),
        ("engineering", BOB),
    ]


def test_an_audience_without_subscribers_true_never_gets_them() -> None:
    audiences = {"customers": {"public": True, "email": [ALICE]}, "engineering": {"email": [BOB]}}
    event, incident = opened()

    deliveries = plan_deliveries(
        event, incident, plan_with(audiences), EmailSubscribers(addresses=(SUB,))
    )

    assert SUB not in {d.recipient for d in deliveries}


def test_subscribers_hear_by_email_only() -> None:
    plan = plan_with(routes=[{"audiences": ["customers"], "channels": ["status_page"]}])
    event, incident = opened()

    deliveries = plan_deliveries(event, incident, plan, EmailSubscribers(addresses=(SUB,)))

    assert [(d.channel, d.recipient) for d in deliveries] == [
        (ChannelName.STATUS_PAGE, "status-page")
    ]
    assert not email_reach(event, incident, plan).needs_lookup


def test_an_audience_of_subscribers_only_reaches_them() -> None:
    audiences = {"customers": {"public": True, "subscribers": True}}
    plan = plan_with(audiences, routes=[{"audiences": ["customers"], "channels": ["email"]}])
    event, incident = opened()

    deliveries = plan_deliveries(event, incident, plan, EmailSubscribers(addresses=(SUB,)))

    assert emails(deliveries) == [("customers", SUB)]
    reach = email_reach(event, incident, plan)
    assert reach.subscribers
    assert reach.public_addresses == ()


def test_a_subscriber_the_plan_lists_too_hears_once_as_the_plans_recipient() -> None:
    event, incident = opened()
    subscribed = EmailSubscribers(addresses=("alice@EXAMPLE.com", "bob@example.com", SUB))

    deliveries = plan_deliveries(event, incident, plan_with(), subscribed)

    assert emails(deliveries) == [
        ("customers", ALICE),
        ("customers", "bob@example.com"),  # customers come first in the plan's route
        ("customers", SUB),
    ]
    assert len({d.idempotency_key for d in deliveries}) == len(deliveries)


def test_public_email_to_an_address_that_unsubscribed_is_planned_as_suppressed() -> None:
    audiences = {
        "customers": {
            "public": True,
            "subscribers": True,
            "email": ["Alice@Example.com"],
            "status_page": True,
        },
        "engineering": {"email": [BOB]},
    }
    event, incident = opened()
    gone = EmailSubscribers(unsubscribed=frozenset({"Alice@example.com", BOB}))

    deliveries = {
        d.recipient: d for d in plan_deliveries(event, incident, plan_with(audiences), gone)
    }

    assert deliveries["Alice@Example.com"].suppressed_reason == SUPPRESSED_UNSUBSCRIBED
    assert deliveries[BOB].suppressed_reason is None  # internal mail is not a list
    assert deliveries["status-page"].suppressed_reason is None


def test_a_resolved_incidents_update_stays_suppressed_for_that_reason() -> None:
    incident = make_resolved_incident()
    due = make_update_due(incident_id=incident.id)

    deliveries = plan_deliveries(
        due,
        incident,
        plan_with(),
        EmailSubscribers(addresses=(SUB,), unsubscribed=frozenset({ALICE})),
    )

    assert {d.suppressed_reason for d in deliveries} == {SUPPRESSED_RESOLVED}


def test_internal_only_severities_never_reach_subscribers() -> None:
    data = plan_data(audiences=AUDIENCES, routes=[{"audiences": list(AUDIENCES)}])
    data["severities"]["SEV4"]["internal_only"] = True
    plan = parse_plan(yaml.safe_dump(data), Path("plan.yaml"))
    event, incident = opened(severity=Severity.INFO)

    deliveries = plan_deliveries(event, incident, plan, EmailSubscribers(addresses=(SUB,)))

    assert emails(deliveries) == [("engineering", BOB)]
    assert email_reach(event, incident, plan).subscribers is False


def test_email_reach_names_the_public_addresses_to_check() -> None:
    event, incident = opened()

    reach = email_reach(event, incident, plan_with())

    assert reach.subscribers
    assert reach.public_addresses == (ALICE,)


# The confirmation email


def test_confirm_links_live_under_the_page_customers_follow() -> None:
    assert confirm_url("http://127.0.0.1:8001/status", "tok") == (
        "http://127.0.0.1:8001/status/subscribe/confirm?token=tok"
    )
    assert confirm_url("https://status.example.com/", "a-b_c") == (
        "https://status.example.com/subscribe/confirm?token=a-b_c"
    )
    assert confirm_url("https://example.com/s?lang=en", "t") == (
        "https://example.com/s/subscribe/confirm?lang=en&token=t"
    )


def test_scope_in_words() -> None:
    assert scope_words(()) == "every incident"
    assert scope_words(("API",)) == "incidents affecting API"
    assert scope_words(("Website", "Checkout", "API")) == (
        "incidents affecting Website, Checkout or API"
    )


def test_the_confirmation_says_who_asked_where_to_click_and_that_ignoring_it_is_safe() -> None:
    pending = PendingSubscription(
        address=SUB,
        components=("Checkout",),
        requested_at=T0,
        expires_at=T0 + PENDING_FOR,
    )
    link = "https://status.example.com/subscribe/confirm?token=" + "t" * 43

    mail = compose_confirmation(
        pending,
        link,
        organization="Example <Shop>",
        status_url="https://status.example.com",
        email_from="Example Status <status@Example.com>",
    )
    parsed = message_from_bytes(mail.mime().as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)

    assert parsed["To"] == SUB
    assert parsed["From"] == "Example Status <status@Example.com>"
    assert parsed["Subject"] == "Confirm your Example <Shop> status updates"
    assert parsed["Message-ID"].endswith("@example.com>")
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["List-Unsubscribe"] is None
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None
    assert html is not None
    words = text.get_content()
    assert "Someone, hopefully you, asked" in words
    assert "incidents affecting Checkout" in words
    assert link in words
    assert "ignore this email: nothing happens" in words
    assert f"stops working in {int(PENDING_FOR / timedelta(hours=1))} hours" in words
    markup = html.get_content()
    assert f'href="{link}"' in markup
    assert "Example &lt;Shop&gt;" in markup  # escaped in HTML
    other = compose_confirmation(
        pending,
        link,
        organization="Example",
        status_url="https://status.example.com",
        email_from="status@example.com",
    )
    assert other.message_id != mail.message_id  # one id per mail, never reused
