"""The stack-config contract: parse `kube-hardway:*` once into frozen dataclasses and validate it.

Nothing here creates a Pulumi resource. Every mistake is collected with the key path it was found
at (e.g. ``kube-hardway:hosts[1].roles``) and reported together in one `ConfigError`, so a user
fixes the whole stack file in one pass and nothing touches a host before the config is sound.

One module per section (`ssh`, `hosts`, `versions`, `network`, `docker`, `artifacts`, `pki`,
`etcd`, `registry`, `kubernetes`, `images`), shared validators in `problems`, the section table and `parse_spec` in `cluster`.
"""

from components.releases import DEFAULT_VERSIONS
from components.spec.artifacts import ARTIFACT_SOURCES, DEFAULT_DOWNLOAD_CACHE, ArtifactsSpec
from components.spec.cluster import SECTIONS, ClusterSpec, load_spec, parse_spec, read_config
from components.spec.docker import DockerSpec
from components.spec.etcd import ETCD_MANAGED_FLAGS, EtcdSpec
from components.spec.hosts import ROLES, HostSpec
from components.spec.images import ImagesSpec
from components.spec.kubernetes import KubernetesSpec
from components.spec.network import BACKENDS, NetworkSpec
from components.spec.pki import PKI_ALGORITHMS, PkiSpec
from components.spec.problems import NAMESPACE, ConfigError
from components.spec.ssh import SshSpec

__all__ = [
    "ARTIFACT_SOURCES", "BACKENDS", "DEFAULT_DOWNLOAD_CACHE", "DEFAULT_VERSIONS", "ETCD_MANAGED_FLAGS",
    "NAMESPACE", "PKI_ALGORITHMS", "ROLES", "SECTIONS", "ArtifactsSpec", "ClusterSpec", "ConfigError",
    "DockerSpec", "EtcdSpec", "HostSpec", "ImagesSpec", "KubernetesSpec", "NetworkSpec", "PkiSpec", "SshSpec", "load_spec", "parse_spec",
    "read_config",
]
