"""The whole spec: every section parsed in order, then the warnings of what works but is unwise.

A section is one module (its dataclass, KEY, KNOWN keys and `parse`); registering it is one line
in SECTIONS. Sections parse in that order, each seeing the ones before it in `parsed` (hosts need
the SSH defaults; the network checks ranges against the hosts' addresses).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pulumi

from components.releases import DEFAULT_VERSIONS
from components.spec import artifacts, docker, etcd, hosts, images, kubernetes, network, pki, registry, ssh, versions
from components.spec.artifacts import ArtifactsSpec
from components.spec.docker import DockerSpec
from components.spec.etcd import EtcdSpec
from components.spec.hosts import HostSpec
from components.spec.images import ImagesSpec
from components.spec.kubernetes import KubernetesSpec
from components.spec.network import NetworkSpec
from components.spec.pki import PkiSpec
from components.spec.problems import NAMESPACE, ConfigError, Problems
from components.spec.registry import RegistrySpec
from components.spec.ssh import SshSpec
from components.spec.versions import KubernetesVersion, runs_no_new_privs_pods

SECTIONS = (ssh, hosts, versions, network, artifacts, docker, pki, etcd, registry, kubernetes, images)


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
    registry: RegistrySpec
    kubernetes: KubernetesSpec
    images: ImagesSpec

    @cached_property
    def kubernetes_version(self) -> KubernetesVersion:
        return KubernetesVersion.parse(self.versions["kubernetes"])

    @cached_property
    def runs_no_new_privs_pods(self) -> bool:
        return runs_no_new_privs_pods(self.kubernetes_version, self.versions["criDockerd"])

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

    @property
    def workers(self) -> tuple[HostSpec, ...]:
        """Hosts that run containers: nodes, and masters (tainted), so the API server reaches pods."""
        return tuple(h for h in self.hosts if h.has("node") or h.has("master"))


def parse_spec(raw: Mapping[str, Any], base_dir: Path | str = ".") -> ClusterSpec:
    """Validate the `kube-hardway:*` config (keys without the namespace) into a ClusterSpec."""
    p = Problems()
    p.unknown_keys("", raw, [s.KEY for s in SECTIONS])
    parsed: dict[str, Any] = {"base_dir": Path(base_dir)}
    for section in SECTIONS:
        value = raw.get(section.KEY)
        if section.KNOWN is not None:
            value = p.section(section.KEY, value, section.KNOWN)
        parsed[section.KEY] = section.parse(value, p, parsed)
    if p.items:
        raise ConfigError(p.items)
    return ClusterSpec(**{s.KEY: parsed[s.KEY] for s in SECTIONS})


def read_config(config: pulumi.Config) -> dict[str, Any]:
    """Every `kube-hardway:*` key that is set, including ones this version does not know."""
    prefix = f"{NAMESPACE}:"
    keys = {s.KEY for s in SECTIONS} | {
        k[len(prefix):] for k in pulumi.runtime.config.CONFIG.get() if k.startswith(prefix)
    }
    raw: dict[str, Any] = {}
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
    chosen, checked = spec.kubernetes_version, KubernetesVersion.parse(DEFAULT_VERSIONS["kubernetes"])
    if chosen.minor > checked.minor:
        pulumi.log.warn(
            f"{NAMESPACE}:versions.kubernetes: {chosen} is newer than the releases kube-hardway's flags and "
            f"config fields were checked against (up to {checked}); a flag it removed stops a component on "
            f"the host — read its release notes, or use {checked}"
        )
    if not spec.runs_no_new_privs_pods:
        pulumi.log.warn(
            f"{NAMESPACE}:versions.kubernetes: {chosen} with versions.criDockerd {spec.versions['criDockerd']}: pods with "
            f"allowPrivilegeEscalation: false (every pod of the Pod Security \"restricted\" profile, most hardened "
            f"charts) will not start (\"Cannot enforce NoNewPrivs\"): this kubelet parses the runtime's API version as "
            f"Docker's, and cri-dockerd >= 0.3 answers \"v1\" — use Kubernetes 1.24.0-alpha.2 or newer, or cri-dockerd 0.2.x"
        )
    return spec
