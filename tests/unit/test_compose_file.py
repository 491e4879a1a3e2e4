"""docker-compose.yml runs real modules, with real settings, on the ports it publishes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_SERVICES = ("ingest", "dispatcher", "scheduler")
PREFIX = "CLARION_"


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(k): None if v is None else str(v) for k, v in env.items()}


def settings_for(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the service would see (with ${VAR:-default} taking its default)."""
    for variable in os.environ:
        if variable.startswith(PREFIX):
            monkeypatch.delenv(variable)
    for name, raw in environment(service).items():
        if raw is None:
            continue
        value = raw[raw.index(":-") + 2 : -1] if raw.startswith("${") and ":-" in raw else raw
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def published(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(published host ip, container port) for each "ip:host:container" port."""
    result = []
    for port in service.get("ports", []):
        parts = str(port).split(":")
        assert len(parts) == 3, f"publish on an explicit address, not {port!r}"
        result.append((parts[0], int(parts[2])))
    return result


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_a_real_module(name: str) -> None:
    command = SERVICES[name]["command"]
    assert command[:2] == ["python", "-m"]
    module = command[2]
    assert module == f"services.{name}"
    assert importlib.util.find_spec(module) is not None, module
    assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__"


def test_every_clarion_variable_is_a_real_setting() -> None:
    fields = {f"{PREFIX}{name.upper()}" for name in Settings.model_fields}
    named = {
        variable
        for service in SERVICES.values()
        for variable in environment(service)
        if variable.startswith(PREFIX)
    }

    assert named, "compose sets no CLARION_ variable at all"
    assert named <= fields, f"not settings: {sorted(named - fields)}"


def test_ingest_listens_beyond_loopback_on_the_port_it_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(SERVICES["ingest"], monkeypatch)

    assert settings.ingest_host == "0.0.0.0"
    assert published(SERVICES["ingest"]) == [("127.0.0.1", settings.ingest_port)]


def test_dispatcher_listens_beyond_loopback_on_the_port_it_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(SERVICES["dispatcher"], monkeypatch)

    assert settings.dispatcher_host == "0.0.0.0"
    assert published(SERVICES["dispatcher"]) == [("127.0.0.1", settings.dispatcher_port)]
    assert settings.local_status_url == f"http://127.0.0.1:{settings.dispatcher_port}/status"


def test_scheduler_listens_beyond_loopback_on_the_port_it_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(SERVICES["scheduler"], monkeypatch)

    assert settings.scheduler_host == "0.0.0.0"
    assert published(SERVICES["scheduler"]) == [("127.0.0.1", settings.scheduler_port)]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_are_healthy_only_when_ready_on_their_own_port(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(SERVICES[name], monkeypatch)
    port = getattr(settings, f"{name}_port")

    (command,) = [part for part in SERVICES[name]["healthcheck"]["test"] if "urlopen" in part]
    assert f"http://127.0.0.1:{port}/readyz" in command


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_reach_redis_and_mailpit_by_service_name(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(SERVICES[name], monkeypatch)

    redis = urlsplit(settings.require_redis_url())
    assert redis.hostname in SERVICES
    assert SERVICES[redis.hostname]["image"].split(":")[0] in {"valkey/valkey", "redis"}
    assert settings.smtp_host == "mailpit"
    assert "mailpit" in SERVICES["mailpit"]["image"]
    assert settings.smtp_port == 1025  # Mailpit's SMTP port


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_restart_and_wait_for_a_healthy_redis(name: str) -> None:
    service = SERVICES[name]

    assert service["restart"] == "unless-stopped"
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_persists_with_aof_and_has_a_healthcheck() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]

    assert command[command.index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"]
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])


def test_mailpit_ui_is_published() -> None:
    assert published(SERVICES["mailpit"]) == [("127.0.0.1", 8025)]
