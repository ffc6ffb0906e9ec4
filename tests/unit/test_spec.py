"""Every validation rule, one case each: the error names the key path, and no resource is created."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.spec import ConfigError, parse_spec
from engine.mocks import RecordingMocks
from engine.runtime import run_program

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbOBNOyHnGi4ONiNwzc0NmkLUbMrO4VbGhTt3RvO6Dn"


def base() -> dict[str, Any]:
    return {
        "hosts": [
            {"name": "node1", "address": "192.168.1.200", "roles": ["etcd", "master", "node"]},
            {"name": "node2", "address": "192.168.1.201", "roles": ["etcd", "node"]},
            {"name": "node3", "address": "192.168.1.202", "roles": ["etcd", "node"]},
        ],
    }


def with_(path: str, value: Any) -> dict[str, Any]:
    """base() with one value set (path like 'hosts[1].roles' or 'network.podCidr'); None deletes."""
    cfg = base()
    target: Any = cfg
    parts = path.replace("]", "").replace("[", ".").split(".")
    for part in parts[:-1]:
        key: Any = int(part) if part.isdigit() else part
        if isinstance(target, dict) and key not in target:
            target[key] = {}
        target = target[key]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return cfg


def dup_host(**changes: Any) -> dict[str, Any]:
    cfg = base()
    host = copy.deepcopy(cfg["hosts"][2])
    host.update(changes)
    cfg["hosts"].append(host)
    return cfg


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # (case id, config, key path expected in the message, a word of the fix)
    ("hosts missing", {}, "kube-hardway:hosts", "required"),
    ("hosts empty", {"hosts": []}, "kube-hardway:hosts", "non-empty"),
    ("host not a map", with_("hosts[0]", "node1"), "hosts[0]", "map"),
    ("name missing", with_("hosts[1].name", None), "hosts[1].name", "required"),
    ("name not a label", with_("hosts[1].name", "Node_2"), "hosts[1].name", "RFC 1123"),
    ("duplicate name", dup_host(address="192.168.1.203"), "hosts[3].name", "already used by hosts[2]"),
    ("duplicate address", dup_host(name="node4"), "hosts[3].address", "already used by hosts[2]"),
    ("duplicate internal address", {"hosts": [
        {"name": "a", "address": "10.0.0.1", "internalAddress": "10.1.0.1", "roles": ["etcd", "master", "node"]},
        {"name": "b", "address": "10.0.0.2", "internalAddress": "10.1.0.1", "roles": ["node"]}]},
     "hosts[1].internalAddress", "already used"),
    ("address missing", with_("hosts[0].address", None), "hosts[0].address", "required"),
    ("bad address", with_("hosts[0].address", "192.168.1.300"), "hosts[0].address", "IPv4"),
    ("loopback address", with_("hosts[0].address", "127.0.0.1"), "hosts[0].address", "loopback"),
    ("bad internal address", with_("hosts[0].internalAddress", "10.0.0"), "hosts[0].internalAddress", "IPv4"),
    ("unknown role", with_("hosts[1].roles", ["etcd", "worker"]), "hosts[1].roles", "valid roles"),
    ("empty roles", with_("hosts[1].roles", []), "hosts[1].roles", "non-empty"),
    ("repeated role", with_("hosts[1].roles", ["node", "node"]), "hosts[1].roles", "twice"),
    ("no etcd host", {"hosts": [{"name": "a", "address": "10.0.0.1", "roles": ["master", "node"]}]},
     "kube-hardway:hosts", "'etcd'"),
    ("no master host", {"hosts": [{"name": "a", "address": "10.0.0.1", "roles": ["etcd", "node"]}]},
     "kube-hardway:hosts", "'master'"),
    ("no node host", {"hosts": [{"name": "a", "address": "10.0.0.1", "roles": ["etcd", "master"]}]},
     "kube-hardway:hosts", "'node'"),
    ("unknown host key", with_("hosts[0].adress", "1.2.3.4"), "hosts[0].adress", "did you mean 'address'"),
    ("bad iface", with_("hosts[0].iface", "eth 0"), "hosts[0].iface", "interface"),
    ("bad host port", with_("hosts[0].port", 70000), "hosts[0].port", "between 1 and 65535"),
    ("bad host user", with_("hosts[0].user", "Root User"), "hosts[0].user", "user name"),
    ("malformed hostKey", with_("hosts[0].hostKey", "AAAAC3Nza"), "hosts[0].hostKey", "ssh-keyscan"),
    ("hostKey not base64", with_("hosts[0].hostKey", "ssh-ed25519 not*base64"), "hosts[0].hostKey", "base64"),
    ("hostKey type mismatch", with_("hosts[0].hostKey", "ssh-rsa " + ED25519.split()[1]), "hosts[0].hostKey",
     "key data is ssh-ed25519"),
    ("missing privateKeyFile", with_("ssh.privateKeyFile", "/nonexistent/id_ed25519"), "ssh.privateKeyFile",
     "does not exist"),
    ("privateKey not a key", with_("ssh.privateKey", "hunter2"), "ssh.privateKey", "--secret"),
    ("bad ssh port", with_("ssh.port", "ssh"), "ssh.port", "whole number"),
    ("unknown top-level key", with_("host", []), "kube-hardway:host", "did you mean 'hosts'"),
    ("section not a map", with_("network", "vxlan"), "kube-hardway:network", "map"),
    ("unparsable podCidr", with_("network.podCidr", "172.30.0.0/33"), "network.podCidr", "CIDR"),
    ("podCidr host bits", with_("network.podCidr", "172.30.0.1/16"), "network.podCidr", "CIDR"),
    ("unparsable serviceCidr", with_("network.serviceCidr", "ten"), "network.serviceCidr", "CIDR"),
    ("overlapping cidrs", with_("network.serviceCidr", "172.30.128.0/20"), "network.serviceCidr", "overlaps"),
    ("podCidr holds hosts", with_("network.podCidr", "192.168.0.0/16"), "network.podCidr", "node1"),
    ("serviceCidr holds hosts", with_("network.serviceCidr", "192.168.1.0/24"), "network.serviceCidr", "node1"),
    ("serviceCidr too small", with_("network.serviceCidr", "10.254.0.0/30"), "network.serviceCidr", "/29"),
    ("subnetLen too wide", with_("network.subnetLen", 16), "network.subnetLen", "> 16"),
    ("subnetLen above 30", with_("network.subnetLen", 31), "network.subnetLen", "between 1 and 30"),
    ("too few subnets", {**with_("network.podCidr", "172.30.0.0/23"), "network": {"podCidr": "172.30.0.0/23", "subnetLen": 24}},
     "network.subnetLen", "gives 2 subnets"),
    ("subnetMin outside", with_("network.subnetMin", "10.9.0.0"), "network.subnetMin", "outside"),
    ("subnetMin unaligned", with_("network.subnetMin", "172.30.1.5"), "network.subnetMin", "start of a /24"),
    ("subnetMin above max", {**base(), "network": {"subnetMin": "172.30.9.0", "subnetMax": "172.30.2.0"}},
     "network.subnetMin", "above"),
    ("unknown backend", with_("network.backend", "vxlan2"), "network.backend", "host-gw"),
    ("clusterDns outside", with_("network.clusterDns", "10.0.0.10"), "network.clusterDns", "inside"),
    ("clusterDns first address", with_("network.clusterDns", "10.254.0.1"), "network.clusterDns", "reserved"),
    ("clusterDns not an ip", with_("network.clusterDns", "dns"), "network.clusterDns", "IPv4"),
    ("bad clusterDomain", with_("network.clusterDomain", "Cluster_Local"), "network.clusterDomain", "DNS domain"),
    ("bad etcdPrefix", with_("network.etcdPrefix", "kubernetes/network"), "network.etcdPrefix", "absolute"),
    ("malformed version", with_("versions.kubernetes", "1.37"), "versions.kubernetes", "release version"),
    ("kubernetes too old", with_("versions.kubernetes", "1.23.17"), "versions.kubernetes", "1.24 or newer"),
    ("negative token ttl", with_("kubernetes.bootstrapTokenTtlHours", -1), "kubernetes.bootstrapTokenTtlHours", "between 0"),
    ("unknown version key", with_("versions.kubelet", "1.37.0"), "versions.kubelet", "unknown key"),
    ("retired version key", with_("versions.cniPlugins", "1.9.1"), "versions.cniPlugins", "remove the key"),
    ("registry mirror not a url", with_("docker.registryMirrors", ["mirror.example.com"]),
     "docker.registryMirrors[0]", "https://"),
    ("registryMirrors not a list", with_("docker.registryMirrors", "https://m"), "docker.registryMirrors", "list"),
    ("bad insecure registry", with_("docker.insecureRegistries", ["http://x"]), "docker.insecureRegistries[0]", "host[:port]"),
    ("bad maxConcurrentDownloads", with_("docker.maxConcurrentDownloads", 0), "docker.maxConcurrentDownloads", "between"),
    ("relative dataRoot", with_("docker.dataRoot", "docker"), "docker.dataRoot", "absolute"),
    ("unknown artifact source", with_("artifacts.source", "s3"), "artifacts.source", "download"),
    ("local without dir", with_("artifacts.source", "local"), "artifacts.dir", "required"),
    ("local dir missing", {**base(), "artifacts": {"source": "local", "dir": "/nonexistent/bundle"}},
     "artifacts.dir", "does not exist"),
    ("bad mirror url", with_("artifacts.mirrors", {"etcd": "ftp://x"}), "artifacts.mirrors.etcd", "https://"),
    ("unknown mirror", with_("artifacts.mirrors", {"etcdd": "https://x"}), "artifacts.mirrors.etcdd", "did you mean 'etcd'"),
    ("checksums not a map", with_("artifacts.checksums", ["abc"]), "artifacts.checksums", "release file name"),
    ("checksum not hex", with_("artifacts.checksums", {"etcd-v3.6.99-linux-amd64.tar.gz": "xyz"}),
     "artifacts.checksums.etcd-v3.6.99-linux-amd64.tar.gz", "64 hex digits"),
    ("unknown arch", with_("hosts[1].arch", "x86_64"), "hosts[1].arch", "amd64, arm64"),
    ("unknown source component", with_("artifacts.sources", {"dockr": "package"}), "artifacts.sources.dockr",
     "did you mean 'docker'"),
    ("unknown per-component source", with_("artifacts.sources", {"docker": "apt"}), "artifacts.sources.docker", "package"),
    ("local component without dir", with_("artifacts.sources", {"etcd": "local"}), "artifacts.dir", "required"),
    ("extraConfig not a map", with_("docker.extraConfig", "log-level=warn"), "docker.extraConfig", "map"),
    ("unknown pki algorithm", with_("pki.algorithm", "DSA"), "pki.algorithm", "ECDSA"),
    ("bad rsaBits", with_("pki.rsaBits", 2500), "pki.rsaBits", "2048"),
    ("leaf outlives ca", with_("pki.validityHours", {"ca": 100, "leaf": 1000}), "pki.validityHours.leaf", "outlive"),
    ("bad validity", with_("pki.validityHours", {"ca": "long"}), "pki.validityHours.ca", "whole number"),
    ("etcd managed flag", with_("etcd.extraArgs", {"data-dir": "/x"}), "etcd.extraArgs.data-dir", "managed"),
    ("etcd bad flag name", with_("etcd.extraArgs", {"--snapshot-count": "1"}), "etcd.extraArgs.--snapshot-count", "without the leading"),
    ("etcd dataDir", with_("etcd.dataDir", "/var/lib"), "etcd.dataDir", "not a system directory"),
    ("etcd health timeout", with_("etcd.healthTimeoutSeconds", 1), "etcd.healthTimeoutSeconds", "between 5 and 3600"),
    ("etcd extraArgs value", with_("etcd.extraArgs", {"snapshot-count": "1 2"}), "etcd.extraArgs.snapshot-count", "one word"),
    ("renewal window too long", with_("pki.renewBeforeHours", 9000), "pki.renewBeforeHours", "every `up` would re-issue"),
    ("three CAs", with_("pki.cas", {"etcd": ["etcd-ca", "etcd-ca-2", "etcd-ca-3"]}), "pki.cas.etcd", "one CA, or two"),
    ("a CA twice", with_("pki.cas", {"kubernetes": ["kubernetes-ca", "kubernetes-ca"]}), "pki.cas.kubernetes", "two while"),
    ("a CA of the other kind", with_("pki.cas", {"kubernetes": ["kubernetes-ca", "etcd-ca-2"]}), "pki.cas.kubernetes[1]",
     "kubernetes-ca-<suffix"),
    ("a CA named like a leaf", with_("pki.cas", {"etcd": ["etcd-root-client"]}), "pki.cas.etcd[0]", "[etcd-ca, etcd-ca-2]"),
    ("an unknown CA kind", with_("pki.cas", {"front-proxy": ["x"]}), "pki.cas.front-proxy", "unknown key"),
    ("etcd backup schedule", with_("etcd.backup", {"schedule": "daily; rm -rf /"}), "etcd.backup.schedule", "OnCalendar"),
    ("etcd backup in the data dir", with_("etcd.backup", {"dir": "/var/lib/etcd/backup"}), "etcd.backup.dir",
     "outside etcd.dataDir"),
    ("etcd backup keep", with_("etcd.backup", {"keep": 0}), "etcd.backup.keep", "between 1 and 1000"),
    ("etcd backup unknown", with_("etcd.backup", {"every": "6h"}), "etcd.backup.every", "schedule"),
    ("flannel v2 on etcd 3.6 (flannel key)", with_("versions.flannel", "0.17.0"), "versions.flannel", "etcd <= 3.5"),
    ("flannel v2 on etcd 3.6 (etcd key)", with_("versions.flannel", "0.17.0"), "versions.etcd", "flannel >= 0.18"),
    ("docker managed setting", with_("docker.extraConfig", {"bip": "10.1.0.1/24"}), "docker.extraConfig.bip",
     "set by kube-hardway"),
    ("docker extraConfig not a map", with_("docker.extraConfig", ["x"]), "docker.extraConfig", "map of daemon.json"),
    ("docker cgroup driver", with_("docker.cgroupDriver", "system"), "docker.cgroupDriver", "did you mean 'systemd'"),
    ("docker log size", with_("docker.logMaxSize", "50MB"), "docker.logMaxSize", "like 50m"),
    ("docker preload missing", with_("docker.preloadImages", ["nope.tar"]), "docker.preloadImages[0]",
     "docker save"),
    ("udp backend on arm64", {**with_("hosts[1].arch", "arm64"), "network": {"backend": "udp"}}, "network.backend",
     "amd64 builds"),
    ("network health timeout", with_("network.healthTimeoutSeconds", 5), "network.healthTimeoutSeconds", "between 10"),
]


@pytest.mark.parametrize("config,path,fix", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_names_the_key_and_the_fix(config: dict[str, Any], path: str, fix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_spec(config)
    message = str(caught.value)
    assert path in message, message
    assert fix in message, message


@pytest.mark.parametrize("config,path", [(c[1], c[2]) for c in CASES[:8]], ids=[c[0] for c in CASES[:8]])
def test_bad_config_creates_no_resource(config: dict[str, Any], path: str) -> None:
    mocks = RecordingMocks()
    with pytest.raises(ConfigError) as caught:
        run_program(config, mocks)
    assert path in str(caught.value)
    assert [r for r in mocks.registrations if r.custom] == []


def test_flannel_before_018_runs_with_etcd_35_through_the_v2_api() -> None:
    cfg = base()
    cfg["versions"] = {"flannel": "0.17.0", "etcd": "3.5.30"}
    assert parse_spec(cfg).versions["flannel"] == "0.17.0"


def test_all_problems_are_reported_at_once() -> None:
    cfg = with_("hosts[0].address", "nope")
    cfg["network"] = {"backend": "bgp", "podCidr": "x"}
    with pytest.raises(ConfigError) as caught:
        parse_spec(cfg)
    paths = ("hosts[0].address", "network.backend", "network.podCidr")
    assert all(p in str(caught.value) for p in paths)
    assert len(caught.value.problems) >= 3


def test_defaults_match_the_classic_guide() -> None:
    spec = parse_spec(base())
    assert spec.network.pod_cidr == "172.30.0.0/16"
    assert spec.network.service_cidr == "10.254.0.0/16"
    assert spec.network.cluster_dns == "10.254.0.2"
    assert spec.network.kubernetes_service_ip == "10.254.0.1"
    assert spec.ssh.user == "root" and spec.ssh.port == 22
    assert [h.internal_address for h in spec.hosts] == [h.address for h in spec.hosts]
    assert [h.name for h in spec.etcd_hosts] == ["node1", "node2", "node3"]
    assert spec.pki.algorithm == "ECDSA"


def test_cluster_dns_defaults_inside_a_custom_service_cidr() -> None:
    spec = parse_spec(with_("network.serviceCidr", "10.96.0.0/12"))
    assert spec.network.cluster_dns == "10.96.0.2"


def test_host_overrides_and_host_key_are_kept() -> None:
    cfg = base()
    cfg["hosts"][1].update(user="ops", port=2222, hostKey=ED25519 + " comment", internalAddress="10.0.0.2")
    host = parse_spec(cfg).hosts[1]
    assert (host.user, host.port, host.internal_address) == ("ops", 2222, "10.0.0.2")
    assert host.host_key == ED25519


def test_private_key_never_appears_in_repr() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nsecretstuff\n-----END OPENSSH PRIVATE KEY-----\n"
    spec = parse_spec(with_("ssh.privateKey", key))
    assert "secretstuff" not in repr(spec)


def test_even_etcd_member_count_warns_but_deploys() -> None:
    cfg = base()
    cfg["hosts"][2]["roles"] = ["node"]
    run = run_program(cfg, RecordingMocks(preview=True), preview=True)
    assert any("even member count" in w for w in run.warnings), run.warnings


def test_a_kubernetes_newer_than_the_checked_flags_warns_but_deploys() -> None:
    run = run_program(with_("versions.kubernetes", "1.38.0"), RecordingMocks(preview=True), preview=True)
    assert any("versions.kubernetes: 1.38.0 is newer" in w for w in run.warnings), run.warnings
    assert not [w for w in run_program(base(), RecordingMocks(preview=True), preview=True).warnings
                if "is newer than the releases" in w]


def test_arch_and_checksums_parse() -> None:
    cfg = with_("hosts[2].arch", "arm64")
    cfg["artifacts"] = {"checksums": {"etcd-v3.6.99-linux-arm64.tar.gz": "AB" * 32}}
    spec = parse_spec(cfg)
    assert [h.arch for h in spec.hosts] == ["amd64", "amd64", "arm64"]
    assert spec.artifacts.checksums == {"etcd-v3.6.99-linux-arm64.tar.gz": "ab" * 32}
