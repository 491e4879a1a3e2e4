"""A resolver that answers chosen names with chosen addresses (the rest resolve for real)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import pytest


def answer_names(monkeypatch: pytest.MonkeyPatch, table: Mapping[str, Sequence[str]]) -> list[str]:
    """Make ``socket.getaddrinfo`` answer each name of ``table`` with its addresses, for the
    rest of the test; returns the list of names it is asked for, as they are asked."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in table:
            return real(host, port, *args, **kwargs)
        asked.append(name)
        answers: list[Any] = []
        for text in table[name]:
            if ipaddress.ip_address(text).version == 4:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (text, port)))
            else:
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (text, port, 0, 0)))
        return answers

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked
