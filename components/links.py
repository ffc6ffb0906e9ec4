"""What one component hands another: small dataclasses of outputs, made by the component that
owns the thing and passed on as arguments in the composition (`__main__.py`), so that no
component imports another."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from components.layout import FLANNEL_PKI_DIR
from components.spec import HostSpec


@dataclass(frozen=True)
class EtcdEndpoints:
    """How to reach the etcd cluster, from EtcdCluster: its client URLs, where etcdctl runs with the
    health-check client cert, and the gate that passes once every member is healthy."""

    client_endpoints: tuple[str, ...]
    admin_host: HostSpec                    # a member: one-off etcdctl work runs there
    etcdctl: str                            # its path on the members
    client_pki: dict[str, str] = field(hash=False)   # ca, client_cert, client_key on the members
    health: pulumi.Resource = field(hash=False)


@dataclass(frozen=True)
class EtcdAccess:
    """How a worker reaches etcd with flanneld's client cert (flanneld, and cluster-wide locks)."""

    endpoints: tuple[str, ...]
    ca: str = f"{FLANNEL_PKI_DIR}/ca.crt"
    cert: str = f"{FLANNEL_PKI_DIR}/flanneld.crt"
    key: str = f"{FLANNEL_PKI_DIR}/flanneld.key"


@dataclass(frozen=True)
class RegistryAccess:
    """What every worker's Docker needs of the registries."""

    mirrors: tuple[str, ...]                 # the cache, ahead of docker.registryMirrors
    endpoints: tuple[str, ...]               # host:port names that get the CA in certs.d
    ca_cert: pulumi.Output[str]
    pull_credentials: pulumi.Output[str] | None   # the kubelet's config.json for the private registry


# Where resources lived before they moved to the component that now makes them: an alias per moved
# child keeps every deployed stack's resource as it is (neither replaced nor re-run).
CONTROL_PLANE = ("control-plane", "kube-hardway:control_plane:ControlPlane")
REGISTRY = ("registry", "kube-hardway:registry:Registry")


def moved_from(name: str, parent: tuple[str, str]) -> pulumi.Alias:
    """The alias of a child that shipped as `name` under the component `parent` (name, type)."""
    return pulumi.Alias(name=name, parent=pulumi.create_urn(*parent))
