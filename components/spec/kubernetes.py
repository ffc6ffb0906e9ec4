"""`kubernetes`: how nodes reach the API servers, the kubelet, kube-proxy and cluster DNS."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.spec.problems import Problems, integer, ipv4, string, url, valid_values

KEY = "kubernetes"
KNOWN = ("apiEndpoint", "apiProxyPort", "bootstrapTokenTtlHours", "kubelet", "kubeProxy", "dns", "podSecurity",
         "encryption", "drain")
KUBELET_KEYS = ("maxPods", "extraConfig", "healthTimeoutSeconds")
PROXY_KEYS = ("mode", "conntrackMaxPerCore")
DNS_KEYS = ("replicas", "upstream")
PROXY_MODES = ("iptables", "ipvs")
POD_SECURITY_KEYS = ("defaultEnforce",)
ENCRYPTION_KEYS = ("provider", "keys")
DRAIN_KEYS = ("timeoutSeconds", "gracePeriodSeconds")
# how Secrets are encrypted in etcd (the API server's EncryptionConfiguration); none: stored plain
ENCRYPTION_PROVIDERS = ("secretbox", "aescbc", "none")
_KEY_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
POD_SECURITY_LEVELS = ("privileged", "baseline", "restricted")   # the Pod Security Standards
# KubeletConfiguration fields the program sets from other keys: extraConfig must not fight them
KUBELET_MANAGED = ("authentication", "authorization", "clusterDNS", "clusterDomain", "cgroupDriver",
                   "rotateCertificates", "tlsCertFile", "tlsPrivateKeyFile", "readOnlyPort", "maxPods",
                   "containerRuntimeEndpoint", "registerWithTaints", "staticPodPath", "kind", "apiVersion")


@dataclass(frozen=True)
class KubernetesSpec:
    # A load balancer or VIP in front of the API servers (https://host:port). Unset with several
    # masters: every worker runs a local proxy at 127.0.0.1:apiProxyPort to all of them.
    api_endpoint: str | None = None
    api_proxy_port: int = 16443
    # how long the kubelet TLS bootstrap token stays valid after the stack's node set last changed
    # (kubeadm's 24 h); 0: it never expires
    bootstrap_token_ttl_hours: int = 24
    max_pods: int = 110
    kubelet_extra: Mapping[str, Any] = field(default_factory=dict)
    node_timeout: int = 180                 # a node is Ready within this after its kubelet starts
    proxy_mode: str = "iptables"
    conntrack_max_per_core: int | None = None   # None: kube-proxy's default; 0 leaves nf_conntrack alone
    dns_replicas: int = 2
    dns_upstream: tuple[str, ...] = ()      # empty: each CoreDNS pod forwards to its node's /etc/resolv.conf
    # the Pod Security level enforced (and warned and audited) in a namespace without its own
    # `pod-security.kubernetes.io/*` labels; None: no cluster-wide default (the API server's: privileged)
    pod_security_default: str | None = None
    # Secrets encrypted at rest: `encryption_keys[0]` encrypts, the others only decrypt (a rotation
    # in flight); each name is a 32-byte key kube-hardway generates and keeps as a Pulumi secret
    encryption_provider: str = "secretbox"
    encryption_keys: tuple[str, ...] = ("key-1",)
    # a version change drains each node first (kubectl drain, PodDisruptionBudgets respected): how
    # long the drain may take before the node is given back (uncordoned) and the run fails, and
    # each evicted pod's grace period (None: the pod's own terminationGracePeriodSeconds)
    drain_timeout: int = 300
    drain_grace_period: int | None = None


def parse(kube: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> KubernetesSpec:
    d = KubernetesSpec()
    endpoint = string(kube.get("apiEndpoint"), "kubernetes.apiEndpoint", p)
    if endpoint is not None:
        url(endpoint, "kubernetes.apiEndpoint", p, schemes=("https",))
    kubelet = p.section("kubernetes.kubelet", kube.get("kubelet"), KUBELET_KEYS)
    extra = kubelet.get("extraConfig") or {}
    if not isinstance(extra, Mapping):
        p.add("kubernetes.kubelet.extraConfig", "must be a mapping of KubeletConfiguration fields")
        extra = {}
    for key in sorted(set(extra) & set(KUBELET_MANAGED)):
        p.add(f"kubernetes.kubelet.extraConfig.{key}", "is set by kube-hardway from other keys; remove it "
              "(maxPods: kubernetes.kubelet.maxPods, clusterDNS/clusterDomain: network.*, cgroupDriver: docker.cgroupDriver)")
    proxy = p.section("kubernetes.kubeProxy", kube.get("kubeProxy"), PROXY_KEYS)
    mode = proxy.get("mode", d.proxy_mode)
    if mode not in PROXY_MODES:
        p.add("kubernetes.kubeProxy.mode", f"unknown mode {mode!r}; {valid_values(mode, PROXY_MODES, 'modes')}")
        mode = d.proxy_mode
    conntrack = proxy.get("conntrackMaxPerCore")
    if conntrack is not None:
        conntrack = integer(conntrack, "kubernetes.kubeProxy.conntrackMaxPerCore", p, 0, 0, 1 << 24)
    dns = p.section("kubernetes.dns", kube.get("dns"), DNS_KEYS)
    upstream = dns.get("upstream") or []
    if isinstance(upstream, str):
        upstream = [upstream]
    if not isinstance(upstream, list):
        p.add("kubernetes.dns.upstream", "must be a list of resolver addresses like [10.0.0.53]")
        upstream = []
    for i, server in enumerate(upstream):
        ipv4(server, f"kubernetes.dns.upstream[{i}]", p)
    pod_security = p.section("kubernetes.podSecurity", kube.get("podSecurity"), POD_SECURITY_KEYS)
    level = pod_security.get("defaultEnforce")
    if level is not None and level not in POD_SECURITY_LEVELS:
        p.add("kubernetes.podSecurity.defaultEnforce",
              f"unknown level {level!r}; {valid_values(level, POD_SECURITY_LEVELS, 'levels')} (or leave it unset)")
        level = None
    encryption = p.section("kubernetes.encryption", kube.get("encryption"), ENCRYPTION_KEYS)
    provider = encryption.get("provider", d.encryption_provider)
    if provider not in ENCRYPTION_PROVIDERS:
        p.add("kubernetes.encryption.provider",
              f"unknown provider {provider!r}; {valid_values(provider, ENCRYPTION_PROVIDERS, 'providers')}")
        provider = d.encryption_provider
    keys = encryption.get("keys", list(d.encryption_keys))
    what = "a list of distinct key names like [key-2, key-1]: the first encrypts, the others only decrypt"
    if not isinstance(keys, list) or not keys or len(set(map(str, keys))) != len(keys):
        p.add("kubernetes.encryption.keys", f"must be {what}; got {keys!r}")
        keys = list(d.encryption_keys)
    for i, key in enumerate(keys):
        if not isinstance(key, str) or not _KEY_NAME.match(key):
            p.add(f"kubernetes.encryption.keys[{i}]", f"must be a key name of lowercase letters, digits and - "
                  f"(at most 32), like key-2; got {key!r}")
    if not all(isinstance(k, str) and _KEY_NAME.match(k) for k in keys):
        keys = list(d.encryption_keys)
    drain = p.section("kubernetes.drain", kube.get("drain"), DRAIN_KEYS)
    grace = drain.get("gracePeriodSeconds")
    if grace is not None:
        grace = integer(grace, "kubernetes.drain.gracePeriodSeconds", p, 0, 0, 24 * 3600)
    return KubernetesSpec(
        drain_timeout=integer(drain.get("timeoutSeconds"), "kubernetes.drain.timeoutSeconds", p, d.drain_timeout,
                              10, 24 * 3600),
        drain_grace_period=grace,
        encryption_provider=provider, encryption_keys=tuple(keys),
        api_endpoint=endpoint.rstrip("/") if endpoint else None,
        api_proxy_port=integer(kube.get("apiProxyPort"), "kubernetes.apiProxyPort", p, d.api_proxy_port, 1, 65535),
        bootstrap_token_ttl_hours=integer(kube.get("bootstrapTokenTtlHours"), "kubernetes.bootstrapTokenTtlHours", p,
                                          d.bootstrap_token_ttl_hours, 0, 24 * 365),
        max_pods=integer(kubelet.get("maxPods"), "kubernetes.kubelet.maxPods", p, d.max_pods, 1, 2500),
        kubelet_extra=dict(extra),
        node_timeout=integer(kubelet.get("healthTimeoutSeconds"), "kubernetes.kubelet.healthTimeoutSeconds", p,
                             d.node_timeout, 10, 3600),
        proxy_mode=mode, conntrack_max_per_core=conntrack,
        dns_replicas=integer(dns.get("replicas"), "kubernetes.dns.replicas", p, d.dns_replicas, 1, 100),
        dns_upstream=tuple(str(s) for s in upstream),
        pod_security_default=level,
    )
