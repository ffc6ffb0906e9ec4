"""The stack-config contract: parse `kube-hardway:*` once into frozen dataclasses and validate it.

Nothing here creates a Pulumi resource. Every mistake is collected with the key path it was found
at (e.g. ``kube-hardway:hosts[1].roles``) and reported together in one `ConfigError`, so a user
fixes the whole stack file in one pass and nothing touches a host before the config is sound.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from components.releases import ARCHES, DEFAULT_VERSIONS

NAMESPACE = "kube-hardway"
ROLES = ("etcd", "master", "node")
BACKENDS = ("vxlan", "host-gw", "udp")
ARTIFACT_SOURCES = ("download", "local", "package")
PKI_ALGORITHMS = ("ECDSA", "RSA")


DEFAULT_DOWNLOAD_CACHE = "~/.cache/kube-hardway"

# etcd flags the program owns; letting extraArgs override them would break TLS or membership.
ETCD_MANAGED_FLAGS = frozenset(
    {
        "name", "data-dir", "listen-client-urls", "advertise-client-urls", "listen-peer-urls",
        "initial-advertise-peer-urls", "initial-cluster", "initial-cluster-token",
        "initial-cluster-state", "client-cert-auth", "trusted-ca-file", "cert-file", "key-file",
        "peer-client-cert-auth", "peer-trusted-ca-file", "peer-cert-file", "peer-key-file",
    }
)

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.]+)?$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_IFACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_FLAG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_HOST_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
)


class ConfigError(pulumi.RunError):
    """Raised with every problem found; RunError makes Pulumi print it without a traceback."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) in the stack config (Pulumi.<stack>.yaml):\n{lines}"
        )


# ---------------------------------------------------------------- the spec ----------------------


@dataclass(frozen=True)
class SshSpec:
    user: str = "root"
    port: int = 22
    private_key_file: str | None = None
    private_key: str | None = field(default=None, repr=False)  # secret: never printed


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    internal_address: str
    roles: tuple[str, ...]
    user: str
    port: int
    host_key: str | None = None
    iface: str | None = None
    arch: str = "amd64"

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class NetworkSpec:
    pod_cidr: str = "172.30.0.0/16"
    subnet_len: int = 24
    subnet_min: str | None = None
    subnet_max: str | None = None
    backend: str = "vxlan"
    service_cidr: str = "10.254.0.0/16"
    cluster_dns: str = "10.254.0.2"
    cluster_domain: str = "cluster.local"
    etcd_prefix: str = "/kubernetes/network"

    @property
    def kubernetes_service_ip(self) -> str:
        """The first service address, reserved for the `kubernetes` service (and on its cert)."""
        return str(ipaddress.ip_network(self.service_cidr)[1])


@dataclass(frozen=True)
class DockerSpec:
    registry_mirrors: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    max_concurrent_downloads: int = 3
    data_root: str = "/var/lib/docker"


@dataclass(frozen=True)
class ArtifactsSpec:
    source: str = "download"
    dir: str = DEFAULT_DOWNLOAD_CACHE
    mirrors: Mapping[str, str] = field(default_factory=dict)
    checksums: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PkiSpec:
    algorithm: str = "ECDSA"
    rsa_bits: int = 2048
    ca_validity_hours: int = 87600
    leaf_validity_hours: int = 8760
    early_renewal_hours: int = 720


@dataclass(frozen=True)
class EtcdSpec:
    data_dir: str = "/var/lib/etcd"
    extra_args: Mapping[str, str] = field(default_factory=dict)
    health_timeout: int = 120


@dataclass(frozen=True)
class ClusterSpec:
    ssh: SshSpec
    hosts: tuple[HostSpec, ...]
    versions: Mapping[str, str]
    network: NetworkSpec
    docker: DockerSpec
    artifacts: ArtifactsSpec
    pki: PkiSpec
    etcd: EtcdSpec

    def with_role(self, role: str) -> tuple[HostSpec, ...]:
        return tuple(h for h in self.hosts if h.has(role))

    @property
    def etcd_hosts(self) -> tuple[HostSpec, ...]:
        return self.with_role("etcd")

    @property
    def masters(self) -> tuple[HostSpec, ...]:
        return self.with_role("master")

    @property
    def nodes(self) -> tuple[HostSpec, ...]:
        return self.with_role("node")


# ---------------------------------------------------------------- parsing -----------------------

KNOWN_KEYS: dict[str, tuple[str, ...] | None] = {
    "ssh": ("user", "port", "privateKeyFile", "privateKey"),
    "hosts": ("name", "address", "internalAddress", "roles", "hostKey", "iface", "user", "port", "arch"),
    "versions": tuple(DEFAULT_VERSIONS),
    "network": (
        "podCidr", "subnetLen", "subnetMin", "subnetMax", "backend", "serviceCidr", "clusterDns",
        "clusterDomain", "etcdPrefix",
    ),
    "docker": ("registryMirrors", "insecureRegistries", "maxConcurrentDownloads", "dataRoot"),
    "artifacts": ("source", "dir", "mirrors", "checksums"),
    "pki": ("algorithm", "rsaBits", "validityHours"),
    "etcd": ("dataDir", "extraArgs", "healthTimeoutSeconds"),
}


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{NAMESPACE}:{path}: {message}")

    def unknown_keys(self, path: str, value: Mapping[str, Any], known: Sequence[str]) -> None:
        for key in value:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                fix = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(known)}"
                self.add(f"{path}.{key}", f"unknown key; {fix}")


def _section(raw: Mapping[str, Any], key: str, p: _Problems) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        p.add(key, f"must be a map of settings, got {type(value).__name__}")
        return {}
    p.unknown_keys(key, value, KNOWN_KEYS[key] or ())
    return value


def _int(value: Any, path: str, p: _Problems, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        p.add(path, f"must be a whole number between {lo} and {hi}, got {value!r}")
        return default
    number = int(value)
    if not lo <= number <= hi:
        p.add(path, f"must be between {lo} and {hi}, got {number}")
        return default
    return number


def _str(value: Any, path: str, p: _Problems, default: str | None = None) -> str | None:
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        p.add(path, f"must be a non-empty string, got {value!r}")
        return default
    return value.strip()


def _ipv4(value: Any, path: str, p: _Problems) -> ipaddress.IPv4Address | None:
    try:
        ip = ipaddress.IPv4Address(str(value).strip())
    except ValueError:
        p.add(path, f"must be an IPv4 address like 192.168.1.200, got {value!r}")
        return None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        p.add(path, f"{ip} cannot be a host address (unspecified, loopback or multicast)")
        return None
    return ip


def _cidr(value: Any, path: str, p: _Problems) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(str(value).strip(), strict=True)
    except ValueError as err:
        p.add(path, f"must be an IPv4 network in CIDR form like 172.30.0.0/16 ({err})")
        return None


def _host_key(value: Any, path: str, p: _Problems) -> str | None:
    text = _str(value, path, p)
    if text is None:
        return None
    parts = text.split()
    example = "an authorized_keys-style line like 'ssh-ed25519 AAAAC3Nza...'"
    if len(parts) < 2 or parts[0] not in _HOST_KEY_TYPES:
        p.add(path, f"must be {example} (types: {', '.join(_HOST_KEY_TYPES)}); "
              "read it with `ssh-keyscan -t ed25519 <address>`")
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        embedded = blob[4 : 4 + length].decode()
    except (ValueError, struct.error, UnicodeDecodeError):
        p.add(path, f"the key data is not valid base64 SSH key data; expected {example}")
        return None
    if embedded != parts[0]:
        p.add(path, f"says {parts[0]} but the key data is {embedded}")
        return None
    return f"{parts[0]} {parts[1]}"


def _version(value: Any, path: str, p: _Problems, default: str) -> str:
    if value is None:
        return default
    match = _VERSION.match(str(value).strip())
    if not match:
        p.add(path, f"must be a release version like {default} (a leading 'v' is allowed), got {value!r}")
        return default
    return str(value).strip().removeprefix("v")


def _string_list(value: Any, path: str, p: _Problems) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        p.add(path, f"must be a list of strings, got {value!r}")
        return ()
    return tuple(v.strip() for v in value)


def _url(value: str, path: str, p: _Problems, schemes: tuple[str, ...] = ("http", "https")) -> None:
    if not re.match(rf"^({'|'.join(schemes)})://[^\s/]*[^\s]*$", value):
        p.add(path, f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}, got {value!r}")


def _parse_ssh(raw: Mapping[str, Any], p: _Problems, base_dir: Path) -> SshSpec:
    ssh = _section(raw, "ssh", p)
    key_file = _str(ssh.get("privateKeyFile"), "ssh.privateKeyFile", p)
    key = ssh.get("privateKey")
    if key is not None and (not isinstance(key, str) or "PRIVATE KEY" not in key):
        p.add("ssh.privateKey", "must be a PEM/OpenSSH private key; set it with "
              "`pulumi config set --secret --path ssh.privateKey < ~/.ssh/id_ed25519`")
        key = None
    if key_file and key:
        p.add("ssh", "set privateKeyFile or privateKey, not both")
    if key_file:
        resolved = (base_dir / os.path.expanduser(key_file)).resolve()
        if not resolved.is_file():
            p.add("ssh.privateKeyFile", f"file {resolved} does not exist; point it at the SSH "
                  "private key that can log in to every host, or remove it to use ssh-agent")
        key_file = str(resolved)
    user = _str(ssh.get("user"), "ssh.user", p, "root") or "root"
    if not _USER.match(user):
        p.add("ssh.user", f"{user!r} is not a valid Unix user name")
    return SshSpec(user=user, port=_int(ssh.get("port"), "ssh.port", p, 22, 1, 65535),
                   private_key_file=key_file, private_key=key)


def _parse_hosts(raw: Mapping[str, Any], ssh: SshSpec, p: _Problems) -> tuple[HostSpec, ...]:
    hosts = raw.get("hosts")
    example = "[{name: node1, address: 192.168.1.200, roles: [etcd, master, node]}]"
    if not isinstance(hosts, list) or not hosts:
        p.add("hosts", f"is required: a non-empty list of hosts like {example}")
        return ()
    parsed: list[HostSpec] = []
    seen: dict[str, dict[str, str]] = {"name": {}, "address": {}, "internalAddress": {}}
    for i, h in enumerate(hosts):
        at = f"hosts[{i}]"
        if not isinstance(h, Mapping):
            p.add(at, f"must be a map like {example[1:-1]}")
            continue
        p.unknown_keys(at, h, KNOWN_KEYS["hosts"] or ())
        name = _str(h.get("name"), f"{at}.name", p)
        if name is None and "name" not in h:
            p.add(f"{at}.name", "is required (a lowercase RFC 1123 label like node1)")
        elif name is not None and not _LABEL.match(name):
            p.add(f"{at}.name", f"{name!r} is not a lowercase RFC 1123 label (a-z, 0-9, '-', ≤63 chars)")
            name = None
        address = _ipv4(h.get("address"), f"{at}.address", p) if "address" in h else None
        if "address" not in h:
            p.add(f"{at}.address", "is required: the IPv4 address SSH connects to")
        internal = _ipv4(h["internalAddress"], f"{at}.internalAddress", p) if h.get("internalAddress") else address
        for key, value in (("name", name), ("address", address), ("internalAddress", internal)):
            if value is None or (key == "internalAddress" and not h.get("internalAddress")):
                continue
            first = seen[key].get(str(value))
            if first is not None:
                p.add(f"{at}.{key}", f"{value} is already used by {first}; every host needs its own")
            else:
                seen[key][str(value)] = at
        roles = h.get("roles")
        role_list: list[str] = []
        if not isinstance(roles, list) or not roles:
            p.add(f"{at}.roles", f"must be a non-empty list, a subset of {list(ROLES)}")
        else:
            for role in roles:
                if role not in ROLES:
                    hint = difflib.get_close_matches(str(role), ROLES, n=1)
                    p.add(f"{at}.roles", f"unknown role {role!r}; valid roles: {', '.join(ROLES)}"
                          + (f" (did you mean '{hint[0]}'?)" if hint else ""))
                elif role in role_list:
                    p.add(f"{at}.roles", f"role {role!r} is listed twice")
                else:
                    role_list.append(role)
        iface = _str(h.get("iface"), f"{at}.iface", p)
        if iface is not None and not _IFACE.match(iface):
            p.add(f"{at}.iface", f"{iface!r} is not a network interface name (like eth0)")
        user = _str(h.get("user"), f"{at}.user", p, ssh.user) or ssh.user
        if not _USER.match(user):
            p.add(f"{at}.user", f"{user!r} is not a valid Unix user name")
        port = _int(h.get("port"), f"{at}.port", p, ssh.port, 1, 65535)
        host_key = _host_key(h.get("hostKey"), f"{at}.hostKey", p) if h.get("hostKey") is not None else None
        arch = h.get("arch", HostSpec.arch)
        if arch not in ARCHES:
            p.add(f"{at}.arch", f"unknown architecture {arch!r}; valid: {', '.join(ARCHES)}")
            arch = HostSpec.arch
        if name and address and internal and role_list:
            parsed.append(HostSpec(name=name, address=str(address), internal_address=str(internal),
                                   roles=tuple(r for r in ROLES if r in role_list), user=user,
                                   port=port, host_key=host_key, iface=iface, arch=arch))
    if len(parsed) == len(hosts):
        for role in ROLES:
            if not any(h.has(role) for h in parsed):
                p.add("hosts", f"no host has role {role!r}; add it to at least one host's roles")
    return tuple(parsed)


def _parse_network(raw: Mapping[str, Any], hosts: Sequence[HostSpec], p: _Problems) -> NetworkSpec:
    net = _section(raw, "network", p)
    d = NetworkSpec()
    pod = _cidr(net.get("podCidr", d.pod_cidr), "network.podCidr", p)
    svc = _cidr(net.get("serviceCidr", d.service_cidr), "network.serviceCidr", p)
    subnet_len = _int(net.get("subnetLen"), "network.subnetLen", p, d.subnet_len, 1, 30)
    backend = net.get("backend", d.backend)
    if backend not in BACKENDS:
        p.add("network.backend", f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if pod and svc and pod.overlaps(svc):
        p.add("network.serviceCidr", f"{svc} overlaps network.podCidr {pod}; pick disjoint ranges")
    for cidr, key in ((pod, "network.podCidr"), (svc, "network.serviceCidr")):
        if cidr is None:
            continue
        for h in hosts:
            for addr in {h.address, h.internal_address}:
                if ipaddress.IPv4Address(addr) in cidr:
                    p.add(key, f"{cidr} contains host {h.name}'s address {addr}; "
                          "pick a range your hosts do not use")
    if svc is not None and svc.num_addresses < 8:
        p.add("network.serviceCidr", f"{svc} is too small; use at least a /29")
    if pod is not None:
        if subnet_len <= pod.prefixlen:
            p.add("network.subnetLen", f"{subnet_len} does not fit network.podCidr {pod}: a node "
                  f"subnet must be smaller than the pod network (use a value > {pod.prefixlen}, ≤ 30)")
        else:
            count = 2 ** (subnet_len - pod.prefixlen)
            needing = sum(1 for h in hosts if h.has("node") or h.has("master"))
            if count < needing:
                p.add("network.subnetLen", f"{pod} split into /{subnet_len} gives {count} subnets "
                      f"but {needing} hosts need one; lower subnetLen or widen podCidr")
    bounds = {}
    for key in ("subnetMin", "subnetMax"):
        if net.get(key) is None:
            continue
        path = f"network.{key}"
        try:
            ip = ipaddress.IPv4Address(str(net[key]))
        except ValueError:
            p.add(path, f"must be the first address of a node subnet like 172.30.1.0, got {net[key]!r}")
            continue
        if pod is not None and ip not in pod:
            p.add(path, f"{ip} is outside network.podCidr {pod}")
        elif int(ip) % 2 ** (32 - subnet_len):
            p.add(path, f"{ip} is not the start of a /{subnet_len} subnet")
        else:
            bounds[key] = ip
    if len(bounds) == 2 and bounds["subnetMin"] > bounds["subnetMax"]:
        p.add("network.subnetMin", "must not be above network.subnetMax")
    dns_default = str(svc[2]) if svc is not None and svc.num_addresses > 2 else d.cluster_dns
    dns = net.get("clusterDns", dns_default)
    if svc is not None:
        try:
            dns_ip = ipaddress.IPv4Address(str(dns))
            if dns_ip not in svc or dns_ip in (svc.network_address, svc.broadcast_address):
                p.add("network.clusterDns", f"{dns} must be a usable address inside network.serviceCidr {svc}")
            elif dns_ip == svc[1]:
                p.add("network.clusterDns", f"{dns} is the first service address, reserved for the "
                      f"`kubernetes` service; use e.g. {svc[2]}")
        except ValueError:
            p.add("network.clusterDns", f"must be an IPv4 address inside network.serviceCidr, got {dns!r}")
    domain = _str(net.get("clusterDomain"), "network.clusterDomain", p, d.cluster_domain) or d.cluster_domain
    if not all(_LABEL.match(label) for label in domain.split(".")):
        p.add("network.clusterDomain", f"{domain!r} is not a DNS domain like cluster.local")
    prefix = _str(net.get("etcdPrefix"), "network.etcdPrefix", p, d.etcd_prefix) or d.etcd_prefix
    if not re.match(r"^(/[A-Za-z0-9._-]+)+$", prefix):
        p.add("network.etcdPrefix", f"{prefix!r} must be an absolute key path like /kubernetes/network")
    return NetworkSpec(
        pod_cidr=str(pod or d.pod_cidr), subnet_len=subnet_len,
        subnet_min=str(bounds["subnetMin"]) if "subnetMin" in bounds else None,
        subnet_max=str(bounds["subnetMax"]) if "subnetMax" in bounds else None,
        backend=backend if backend in BACKENDS else d.backend, service_cidr=str(svc or d.service_cidr),
        cluster_dns=str(dns), cluster_domain=domain, etcd_prefix=prefix,
    )


def _parse_docker(raw: Mapping[str, Any], p: _Problems) -> DockerSpec:
    docker = _section(raw, "docker", p)
    mirrors = _string_list(docker.get("registryMirrors"), "docker.registryMirrors", p)
    for i, m in enumerate(mirrors):
        _url(m, f"docker.registryMirrors[{i}]", p)
    insecure = _string_list(docker.get("insecureRegistries"), "docker.insecureRegistries", p)
    for i, r in enumerate(insecure):
        if not re.match(r"^[A-Za-z0-9.-]+(:\d+)?$|^[0-9.]+/\d+$", r):
            p.add(f"docker.insecureRegistries[{i}]", f"{r!r} must be host[:port] or a CIDR")
    data_root = _str(docker.get("dataRoot"), "docker.dataRoot", p, "/var/lib/docker") or "/var/lib/docker"
    if not data_root.startswith("/"):
        p.add("docker.dataRoot", f"must be an absolute path, got {data_root!r}")
    return DockerSpec(
        registry_mirrors=mirrors, insecure_registries=insecure, data_root=data_root,
        max_concurrent_downloads=_int(docker.get("maxConcurrentDownloads"),
                                      "docker.maxConcurrentDownloads", p, 3, 1, 64),
    )


def _parse_artifacts(raw: Mapping[str, Any], p: _Problems, base_dir: Path) -> ArtifactsSpec:
    art = _section(raw, "artifacts", p)
    source = art.get("source", "download")
    if source not in ARTIFACT_SOURCES:
        p.add("artifacts.source", f"unknown source {source!r}; valid: {', '.join(ARTIFACT_SOURCES)} "
              "(download: fetch from upstream or artifacts.mirrors; local: from artifacts.dir; "
              "package: the distribution's packages)")
    directory = _str(art.get("dir"), "artifacts.dir", p)
    if source == "local" and directory is None:
        p.add("artifacts.dir", "is required when artifacts.source is 'local': the directory "
              "holding the release files (e.g. etcd-v3.6.14-linux-amd64.tar.gz)")
    resolved = (base_dir / os.path.expanduser(directory or DEFAULT_DOWNLOAD_CACHE)).resolve()
    if source == "local" and directory is not None and not resolved.is_dir():
        p.add("artifacts.dir", f"directory {resolved} does not exist")
    mirrors = art.get("mirrors") or {}
    if not isinstance(mirrors, Mapping):
        p.add("artifacts.mirrors", "must be a map of component -> base URL")
        mirrors = {}
    p.unknown_keys("artifacts.mirrors", mirrors, tuple(DEFAULT_VERSIONS))
    for name, url in mirrors.items():
        _url(str(url), f"artifacts.mirrors.{name}", p, ("http", "https", "file"))
    return ArtifactsSpec(source=source if source in ARTIFACT_SOURCES else "download",
                         dir=str(resolved), mirrors={k: str(v).rstrip("/") for k, v in mirrors.items()},
                         checksums=_checksums(art.get("checksums"), p))


def _checksums(value: Any, p: _Problems) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        p.add("artifacts.checksums", "must be a map of release file name -> sha256, like "
              "{etcd-v3.6.99-linux-amd64.tar.gz: 0123...}")
        return {}
    sums = {}
    for name, digest in value.items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest.strip()):
            p.add(f"artifacts.checksums.{name}", f"must be a sha256 (64 hex digits), got {digest!r}")
        else:
            sums[str(name)] = digest.strip().lower()
    return sums


def _parse_pki(raw: Mapping[str, Any], p: _Problems) -> PkiSpec:
    pki = _section(raw, "pki", p)
    d = PkiSpec()
    algorithm = str(pki.get("algorithm", d.algorithm)).upper()
    if algorithm not in PKI_ALGORITHMS:
        p.add("pki.algorithm", f"unknown algorithm {pki.get('algorithm')!r}; valid: ECDSA (P-256, default) or RSA")
    bits = _int(pki.get("rsaBits"), "pki.rsaBits", p, d.rsa_bits, 2048, 8192)
    if bits % 1024:
        p.add("pki.rsaBits", f"must be 2048, 3072 or 4096, got {bits}")
    validity = pki.get("validityHours") or {}
    if not isinstance(validity, Mapping):
        p.add("pki.validityHours", "must be a map like {ca: 87600, leaf: 8760}")
        validity = {}
    p.unknown_keys("pki.validityHours", validity, ("ca", "leaf"))
    ca = _int(validity.get("ca"), "pki.validityHours.ca", p, d.ca_validity_hours, 24, 876000)
    leaf = _int(validity.get("leaf"), "pki.validityHours.leaf", p, d.leaf_validity_hours, 24, 876000)
    if leaf > ca:
        p.add("pki.validityHours.leaf", f"{leaf}h outlives the CA ({ca}h); certificates would "
              "outlive their issuer")
    return PkiSpec(algorithm=algorithm if algorithm in PKI_ALGORITHMS else d.algorithm, rsa_bits=bits,
                   ca_validity_hours=ca, leaf_validity_hours=leaf,
                   early_renewal_hours=min(d.early_renewal_hours, leaf // 10))


def _parse_etcd(raw: Mapping[str, Any], p: _Problems) -> EtcdSpec:
    etcd = _section(raw, "etcd", p)
    data_dir = _str(etcd.get("dataDir"), "etcd.dataDir", p, EtcdSpec.data_dir) or EtcdSpec.data_dir
    if not data_dir.startswith("/") or data_dir.rstrip("/") in ("", "/var", "/var/lib", "/etc"):
        p.add("etcd.dataDir", f"must be a dedicated absolute directory like /var/lib/etcd, got {data_dir!r}")
    extra = etcd.get("extraArgs") or {}
    if not isinstance(extra, Mapping):
        p.add("etcd.extraArgs", "must be a map of etcd flag (without --) -> value")
        extra = {}
    for flag, value in extra.items():
        if not _FLAG.match(str(flag)):
            p.add(f"etcd.extraArgs.{flag}", "must be an etcd flag name without the leading --, like heartbeat-interval")
        elif flag in ETCD_MANAGED_FLAGS:
            p.add(f"etcd.extraArgs.{flag}", "is managed by kube-hardway (TLS and membership); remove it")
        if not isinstance(value, (str, int, bool)) or re.search(r"\s", str(value)):
            p.add(f"etcd.extraArgs.{flag}", f"value must be a single word, got {value!r}")
    return EtcdSpec(data_dir=data_dir.rstrip("/"),
                    health_timeout=_int(etcd.get("healthTimeoutSeconds"), "etcd.healthTimeoutSeconds", p,
                                        EtcdSpec.health_timeout, 5, 3600),
                    extra_args={str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in extra.items()})


def parse_spec(raw: Mapping[str, Any], base_dir: Path | str = ".") -> ClusterSpec:
    """Validate the `kube-hardway:*` config (keys without the namespace) into a ClusterSpec."""
    p = _Problems()
    base = Path(base_dir)
    for key in raw:
        if key not in KNOWN_KEYS:
            hint = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            p.add(key, "unknown key; " + (f"did you mean '{hint[0]}'?" if hint else
                                          f"known keys: {', '.join(KNOWN_KEYS)}"))
    ssh = _parse_ssh(raw, p, base)
    hosts = _parse_hosts(raw, ssh, p)
    versions_raw = _section(raw, "versions", p)
    versions = {k: _version(versions_raw.get(k), f"versions.{k}", p, v) for k, v in DEFAULT_VERSIONS.items()}
    spec = ClusterSpec(
        ssh=ssh, hosts=hosts, versions=versions, network=_parse_network(raw, hosts, p),
        docker=_parse_docker(raw, p), artifacts=_parse_artifacts(raw, p, base), pki=_parse_pki(raw, p),
        etcd=_parse_etcd(raw, p),
    )
    if p.items:
        raise ConfigError(p.items)
    return spec


def read_config(config: pulumi.Config) -> dict[str, Any]:
    """Every `kube-hardway:*` key that is set, including ones this version does not know."""
    prefix = f"{NAMESPACE}:"
    raw: dict[str, Any] = {}
    keys = set(KNOWN_KEYS) | {
        k[len(prefix):] for k in pulumi.runtime.config.CONFIG.get() if k.startswith(prefix)
    }
    for key in sorted(keys):
        value = config.get_object(key)
        if value is not None:
            raw[key] = value
    return raw


def load_spec(config: pulumi.Config | None = None) -> ClusterSpec:
    """Read and validate the stack config; warn (not fail) on what works but is unwise."""
    spec = parse_spec(read_config(config or pulumi.Config(NAMESPACE)))
    members = len(spec.etcd_hosts)
    if members % 2 == 0:
        pulumi.log.warn(
            f"{NAMESPACE}:hosts: {members} hosts have role etcd; an even member count tolerates no "
            f"more failures than {members - 1} members and adds write latency — use an odd number"
        )
    return spec
