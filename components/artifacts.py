"""Where release binaries come from, and how they land on a host.

`artifacts.source` decides:

* `download` — the admin machine fetches each release file ONCE into the cache (`artifacts.dir`,
  default ~/.cache/kube-hardway), from upstream or from `artifacts.mirrors.<component>`, checks it
  against upstream's published sha256 sums, then copies it to every host over SFTP. Hosts never
  need internet access. This also runs during `pulumi preview`, so a bad version or mirror fails
  before anything touches a host.
* `local`    — the same, from release files the user put in `artifacts.dir` (air-gapped bundles).
  A `SHA256SUMS` file beside them is honoured when present.
* `package`  — the distribution's packages, installed on each host by its package manager.

Files are named exactly like the upstream release assets, so a local bundle is just a directory
of downloads.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pulumi_command import remote

from components.remote import STATE_DIR, HostCommand, connection
from components.spec import ArtifactsSpec, ClusterSpec, ConfigError, HostSpec
from components.templates import render


@dataclass(frozen=True)
class Release:
    component: str                          # the versions.<component> / mirrors.<component> key
    version: str
    filename: str                           # the upstream asset name
    path: str                               # its path under the download base URL
    checksums: str                          # path of upstream's sha256 list under the base URL
    default_base: str
    binaries: Mapping[str, str]             # member inside the archive -> installed name
    packages: Mapping[str, tuple[str, ...]]  # package manager -> packages providing the binaries

    def url(self, artifacts: ArtifactsSpec) -> str:
        return f"{artifacts.mirrors.get(self.component, self.default_base)}/{self.path}"

    def checksums_url(self, artifacts: ArtifactsSpec) -> str:
        return f"{artifacts.mirrors.get(self.component, self.default_base)}/{self.checksums}"


def etcd_release(version: str) -> Release:
    stem = f"etcd-v{version}-linux-amd64"
    return Release(
        component="etcd", version=version, filename=f"{stem}.tar.gz",
        path=f"v{version}/{stem}.tar.gz", checksums=f"v{version}/SHA256SUMS",
        default_base="https://github.com/etcd-io/etcd/releases/download",
        binaries={f"{stem}/etcd": "etcd", f"{stem}/etcdctl": "etcdctl"},
        packages={"apt-get": ("etcd-server", "etcd-client"), "dnf": ("etcd",), "yum": ("etcd",)},
    )


def bin_dir(spec: ClusterSpec) -> str:
    return "/usr/bin" if spec.artifacts.source == "package" else "/usr/local/bin"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected_sum(sums_text: str, filename: str) -> str | None:
    for line in sums_text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*").split("/")[-1] == filename:
            return parts[0].lower()
    return None


_fetched: dict[tuple[str, str], Path] = {}


def fetch(release: Release, artifacts: ArtifactsSpec) -> Path:
    """The verified release file on the admin machine (downloaded into the cache if needed)."""
    key = (release.filename, artifacts.source)
    if key not in _fetched:
        _fetched[key] = _local(release, artifacts) if artifacts.source == "local" else _download(release, artifacts)
    return _fetched[key]


def _local(release: Release, artifacts: ArtifactsSpec) -> Path:
    path = Path(artifacts.dir) / release.filename
    if not path.is_file():
        raise ConfigError([
            f"kube-hardway:artifacts.dir: {artifacts.dir} has no {release.filename} (needed for "
            f"versions.{release.component}={release.version}); put the upstream release file there, "
            f"fix versions.{release.component}, or use artifacts.source download/package"])
    sums = path.parent / "SHA256SUMS"
    if sums.is_file():
        expected = _expected_sum(sums.read_text(), release.filename)
        if expected and expected != _sha256(path):
            raise ConfigError([f"kube-hardway:artifacts.dir: {path} does not match its sha256 in "
                               f"{sums}; the file is corrupt or not the release it claims to be"])
    return path


def _download(release: Release, artifacts: ArtifactsSpec) -> Path:
    cache = Path(artifacts.dir) / release.component
    path = cache / release.filename
    where = f"artifacts.mirrors.{release.component}" if release.component in artifacts.mirrors else \
        f"versions.{release.component}"
    try:
        with urllib.request.urlopen(release.checksums_url(artifacts), timeout=60) as resp:
            sums = resp.read().decode()
    except OSError as err:
        if path.is_file() and (path.parent / f"{release.filename}.sha256").is_file():
            sums = (path.parent / f"{release.filename}.sha256").read_text()
        else:
            raise ConfigError([f"kube-hardway:{where}: cannot fetch {release.checksums_url(artifacts)} "
                               f"({err}); set artifacts.mirrors.{release.component} to a reachable "
                               "mirror or use artifacts.source local"]) from None
    expected = _expected_sum(sums, release.filename)
    if expected is None:
        raise ConfigError([f"kube-hardway:{where}: {release.checksums_url(artifacts)} lists no "
                           f"sha256 for {release.filename}; is versions.{release.component} right?"])
    if path.is_file() and _sha256(path) == expected:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp:
        try:
            with urllib.request.urlopen(release.url(artifacts), timeout=600) as resp:
                shutil.copyfileobj(resp, tmp)
        except OSError as err:
            Path(tmp.name).unlink()
            raise ConfigError([f"kube-hardway:{where}: cannot fetch {release.url(artifacts)} ({err})"]) from None
    if _sha256(Path(tmp.name)) != expected:
        Path(tmp.name).unlink()
        raise ConfigError([f"kube-hardway:{where}: {release.url(artifacts)} does not match its "
                           f"published sha256 {expected}; the mirror serves a different file"])
    Path(tmp.name).rename(path)
    (path.parent / f"{release.filename}.sha256").write_text(f"{expected}  {release.filename}\n")
    return path


class InstalledRelease(pulumi.ComponentResource):
    """A release's binaries installed on one host; `ready` is what dependants wait on."""

    def __init__(self, name: str, host: HostSpec, spec: ClusterSpec, release: Release,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:artifacts:InstalledRelease", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        target = bin_dir(spec)
        if spec.artifacts.source == "package":
            self.ready: pulumi.Resource = HostCommand(
                f"{name}-install", host, spec.ssh,
                create=render("packages-install.sh.j2", release=release, state_dir=STATE_DIR),
                delete=render("packages-remove.sh.j2", release=release, state_dir=STATE_DIR),
                opts=child)
        else:
            local = fetch(release, spec.artifacts)
            sha = _sha256(local)
            remote_path = f"/var/tmp/{release.filename}"
            # A new release file is copied again (CopyToRemote has no delete, so replacing it is
            # harmless). The install picks it up as an update and has no triggers on purpose: a
            # replacement's old delete would remove the new binaries, which have the same names.
            copy = remote.CopyToRemote(
                f"{name}-copy", connection=connection(host, spec.ssh),
                source=pulumi.FileAsset(str(local)), remote_path=remote_path,
                triggers=[sha], opts=child)
            self.ready = HostCommand(
                f"{name}-install", host, spec.ssh,
                create=render("release-install.sh.j2", release=release, archive=remote_path,
                              sha256=sha, bin_dir=target, state_dir=STATE_DIR),
                delete=render("release-remove.sh.j2", release=release, archive=remote_path,
                              bin_dir=target, state_dir=STATE_DIR),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[copy]))
        self.register_outputs({})
