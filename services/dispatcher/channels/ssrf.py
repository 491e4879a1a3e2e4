"""Outbound requests to URLs that someone else chose: check where they lead, then pin it.

A webhook URL in the plan could point at the dispatcher's own network (Redis on
localhost, a cloud metadata service on 169.254.169.254, an internal admin page).
Before such a request goes out:

1. The host is resolved (``getaddrinfo``, in a thread), whatever its spelling:
   names, IPv6 literals and the odd IPv4 forms the C resolver accepts
   (``2130706433``, ``0x7f.1``, ``127.1``) all end up as addresses.
2. If ANY resolved address is not a public one (loopback, private, link-local,
   multicast, reserved, unspecified, carrier-grade NAT 100.64.0.0/10, or an IPv6
   address carrying one of those IPv4 addresses inside it), the request is refused,
   unless private targets are explicitly allowed.
3. The request is *pinned*: it connects to the address that was checked (the URL's
   host is replaced by it), sends the original ``Host`` header, and for HTTPS asks
   for the original name in TLS SNI and certificate checks. A second DNS answer
   (DNS rebinding) can therefore never redirect the request elsewhere.

An address written as one, the standard way, is checked as it is, without a lookup.

Redirects are never followed by the shared client; callers treat a 3xx as final.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CARRIER_GRADE_NAT: Final = ipaddress.IPv4Network("100.64.0.0/10")
IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
NAT64_WELL_KNOWN: Final = ipaddress.IPv6Network("64:ff9b::/96")
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class AddressRefused(Exception):
    """The URL leads somewhere Clarion must not send to (or nowhere at all): permanent."""


class ResolutionFailed(Exception):
    """The host could not be resolved just now (DNS trouble, a timeout): worth a retry."""


@dataclass(frozen=True)
class PinnedTarget:
    """Where a checked request goes: ``url`` has the checked address in place of the host."""

    url: httpx.URL
    host: str
    """The host as written in the original URL (for logs and errors)."""
    address: IPAddress
    headers: dict[str, str] = field(default_factory=dict)
    """``Host`` (and ``Connection: close``, see :func:`pin`) to send with the request."""
    extensions: dict[str, Any] = field(default_factory=dict)
    """``sni_hostname`` for HTTPS, so TLS checks the certificate against the real name."""


def _same_as_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a connection to ``address`` really reaches (mapped or compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are IPv6 themselves
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _tunnelled_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried by a 6to4, Teredo or NAT64 address."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public destination, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        same = _same_as_ipv4(address)
        if same is not None:
            reason = address_refusal(same)
            return None if reason is None else f"an IPv6 address embedding {reason}"
        tunnelled = _tunnelled_ipv4(address)
        if tunnelled is not None and (reason := address_refusal(tunnelled)) is not None:
            return f"an IPv6 address embedding {reason}"
    checks: tuple[tuple[bool, str], ...] = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (isinstance(address, ipaddress.IPv4Address) and address in CARRIER_GRADE_NAT, "CGNAT"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "non-public"),
    )
    for refused, kind in checks:
        if refused:
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{article} {kind} address ({address})"
    return None


async def resolve(host: str, port: int, *, dns_timeout: float) -> list[IPAddress]:
    """Every address ``host`` resolves to, in resolver order (no duplicates).

    Raises :class:`AddressRefused` for a name that does not exist and
    :class:`ResolutionFailed` when the resolver fails or is too slow.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), dns_timeout
        )
    except TimeoutError as exc:
        raise ResolutionFailed(f"resolving {host} took longer than {dns_timeout:g}s") from exc
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise AddressRefused(f"{host} does not resolve to any address") from exc
        raise ResolutionFailed(f"resolving {host} failed: {exc.strerror or exc}") from exc
    except (OSError, UnicodeError) as exc:
        raise AddressRefused(f"{host} cannot be resolved: {exc}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonical, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone (fe80::1%eth0)
        address = ipaddress.ip_address(text)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise AddressRefused(f"{host} does not resolve to any address")
    return addresses


def _canonical_literal(host: str) -> IPAddress | None:
    """``host`` as an address when it is one written the standard way (``192.0.2.7``,
    ``2001:db8::1``), which the resolver would only echo: no lookup, no thread. Any
    other spelling (``127.1``, ``0x7f.1``, a zone) is left to the resolver, which
    reads them as the C library does."""
    if "%" in host:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _host_header(url: httpx.URL) -> str:
    host = url.raw_host.decode("ascii")
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if url.port is not None and url.port != DEFAULT_PORTS.get(url.scheme):
        host = f"{host}:{url.port}"
    return host


async def pin(url: str | httpx.URL, *, allow_private: bool, dns_timeout: float) -> PinnedTarget:
    """Check where ``url`` leads and return the request target pinned to a checked address.

    Raises :class:`AddressRefused` (permanent) or :class:`ResolutionFailed` (retry).
    With ``allow_private`` every resolved address is allowed, and the request is
    still pinned to the one that was resolved.
    """
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else url
    except httpx.InvalidURL as exc:
        raise AddressRefused(f"not a valid URL: {exc}") from exc
    if parsed.scheme not in DEFAULT_PORTS:
        raise AddressRefused(f"only http and https URLs are allowed, not {parsed.scheme!r}")
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded, as DNS and TLS want it
    if not host:
        raise AddressRefused("the URL has no host")
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    literal = _canonical_literal(host)
    addresses = (
        [literal] if literal is not None else await resolve(host, port, dns_timeout=dns_timeout)
    )
    if not allow_private:
        for address in addresses:
            reason = address_refusal(address)
            if reason is not None:
                raise AddressRefused(
                    f"{host} resolves to {reason}; set CLARION_WEBHOOK_ALLOW_PRIVATE=true "
                    "to allow private destinations"
                )
    address = addresses[0]
    headers = {"Host": _host_header(parsed)}
    extensions: dict[str, Any] = {}
    if parsed.scheme == "https":
        extensions["sni_hostname"] = host
        # The pinned connection is pooled under the address, not the name: never let a
        # later request for another name on the same address reuse it (its TLS session
        # was checked against this name only). Plain HTTP binds nothing to the
        # connection: it is kept, as any client keeps one per address and port.
        headers["Connection"] = "close"
    return PinnedTarget(
        url=parsed.copy_with(host=str(address)),
        host=host,
        address=address,
        headers=headers,
        extensions=extensions,
    )
