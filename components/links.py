"""What one component hands another: small dataclasses of outputs, made by the component that
owns the thing and passed on as arguments in the composition (`__main__.py`), so that no
component imports another."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi

from components.layout import FLANNEL_PKI_DIR
from components.spec import HostSpec

# etcd users that other components log in as (EtcdCluster makes them; ClusterPKI names certs after them)
ETCD_FLANNELD_USER = "flanneld"
ETCD_LOCK_USER = "kube-hardway-lock"        # the rolling-restart locks under kube-hardway/


@dataclass(frozen=True)
class EtcdEndpoints:
    """How to reach the etcd cluster, from EtcdCluster: its client URLs, where etcdctl runs with the
    root client cert, the gate that passes once every member is healthy, and the passwords of the
    users that log in through the JSON gateway (secrets)."""

    client_endpoints: tuple[str, ...]
    admin_host: HostSpec                    # a member: one-off etcdctl work runs there
    etcdctl: str                            # its path on the members
    client_pki: dict[str, str] = field(hash=False)   # ca, client_cert, client_key on the members
    health: pulumi.Resource = field(hash=False)
    # etcd's users and roles made and auth on (`etcd.auth`): a client's first request must not race
    # `auth enable` (a flanneld starting then hung in its first Range until systemd killed it)
    users: pulumi.Resource | None = field(hash=False, default=None)
    passwords: Mapping[str, pulumi.Output[str]] = field(hash=False, default_factory=dict)


@dataclass(frozen=True)
class EtcdAccess:
    """How a worker's scripts reach etcd (curl: workers have no etcdctl): through the JSON
    gateway, with the nameless gateway cert, logged in as `user` with the password in
    `password_file` (flanneld's health check as flanneld; DockerNode's restart lock as the lock
    user). Where etcd auth is off, the login is refused and the requests go without it."""

    endpoints: tuple[str, ...]
    user: str = ETCD_FLANNELD_USER
    password_file: str = f"{FLANNEL_PKI_DIR}/flanneld.password"
    ca: str = f"{FLANNEL_PKI_DIR}/ca.crt"
    cert: str = f"{FLANNEL_PKI_DIR}/gateway.crt"
    key: str = f"{FLANNEL_PKI_DIR}/gateway.key"


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
