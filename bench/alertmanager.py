"""Prometheus Alertmanager (Debian's ``prometheus-alertmanager``) as the yardstick.

:func:`find_or_install` finds the binary, or installs the package with apt-get
(``sudo -n`` when not root) and says loudly when it cannot. :func:`running`
starts one instance on a free loopback port with clustering off, a temp storage
path and this routing:

- alerts labelled ``bench="latency"`` are grouped by their ``incident`` label with
  ``group_wait: 0s`` and sent at once to a webhook receiver (the HTTP sink);
- everything else goes to a receiver with no integrations (ingest throughput: the
  alerts are stored and grouped, nothing is sent).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from tests.support.processes import free_port

BINARY = "prometheus-alertmanager"
PACKAGE = "prometheus-alertmanager"
DEBIAN_PATH = Path("/usr/bin/prometheus-alertmanager")


def _loud(message: str) -> None:
    print(f"\n!!! {message}\n", flush=True)


def _apt(*args: str) -> bool:
    command = ["apt-get", *args]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return False
        command = ["sudo", "-n", *command]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        print(completed.stderr.strip()[-800:])
    return completed.returncode == 0


def find_or_install() -> Path | None:
    """The Alertmanager binary, installed with apt-get when missing; None (said loudly)
    when it cannot be had: the comparisons are then left out."""
    found = shutil.which(BINARY) or (str(DEBIAN_PATH) if DEBIAN_PATH.exists() else None)
    if found:
        return Path(found)
    print(f"{BINARY} is not installed: installing the Debian package {PACKAGE} ...")
    if not _apt("install", "-y", "--no-install-recommends", PACKAGE):
        _apt("update")
        _apt("install", "-y", "--no-install-recommends", PACKAGE)
    found = shutil.which(BINARY) or (str(DEBIAN_PATH) if DEBIAN_PATH.exists() else None)
    if found:
        return Path(found)
    _loud(
        f"COULD NOT INSTALL {PACKAGE} (apt-get failed, or no root and no password-less "
        "sudo). The Alertmanager comparisons are LEFT OUT of this run. Install it with "
        f"`sudo apt-get install {PACKAGE}` and run the benchmark again."
    )
    return None


def config(webhook_url: str) -> dict[str, object]:
    return {
        "route": {
            "receiver": "discard",
            "group_by": ["bench"],
            "group_wait": "30s",
            "routes": [
                {
                    "receiver": "sink",
                    "matchers": ['bench="latency"'],
                    "group_by": ["incident"],
                    "group_wait": "0s",
                    "group_interval": "5m",
                    "repeat_interval": "4h",
                }
            ],
        },
        "receivers": [
            {"name": "discard"},
            {"name": "sink", "webhook_configs": [{"url": webhook_url, "send_resolved": False}]},
        ],
    }


@dataclass(frozen=True)
class Alertmanager:
    host: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextmanager
def running(binary: Path, directory: Path, webhook_url: str) -> Iterator[Alertmanager]:
    """One Alertmanager on loopback until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config(webhook_url)))
    port = free_port()
    with (directory / "alertmanager.log").open("wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config_path}",
                f"--storage.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    manager = Alertmanager("127.0.0.1", port, process.pid)
    try:
        _wait_ready(manager, process, directory)
        yield manager
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_ready(manager: Alertmanager, process: subprocess.Popen[bytes], directory: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (directory / "alertmanager.log").read_text(errors="replace")
            raise RuntimeError(f"Alertmanager exited:\n{log[-2000:]}")
        try:
            if httpx.get(f"{manager.url}/-/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # a bounded poll of a readiness URL
    raise RuntimeError("Alertmanager was not ready within 30 s")
