"""Every stack value that reaches a shell on a host (or on the admin machine) is refused unless it
is what its key needs, and the error names the key, before any resource exists. Values that pass
render scripts a shell parses as they were written."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.spec import ConfigError, parse_spec
from engine.mocks import RecordingMocks
from engine.runtime import run_program, stack_config
from tests.unit.test_spec import with_

PAYLOADS = ["$(touch${IFS}/tmp/PWN)", "`touch /tmp/PWN`", '";touch /tmp/PWN;"', "'", "a b", ";id", "|id", "&id",
            "\nid", "*", "?", "$HOME", "\\x"]

# key path -> how a hostile payload gets into an otherwise good value
TEXT_KEYS = {
    "kubernetes.apiEndpoint": lambda x: f"https://lb:6443/{x}",
    "registry.cache.upstream": lambda x: f"https://mirror.example{x}",
    "artifacts.mirrors.etcd": lambda x: f"https://mirror.example/etcd{x}",
    "docker.registryMirrors[0]": lambda x: f"https://mirror.example:5000/{x}",
    "etcd.dataDir": lambda x: f"/var/lib/etcd{x}",
    "etcd.backup.dir": lambda x: f"/var/lib/etcd-backup{x}",
    "registry.storageDir": lambda x: f"/srv/registry/{x}",
    "docker.dataRoot": lambda x: f"/data/docker{x}",
    "etcd.extraArgs.heartbeat-interval": lambda x: f"100{x}",
    "network.etcdPrefix": lambda x: f"/kubernetes/network{x}",
    "network.clusterDomain": lambda x: f"cluster.local{x}",
    "images.coredns": lambda x: f"registry.example/coredns:1.0{x}",
    "images.pause": lambda x: f"registry.example/pause{x}:3.10",
    "registry.private.username": lambda x: f"pusher{x}",
    "docker.insecureRegistries[0]": lambda x: f"registry.example:5000{x}",
    "hosts[0].iface": lambda x: f"eth0{x}",
    "hosts[0].user": lambda x: f"admin{x}",
    "ssh.user": lambda x: f"admin{x}",
    "kubernetes.dns.upstream[0]": lambda x: f"10.0.0.53{x}",
    "kubernetes.encryption.keys[0]": lambda x: f"key-1{x}",     # in the encryption check's grep
    "pki.cas.kubernetes[0]": lambda x: f"kubernetes-ca{x}",     # in the CA check's arguments
    "pki.cas.etcd[0]": lambda x: f"etcd-ca-2{x}",
}


def config(key: str, value: str, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """`cfg` (the spec tests' base by default) with `key` set; `x[0]` keys hold a one-item list."""
    listed = key.endswith("[0]") and not key.startswith("hosts")
    cfg = with_(key.removesuffix("[0]") if listed else key, [value] if listed else value) | (
        {k: v for k, v in cfg.items() if k != "hosts"} if cfg else {})
    if key.startswith("registry."):
        cfg["registry"] = {**cfg.get("registry", {}), "hosts": ["node1"]}
    return cfg


def refused(cfg: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as failed:
        parse_spec(cfg)
    return str(failed.value)


@pytest.mark.parametrize("key", sorted(TEXT_KEYS))
def test_a_hostile_value_is_refused_naming_its_key(key: str) -> None:
    for payload in PAYLOADS:
        assert f"kube-hardway:{key}" in refused(config(key, TEXT_KEYS[key](payload))), (key, payload)


@pytest.mark.parametrize(("key", "value"), [
    # the issue's own examples
    ("kubernetes.apiEndpoint", "https://lb:6443/$(touch${IFS}/tmp/PWN)"),
    ("registry.cache.upstream", "https://mirror`id`.example"),
    ("artifacts.mirrors.flannel", 'https://mirror.example/"x'),
    ("etcd.dataDir", "/var/lib/etcd$(id)"),
    ("etcd.dataDir", "/var/lib/*"),
    ("etcd.dataDir", "/usr"),
    ("etcd.dataDir", "/home"),
    ("etcd.dataDir", "/home/alice"),
    ("etcd.dataDir", "/var/lib"),
    ("etcd.dataDir", "/var/lib/docker"),
    ("etcd.dataDir", "/tmp/etcd"),
    ("etcd.dataDir", "var/lib/etcd"),
    ("registry.storageDir", "/var/lib/kh/../../.."),
    ("registry.storageDir", "/var/lib/kh/./x"),
    ("registry.storageDir", "/var//lib/kh"),
    ("registry.storageDir", "/"),
    ("docker.dataRoot", "/etc"),
    ("kubernetes.apiEndpoint", "https://user:secret@lb:6443"),
    ("kubernetes.apiEndpoint", "https://lb:6443/?x=1"),
    ("kubernetes.apiEndpoint", "http://lb:6443"),
])
def test_what_would_reach_a_root_shell_or_a_destroy_is_refused(key: str, value: str) -> None:
    assert f"kube-hardway:{key}" in refused(config(key, value))


@pytest.mark.parametrize(("key", "value"), [
    ("kubernetes.apiEndpoint", "https://[fd00::1]:6443"),
    ("kubernetes.apiEndpoint", "https://k8s-api.example.com:443/prefix"),
    ("etcd.dataDir", "/data/etcd"),
    ("etcd.dataDir", "/var/lib/etcd/"),
    ("registry.storageDir", "/srv/registry"),
    ("docker.dataRoot", "/var/lib/docker"),
    ("artifacts.mirrors.etcd", "file:///srv/mirror/etcd"),
])
def test_good_values_pass_and_every_script_still_parses(key: str, value: str) -> None:
    cfg = config(key, value, stack_config("dev"))
    spec = parse_spec(cfg)
    assert spec is not None
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    for reg in mocks.registrations:
        for action in ("create", "delete"):
            script = reg.inputs.get(action)
            if isinstance(script, str) and script:
                parsed = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
                assert parsed.returncode == 0, (reg.name, action, parsed.stderr)


def test_etcd_adopts_no_foreign_data_and_its_delete_removes_only_the_member_it_ran(tmp_path: Path) -> None:
    """A data dir that already holds files (a distribution's etcd member, anything) is refused
    before anything is touched; an empty one that was there first (Debian's /var/lib/etcd) is used,
    and destroy leaves it as it was. Destroy removes the member etcd wrote, and a data dir it made."""
    from components.templates import render

    state, data = tmp_path / "state", tmp_path / "etcd"
    values = {"state_dir": str(state), "data_dir": str(data), "retired_manifest": "etcd-files-n1.list"}
    script = {a: render(f"etcd/account-{a}.sh.j2", **values) for a in ("create", "delete")}
    (data / "member" / "wal").mkdir(parents=True)
    create = subprocess.run(["sh", "-c", script["create"]], capture_output=True, text=True)
    assert create.returncode == 1 and f"etcd.dataDir {data} already holds files" in create.stderr, create.stderr
    assert "member" in create.stderr and not state.exists()
    # what the create records of a data dir that was there first (the rest of it needs a real etcd user)
    (data / "member" / "wal").rmdir()
    (data / "member").rmdir()
    data.chmod(0o750)
    head = script["create"][:script["create"].index("if ! getent")]
    assert subprocess.run(["sh", "-c", head]).returncode == 0
    assert (state / "etcd-data-dir-existed").read_text().split()[1] == "750"
    (data / "member").mkdir()                                    # etcd ran; then destroy:
    data.chmod(0o700)
    assert subprocess.run(["sh", "-c", script["delete"]]).returncode == 0
    assert data.is_dir() and not list(data.iterdir()) and oct(data.stat().st_mode & 0o777) == "0o750"
    # a data dir the program made goes with the member
    (data / "member").mkdir()
    assert subprocess.run(["sh", "-c", script["delete"]]).returncode == 0
    assert not data.exists()
