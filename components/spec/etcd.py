"""`etcd`: the etcd members' data directory, extra flags and health timeout."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.spec.problems import Problems, directory, integer, string

KEY = "etcd"
KNOWN = ("dataDir", "extraArgs", "healthTimeoutSeconds")
_FLAG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VALUE = re.compile(r"^[A-Za-z0-9._:/,=@%+-]+$")

# etcd flags the program owns; letting extraArgs override them would break TLS or membership.
ETCD_MANAGED_FLAGS = frozenset(
    {
        "name", "data-dir", "listen-client-urls", "advertise-client-urls", "listen-peer-urls",
        "initial-advertise-peer-urls", "initial-cluster", "initial-cluster-token",
        "initial-cluster-state", "client-cert-auth", "trusted-ca-file", "cert-file", "key-file",
        "peer-client-cert-auth", "peer-trusted-ca-file", "peer-cert-file", "peer-key-file",
    }
)


@dataclass(frozen=True)
class EtcdSpec:
    data_dir: str = "/var/lib/etcd"
    extra_args: Mapping[str, str] = field(default_factory=dict)
    health_timeout: int = 120


def parse(etcd: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> EtcdSpec:
    data_dir = directory(string(etcd.get("dataDir"), "etcd.dataDir", p, EtcdSpec.data_dir) or EtcdSpec.data_dir,
                         "etcd.dataDir", p, EtcdSpec.data_dir)
    extra = etcd.get("extraArgs") or {}
    if not isinstance(extra, Mapping):
        p.add("etcd.extraArgs", "must be a map of etcd flag (without --) -> value")
        extra = {}
    for flag, value in extra.items():
        if not _FLAG.match(str(flag)):
            p.add(f"etcd.extraArgs.{flag}", "must be an etcd flag name without the leading --, like heartbeat-interval")
        elif flag in ETCD_MANAGED_FLAGS:
            p.add(f"etcd.extraArgs.{flag}", "is managed by kube-hardway (TLS and membership); remove it")
        if not isinstance(value, (str, int, bool)) or not _VALUE.match(str(value)):
            p.add(f"etcd.extraArgs.{flag}", "value must be one word of letters, digits and . _ : / , = @ % + - "
                  f"(no spaces, quotes or shell characters), got {value!r}")
    return EtcdSpec(data_dir=data_dir,
                    health_timeout=integer(etcd.get("healthTimeoutSeconds"), "etcd.healthTimeoutSeconds", p,
                                           EtcdSpec.health_timeout, 5, 3600),
                    extra_args={str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in extra.items()})
