"""Every flag and config-file field the program renders for a Kubernetes component exists in that
component's reference for the version it is rendered for: tests/data/flags/<minor>/<component>.txt
(1.24: the binaries' `--help`, which the lab runs; 1.37: upstream's newest stored reference pages,
see its SOURCE.md) and tests/data/config/<minor>/<Kind>.txt (the types.go of each release). The
classic guides' removed flags are not in them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.mocks import RecordingMocks
from engine.runtime import run_program, stack_config
from tests.unit.test_network import written

FLAGS = Path(__file__).resolve().parents[1] / "data" / "flags"
CONFIG_FIELDS = Path(__file__).resolve().parents[1] / "data" / "config"
UNITS = {"control-plane-apiserver-node1": "kube-apiserver", "control-plane-controller-manager-node1": "kube-controller-manager",
         "control-plane-scheduler-node1": "kube-scheduler", "node-node2-kubelet": "kubelet",
         "node-node2-kube-proxy": "kube-proxy"}
CONFIGS = {"node-node1-kubelet": ("/etc/kubernetes/node/kubelet.yaml", "KubeletConfiguration"),
           "node-node1-kube-proxy": ("/etc/kubernetes/node/kube-proxy.yaml", "KubeProxyConfiguration")}
VERSIONS = ["1.24.0-alpha.1", "1.37.0"]


def reference(minor: str, component: str) -> set[str]:
    return set((FLAGS / minor / f"{component}.txt").read_text().split())


def fields(value: Any, prefix: str = "") -> list[str]:
    """A config file's field paths: `authentication.webhook.enabled`, and `authentication` itself."""
    if not isinstance(value, dict):
        return []
    out = []
    for key, inner in value.items():
        path = f"{prefix}{key}"
        out += [path, *fields(inner, path + ".")]
    return out


def minor_of(version: str) -> str:
    return ".".join(version.split(".")[:2])


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_config_field_exists_in_the_version_it_is_rendered_for(version: str) -> None:
    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": version}
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    for name, (path, kind) in CONFIGS.items():
        config = yaml.safe_load(written(mocks.named(name), path))
        assert config["kind"] == kind
        known = set((CONFIG_FIELDS / minor_of(version) / f"{kind}.txt").read_text().split())
        unknown = sorted(set(fields(config)) - known - {"kind", "apiVersion"})
        assert unknown == [], f"{kind} {version} has no field(s) {unknown}"


def test_kube_proxy_is_told_its_node_ip_and_never_waits_for_its_node_object() -> None:
    """With bindAddress 0.0.0.0, kube-proxy looks its Node up for its IP, backing off up to 31 s
    while the kubelet registers it: each node's kube-proxy gets the kubelet's --node-ip instead."""
    cfg = stack_config("dev")
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    addresses = {h["name"]: h.get("internalAddress", h["address"]) for h in cfg["hosts"]}
    for name, address in addresses.items():
        config = yaml.safe_load(written(mocks.named(f"node-{name}-kube-proxy"), "/etc/kubernetes/node/kube-proxy.yaml"))
        assert config["bindAddress"] == address, name
        unit = written(mocks.named(f"node-{name}-kubelet"), "/etc/systemd/system/kubelet.service")
        assert f"--node-ip={address}" in unit, name


def test_flags_that_came_or_went_follow_the_release() -> None:
    """The runtime endpoint moved into the kubelet's config file in 1.27; the API server drains its
    watches on shutdown from 1.27 (before, they hold a restart for 60 s)."""
    found = {}
    for version in VERSIONS:
        cfg = stack_config("dev")
        cfg["versions"] = {"kubernetes": version}
        flags = rendered_flags(cfg)
        found[version] = ("container-runtime-endpoint" in flags["kubelet"],
                          "shutdown-watch-termination-grace-period" in flags["kube-apiserver"])
    assert found == {"1.24.0-alpha.1": (True, False), "1.37.0": (False, True)}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_node_ready_again_is_untainted_within_2_s(version: str) -> None:
    """The node lifecycle controller lifts not-ready:NoExecute on its pass over the nodes: every 2 s,
    not upstream's 5 (a node gate waits for the taint to go)."""
    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": version}
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    unit = written(mocks.named("control-plane-controller-manager-node1"), "/etc/systemd/system/kube-controller-manager.service")
    assert re.findall(r"^\s+--node-monitor-period=(\S+?) ?\\?$", unit, re.M) == ["2s"]


def rendered_flags(cfg: dict[str, Any]) -> dict[str, list[str]]:
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    found = {}
    for name, component in UNITS.items():
        unit = written(mocks.named(name), f"/etc/systemd/system/{component}.service")
        found[component] = re.findall(r"^\s+--([a-z0-9-]+)=", unit, re.M)
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_flag_exists_in_the_version_it_is_rendered_for(version: str) -> None:
    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": version}
    minor = ".".join(version.split(".")[:2])
    for component, flags in rendered_flags(cfg).items():
        assert flags, component
        unknown = sorted(set(flags) - reference(minor, component))
        assert unknown == [], f"{component} {version} has no flag(s) {unknown}"


@pytest.mark.parametrize("minor", ["1.24", "1.37"])
def test_the_classic_guides_removed_flags_would_fail(minor: str) -> None:
    assert "insecure-bind-address" not in reference(minor, "kube-apiserver")
    for flag in ("require-kubeconfig", "experimental-bootstrap-kubeconfig", "allow-privileged"):
        assert flag not in reference(minor, "kubelet"), flag
    assert ("pod-infra-container-image" in reference(minor, "kubelet")) == (minor == "1.24")


def test_an_unsupported_kubernetes_version_names_the_key() -> None:
    from components.spec import ConfigError, parse_spec

    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": "1.23.17"}
    with pytest.raises(ConfigError) as failed:
        parse_spec(cfg)
    assert any(p.startswith("kube-hardway:versions.kubernetes: 1.23.17 is older") for p in failed.value.problems)


@pytest.mark.parametrize(("version", "extra", "checked"), [
    ("1.37.0", {}, True), ("1.37.0", {"failCgroupV1": False}, False), ("1.24.0-alpha.1", {}, False)])
def test_a_cgroup_v1_host_is_named_before_a_kubelet_that_refuses_it_starts(version: str, extra: dict, checked: bool) -> None:
    """kubelet >= 1.35 refuses cgroup v1 unless failCgroupV1 is false: the kubelet's service step
    says so, naming the host and the config key, before the unit starts."""
    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": version}
    cfg["kubernetes"] = {"kubelet": {"extraConfig": extra}}
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    create = mocks.named("node-node1-kubelet").inputs["create"]
    assert ("node1 runs cgroup v1" in create and "kubernetes.kubelet.extraConfig.failCgroupV1: false" in create) == checked
    if checked:   # before the unit is written or started
        assert create.index("runs cgroup v1") < create.index("systemctl enable")


@pytest.mark.parametrize(("version", "extra", "frequencies"), [
    ("1.24.0-alpha.1", {}, ("2s", "5m")), ("1.26.0", {}, (None, None)), ("1.37.0", {}, (None, None)),
    ("1.24.0-alpha.1", {"nodeStatusUpdateFrequency": "4s"}, ("4s", None))])
def test_a_kubelet_without_the_startup_fast_path_computes_its_status_every_2_s(
        version: str, extra: dict, frequencies: tuple) -> None:
    """Before 1.26 a kubelet's first status post races its first pod listing and, NotReady, waits
    10 s for the next: it computes its status every 2 s, still posting it only on a change or every
    5 min. From 1.26 the kubelet posts until Ready by itself, and the defaults stay. An operator's
    extraConfig value wins, with upstream's defaulting of the report frequency."""
    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": version}
    cfg["kubernetes"] = {"kubelet": {"extraConfig": extra}}
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    for host in ("node1", "node2"):
        config = yaml.safe_load(written(mocks.named(f"node-{host}-kubelet"), "/etc/kubernetes/node/kubelet.yaml"))
        assert (config.get("nodeStatusUpdateFrequency"), config.get("nodeStatusReportFrequency")) == frequencies


def test_control_plane_units_restart_one_master_at_a_time() -> None:
    """A change restarts each API server, controller-manager and scheduler through the rolling
    restart (the lock in etcd), never on every master at once."""
    cfg = stack_config("dev")
    cfg["hosts"] = [{**h, "roles": [*h["roles"], "master"]} if h["name"] == "node2" else h for h in cfg["hosts"]]
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    for host in ("node1", "node2"):
        for part, unit, check in (("apiserver", "kube-apiserver", "get --raw /readyz"),
                                  ("controller-manager", "kube-controller-manager", "https://127.0.0.1:10257/healthz"),
                                  ("scheduler", "kube-scheduler", "https://127.0.0.1:10259/healthz")):
            create = mocks.named(f"control-plane-{part}-{host}").inputs["create"]
            line = next(line.strip() for line in create.splitlines() if "rolling-restart" in line)
            # (a unit this program never configured restarts directly: it serves no one yet)
            assert line.startswith('if [ -f "$state" ]; then ') and line.endswith(f"; else systemctl restart {unit}.service; fi")
            restart = line.removeprefix('if [ -f "$state" ]; then ').split("; else ")[0]
            assert restart.startswith(f"/usr/local/lib/kube-hardway/rolling-restart {unit}.service 180 '")
            assert check in restart
            # the API server is killed 30 s into its stop (it drains its watches in 15); the others stop at once
            stop = re.findall(r"^TimeoutStopSec=(\d+)$", written(mocks.named(f"control-plane-{part}-{host}"),
                                                                 f"/etc/systemd/system/{unit}.service"), re.M)
            assert stop == (["30"] if part == "apiserver" else [])
    # a release without the watch drain (< 1.27) is killed once the drain would have ended: its watches
    # held it until --request-timeout, 60 s, serving nothing new
    cfg["versions"] = {"kubernetes": "1.24.0-alpha.1"}
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    unit = written(mocks.named("control-plane-apiserver-node1"), "/etc/systemd/system/kube-apiserver.service")
    assert re.findall(r"^TimeoutStopSec=(\d+)$", unit, re.M) == ["15"]
    assert "--shutdown-watch-termination-grace-period" not in unit


@pytest.mark.parametrize("version", VERSIONS)
def test_a_cluster_wide_pod_security_default_is_an_admission_config_the_release_reads(version: str) -> None:
    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": version}
    assert "admission-control-config-file" not in rendered_flags(cfg)["kube-apiserver"]   # off by default
    cfg["kubernetes"] = {"podSecurity": {"defaultEnforce": "baseline"}}
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    unit = written(mocks.named("control-plane-apiserver-node1"), "/etc/systemd/system/kube-apiserver.service")
    assert "--admission-control-config-file=/etc/kubernetes/admission.yaml" in unit
    admission = yaml.safe_load(written(mocks.named("control-plane-apiserver-node1"), "/etc/kubernetes/admission.yaml"))
    (plugin,) = admission["plugins"]
    config = plugin["configuration"]
    assert (admission["kind"], plugin["name"], config["kind"]) == ("AdmissionConfiguration", "PodSecurity", "PodSecurityConfiguration")
    # v1 from 1.25; 1.23 and 1.24 read v1beta1 (the upstream task page's compatibility note)
    assert config["apiVersion"] == "pod-security.admission.config.k8s.io/" + ("v1beta1" if version.startswith("1.24") else "v1")
    assert {k: v for k, v in config["defaults"].items() if not k.endswith("-version")} == \
        {"enforce": "baseline", "audit": "baseline", "warn": "baseline"}
    assert config["exemptions"]["namespaces"] == ["kube-system"]


def test_an_unknown_pod_security_level_names_the_key() -> None:
    from components.spec import ConfigError, parse_spec

    cfg = stack_config("dev")
    cfg["kubernetes"] = {"podSecurity": {"defaultEnforce": "strict"}}
    with pytest.raises(ConfigError, match=r"kubernetes.podSecurity.defaultEnforce: unknown level 'strict'.*restricted"):
        parse_spec(cfg)


@pytest.mark.parametrize(("kubernetes", "cri_dockerd", "runs"), [
    ("1.24.0-alpha.1", "0.4.3", False),   # the lab: the kubelet's Docker check, cri-dockerd's "v1"
    ("1.24.0-alpha.1", "0.2.6", True),    # cri-dockerd 0.2.x answers the Docker API version, "1.41.0"
    ("1.24.0-alpha.2", "0.4.3", True),    # the check is gone from alpha.2 on
    ("1.24.0", "0.4.3", True),
    ("1.37.0", "0.4.3", True),
])
def test_pods_without_privilege_escalation_run_unless_the_kubelet_checks_the_docker_api(
        kubernetes: str, cri_dockerd: str, runs: bool) -> None:
    """Such pods (every "restricted" one) are refused by the kubelet of 1.24.0-alpha.1 and before
    next to a cri-dockerd >= 0.3: the plan warns, naming both keys, and CoreDNS does without the field."""
    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": kubernetes, "criDockerd": cri_dockerd}
    mocks = RecordingMocks()
    run = run_program(cfg, mocks, stack="dev")
    warned = [w for w in run.warnings if "NoNewPrivs" in w]
    assert bool(warned) != runs, run.warnings
    if warned:
        assert "versions.kubernetes" in warned[0] and "versions.criDockerd" in warned[0]
    docs = [d for d in yaml.safe_load_all(mocks.named("cluster-objects-bootstrap").inputs["stdin"]) if d]
    (coredns,) = [d for d in docs if d["kind"] == "Deployment"]
    security = coredns["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert security.get("allowPrivilegeEscalation") is (False if runs else None)


@pytest.mark.parametrize(("encryption", "writes", "keys"), [
    ({}, ["secretbox", "aescbc", "identity"], ["key-1"]),                               # on by default
    ({"keys": ["key-2", "key-1"]}, ["secretbox", "aescbc", "identity"], ["key-2", "key-1"]),   # a rotation
    ({"provider": "aescbc"}, ["aescbc", "secretbox", "identity"], ["key-1"]),
    ({"provider": "none"}, ["identity", "secretbox", "aescbc"], ["key-1"]),             # off, still reads
])
def test_secrets_are_encrypted_at_rest_with_keys_made_once_per_name(
        encryption: dict[str, Any], writes: list[str], keys: list[str]) -> None:
    cfg = stack_config("dev")
    cfg["kubernetes"] = {"encryption": encryption}
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    apiserver = mocks.named("control-plane-apiserver-node1")
    assert "--encryption-provider-config=/etc/kubernetes/encryption.yaml" in written(
        apiserver, "/etc/systemd/system/kube-apiserver.service")
    config = yaml.safe_load(written(apiserver, "/etc/kubernetes/encryption.yaml"))
    (resource,) = config["resources"]
    assert config["kind"] == "EncryptionConfiguration" and resource["resources"] == ["secrets"]
    assert [next(iter(p)) for p in resource["providers"]] == writes
    made = {r.name: r for r in mocks.of_type("random:index/randomBytes:RandomBytes")}
    assert sorted(made) == sorted(f"control-plane-encryption-{k}" for k in keys)
    for provider in resource["providers"]:
        if "identity" not in provider:
            (body,) = provider.values()
            assert [k["name"] for k in body["keys"]] == keys
            assert [k["secret"] for k in body["keys"]] == [made[f"control-plane-encryption-{k}"].outputs["base64"]
                                                           for k in keys]
    assert "stdin" in apiserver.secret_paths        # the keys travel as a secret, on stdin
    rewrite = mocks.named("cluster-objects-encryption").inputs["create"]
    assert (f"{writes[0]}:{keys[0]}" if writes[0] != "identity" else "identity") in rewrite


def test_a_new_writing_key_must_be_a_reader_first_with_several_masters() -> None:
    cfg = stack_config("dev")
    cfg["hosts"][1]["roles"] = ["etcd", "master", "node"]
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    create = mocks.named("control-plane-apiserver-node2").inputs["create"]
    assert "grep -q '^ *- name: key-1$' /etc/kubernetes/encryption.yaml" in create
    single = RecordingMocks()
    run_program(stack_config("dev"), single, stack="dev")
    assert "- name: key-1$' /etc/kubernetes/encryption.yaml" not in single.named("control-plane-apiserver-node1").inputs["create"]


@pytest.mark.parametrize("keys", [[], ["Key 1"], ["key-1", "key-1"], "key-1"])
def test_bad_encryption_keys_name_the_key(keys: Any) -> None:
    from components.spec import ConfigError, parse_spec

    cfg = stack_config("dev")
    cfg["kubernetes"] = {"encryption": {"keys": keys}}
    with pytest.raises(ConfigError, match=r"kubernetes.encryption.keys(\[0\])?: must be a"):
        parse_spec(cfg)
