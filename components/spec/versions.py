"""`versions`: which release of each component to install; defaults are the pinned releases of
components/releases.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.releases import DEFAULT_VERSIONS
from components.spec.problems import Problems, version

KEY = "versions"
# keys an earlier kube-hardway accepted, and why they are gone
RETIRED = {"cniPlugins": "kube-hardway installs no CNI plugins: pods sit on docker0, on the node's flannel subnet "
                         "(cri-dockerd runs with no network plugin, as the classic guides did); remove the key"}
KNOWN = (*DEFAULT_VERSIONS, *RETIRED)

# flannel read its config through the etcd v2 API before v0.18.0 (flannel-io/flannel#1562); etcd
# serves v2 only when started with --enable-v2, a flag 3.6 removed.
FLANNEL_FIRST_V3 = (0, 18)
ETCD_WITHOUT_V2 = (3, 6)
# flannel before v0.21.3 drops lease events: its etcd v3 watch keeps the first event of each response
# and watches again from "now" (subnet/etcd/registry.go: `ev := wresp.Events[0]`, `WithRev(since)`
# with since = the response's CompactRevision, 0), so a peer's lease made while flanneld starts can
# get no route until the peer renews it, a day later. flannel-io/flannel#1726 (v0.21.3) watches once
# from the listed revision and handles every event.
FLANNEL_WATCHES_EVERY_LEASE = (0, 21, 3)
# the oldest etcd: users without a password (cert-name auth only, `user add --no-password`) and
# `--peer-cert-allowed-hostname` came in 3.4
ETCD_OLDEST = (3, 4)
# the oldest Kubernetes whose flags kube-hardway renders (dockershim gone: cri-dockerd)
KUBERNETES_OLDEST = (1, 24)
# from this release cri-dockerd reports its CRI API version ("v1") as RuntimeApiVersion
CRI_DOCKERD_ANSWERS_V1 = (0, 3)


def numbers(v: str) -> tuple[int, ...]:
    """(major, minor, patch) of a validated version string like 1.24.0-alpha.1."""
    return tuple(int(n) for n in v.split("-", 1)[0].split(".")[:3])


@dataclass(frozen=True)
class KubernetesVersion:
    """`versions.kubernetes`, parsed once, with what each release changed that the program acts on:
    a new rule is one named capability here, not a version comparison where it is used."""

    text: str                               # as configured, e.g. 1.24.0-alpha.1
    minor: tuple[int, int]

    @classmethod
    def parse(cls, text: str) -> KubernetesVersion:
        major, minor = numbers(text)[:2]
        return cls(text, (major, minor))

    def __str__(self) -> str:
        return self.text

    @property
    def supported(self) -> bool:
        """kube-hardway renders this release's flags (KUBERNETES_OLDEST and newer)."""
        return self.minor >= KUBERNETES_OLDEST

    @property
    def drains_watches(self) -> bool:
        """kube-apiserver has --shutdown-watch-termination-grace-period (1.27)."""
        return self.minor >= (1, 27)

    @property
    def runtime_endpoint_in_config(self) -> bool:
        """The kubelet reads `containerRuntimeEndpoint` from its config file, and `--container-runtime`
        is gone (1.27)."""
        return self.minor >= (1, 27)

    @property
    def kubelet_waits_for_its_cert(self) -> bool:
        """A bootstrapping kubelet looks for its first client cert only on its 10 s transport check,
        its API connections unauthenticated until then; 1.27 checks every second until it has one
        (kubernetes/kubernetes#114367)."""
        return self.minor < (1, 27)

    @property
    def kubelet_posts_ready_at_once(self) -> bool:
        """A starting kubelet posts its node's status every 100 ms until the node is Ready (1.26,
        kubernetes/kubernetes#112618). Before, it posts at its start and then only every
        `nodeStatusUpdateFrequency` (10 s): its first post often races its first pod listing ("PLEG
        is not healthy: pleg has yet to be successful", seen in the lab on 2 restarts in 4), and the
        node then stays NotReady, tainted not-ready:NoExecute and its pods out of their Services'
        endpoints, for 10 s after every start."""
        return self.minor >= (1, 26)

    @property
    def refuses_cgroup_v1(self) -> bool:
        """The kubelet's `failCgroupV1` defaults to true (1.35)."""
        return self.minor >= (1, 35)

    @property
    def pod_security_config_api(self) -> str:
        """The PodSecurityConfiguration version its API server reads: v1 from 1.25, v1beta1 in 1.23–1.24."""
        return "pod-security.admission.config.k8s.io/" + ("v1" if self.minor >= (1, 25) else "v1beta1")

    @property
    def prerelease(self) -> str:
        """`alpha.1` of 1.24.0-alpha.1; empty for a release."""
        return self.text.partition("-")[2]

    @property
    def checks_no_new_privs_as_docker(self) -> bool:
        """The kubelet admits a pod with `allowPrivilegeEscalation: false` only if the runtime's CRI
        `RuntimeApiVersion` parses as a Docker API version >= 1.23, when the runtime calls itself
        "docker", as cri-dockerd does (`noNewPrivsAdmitHandler`, pkg/kubelet/lifecycle/handlers.go).
        Gone with dockershim's leftovers: in 1.23.x, absent from v1.24.0-alpha.2 on; the lab's
        v1.24.0-alpha.1 has it ("Cannot enforce NoNewPrivs: illegal version string "v1"")."""
        return self.minor == (1, 24) and numbers(self.text)[2] == 0 and self.prerelease in ("alpha.0", "alpha.1")


def runs_no_new_privs_pods(kubernetes: KubernetesVersion, cri_dockerd: str) -> bool:
    """Whether pods with `allowPrivilegeEscalation: false` (every pod of the Pod Security
    "restricted" profile) start: cri-dockerd answers the Docker API version ("1.41.0") before 0.3.0
    and its CRI version ("v1") from 0.3.0 (Mirantis/cri-dockerd#167), which that kubelet check refuses."""
    return not kubernetes.checks_no_new_privs_as_docker or numbers(cri_dockerd)[:2] < CRI_DOCKERD_ANSWERS_V1


def flannel_etcd_api(flannel_version: str) -> int:
    return 3 if numbers(flannel_version)[:2] >= FLANNEL_FIRST_V3 else 2


def flannel_drops_lease_events(flannel_version: str) -> bool:
    return numbers(flannel_version) < FLANNEL_WATCHES_EVERY_LEASE


def parse(versions: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> dict[str, str]:
    for key, why in RETIRED.items():
        if key in versions:
            p.add(f"versions.{key}", why)
    chosen = {k: version(versions.get(k), f"versions.{k}", p, v) for k, v in DEFAULT_VERSIONS.items()}
    if flannel_etcd_api(chosen["flannel"]) == 2 and numbers(chosen["etcd"])[:2] >= ETCD_WITHOUT_V2:
        for key, other in (("flannel", "etcd"), ("etcd", "flannel")):
            p.add(f"versions.{key}", f"flannel {chosen['flannel']} reads its config through the etcd v2 API, "
                  f"which etcd {chosen['etcd']} no longer serves (3.6 removed --enable-v2): use flannel >= 0.18 "
                  f"or etcd <= 3.5 (see versions.{other})")
    if numbers(chosen["etcd"])[:2] < ETCD_OLDEST:
        p.add("versions.etcd", f"{chosen['etcd']} is older than kube-hardway supports (it needs etcd users "
              f"without passwords and --peer-cert-allowed-hostname); use 3.4 or newer "
              f"(the default is {DEFAULT_VERSIONS['etcd']})")
    if not KubernetesVersion.parse(chosen["kubernetes"]).supported:
        p.add("versions.kubernetes", f"{chosen['kubernetes']} is older than kube-hardway supports; use "
              f"{'.'.join(map(str, KUBERNETES_OLDEST))} or newer (the default is {DEFAULT_VERSIONS['kubernetes']})")
    return chosen
