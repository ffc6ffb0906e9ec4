"""`network`: the pod network flannel allocates from, the service range, cluster DNS, and where
flannel's config lives in etcd."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.spec.hosts import HostSpec
from components.spec.problems import LABEL, Problems, cidr, integer, string, valid_values

KEY = "network"
KNOWN = ("podCidr", "subnetLen", "subnetMin", "subnetMax", "backend", "serviceCidr", "clusterDns",
         "clusterDomain", "etcdPrefix", "healthTimeoutSeconds")
BACKENDS = ("vxlan", "host-gw", "udp")


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
    health_timeout: int = 120     # flannel: every worker holds a lease

    @property
    def kubernetes_service_ip(self) -> str:
        """The first service address, reserved for the `kubernetes` service (and on its cert)."""
        return str(ipaddress.ip_network(self.service_cidr)[1])


def parse(net: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> NetworkSpec:
    hosts: tuple[HostSpec, ...] = parsed["hosts"]
    d = NetworkSpec()
    pod = cidr(net.get("podCidr", d.pod_cidr), "network.podCidr", p)
    svc = cidr(net.get("serviceCidr", d.service_cidr), "network.serviceCidr", p)
    subnet_len = integer(net.get("subnetLen"), "network.subnetLen", p, d.subnet_len, 1, 30)
    backend = net.get("backend", d.backend)
    if backend not in BACKENDS:
        p.add("network.backend", f"unknown backend {backend!r}; {valid_values(backend, BACKENDS, 'backends')}")
    elif backend == "udp":
        # flannel builds its udp backend (cgo) for amd64 only
        arm = [h.name for h in hosts if h.arch != "amd64" and (h.has("node") or h.has("master"))]
        if arm:
            p.add("network.backend", f"udp is only in flannel's amd64 builds, and {', '.join(arm)} "
                  "are not amd64; use vxlan or host-gw")
    if pod and svc and pod.overlaps(svc):
        p.add("network.serviceCidr", f"{svc} overlaps network.podCidr {pod}; pick disjoint ranges")
    for net_range, key in ((pod, "network.podCidr"), (svc, "network.serviceCidr")):
        if net_range is None:
            continue
        for h in hosts:
            for addr in {h.address, h.internal_address}:
                if ipaddress.IPv4Address(addr) in net_range:
                    p.add(key, f"{net_range} contains host {h.name}'s address {addr}; "
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
    domain = string(net.get("clusterDomain"), "network.clusterDomain", p, d.cluster_domain) or d.cluster_domain
    if not all(LABEL.match(label) for label in domain.split(".")):
        p.add("network.clusterDomain", f"{domain!r} is not a DNS domain like cluster.local")
    prefix = string(net.get("etcdPrefix"), "network.etcdPrefix", p, d.etcd_prefix) or d.etcd_prefix
    if not re.match(r"^(/[A-Za-z0-9._-]+)+$", prefix):
        p.add("network.etcdPrefix", f"{prefix!r} must be an absolute key path like /kubernetes/network")
    return NetworkSpec(
        pod_cidr=str(pod or d.pod_cidr), subnet_len=subnet_len,
        subnet_min=str(bounds["subnetMin"]) if "subnetMin" in bounds else None,
        subnet_max=str(bounds["subnetMax"]) if "subnetMax" in bounds else None,
        backend=backend if backend in BACKENDS else d.backend, service_cidr=str(svc or d.service_cidr),
        cluster_dns=str(dns), cluster_domain=domain, etcd_prefix=prefix,
        health_timeout=integer(net.get("healthTimeoutSeconds"), "network.healthTimeoutSeconds", p,
                               d.health_timeout, 10, 3600),
    )
