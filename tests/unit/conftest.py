"""Unit tests never touch the network: `download` artifacts come from a fake release file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import components.artifacts as artifacts

REAL_DOWNLOAD = artifacts._download


@pytest.fixture(autouse=True, scope="session")
def offline_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    fake = tmp_path_factory.mktemp("release") / "release.tar.gz"
    fake.write_bytes(b"not a real release")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(artifacts, "_download", lambda release, spec: fake)
        artifacts._fetched.clear()
        yield fake
    artifacts._fetched.clear()
