"""Where release binaries come from, and how they land on a host.

`artifacts.source` decides (and `artifacts.sources.<component>` for one component):

* `download` — during `pulumi up`, the admin machine fetches each release file ONCE into the
  cache (`artifacts.dir`, default ~/.cache/kube-hardway), from upstream or from
  `artifacts.mirrors.<component>`, and checks it against the sha256 pinned in
  `components/checksums.py` (or `artifacts.checksums`), then copies it to every host over SFTP.
  Hosts never need internet access.
* `local`    — the same, from release files the user put in `artifacts.dir` (air-gapped bundles);
  a `SHA256SUMS` or `<file>.sha256` beside them is honoured for versions without a pin.
* `package`  — the distribution's packages, installed on each host by its package manager.

What only a distribution packages (the API server proxy, haproxy) comes from `package`, or from
`local`: the package files, with their dependencies, in `<artifacts.dir>/<component>/<arch>/`,
checked and copied like release files and installed with nothing fetched.

The fetch (or, for `local`, the check) is a `command:local:Command` step, so a preview shows it as
planned and does no network I/O and needs no release file; the copies to hosts wait for it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pulumi_command import local, remote

from components import links
from components.layout import STAGING_DIR, STATE_DIR
from components.releases import (
    DISTRIBUTION_PACKAGES,
    PACKAGE_FILE_SUFFIXES,
    Asset,
    Release,
    distribution_release,
    release,
)
from components.remote import HostStep, connection
from components.spec import ArtifactsSpec, ConfigError, HostSpec, SshSpec
from components.spec.artifacts import DEFAULT_DOWNLOAD_CACHE
from components.templates import render


def bin_dir(source: str) -> str:
    return "/usr/bin" if source == "package" else "/usr/local/bin"


@dataclass(frozen=True)
class ReleaseFile:
    asset: Asset
    path: str                          # on the admin machine, once the fetch step has run
    sha256: pulumi.Input[str]          # the verified sum: known at plan time unless taken from upstream at `up`
    ready: pulumi.Output[pulumi.FileAsset]  # the file as an asset, known once the fetch step ran


def _sums_file_entry(text: str, filename: str) -> str | None:
    """The sum for `filename` in a `SHA256SUMS`-style list, or the sole sum of a `<file>.sha256`."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for parts in lines:
        if len(parts) >= 2 and parts[1].lstrip("*").split("/")[-1] == filename:
            return parts[0].lower()
    if len(lines) == 1 and len(lines[0]) == 1:
        return lines[0][0].lower()
    return None


def _local_path(rel: Release, asset: Asset, artifacts: ArtifactsSpec) -> Path:
    base = Path(artifacts.dir)
    if rel.package_files:
        candidates = [base / rel.component / rel.arch / asset.filename]
    elif asset.names_arch:
        candidates = [base / asset.filename]
    else:
        candidates = [base / rel.arch / asset.filename, base / asset.filename]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError([
        f"kube-hardway:artifacts.dir: {artifacts.dir} has no {asset.filename} (needed for "
        f"versions.{rel.component}={rel.version} on {rel.arch}; looked for {', '.join(map(str, candidates))}); "
        f"put the upstream release file there, fix versions.{rel.component}, or use artifacts.source download"])


def _sum_beside(path: Path) -> str | None:
    for sums in (path.parent / "SHA256SUMS", path.parent / f"{path.name}.sha256"):
        if sums.is_file():
            found = _sums_file_entry(sums.read_text(), path.name)
            if found:
                return found
    return None


class ReleaseFiles(pulumi.ComponentResource):
    """One release's files, verified on the admin machine during `up`; shared by every host."""

    def __init__(self, name: str, rel: Release, artifacts: ArtifactsSpec,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:artifacts:ReleaseFiles", name, None, opts)
        self.release = rel
        self.source = artifacts.source_of(rel.component)
        self.files: list[ReleaseFile] = []
        self.bundles: dict[str, HostBundle] = {}   # per host whose `HostReleases` copy carries these files
        if self.source == "package":
            if not rel.packages:
                raise ConfigError([f"kube-hardway:artifacts.source: no distribution package provides "
                                   f"{rel.component}; set artifacts.sources.{rel.component} to download or local"])
            self.identity: pulumi.Output[str] = pulumi.Output.from_input(f"package:{rel.component}")
            self.register_outputs({})
            return
        mirror = artifacts.mirrors.get(rel.component, rel.default_base)
        for asset in rel.assets:
            # the stack's own sum wins: it is how a user vouches for a file they rebuilt
            expected = artifacts.checksums.get(asset.filename) or asset.sha256 or rel.pinned(asset)
            values = {"filename": asset.filename, "component": rel.component, "version": rel.version,
                      "expected": expected or "", "sums_url": "", "url": "", "size": ""}
            if self.source == "local":
                path = _local_path(rel, asset, artifacts)
                expected = expected or _sum_beside(path)
                values.update(expected=expected or "", src=str(path))
                if not expected:
                    pulumi.log.warn(f"kube-hardway:artifacts.dir: no sha256 is known for {path} "
                                    f"(versions.{rel.component}={rel.version} is not pinned, and there is no "
                                    f"SHA256SUMS beside it); it is copied unverified — set "
                                    f"artifacts.checksums.{asset.filename}")
                    stat = path.stat()  # a changed file must be checked (and copied) again
                    values["size"] = f"{stat.st_size}-{stat.st_mtime_ns}"
            else:
                path = Path(artifacts.dir) / rel.component / rel.version / rel.arch / asset.filename
                values.update(src=str(path), url=f"{mirror}/{asset.url_path}")
                if not expected and asset.sums_path is not None:
                    values["sums_url"] = f"{mirror}/{asset.sums_path}"
                    pulumi.log.warn(
                        f"kube-hardway:versions.{rel.component}: {rel.version} has no pinned sha256 for "
                        f"{asset.filename}; `pulumi up` will trust the sum in {values['sums_url']}, "
                        f"served from where the file is — pin it with artifacts.checksums.{asset.filename}")
                elif not expected:
                    # Upstream publishes no sums (flannel, Docker, cri-dockerd): trust on first use.
                    # The sum of the first download is kept in the state and every host's copy is
                    # checked against it; the cache is never re-trusted with another file.
                    pulumi.log.warn(
                        f"kube-hardway:artifacts.checksums.{asset.filename}: versions.{rel.component}="
                        f"{rel.version} is not pinned and upstream publishes no sha256 for it; `pulumi up` "
                        f"trusts the file it downloads first and records its sha256 — set it there to "
                        f"verify the download itself")
            # Named without the version, so a version bump updates this step instead of adding one.
            step = local.Command(
                f"{name}-fetch" if len(rel.assets) == 1 else f"{name}-fetch-{asset.filename}",
                create=render("artifacts/fetch-create.sh.j2", **values),
                logging=local.Logging.STDERR,
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(parent=self))
            sha: pulumi.Input[str] = expected or step.stdout
            self.files.append(ReleaseFile(
                asset, str(path), sha,
                step.stdout.apply(functools.partial(_file_asset, str(path)))))
        self.identity = pulumi.Output.all(*[f.sha256 for f in self.files]).apply(" ".join)
        self.register_outputs({})


def provide(component: str, version: str, arches: Iterable[str], artifacts: ArtifactsSpec,
            opts: pulumi.ResourceOptions | None = None, binaries: tuple[str, ...] = (),
            role: str = "") -> dict[str, ReleaseFiles]:
    """The release files of `component`, one set per architecture among `arches`; only those with
    `binaries` when given (a master needs four Kubernetes binaries, a worker two), named by `role`."""
    def files(arch: str) -> Release:
        rel = release(component, version, arch)
        return rel.only(*binaries) if binaries else rel
    name = f"release-{component}-{role}-" if role else f"release-{component}-"
    return {arch: ReleaseFiles(f"{name}{arch}", files(arch), artifacts, opts) for arch in sorted(set(arches))}


_PACKAGE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~%_-]*\.(deb|rpm)")


def distribution_packages(component: str, arches: Iterable[str], artifacts: ArtifactsSpec) -> dict[str, ReleaseFiles]:
    """`component` from the distribution, one set per architecture among `arches`: its packages, or
    for `local` the package files in `<artifacts.dir>/<component>/<arch>/` (hashed here, checked on
    each host)."""
    def files(arch: str) -> Release:
        if artifacts.source_of(component) != "local":
            return distribution_release(component, arch)
        folder = Path(artifacts.dir) / component / arch
        found = sorted(p for p in folder.iterdir() if p.suffix in PACKAGE_FILE_SUFFIXES) if folder.is_dir() else []
        if not found:
            deb, rpm = (" ".join(DISTRIBUTION_PACKAGES[component][pm]) for pm in ("apt-get", "dnf"))
            raise ConfigError([
                f"kube-hardway:artifacts.sources.{component}: local needs the distribution's package files, "
                f"with every dependency the hosts lack, in {folder} (none there); on a machine like the "
                f"hosts, with their repository: `mkdir -p {folder}/partial; apt-get install --download-only "
                f"-o Dir::Cache::archives={folder} {deb}` or `dnf download --resolve --destdir {folder} {rpm}`; "
                "or set it to package"])
        unsafe = [p.name for p in found if not _PACKAGE_FILE.fullmatch(p.name)]
        if unsafe:   # the names reach a root shell on every host
            raise ConfigError([f"kube-hardway:artifacts.sources.{component}: {folder} has files not named as a "
                               f"package manager names them (name_version_arch.deb, name-version-release.arch.rpm): "
                               f"{', '.join(map(repr, unsafe))}; rename or remove them"])
        return distribution_release(component, arch, tuple((p.name, file_sha256(p)) for p in found))
    return {arch: ReleaseFiles(f"release-{component}-{arch}", files(arch), artifacts) for arch in sorted(set(arches))}


@dataclass(frozen=True)
class HostBundle:
    """One host's copy of several releases' files, into `remote_dir` (see `HostReleases`)."""
    copy: pulumi.Resource
    copy_name: str
    remote_dir: str


# where a host's folded release files land: a fixed name, so the paths an install step reads do not
# change with another release's version
BUNDLE_DIR = "node-releases"


class HostReleases(pulumi.ComponentResource):
    """Each host's release files in ONE copy: a directory, built on the admin machine per
    architecture (hard links to the fetched files, and a SHA256SUMS of them), copied by one
    CopyToRemote (a `FileArchive`, which pulumi-command copies recursively) to
    `<STAGING_DIR>/node-releases/`. It saves a resource and an SFTP session per release and host.

    A release's files reach a host through its copy here when `releases(host)` lists it; its
    `StagedRelease` then installs them from there (it looks for the copy in `ReleaseFiles.bundles`,
    so this comes before the components that stage those releases). Any release file that changes copies the
    directory again; what is already installed of it (its sum in a marker) is removed by the next
    install step on the host, so the copy leaves nothing behind.

    The directory is `<cache>/bundles/<project>-<stack>/<arch>/node-releases`, the cache being
    `artifacts.dir` for `download` (so the links are on the files' file system) and
    ~/.cache/kube-hardway otherwise; destroy keeps it, as it keeps the download cache."""

    def __init__(self, name: str, hosts: Sequence[HostSpec], ssh: SshSpec, artifacts: ArtifactsSpec,
                 releases: Callable[[HostSpec], Sequence[ReleaseFiles]], opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:artifacts:HostReleases", name, None, opts)
        self.cache = artifacts.dir if artifacts.source == "download" else os.path.expanduser(DEFAULT_DOWNLOAD_CACHE)
        built: dict[str, tuple[pulumi.Output[pulumi.FileArchive], pulumi.Output[list[str]]]] = {}
        for host in hosts:
            carried = [r for r in releases(host) if r.files and not r.release.package_files]
            if len(carried) < 2:
                continue
            if host.arch not in built:
                built[host.arch] = self._build(f"{name}-{host.arch}", host.arch, carried)
            archive, sums = built[host.arch]
            copy_name = f"{name}-{host.name}"
            copy = remote.CopyToRemote(copy_name, connection=connection(host, ssh), source=archive,
                                       remote_path=STAGING_DIR, triggers=sums,
                                       opts=pulumi.ResourceOptions(parent=self))
            for r in carried:
                r.bundles[host.name] = HostBundle(copy, copy_name, f"{STAGING_DIR}/{BUNDLE_DIR}")
        self.register_outputs({})

    def _build(self, name: str, arch: str, carried: Sequence[ReleaseFiles],
               ) -> tuple[pulumi.Output[pulumi.FileArchive], pulumi.Output[list[str]]]:
        files = [f for r in carried for f in r.files]
        local_dir = os.path.join(self.cache, "bundles",
                                 f"{pulumi.get_project()}-{pulumi.get_stack()}", arch, BUNDLE_DIR)
        sums = pulumi.Output.all(*[f.sha256 for f in files])
        # after every fetch: its file is there, and its sum known
        fetched = pulumi.Output.all(sums, *[f.ready for f in files]).apply(lambda v: v[0])
        build = local.Command(
            name, create=fetched.apply(lambda s: render(
                "artifacts/bundle-create.sh.j2", dir=local_dir,
                files=[{"path": f.path, "name": f.asset.filename, "sha256": h} for f, h in zip(files, s, strict=True)])),
            logging=local.Logging.STDERR, add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self))
        return build.stdout.apply(lambda _: pulumi.FileArchive(local_dir)), sums


class StagedRelease:
    """A release's files copied to one host (one CopyToRemote each, parented to `parent`, unless
    the host's `HostReleases` copy carries them) and the `step` that installs them, for a
    `HostService` to run in its own session. `identity` (the files' sums) belongs in what a service
    reads, so a new binary restarts it."""

    def __init__(self, name: str, host: HostSpec, ssh: SshSpec, files: ReleaseFiles, parent: pulumi.Resource,
                 moved_from: pulumi.Resource | None = None):
        """`moved_from`: the component the copies shipped under, with the same names."""
        rel = files.release
        self.bin_dir = rel.install_dir or bin_dir(files.source)   # where its binaries are on the host
        self.source = files.source
        self.release_install_dir = rel.install_dir
        self.package_binaries = rel.package_binaries
        self.identity = files.identity
        self.copies: list[pulumi.Resource] = []
        values = {"release": rel, "state_dir": STATE_DIR, "staging_dir": STAGING_DIR, "bin_dir": self.bin_dir,
                  "host": host.name, "bundle_dir": ""}
        if files.source == "package":
            self.step = HostStep(render("artifacts/packages-create.sh.j2", **values),
                                 render("artifacts/packages-delete.sh.j2", **values))
            return
        bundle = files.bundles.get(host.name)
        if bundle:
            values["bundle_dir"] = bundle.remote_dir
            self.copies.append(bundle.copy)
            copy_names = [bundle.copy_name] * len(files.files)
            remotes = [f"{bundle.remote_dir}/{f.asset.filename}" for f in files.files]
        else:
            copy_names = [f"{name}-copy" + ("" if len(files.files) == 1 else f"-{f.asset.filename}") for f in files.files]
            remotes = [_remote_path(f.asset) for f in files.files]
            for f, copy_name, remote_path in zip(files.files, copy_names, remotes, strict=True):
                # A new release file is copied again (CopyToRemote has no delete, so replacing it is
                # harmless). The install step picks it up as an update of whatever runs it.
                self.copies.append(remote.CopyToRemote(
                    copy_name, connection=connection(host, ssh),
                    source=f.ready, remote_path=remote_path, triggers=[f.sha256],
                    opts=pulumi.ResourceOptions(parent=parent, aliases=[pulumi.Alias(parent=moved_from)] if moved_from else None)))
        assets = pulumi.Output.all(*[f.sha256 for f in files.files]).apply(lambda sums: [
            {"asset": f.asset, "sha256": s, "remote": r, "copy_resource": c}
            for f, s, r, c in zip(files.files, sums, remotes, copy_names, strict=True)])
        if rel.package_files:
            self.step = HostStep(assets.apply(lambda a: render("artifacts/packages-create.sh.j2", files=a, **values)),
                                 render("artifacts/packages-delete.sh.j2", **values))
            return
        self.step = HostStep(
            assets.apply(lambda a: render("artifacts/release-create.sh.j2", assets=a, **values)),
            render("artifacts/release-delete.sh.j2", remotes=remotes, **values))

    def executable(self, binary: str) -> str:
        """What a unit's ExecStart= names: the installed path, or for a distribution package the bare
        name, which systemd (>= 239) looks up in its own search path (dockerd is in /usr/sbin on
        Debian, /usr/bin on Fedora)."""
        if self.source == "package" and not self.release_install_dir:
            return self.package_binaries.get(binary, binary)
        return f"{self.bin_dir}/{binary}"


def copy_image_tarballs(name: str, host: HostSpec, ssh: SshSpec, filenames: Iterable[str], images_dir: str,
                        parent: pulumi.Resource, prefix: str = "", moved_from: tuple[str, str] | None = None,
                        ) -> tuple[list[dict[str, str]], list[pulumi.Resource]]:
    """`docker save` tarballs from `images_dir` copied to `<STAGING_DIR>/<prefix><file>` on `host` (again
    when a file changes): what a load or push script needs to know of each, and the copies. A copy
    that shipped under the component `moved_from` (name, type), with the same name, keeps its state."""
    images: list[dict[str, str]] = []
    copies: list[pulumi.Resource] = []
    for filename in filenames:
        path = Path(images_dir) / filename
        image = {"name": filename, "sha256": file_sha256(path), "remote": f"{STAGING_DIR}/{prefix}{filename}"}
        images.append(image)
        copies.append(remote.CopyToRemote(
            f"{name}-{filename}", connection=connection(host, ssh), source=pulumi.FileAsset(str(path)),
            remote_path=image["remote"], triggers=[image["sha256"]], opts=pulumi.ResourceOptions(
                parent=parent, aliases=[links.moved_from(f"{name}-{filename}", moved_from)] if moved_from else None)))
    return images, copies


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path | str) -> str:
    """sha256 of a local file, hashed once per run (keyed by size and mtime, so a changed file is
    hashed again): an image tarball copied to 500 hosts is read once."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def _file_asset(path: str, _fetched_sha256: str) -> pulumi.FileAsset:
    return pulumi.FileAsset(path)


def _remote_path(asset: Asset) -> str:
    return f"{STAGING_DIR}/{asset.filename}"

