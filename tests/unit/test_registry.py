"""The registry section and component under recording mocks: what the config accepts, what each
registry runs with, what every Docker is told, and that the login stays secret."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.spec import ConfigError, parse_spec
from engine.mocks import RecordingMocks
from engine.runtime import run_program, stack_config
from tests.unit.test_network import written


def with_registry(tmp_path: Path, **registry: Any) -> dict[str, Any]:
    (tmp_path / "app.tar").write_bytes(b"image")
    cfg = stack_config("dev")
    cfg["artifacts"] = {"dir": str(tmp_path)}
    cfg["registry"] = {"hosts": ["master"], **registry}
    return cfg


def problems(cfg: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        parse_spec(cfg)
    return failed.value.problems


def planned(cfg: dict[str, Any]) -> tuple[RecordingMocks, dict[str, Any]]:
    mocks = RecordingMocks()
    run = run_program(cfg, mocks, stack="dev")
    return mocks, run.outputs


def test_no_registry_section_means_no_registry() -> None:
    spec = parse_spec(stack_config("dev"))
    assert not spec.registry.enabled
    mocks, outputs = planned(stack_config("dev"))
    assert "registry" not in outputs and not [r for r in mocks.registrations if "registry" in r.name]


def test_hosts_are_a_role_or_names(tmp_path: Path) -> None:
    assert parse_spec(with_registry(tmp_path)).registry.hosts == ("node1",)
    assert parse_spec(with_registry(tmp_path, hosts=["node3", "node2"])).registry.hosts == ("node3", "node2")
    assert parse_spec(with_registry(tmp_path, hosts="etcd")).registry.hosts == ("node1", "node2", "node3")


def test_bad_registry_settings_name_the_key_and_the_fix(tmp_path: Path) -> None:
    found = problems(with_registry(tmp_path, hosts=["node9"], cache={"port": 5000, "upstream": "registry-1.docker.io"},
                                   storageDir="/var", seedImages=["missing.tar"], keepStorage="yes"))
    text = "\n".join(found)
    for key in ("registry.hosts[0]", "registry.cache.port", "registry.cache.upstream", "registry.storageDir",
                "registry.seedImages[0]", "registry.keepStorage"):
        assert f"kube-hardway:{key}:" in text, key
    off = problems(with_registry(tmp_path, private={"enabled": False}, cache={"enabled": False}))
    assert any("remove the registry section" in p for p in off)
    seeds = problems(with_registry(tmp_path, private={"enabled": False}, seedImages=["app.tar"]))
    assert any("registry.private.enabled: true" in p for p in seeds)
    same = problems(with_registry(tmp_path, private={"pushPort": 5001}))
    assert any(p.startswith("kube-hardway:registry.private.pushPort: 5001 is taken") for p in same), same


def test_each_role_runs_its_own_config_port_and_storage_over_tls(tmp_path: Path) -> None:
    mocks, _ = planned(with_registry(tmp_path, cache={"upstream": "https://mirror.example:5000"}))
    private = yaml.safe_load(written(mocks.named("registry-private-node1"), "/etc/kube-hardway-registry/private.yml"))
    cache = yaml.safe_load(written(mocks.named("registry-cache-node1"), "/etc/kube-hardway-registry/cache.yml"))
    assert private["http"]["addr"] == ":5000" and cache["http"]["addr"] == ":5001"
    assert private["storage"]["filesystem"]["rootdirectory"] == "/var/lib/kube-hardway-registry/private"
    assert cache["storage"]["filesystem"]["rootdirectory"] == "/var/lib/kube-hardway-registry/cache"
    assert private["auth"]["htpasswd"]["path"] == "/etc/kube-hardway-registry/htpasswd" and "proxy" not in private
    assert cache["proxy"] == {"remoteurl": "https://mirror.example:5000"} and "auth" not in cache
    for conf in (private, cache):
        assert conf["http"]["tls"] == {"certificate": "/etc/kube-hardway-registry/pki/registry.crt",
                                       "key": "/etc/kube-hardway-registry/pki/registry.key"}
    # nodes pull from a read-only instance with a pull login; the push instance shares its storage
    push = yaml.safe_load(written(mocks.named("registry-push-node1"), "/etc/kube-hardway-registry/push.yml"))
    assert private["storage"]["maintenance"] == {"readonly": {"enabled": True}}
    assert push["http"]["addr"] == ":5002" and "maintenance" not in push["storage"]
    assert push["storage"]["filesystem"] == private["storage"]["filesystem"]
    assert push["auth"]["htpasswd"]["path"] == "/etc/kube-hardway-registry/htpasswd-push"
    for role, path, login in (("private", "htpasswd", "kube-hardway-pull"), ("push", "htpasswd-push", "kube-hardway")):
        htpasswd = written(mocks.named(f"registry-{role}-node1"), f"/etc/kube-hardway-registry/{path}")
        user, hashed = htpasswd.strip().split(":", 1)
        assert user == login and hashed.startswith("$2")
        assert f"put /etc/kube-hardway-registry/{path} 0600" in mocks.named(f"registry-{role}-node1").inputs["create"]
    unit = written(mocks.named("registry-cache-node1"), "/etc/systemd/system/kube-hardway-registry-cache.service")
    assert "serve /etc/kube-hardway-registry/cache.yml" in unit and "docker.service" not in unit


def test_every_docker_trusts_the_registries_and_puts_the_cache_first(tmp_path: Path) -> None:
    mocks, outputs = planned(with_registry(tmp_path))
    assert outputs["registry"]["cacheMirrors"] == ["https://192.168.1.200:5001"]
    for host in ("node1", "node2", "node3"):
        daemon = mocks.named(f"docker-{host}-daemon")
        settings = json.loads(written(daemon, "/etc/docker/daemon.json"))
        assert settings["registry-mirrors"] == ["https://192.168.1.200:5001", "https://mirror.example.com"]
        assert "insecure-registries" not in settings
        for endpoint in ("192.168.1.200:5000", "192.168.1.200:5001", "192.168.1.200:5002", "node1:5000", "node1:5002"):
            assert written(daemon, f"/etc/docker/certs.d/{endpoint}/ca.crt") == outputs["kubernetesCaCertPem"]
        creds = json.loads(written(daemon, "/var/lib/kubelet/config.json"))
        assert set(creds["auths"]) == {"192.168.1.200:5000", "node1:5000"}    # where nodes pull, and only that
        (auth,) = {a["auth"] for a in creds["auths"].values()}
        assert base64.b64decode(auth).decode().startswith("kube-hardway-pull:")       # the pull login
        assert "put /var/lib/kubelet/config.json 0600" in daemon.inputs["create"]


def test_the_login_is_secret_everywhere_and_exported_with_the_push_url(tmp_path: Path) -> None:
    mocks, outputs = planned(with_registry(tmp_path, seedImages=["app.tar"]))
    password = outputs["registry"]["password"]
    assert outputs["registry"]["pushUrl"] == "192.168.1.200:5002" and len(password) == 32
    assert outputs["registry"]["pullUrl"] == "192.168.1.200:5000"
    for reg in mocks.registrations:
        for key in ("create", "delete", "update"):
            assert password not in str(reg.inputs.get(key)), f"{reg.name}.{key} carries the password"
        if "stdin" in reg.inputs and password in json.dumps(reg.inputs) or reg.name == "registry-seed-push":
            assert "stdin" in reg.secret_paths, f"{reg.name}: stdin with the login is not secret"
    exported = [r for r in mocks.registrations if r.typ == "random:index/randomPassword:RandomPassword"]
    assert exported and {"result", "bcryptHash"} <= set(exported[0].additional_secret_outputs)
    seed = mocks.named("registry-seed-push")
    assert "docker --config \"$cfg\" push" in seed.inputs["create"] and seed.inputs["logging"] == "stderr"
