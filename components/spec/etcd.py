"""`etcd`: the etcd members' data directory, extra flags, health timeout and whether etcd checks
who a client is (`auth`, on by default: users and roles by client-cert name, see EtcdCluster)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.spec.problems import Problems, directory, flag, integer, string

KEY = "etcd"
KNOWN = ("auth", "dataDir", "extraArgs", "healthTimeoutSeconds")
_FLAG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VALUE = re.compile(r"^[A-Za-z0-9._:/,=@%+-]+$")

# etcd flags the program owns; letting extraArgs override them would break TLS or membership.
ETCD_MANAGED_FLAGS = frozenset(
    {
        "name", "data-dir", "listen-client-urls", "advertise-client-urls", "listen-peer-urls",
        "initial-advertise-peer-urls", "initial-cluster", "initial-cluster-token",
        "initial-cluster-state", "client-cert-auth", "trusted-ca-file", "cert-file", "key-file",
        "peer-client-cert-auth", "peer-trusted-ca-file", "peer-cert-file", "peer-key-file",
        "peer-cert-allowed-hostname", "peer-cert-allowed-cn",
    }
)


@dataclass(frozen=True)
class EtcdSpec:
    data_dir: str = "/var/lib/etcd"
    extra_args: Mapping[str, str] = field(default_factory=dict)
    health_timeout: int = 120
    auth: bool = True                       # etcd RBAC: each client cert's name is a user with a role


def parse(etcd: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> EtcdSpec:
    data_dir = directory(string(etcd.get("dataDir"), "etcd.dataDir", p, EtcdSpec.data_dir) or EtcdSpec.data_dir,
                         "etcd.dataDir", p, EtcdSpec.data_dir)
    extra = etcd.get("extraArgs") or {}
    if not isinstance(extra, Mapping):
        p.add("etcd.extraArgs", "must be a map of etcd flag (without --) -> value")
        extra = {}
    for name, value in extra.items():
        if not _FLAG.match(str(name)):
            p.add(f"etcd.extraArgs.{name}", "must be an etcd flag name without the leading --, like heartbeat-interval")
        elif name in ETCD_MANAGED_FLAGS:
            p.add(f"etcd.extraArgs.{name}", "is managed by kube-hardway (TLS and membership); remove it")
        if not isinstance(value, (str, int, bool)) or not _VALUE.match(str(value)):
            p.add(f"etcd.extraArgs.{name}", "value must be one word of letters, digits and . _ : / , = @ % + - "
                  f"(no spaces, quotes or shell characters), got {value!r}")
    return EtcdSpec(data_dir=data_dir, auth=flag(etcd.get("auth"), "etcd.auth", p, EtcdSpec.auth),
                    health_timeout=integer(etcd.get("healthTimeoutSeconds"), "etcd.healthTimeoutSeconds", p,
                                           EtcdSpec.health_timeout, 5, 3600),
                    extra_args={str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in extra.items()})
