"""One test per artifact source: what lands on the admin machine and what runs on hosts."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

import pytest

import components.artifacts as artifacts
from components.spec import ConfigError, parse_spec
from tests.support.mocks import RecordingMocks
from tests.support.runtime import run_program
from tests.unit.conftest import REAL_DOWNLOAD
from tests.unit.test_spec import base

VERSION = "3.6.14"
ASSET = f"etcd-v{VERSION}-linux-amd64.tar.gz"


def make_release(directory: Path, corrupt_sums: bool = False) -> Path:
    """An upstream-shaped etcd release: the tarball and a SHA256SUMS beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = ASSET.removesuffix(".tar.gz")
    src = directory / "src" / stem
    src.mkdir(parents=True)
    for binary in ("etcd", "etcdctl", "etcdutl"):
        (src / binary).write_text(f"#!/bin/sh\necho {binary}\n")
    with tarfile.open(directory / ASSET, "w:gz") as tar:
        tar.add(src, arcname=stem)
    digest = hashlib.sha256((directory / ASSET).read_bytes()).hexdigest()
    if corrupt_sums:
        digest = "0" * 64
    (directory / "SHA256SUMS").write_text(f"{'1' * 64}  etcd-v{VERSION}-darwin-arm64.zip\n{digest}  {ASSET}\n")
    return directory / ASSET


def config(**artifacts_cfg: Any) -> dict[str, Any]:
    cfg = base()
    cfg["artifacts"] = artifacts_cfg
    cfg["versions"] = {"etcd": VERSION}
    return cfg


def commands(mocks: RecordingMocks, prefix: str) -> list[Any]:
    return [r for r in mocks.registrations if r.name.startswith(prefix) and r.custom]


def test_download_fetches_once_into_the_cache_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    make_release(mirror / f"v{VERSION}")
    monkeypatch.setattr(artifacts, "_download", REAL_DOWNLOAD)
    artifacts._fetched.clear()
    mocks = RecordingMocks()
    run_program(config(source="download", dir=str(tmp_path / "cache"), mirrors={"etcd": f"file://{mirror}"}), mocks)
    cached = tmp_path / "cache" / "etcd" / ASSET
    assert cached.read_bytes() == (mirror / f"v{VERSION}" / ASSET).read_bytes()
    copies = mocks.of_type("command:remote:CopyToRemote")
    assert len(copies) == 3 and {str(c.inputs["source"].path) for c in copies} == {str(cached)}
    assert {c.inputs["remotePath"] for c in copies} == {f"/var/tmp/{ASSET}"}
    install = mocks.named("etcd-binaries-node2-install")
    assert "sha256sum -c" in install.inputs["create"] and "/usr/local/bin/etcdctl" in install.inputs["create"]
    assert "/usr/local/bin/etcd " in install.inputs["delete"]


def test_download_refuses_a_file_that_does_not_match_upstream_sums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    make_release(mirror / f"v{VERSION}", corrupt_sums=True)
    monkeypatch.setattr(artifacts, "_download", REAL_DOWNLOAD)
    artifacts._fetched.clear()
    spec = parse_spec(config(source="download", dir=str(tmp_path / "cache"), mirrors={"etcd": f"file://{mirror}"}))
    with pytest.raises(ConfigError, match="artifacts.mirrors.etcd: .* does not match its published sha256"):
        artifacts.fetch(artifacts.etcd_release(VERSION), spec.artifacts)
    assert not (tmp_path / "cache" / "etcd" / ASSET).exists()


def test_download_unreachable_mirror_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "_download", REAL_DOWNLOAD)
    artifacts._fetched.clear()
    spec = parse_spec(config(source="download", dir=str(tmp_path), mirrors={"etcd": f"file://{tmp_path}/none"}))
    with pytest.raises(ConfigError, match="artifacts.mirrors.etcd: cannot fetch"):
        artifacts.fetch(artifacts.etcd_release(VERSION), spec.artifacts)


def test_local_copies_the_bundle_file_to_every_etcd_host(tmp_path: Path) -> None:
    make_release(tmp_path)
    artifacts._fetched.clear()
    mocks = RecordingMocks()
    run_program(config(source="local", dir=str(tmp_path)), mocks)
    copies = mocks.of_type("command:remote:CopyToRemote")
    assert {str(c.inputs["source"].path) for c in copies} == {str(tmp_path / ASSET)}
    assert sorted(c.inputs["connection"]["host"] for c in copies) == ["192.168.1.200", "192.168.1.201", "192.168.1.202"]
    unit = mocks.named("etcd-unit-node1")
    assert "ExecStart=/usr/local/bin/etcd" in unit.inputs["stdin"]


def test_local_missing_file_names_artifacts_dir_and_the_file(tmp_path: Path) -> None:
    artifacts._fetched.clear()
    mocks = RecordingMocks()
    with pytest.raises(ConfigError, match=f"kube-hardway:artifacts.dir: .* has no {ASSET}"):
        run_program(config(source="local", dir=str(tmp_path)), mocks)
    assert not [r for r in mocks.registrations if r.typ.startswith("command:")]


def test_local_checks_sha256sums_when_present(tmp_path: Path) -> None:
    make_release(tmp_path, corrupt_sums=True)
    artifacts._fetched.clear()
    spec = parse_spec(config(source="local", dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="does not match its sha256"):
        artifacts.fetch(artifacts.etcd_release(VERSION), spec.artifacts)


def test_package_installs_distribution_packages_and_copies_nothing() -> None:
    mocks = RecordingMocks()
    run_program(config(source="package"), mocks)
    assert mocks.of_type("command:remote:CopyToRemote") == []
    install = mocks.named("etcd-binaries-node1-install")
    assert "etcd-server etcd-client" in install.inputs["create"]
    assert "purge" in install.inputs["delete"]
    assert "ExecStart=/usr/bin/etcd" in mocks.named("etcd-unit-node1").inputs["stdin"]
