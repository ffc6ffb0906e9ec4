"""Where release files come from: planned fetch steps, pinned sums, one fetch per file, previews
without network or files, and a new release restarting what runs it."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import tarfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from components.checksums import PINNED_SHA256
from components.releases import DEFAULT_VERSIONS, release
from components.spec import ConfigError
from components.templates import render
from engine.harness import Engine, local_run
from engine.mocks import RecordingMocks, Registration, has_unknown
from engine.runtime import run_program, stack_config
from tests.unit.conftest import FakeHosts
from tests.unit.test_network import written
from tests.unit.test_program import UNPINNED
from tests.unit.test_spec import base

LOCAL = "command:local:Command"
COPY = "command:remote:CopyToRemote"
VERSION = "3.6.99"  # a version kube-hardway does not pin
ASSET = f"etcd-v{VERSION}-linux-amd64.tar.gz"
ETCD_UNIT = "/etc/systemd/system/etcd.service"


def make_release(directory: Path, corrupt_sums: bool = False, version: str = VERSION) -> str:
    """An upstream-shaped etcd release: the tarball and a SHA256SUMS beside it; returns its sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    asset = f"etcd-v{version}-linux-amd64.tar.gz"
    stem = asset.removesuffix(".tar.gz")
    src = directory / "src" / stem
    src.mkdir(parents=True)
    for binary in ("etcd", "etcdctl", "etcdutl"):
        (src / binary).write_text(f"#!/bin/sh\necho {binary} {version}\n")
    with tarfile.open(directory / asset, "w:gz") as tar:
        tar.add(src, arcname=stem)
    digest = hashlib.sha256((directory / asset).read_bytes()).hexdigest()
    listed = "0" * 64 if corrupt_sums else digest
    (directory / "SHA256SUMS").write_text(f"{'1' * 64}  etcd-v{version}-darwin-arm64.zip\n{listed}  {asset}\n")
    return digest


def config(version: str = VERSION, **artifacts_cfg: Any) -> dict[str, Any]:
    """etcd's artifacts as given; flannel, cri-dockerd and Kubernetes are downloaded, Docker a package."""
    cfg = base()
    cfg["artifacts"] = {"sources": {"docker": "package", "flannel": "download", "kubernetes": "download",
                                    "criDockerd": "download"}, **artifacts_cfg}
    cfg["versions"] = {"etcd": version}
    return cfg


def fetch_steps(mocks: RecordingMocks, component: str = "etcd") -> list[Registration]:
    return [r for r in mocks.of_type(LOCAL) if r.name.startswith(f"release-{component}-")]


def etcd_copies(mocks: RecordingMocks) -> list[Registration]:
    return [r for r in mocks.of_type(COPY) if r.name.startswith("etcd-")]


def run_step(step: Registration) -> tuple[int, str, str]:
    """Run a planned admin-side step the way pulumi-command's local provider would."""
    return local_run(step.inputs, step.inputs["create"], None)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network I/O while planning")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# Default release files whose sums no stored upstream source lists yet (components/checksums.py
# says why). This list must stay exact: pinning one of them fails the test until it is removed.
NOT_YET_PINNED = {"kubernetes", "flannel", "docker", "criDockerd", "registry"}


def test_every_default_release_file_is_pinned_per_architecture() -> None:
    for component, version in DEFAULT_VERSIONS.items():
        for arch in ("amd64", "arm64"):
            rel = release(component, version, arch)
            pinned = [rel.pinned(asset) for asset in rel.assets]
            if component in NOT_YET_PINNED:
                assert pinned == [None] * len(rel.assets), f"{component} is pinned now: drop it from NOT_YET_PINNED"
                continue
            for asset, digest in zip(rel.assets, pinned, strict=True):
                assert digest and len(digest) == 64 and int(digest, 16) >= 0, f"{component} {version} {arch} {asset.filename}"
    # and nothing is pinned that the program would never ask for
    for component, versions in PINNED_SHA256.items():
        for version, arches in versions.items():
            for arch, files in arches.items():
                assert set(files) == {a.filename for a in release(component, version, arch).assets}, (component, version, arch)


def test_the_stack_sum_overrides_the_pin_for_a_rebuilt_file(tmp_path: Path) -> None:
    rebuilt = "12" * 32
    mocks = RecordingMocks(preview=True)
    run_program(config("3.6.14", source="download", dir=str(tmp_path),
                       checksums={"etcd-v3.6.14-linux-amd64.tar.gz": rebuilt}), mocks, preview=True)
    assert f"want={rebuilt}\n" in fetch_steps(mocks)[0].inputs["create"]


def test_preview_with_default_artifacts_needs_no_network_and_no_file(no_network: None, tmp_path: Path) -> None:
    cfg = stack_config("dev")
    cfg["artifacts"] = {"source": "download", "dir": str(tmp_path / "empty-cache")}
    mocks = RecordingMocks(preview=True)
    run = run_program(cfg, mocks, preview=True, stack="dev")
    # only the releases upstream publishes no sums for, each naming the key that pins it
    assert sorted(w.split(":")[1].split(" ")[0] for w in run.warnings) == UNPINNED
    assert not (tmp_path / "empty-cache").exists()
    # the download is a planned step, once per file, however many hosts install it
    steps = {s.name: s for s in mocks.of_type(LOCAL)}
    assert sorted(steps) == ["node-releases-amd64",   # the directory a worker's one copy takes
                             "release-criDockerd-amd64-fetch", "release-docker-amd64-fetch", "release-etcd-amd64-fetch",
                             "release-flannel-amd64-fetch",
                             *[f"release-kubernetes-control-plane-amd64-fetch-{b}" for b in
                               ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")],
                             "release-kubernetes-kube-proxy-amd64-fetch",
                             "release-kubernetes-kubelet-amd64-fetch"]
    etcd_step = steps["release-etcd-amd64-fetch"]
    assert "https://github.com/etcd-io/etcd/releases/download/v3.6.14/etcd-v3.6.14-linux-amd64.tar.gz" in etcd_step.inputs["create"]
    pinned = release("etcd", "3.6.14").pinned(release("etcd", "3.6.14").assets[0])
    assert f"want={pinned}\n" in etcd_step.inputs["create"]
    copies = mocks.of_type(COPY)
    # etcd's, and one of flannel, Docker, cri-dockerd, kubelet and kube-proxy, on each of 3 hosts, and
    # 4 Kubernetes binaries on the master
    assert len(copies) == 3 * 2 + 4 and all(has_unknown(c.inputs["source"]) for c in copies)  # known once the fetch ran


def test_download_fetches_once_into_the_cache_and_checks_the_pinned_sum(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    digest = make_release(mirror / f"v{VERSION}")
    cache = tmp_path / "cache"
    mocks = RecordingMocks()
    run_program(config(source="download", dir=str(cache), mirrors={"etcd": f"file://{mirror}"},
                       checksums={ASSET: digest}), mocks)
    (step,) = fetch_steps(mocks)
    code, out, err = run_step(step)
    assert (code, out.strip()) == (0, digest), err
    cached = cache / "etcd" / VERSION / "amd64" / ASSET
    assert cached.read_bytes() == (mirror / f"v{VERSION}" / ASSET).read_bytes()
    (mirror / f"v{VERSION}" / ASSET).unlink()  # a verified cached file is not fetched again
    assert run_step(step)[:2] == (0, digest + "\n")
    member = mocks.named("etcd-node2")
    assert f"sha256_check {digest} /var/lib/kube-hardway/staging/{ASSET}" in member.inputs["create"]
    assert "/usr/local/bin/etcdctl" in member.inputs["create"]
    assert "/usr/local/bin/etcd " in member.inputs["delete"]
    assert {c.inputs["remotePath"] for c in etcd_copies(mocks)} == {f"/var/lib/kube-hardway/staging/{ASSET}"}


def test_download_refuses_a_file_that_does_not_match_its_sum(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    make_release(mirror / f"v{VERSION}")
    mocks = RecordingMocks()
    run_program(config(source="download", dir=str(tmp_path / "cache"), mirrors={"etcd": f"file://{mirror}"},
                       checksums={ASSET: "ab" * 32}), mocks)
    code, _, err = run_step(fetch_steps(mocks)[0])
    assert code != 0 and "serves a different file" in err and "artifacts.mirrors.etcd" in err, err
    assert list((tmp_path / "cache" / "etcd" / VERSION / "amd64").iterdir()) == []


def test_unpinned_version_trusts_upstream_sums_at_up_with_a_warning(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    digest = make_release(mirror / f"v{VERSION}")
    mocks = RecordingMocks()
    run = run_program(config(source="download", dir=str(tmp_path / "cache"), mirrors={"etcd": f"file://{mirror}"}), mocks)
    assert any("versions.etcd" in w and "no pinned sha256" in w and f"artifacts.checksums.{ASSET}" in w
               for w in run.warnings), run.warnings
    code, out, err = run_step(fetch_steps(mocks)[0])
    assert (code, out.strip()) == (0, digest), err
    assert "pin it with artifacts.checksums" in err


def test_unreachable_mirror_is_not_a_config_error_but_names_the_key(tmp_path: Path) -> None:
    mocks = RecordingMocks()
    run_program(config(source="download", dir=str(tmp_path), mirrors={"etcd": f"file://{tmp_path}/none"},
                       checksums={ASSET: "ab" * 32}), mocks)  # planning succeeds: nothing was fetched
    code, _, err = run_step(fetch_steps(mocks)[0])
    assert code != 0 and "cannot fetch" in err and "artifacts.mirrors.etcd" in err, err


def test_local_checks_the_bundle_file_once_and_copies_it_to_every_member(tmp_path: Path) -> None:
    digest = make_release(tmp_path)
    mocks = RecordingMocks()
    run = run_program(config(source="local", dir=str(tmp_path)), mocks)
    # the SHA256SUMS beside the file vouches for it (only the downloaded releases warn)
    assert [w for w in run.warnings if not any(c in w for c in ("flannel", "versions.kubernetes", "cri-dockerd"))] == []
    (step,) = fetch_steps(mocks)
    assert run_step(step)[:2] == (0, digest + "\n")
    copies = etcd_copies(mocks)
    assert sorted(c.inputs["connection"]["host"] for c in copies) == ["192.168.1.200", "192.168.1.201", "192.168.1.202"]
    assert "ExecStart=/usr/local/bin/etcd" in written(mocks.named("etcd-node1"), ETCD_UNIT)


def test_local_file_that_does_not_match_its_sums_fails_the_check(tmp_path: Path) -> None:
    make_release(tmp_path, corrupt_sums=True)
    mocks = RecordingMocks()
    run_program(config(source="local", dir=str(tmp_path)), mocks)
    code, _, err = run_step(fetch_steps(mocks)[0])
    assert code != 0 and "corrupt or not the release it claims to be" in err, err


def test_local_missing_file_names_artifacts_dir_and_the_file(tmp_path: Path) -> None:
    mocks = RecordingMocks()
    with pytest.raises(ConfigError, match=f"kube-hardway:artifacts.dir: .* has no {ASSET}"):
        run_program(config(source="local", dir=str(tmp_path)), mocks)
    assert not [r for r in mocks.registrations if r.typ.startswith("command:")]


def test_unpinned_release_without_upstream_sums_is_trusted_on_first_download(tmp_path: Path) -> None:
    """flannel, Docker and cri-dockerd publish no sums: the preview warns and names the key that
    pins the file; `up` records the sha256 of the first download, which every host copy checks."""
    from components.artifacts import ReleaseFiles
    from components.spec import parse_spec

    mirror = tmp_path / "mirror" / "x86_64"
    mirror.mkdir(parents=True)
    (mirror / "docker-1.2.3.tgz").write_bytes(b"not really docker")
    digest = hashlib.sha256(b"not really docker").hexdigest()
    cfg = config(source="download", sources={}, dir=str(tmp_path / "cache"), mirrors={"docker": f"file://{mirror.parent}"})
    mocks = RecordingMocks()

    def plan() -> None:
        ReleaseFiles("release-docker-amd64", release("docker", "1.2.3"), parse_spec(cfg).artifacts)

    run = run_program(cfg, mocks, program=plan)
    assert any("artifacts.checksums.docker-1.2.3.tgz" in w and "publishes no sha256" in w for w in run.warnings)
    code, out, err = run_step(fetch_steps(mocks, "docker")[0])
    assert (code, out.strip()) == (0, digest), err
    assert "trusting this download" in err
    assert (tmp_path / "cache/docker/1.2.3/amd64/docker-1.2.3.tgz").read_bytes() == b"not really docker"


def test_package_installs_distribution_packages_and_copies_nothing() -> None:
    mocks = RecordingMocks()
    run_program(config(source="package"), mocks)
    assert etcd_copies(mocks) == [] and fetch_steps(mocks) == []
    member = mocks.named("etcd-node1")
    assert "etcd-server etcd-client" in member.inputs["create"]
    assert "purge" in member.inputs["delete"]
    assert "ExecStart=/usr/bin/etcd" in written(member, ETCD_UNIT)


def test_one_component_can_come_from_another_source() -> None:
    cfg = config(DEFAULT_VERSIONS["etcd"], source="download", sources={"etcd": "package"})
    mocks = RecordingMocks()
    run_program(cfg, mocks)
    assert fetch_steps(mocks) == [] and etcd_copies(mocks) == []
    assert "etcd-server etcd-client" in mocks.named("etcd-node1").inputs["create"]
    assert "ExecStart=/usr/bin/etcd" in written(mocks.named("etcd-node1"), ETCD_UNIT)


def test_each_architecture_gets_its_own_release_files(tmp_path: Path) -> None:
    cfg = config(DEFAULT_VERSIONS["etcd"], source="download", dir=str(tmp_path))
    cfg["hosts"][2]["arch"] = "arm64"
    mocks = RecordingMocks(preview=True)
    run_program(cfg, mocks, preview=True)
    assert sorted(s.name for s in fetch_steps(mocks)) == [
        "release-etcd-amd64-fetch", "release-etcd-arm64-fetch"]
    assert mocks.named("etcd-binaries-node3-copy").inputs["remotePath"] == "/var/lib/kube-hardway/staging/etcd-v3.6.14-linux-arm64.tar.gz"
    assert "/var/lib/kube-hardway/staging/etcd-v3.6.14-linux-arm64.tar.gz" in mocks.named("etcd-node3").inputs["delete"]


def test_a_new_release_restarts_the_service_that_runs_it(tmp_path: Path, hosts: FakeHosts) -> None:
    """Through the executing harness (state kept between runs, fake SSH, the fetch step for real
    against a file:// mirror): bumping versions.etcd alone copies the new release and updates every
    member (whose script installs it and restarts etcd through the rolling-restart helper)."""
    mirror = tmp_path / "mirror"
    for version in ("3.6.98", "3.6.99"):
        make_release(mirror / f"v{version}", version=version)
    engine = Engine(tmp_path / "state.json")

    flannel = tmp_path / "flannel" / "v0.28.9"
    flannel.mkdir(parents=True)
    (flannel / "flannel-v0.28.9-linux-amd64.tar.gz").write_bytes(b"flannel")
    cri_dockerd = tmp_path / "cri-dockerd" / "v0.4.3"
    cri_dockerd.mkdir(parents=True)
    (cri_dockerd / "cri-dockerd-0.4.3.amd64.tgz").write_bytes(b"cri-dockerd")
    kubernetes = tmp_path / "kubernetes" / "v1.37.0" / "bin/linux/amd64"
    kubernetes.mkdir(parents=True)
    for binary in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy"):
        (kubernetes / binary).write_bytes(binary.encode())
        (kubernetes / f"{binary}.sha256").write_text(hashlib.sha256(binary.encode()).hexdigest())

    def up(version: str) -> list[str]:
        cfg = config(version, source="download", dir=str(tmp_path / "cache"),
                     mirrors={"etcd": f"file://{mirror}", "flannel": f"file://{flannel.parent}",
                              "kubernetes": f"file://{tmp_path / 'kubernetes'}", "criDockerd": f"file://{cri_dockerd.parent}"})
        return sorted(f"{op.action} {op.name}" for op in engine.up(cfg).ops)

    up("3.6.98")
    assert up("3.6.98") == []
    bumped = up("3.6.99")
    etcd = {op for op in bumped if op.split()[1].startswith("etcd-")}
    assert etcd == {*(f"update etcd-{n}" for n in ("node1", "node2", "node3")),
                    *(f"copy etcd-binaries-{n}-copy" for n in ("node1", "node2", "node3")), "create etcd-health"}, etcd
    assert up("3.6.99") == []


def two_masters(**artifacts_cfg: Any) -> dict[str, Any]:
    cfg = config(**artifacts_cfg)
    cfg["hosts"][1]["roles"] = ["etcd", "master", "node"]
    return cfg


def proxy_from_files(bundle: Path) -> dict[str, Any]:
    """Two masters, the API server proxy from the package files in `bundle` (the rest as the tests need)."""
    return two_masters(source="local", dir=str(bundle), sources={
        "docker": "package", "flannel": "download", "kubernetes": "download", "criDockerd": "download",
        "apiServerProxy": "local"})


def test_api_server_proxy_package_files_are_copied_checked_and_installed_with_nothing_fetched(tmp_path: Path) -> None:
    make_release(tmp_path)
    files = tmp_path / "apiServerProxy" / "amd64"
    files.mkdir(parents=True)
    names = ["haproxy_2.6.12-1+deb12u3_amd64.deb", "liblua5.3-0_5.3.6-2_amd64.deb"]
    for name in names:
        (files / name).write_bytes(name.encode())
    (files / "README").write_text("not a package")
    mocks = RecordingMocks()
    run_program(proxy_from_files(tmp_path), mocks)
    copies = sorted(r.name for r in mocks.of_type(COPY) if "apiserver-proxy" in r.name)
    assert copies == sorted(f"node-node{i}-apiserver-proxy-copy-{n}" for i in (1, 2, 3) for n in names)
    proxy = mocks.named("node-node3-apiserver-proxy")
    script = proxy.inputs["create"]
    for name in names:
        assert f"sha256_check {hashlib.sha256(name.encode()).hexdigest()} /var/lib/kube-hardway/staging/{name}" in script
    assert "if ! installed haproxy; then" in script and "if ! installed liblua5.3-0; then" in script
    assert 'apt-get install -y --no-install-recommends -o APT::Sandbox::User=root "$@"' in script
    assert '-o Dir::Etc::SourceList="$offline/sources.list"' in script   # no repository: nothing fetched
    assert "apt-get update" not in script and "README" not in script
    copy_urns = {mocks.named(f"node-node3-apiserver-proxy-copy-{n}").urn for n in names}
    assert copy_urns <= set(proxy.dependencies)


def test_api_server_proxy_from_files_without_files_names_the_key_and_how(tmp_path: Path) -> None:
    make_release(tmp_path)
    mocks = RecordingMocks()
    with pytest.raises(ConfigError, match=r"artifacts.sources.apiServerProxy: local needs .*apiServerProxy/amd64 "
                                          r"\(none there\).*apt-get install --download-only"):
        run_program(proxy_from_files(tmp_path), mocks)
    assert not [r for r in mocks.registrations if r.typ.startswith("command:remote:")]   # nothing touched a host


def test_api_server_proxy_takes_only_package_or_local() -> None:
    with pytest.raises(ConfigError, match=r"artifacts.sources.apiServerProxy: unknown source 'download'; "
                                          r"valid sources: package, local"):
        run_program(two_masters(sources={"apiServerProxy": "download"}), RecordingMocks())


def test_api_server_proxy_package_file_names_that_would_reach_a_shell_are_refused(tmp_path: Path) -> None:
    make_release(tmp_path)
    files = tmp_path / "apiServerProxy" / "amd64"
    files.mkdir(parents=True)
    (files / "haproxy_2.6_amd64.deb").write_bytes(b"ok")
    (files / "x$(touch PWN)_1_amd64.deb").write_bytes(b"no")
    mocks = RecordingMocks()
    with pytest.raises(ConfigError, match=r"artifacts.sources.apiServerProxy: .* has files not named .*"
                                          r"'x\$\(touch PWN\)_1_amd64.deb'; rename or remove them"):
        run_program(proxy_from_files(tmp_path), mocks)
    assert not [r for r in mocks.registrations if r.typ.startswith("command:remote:")]


# what Debian 12's apt-get printed in a lab machine for haproxy's file alone, with no repository
UNMET = """Some packages could not be installed. This may mean that you have
requested an impossible situation or if you are using the unstable
distribution that some required packages have not yet been created
or been moved out of Incoming.
The following information may help to resolve the situation:

The following packages have unmet dependencies:
 haproxy : Depends: liblua5.3-0 but it is not installable
           Depends: libopentracing-c-wrapper0 (>= 1.1.0) but it is not installable
E: Unable to correct problems, you have held broken packages.
"""


@pytest.mark.parametrize("installable", [True, False])
def test_package_files_install_without_a_repository_and_a_dependency_they_lack_is_named(tmp_path: Path,
                                                                                      installable: bool) -> None:
    deb = tmp_path / "haproxy_2.6.12-1+deb12u3_amd64.deb"
    deb.write_bytes(b"a package")
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")           # nothing installed
    # apt as the lab's: given a repository, it would fetch from it; without one, the files or the unmet dependencies
    simulate = "echo 'Inst haproxy (2.6.12-1+deb12u3 local-deb [amd64])'" if installable else \
        f"cat <<'E'\n{UNMET}E\n  exit 100"
    (stub / "apt-get").write_text(
        f"#!/bin/sh\necho \"$*\" >> {tmp_path}/apt.log\n"
        'case "$*" in *Dir::Etc::SourceList=*) ;; *) echo "Ign:1 http://deb.debian.org/debian bookworm/main"; exit 100 ;; esac\n'
        f'case "$*" in *--simulate*) {simulate} ;; esac\n')
    for f in stub.iterdir():
        f.chmod(0o755)
    script = render("artifacts/packages-create.sh.j2", release=SimpleNamespace(component="apiServerProxy", arch="amd64"),
                    files=[{"asset": SimpleNamespace(filename=deb.name, package="haproxy"), "copy_resource": "copy",
                            "sha256": hashlib.sha256(b"a package").hexdigest(), "remote": str(deb)}],
                    state_dir=str(tmp_path / "state"), host="node3", staging_dir="", bin_dir="", bundle_dir="")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                         env={"PATH": f"{stub}:/usr/bin:/bin", "TMPDIR": str(tmp)})
    assert not list(tmp.iterdir())                   # apt's empty source list is gone, whichever way it ended
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert all("Dir::Etc::SourceList=" in c and "Dir::Cache::pkgcache=" in c for c in calls), calls
    if installable:
        assert run.returncode == 0, run.stderr
        assert len(calls) == 2 and (tmp_path / "state" / "packages" / "apiServerProxy").read_text() == "apt-get haproxy\n"
    else:
        assert run.returncode == 1 and len(calls) == 1, run.stderr
        assert ("node3: the package files of apiServerProxy lack what this host has not installed: liblua5.3-0 "
                "libopentracing-c-wrapper0 - add their files to artifacts.dir/apiServerProxy/amd64/") in run.stderr
