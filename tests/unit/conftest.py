"""Unit tests never touch the network (planning the program must not need it, so it is refused);
`hosts` fakes SSH/SFTP for tests that run the executing harness."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

import engine.harness as harness

_connect = socket.socket.connect


def _local_only(self: socket.socket, address: Any) -> None:
    if self.family == socket.AF_UNIX:
        return _connect(self, address)
    raise AssertionError(f"a unit test tried to reach {address!r} over the network")


@pytest.fixture(autouse=True, scope="session")
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _local_only)
        yield


class FakeHosts:
    """Records what would run over SSH; a script containing 'FAIL' exits 1."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def run(self, conn: dict[str, Any], command: str, stdin: str | None) -> tuple[int, str, str]:
        self.calls.append((command, stdin))
        return (1, "", "boom") if "FAIL" in command else (0, f"ran {command}\n", "")

    def put(self, conn: dict[str, Any], local: str, remote_path: str) -> None:
        self.calls.append((f"sftp {remote_path}", None))


@pytest.fixture
def hosts(monkeypatch: pytest.MonkeyPatch) -> FakeHosts:
    fake = FakeHosts()
    monkeypatch.setattr(harness, "ssh_run", fake.run)
    monkeypatch.setattr(harness, "sftp_put", fake.put)
    return fake
