"""SSRF checks: which addresses a webhook may reach, and how a request is pinned to one.

Names other than ``localhost`` are answered by a stand-in resolver (``socket.getaddrinfo``
patched), so no test depends on real DNS.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import pytest

from services.dispatcher.channels.ssrf import (
    AddressRefused,
    ResolutionFailed,
    address_refusal,
    pin,
)
from tests.support.fake_dns import answer_names


async def pinned(url: str, *, allow_private: bool = False) -> Any:
    return await pin(url, allow_private=allow_private, dns_timeout=5.0)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, Sequence[str]]], list[str]]:
    """Answer the given names with the given addresses; returns the names looked up."""

    def install(table: Mapping[str, Sequence[str]]) -> list[str]:
        return answer_names(monkeypatch, table)

    return install


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://192.168.1.20:8080/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "IPv6 address embedding a loopback"),
        ("http://[::ffff:10.1.2.3]/hook", "IPv6 address embedding a private"),
        ("http://100.64.0.1/hook", "CGNAT"),
        ("http://2130706433/hook", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://0x7f.1/hook", "loopback"),  # hex and a short form
        ("http://127.1/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fd00::1]/hook", "private"),
        ("http://224.0.0.251/hook", "multicast"),
        ("https://240.0.0.1/hook", "private"),  # Python counts 240/4 (reserved) as private
    ],
)
async def test_non_public_destinations_are_refused(url: str, kind: str) -> None:
    with pytest.raises(AddressRefused) as refused:
        await pinned(url)

    assert kind in str(refused.value)
    assert "CLARION_WEBHOOK_ALLOW_PRIVATE" in str(refused.value)


def test_the_resolver_reads_odd_ipv4_spellings_as_loopback() -> None:
    # Why the check resolves every host instead of parsing it as an IP literal:
    # inet_aton-style parsing turns these into 127.0.0.1, ipaddress refuses them.
    for spelling in ("2130706433", "0x7f.1", "0177.0.0.1", "127.1"):
        addresses = {info[4][0] for info in socket.getaddrinfo(spelling, 80)}
        assert addresses == {"127.0.0.1"}
        with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
            ipaddress.ip_address(spelling)


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "100.128.0.1"],
)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("::7f00:1", "IPv6 address embedding a loopback"),  # IPv4-compatible ::127.0.0.1
        ("2002:a00:1::1", "IPv6 address embedding a private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "IPv6 address embedding a link-local"),  # NAT64 of 169.254.169.254
        ("::", "unspecified"),
        ("ff02::1", "multicast"),
        ("192.0.2.10", "private"),  # documentation range
    ],
)
def test_addresses_hidden_in_other_forms_are_refused(address: str, kind: str) -> None:
    reason = address_refusal(ipaddress.ip_address(address))

    assert reason is not None
    assert kind in reason


async def test_one_private_answer_among_public_ones_is_enough_to_refuse(
    dns: Callable[[Mapping[str, Sequence[str]]], list[str]],
) -> None:
    dns({"mixed.example": ["93.184.216.34", "10.0.0.7"]})

    with pytest.raises(AddressRefused, match=r"mixed\.example resolves to a private address"):
        await pinned("https://mixed.example/hook")


async def test_a_name_resolving_to_loopback_is_refused(
    dns: Callable[[Mapping[str, Sequence[str]]], list[str]],
) -> None:
    dns({"internal.example": ["127.0.0.53"]})

    with pytest.raises(AddressRefused, match="loopback"):
        await pinned("http://internal.example/hook")


async def test_https_is_pinned_to_the_checked_address_with_the_real_name_for_tls(
    dns: Callable[[Mapping[str, Sequence[str]]], list[str]],
) -> None:
    asked = dns({"hooks.example.com": ["93.184.216.34", "93.184.216.35"]})

    target = await pinned("https://hooks.example.com/in/clarion?team=ops")

    assert asked == ["hooks.example.com"]
    assert target.url == httpx.URL("https://93.184.216.34/in/clarion?team=ops")
    assert target.address == ipaddress.ip_address("93.184.216.34")
    assert target.headers["Host"] == "hooks.example.com"
    assert target.headers["Connection"] == "close"
    assert target.extensions == {"sni_hostname": "hooks.example.com"}


async def test_http_keeps_a_non_default_port_in_the_host_header(
    dns: Callable[[Mapping[str, Sequence[str]]], list[str]],
) -> None:
    dns({"hooks.example.com": ["2606:4700:4700::1111"]})

    target = await pinned("http://hooks.example.com:8080/in")

    assert target.url == httpx.URL("http://[2606:4700:4700::1111]:8080/in")
    assert target.headers["Host"] == "hooks.example.com:8080"
    assert target.extensions == {}


async def test_allowing_private_pins_to_the_resolved_loopback_address() -> None:
    target = await pinned("http://localhost:8123/hook", allow_private=True)

    assert target.address.is_loopback
    assert target.url.host == str(target.address)
    assert target.url.port == 8123
    assert target.headers["Host"] == "localhost:8123"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/file", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http:///no-host", "no host"),
    ],
)
async def test_urls_that_are_not_web_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(AddressRefused, match=reason):
        await pinned(url, allow_private=True)


async def test_resolver_failures_are_told_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing(host: Any, *args: Any, **kwargs: Any) -> Any:
        code = socket.EAI_NONAME if host == "nowhere.example" else socket.EAI_AGAIN
        raise socket.gaierror(code, "resolver says no")

    monkeypatch.setattr(socket, "getaddrinfo", failing)

    with pytest.raises(AddressRefused, match="does not resolve"):
        await pinned("https://nowhere.example/hook")
    with pytest.raises(ResolutionFailed, match="resolver says no"):
        await pinned("https://flaky.example/hook")


async def test_an_address_written_as_one_is_checked_without_a_lookup(
    dns: Callable[[Mapping[str, Sequence[str]]], list[str]],
) -> None:
    asked = dns({})

    target = await pinned("https://93.184.216.34:8443/hook")
    with pytest.raises(AddressRefused, match="loopback"):
        await pinned("http://[::1]/hook")

    assert asked == []
    assert target.address == ipaddress.ip_address("93.184.216.34")
    assert target.headers["Host"] == "93.184.216.34:8443"


async def test_plain_http_keeps_its_connection_and_https_closes_it(
    dns: Callable[[Mapping[str, Sequence[str]]], list[str]],
) -> None:
    dns({"hooks.example.com": ["93.184.216.34"]})

    plain = await pinned("http://hooks.example.com/in")
    secure = await pinned("https://hooks.example.com/in")

    assert "Connection" not in plain.headers  # nothing is bound to a plain connection
    assert secure.headers["Connection"] == "close"  # its TLS was checked for one name
