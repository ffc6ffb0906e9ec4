"""KubeNode: every worker's kubelet and kube-proxy, with Docker reached through cri-dockerd.

One component for all workers, as DockerNode (a component per worker was one more resource per
worker in the stack's state); its commands are named per worker (`node-<host>-kubelet`), with the URNs
they had under a component per worker. Per worker, in parallel with every other worker (each a
`HostService`, one SSH session):

1. with several masters and no `kubernetes.apiEndpoint`: a local TCP proxy (haproxy, from the
   hosts' repository or from its package files: `artifacts.sources.apiServerProxy`) at
   127.0.0.1:`apiProxyPort` to every API server, health-checked, so the node keeps working
   while any one master is down;
2. cri-dockerd with `--network-plugin=` empty: pods sit on docker0, on the worker's flannel subnet,
   exactly as the classic guides had them; the pause image from `images.pause`;
3. the kubelet, from a `KubeletConfiguration` file: no anonymous access, webhook authn/authz, a
   serving cert from the cluster CA (the API server verifies it), client certs from TLS bootstrap
   with the cluster's bootstrap token, rotated without a human (the token leaves the node once
   it is Ready: it could join any new node until it expires); masters register tainted. A
   change restarts kubelets one worker at a time (the rolling lock in etcd); the gate waits until
   the API server reports the node Ready (by the running kubelet's own status) and free of the
   node lifecycle controller's not-ready/unreachable taints, and names the node and the kubelet's
   last log lines;
4. kube-proxy, from a `KubeProxyConfiguration` file (iptables, or ipvs);
5. for a Kubernetes version change (not a settings change), the node's drain and uncordon, run on
   the first master with its kubectl (no worker holds a credential that can evict pods): the drain
   takes the kubelet's rolling lock for the node, cordons it and drains it (evictions, so
   PodDisruptionBudgets hold) before the kubelet and kube-proxy change; the node's restart finds
   the lock held for it; the uncordon gives node and lock back once the node is Ready. Nothing runs
   when they are created (a new node has nothing to drain), and the control plane's changes come
   first (they wait for the cluster objects, as the kubelet does). The preflight's part
   (`version_check`) refuses the skews Kubernetes does not support.

Destroy removes the pods' containers and the images pulled since the kubelet was installed (those
Docker had before, preloaded ones included, stay for their owners), unmounts the kubelet's volumes before removing its
directory (as the seeds' turndown does), and has kube-proxy remove its rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.artifacts import ReleaseFiles, StagedRelease
from components.layout import (
    ADMIN_KUBECONFIG,
    API_PORT,
    CONTROL_PLANE_ROLE,
    CRI_SOCKET,
    DRAIN_FAILED,
    KUBE_CONF_DIR,
    KUBE_PROXY_HEALTH_PORT,
    KUBELET_CLIENT,
    KUBELET_DIR,
    KUBELET_HEALTHZ_PORT,
    KUBELET_KUBECONFIG,
    KUBELET_PULL_CREDENTIALS,
    NODE_CA,
    NODE_DIR,
    NODE_HEALTH,
    NODES_FILE,
    ROLLING_RESTART,
    RUN_DIR,
    STATE_DIR,
)
from components.pki import KeyPair, NodeCerts, kubeconfig
from components.remote import Gate, HostCommand, HostFile, HostService, HostStep, digest, rolling_restart
from components.spec import HostSpec, ImagesSpec, KubernetesSpec, NetworkSpec, SshSpec
from components.spec.versions import KubernetesVersion
from components.templates import render

CONTROL_PLANE_TAINT = {"key": CONTROL_PLANE_ROLE, "effect": "NoSchedule"}
# how long a node's upgrade may hold the lock after its drain (its kubelet and kube-proxy, Ready,
# uncordoned): a drain waits its turn up to nodes x (drain timeout + this), then gives up, changing
# nothing. A constant, not the kubelet's health timeout: a drain's script changes with drain settings
# and versions only, so a kubelet setting reverted after a failed run is still a no-op
NODE_TURN = 300


@dataclass(frozen=True)
class KubeNodeArgs:
    workers: tuple[HostSpec, ...]           # masters among them register with the control-plane NoSchedule taint
    ssh: SshSpec
    version: KubernetesVersion
    kubernetes: KubernetesSpec
    network: NetworkSpec
    images: ImagesSpec
    cgroup_driver: str                      # Docker's: the kubelet must use the same
    api_servers: tuple[str, ...]            # every master's address
    certs: NodeCerts
    bootstrap_token: pulumi.Output[str]     # <id>.<secret>, a secret
    # per architecture among the workers
    kubelet_release: Mapping[str, ReleaseFiles]
    kube_proxy_release: Mapping[str, ReleaseFiles]
    cri_dockerd_release: Mapping[str, ReleaseFiles]
    api_proxy_release: Mapping[str, ReleaseFiles]   # haproxy, where nodes reach several API servers through it
    # per worker
    docker_running: Mapping[str, pulumi.Resource]   # Docker runs (what cri-dockerd needs)
    docker_ready: Mapping[str, pulumi.Resource]     # Docker runs, with its preloaded images (the pause image): the kubelet's
    control_plane_ready: list[pulumi.Resource]   # the bootstrap objects exist (token, bindings)
    admin: HostSpec                         # the first master: where the node is drained and uncordoned
    kubectl: str                            # its kubectl


def api_server_url(kube: KubernetesSpec, api_servers: tuple[str, ...]) -> str:
    """What nodes dial: the configured endpoint, the one master, or the node-local proxy."""
    if kube.api_endpoint:
        return kube.api_endpoint
    if len(api_servers) == 1:
        return f"https://{api_servers[0]}:{API_PORT}"
    return f"https://127.0.0.1:{kube.api_proxy_port}"


def uses_api_proxy(kube: KubernetesSpec, api_servers: tuple[str, ...]) -> bool:
    return api_server_url(kube, api_servers).startswith("https://127.0.0.1:")


def kubelet_flags(version: KubernetesVersion, host: HostSpec) -> list[tuple[str, str]]:
    flags = [
        ("config", f"{NODE_DIR}/kubelet.yaml"),
        ("kubeconfig", KUBELET_KUBECONFIG),
        ("bootstrap-kubeconfig", f"{NODE_DIR}/bootstrap.kubeconfig"),
        ("cert-dir", f"{KUBELET_DIR}/pki"),
        ("hostname-override", host.name),
        ("node-ip", host.internal_address),
    ]
    if not version.runtime_endpoint_in_config:
        flags += [("container-runtime", "remote"), ("container-runtime-endpoint", f"unix://{CRI_SOCKET}")]
    return flags


def kubelet_config(args: KubeNodeArgs, host: HostSpec) -> dict[str, Any]:
    kube, net = args.kubernetes, args.network
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": NODE_CA}},
        "authorization": {"mode": "Webhook"},
        "readOnlyPort": 0,
        "clusterDNS": [net.cluster_dns],
        "clusterDomain": net.cluster_domain,
        "cgroupDriver": args.cgroup_driver,
        "rotateCertificates": True,
        "tlsCertFile": f"{NODE_DIR}/kubelet.crt",
        "tlsPrivateKeyFile": f"{NODE_DIR}/kubelet.key",
        "maxPods": kube.max_pods,
    }
    if host.has("master"):
        config["registerWithTaints"] = [CONTROL_PLANE_TAINT]
    if args.version.runtime_endpoint_in_config:
        config["containerRuntimeEndpoint"] = f"unix://{CRI_SOCKET}"
    if not args.version.kubelet_posts_ready_at_once and "nodeStatusUpdateFrequency" not in kube.kubelet_extra:
        # its status computed every 2 s, so a start's NotReady lasts 2 s, not 10; still posted only
        # when it changes or every 5 min (upstream's default; set alone, the update frequency would
        # also become the report frequency): the cost is a GET from the API server's cache every 2 s
        config["nodeStatusUpdateFrequency"] = "2s"
        config["nodeStatusReportFrequency"] = "5m"
    return {**config, **kube.kubelet_extra}


def kube_proxy_config(args: KubeNodeArgs, host: HostSpec) -> dict[str, Any]:
    config: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": f"{NODE_DIR}/kube-proxy.kubeconfig"},
        "hostnameOverride": host.name,
        # its node IP, as the kubelet's --node-ip: with 0.0.0.0 kube-proxy looks its Node up instead,
        # backing off 1, 2, 4, 8, 16 s while the kubelet is still registering it (pkg/util/node
        # GetNodeIP), and was ready up to 30 s after its kubelet; iptables and ipvs bind nothing to it
        "bindAddress": host.internal_address,
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTH_PORT}",
        "clusterCIDR": args.network.pod_cidr,
        "mode": args.kubernetes.proxy_mode,
    }
    if args.kubernetes.conntrack_max_per_core is not None:
        config["conntrack"] = {"maxPerCore": args.kubernetes.conntrack_max_per_core}
    return config


def version_check(host: HostSpec, version: KubernetesVersion, master: bool) -> str:
    """The preflight's part on a node: the version skew Kubernetes supports, against what runs there."""
    return render("kubernetes/version-check.sh.j2", host=host.name, version=version, minor=version.minor[1],
                  units=["kube-apiserver", "kubelet"] if master else ["kubelet"])


def bootstrap_kubeconfig(server: str, ca: pulumi.Input[str], token: pulumi.Output[str]) -> pulumi.Output[str]:
    return pulumi.Output.all(ca, token).apply(lambda v: render(
        "kubernetes/bootstrap-kubeconfig.j2", cluster="kube-hardway", server=server, ca=v[0], token=v[1]))


class KubeNode(pulumi.ComponentResource):
    ready: dict[str, HostService]           # per worker: the node is Ready as the API server sees it

    def __init__(self, name: str, args: KubeNodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:kube_node:KubeNode", name, None, opts)
        self.ready = {host.name: self._node(f"{name}-{host.name}", host, args) for host in args.workers}
        self.register_outputs({})

    def _node(self, name: str, host: HostSpec, args: KubeNodeArgs) -> HostService:
        ssh, kube = args.ssh, args.kubernetes
        server = api_server_url(kube, args.api_servers)
        values = {"host": host.name, "state_dir": STATE_DIR, "version": args.version}
        # what reaching the API server takes: the local proxy, where there is one
        reach = [self._api_proxy(name, host, args)] if uses_api_proxy(kube, args.api_servers) else []

        # a version change drains the node first, from the first master, one node at a time (the
        # kubelet's rolling lock, held from the drain to the uncordon); a settings change does not
        upgrade = {"node": host.name, "version": args.version, "kubectl": args.kubectl, "kubeconfig": ADMIN_KUBECONFIG,
                   "rolling": ROLLING_RESTART}
        drained = HostCommand(
            f"{name}-drain", args.admin, ssh, create=None, update=render(
                "kubernetes/node-drain.sh.j2", nodes_file=NODES_FILE, failed=DRAIN_FAILED, timeout=kube.drain_timeout,
                grace=kube.drain_grace_period, wait=len(args.workers) * (kube.drain_timeout + NODE_TURN),
                **upgrade),
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.control_plane_ready))

        cri = StagedRelease(f"{name}-cri-dockerd", host, ssh, args.cri_dockerd_release[host.arch], parent=self)
        cri_unit = render("kubernetes/cri-dockerd.service.j2", binary=cri.executable("cri-dockerd"), socket=CRI_SOCKET,
                          pause=args.images.pause, **values)
        cri_dockerd = HostService(
            f"{name}-cri-dockerd", host, ssh, "cri-docker.service", cri_unit,
            steps=[cri.step, HostStep(":", render("kubernetes/cri-dockerd-delete.sh.j2", socket=CRI_SOCKET))], reads=[cri.identity],
            gate=Gate(f"cri-dockerd on {host.name}", render("kubernetes/cri-dockerd-health.sh.j2", socket=CRI_SOCKET,
                                                            **values), timeout=60),
            # (beside the image loads: it asks for the pause image only when the kubelet makes a pod)
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*cri.copies, args.docker_running[host.name]]))

        binaries = StagedRelease(f"{name}-kubelet", host, ssh, args.kubelet_release[host.arch], parent=self)
        pair: KeyPair = args.certs.kubelet[host.name]
        config = render("kubernetes/kubelet-config.yaml.j2", config=kubelet_config(args, host))
        boot = bootstrap_kubeconfig(server, args.certs.ca_cert, args.bootstrap_token)
        boot_path = f"{NODE_DIR}/bootstrap.kubeconfig"
        files = [
            HostFile(NODE_CA, args.certs.ca_cert),
            HostFile(f"{NODE_DIR}/kubelet.crt", pair.cert_pem),
            HostFile(f"{NODE_DIR}/kubelet.key", pair.key_pem, "0600"),
            HostFile(boot_path, boot, "0600"),
            HostFile(f"{NODE_DIR}/kubelet.yaml", config),
            HostFile(NODE_HEALTH, render("kubernetes/node-health.sh.j2", server=server, ca=NODE_CA, cert=KUBELET_CLIENT,
                                         bootstrap_kubeconfig=boot_path, run_dir=RUN_DIR,
                                         healthz_port=KUBELET_HEALTHZ_PORT, **values), "0755"),
        ]
        state = {"kubelet_dir": KUBELET_DIR, "images_before": f"{STATE_DIR}/kubelet-images.before", **values}
        # 1.35 made failCgroupV1 default to true: on a cgroup v1 host, say so before the kubelet fails
        refuses_v1 = args.version.refuses_cgroup_v1 and kube.kubelet_extra.get("failCgroupV1") is not False
        # (the CAs it trusts, by digest: a change bootstraps the kubelet again, under the new ones)
        create = digest(args.certs.ca_cert).apply(lambda trust: render(
            "kubernetes/kubelet-create.sh.j2", refuses_cgroup_v1=refuses_v1, server=server, trust=trust, ca=NODE_CA,
            client=KUBELET_CLIENT, kubelet_kubeconfig=KUBELET_KUBECONFIG, **state))
        kubelet_state = HostStep(create, render(
            "kubernetes/kubelet-delete.sh.j2", keep=KUBELET_PULL_CREDENTIALS, generated=[KUBELET_KUBECONFIG],
            node_dir=NODE_DIR, conf_dir=KUBE_CONF_DIR, run_dir=RUN_DIR, **state))
        timeout = kube.node_timeout
        label = render("kubernetes/control-plane-label.sh.j2", kubectl=f"{binaries.bin_dir}/kubectl",
                       kubeconfig=ADMIN_KUBECONFIG, host=host.name, role=CONTROL_PLANE_ROLE) if host.has("master") else ""
        ready = HostService(
            f"{name}-kubelet", host, ssh, "kubelet.service",
            render("kubernetes/component.service.j2", component="kubelet", notify=False, logs="",
                   after=["cri-docker.service"], flags=kubelet_flags(args.version, host), bin_dir=binaries.bin_dir,
                   **values),
            files=files, steps=[binaries.step, kubelet_state],
            reads=[binaries.identity, config, boot, pair.cert_pem, pair.key_pem, args.certs.ca_cert],
            restart=rolling_restart("kubelet.service", timeout, NODE_HEALTH),
            gate=Gate(f"node {host.name}", render("remote/script-gate.sh.j2", script=NODE_HEALTH) + label
                      + render("kubernetes/bootstrap-forget.sh.j2", bootstrap_kubeconfig=boot_path),
                      timeout=timeout),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*binaries.copies, cri_dockerd, args.docker_ready[host.name], *reach,
                                                                 *args.control_plane_ready, drained]))

        # kube-proxy waits for nothing of the kubelet's: its own binary, and the API server
        proxy = StagedRelease(f"{name}-kube-proxy", host, ssh, args.kube_proxy_release[host.arch], parent=self)
        proxy_config = render("kubernetes/kube-proxy-config.yaml.j2", config=kube_proxy_config(args, host))
        proxy_kubeconfig = kubeconfig(server, args.certs.ca_cert, args.certs.kube_proxy, "system:kube-proxy")
        kube_proxy = HostService(
            f"{name}-kube-proxy", host, ssh, "kube-proxy.service",
            render("kubernetes/component.service.j2", component="kube-proxy", notify=False, logs="",
                   after=["network-online.target"], flags=[("config", f"{NODE_DIR}/kube-proxy.yaml")],
                   bin_dir=proxy.bin_dir, **values),
            files=[HostFile(f"{NODE_DIR}/kube-proxy.yaml", proxy_config),
                   HostFile(f"{NODE_DIR}/kube-proxy.kubeconfig", proxy_kubeconfig, "0600")],
            # undone after the unit stops, before the binary goes: kube-proxy removes its own rules
            steps=[proxy.step, HostStep(":", render("kubernetes/kube-proxy-delete.sh.j2", node_dir=NODE_DIR, conf_dir=KUBE_CONF_DIR,
                                                    kube_proxy=f"{proxy.bin_dir}/kube-proxy", **values))],
            reads=[proxy.identity, proxy_config, proxy_kubeconfig],
            gate=Gate(f"kube-proxy on {host.name}", render("kubernetes/kube-proxy-health.sh.j2",
                                                           port=KUBE_PROXY_HEALTH_PORT, **values), timeout=60),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*proxy.copies, *reach, *args.control_plane_ready,
                                                                 drained]))
        # it carries what the drain printed: each drain that drained is followed by an uncordon
        HostCommand(
            f"{name}-uncordon", args.admin, ssh, create=None, update=drained.stdout.apply(lambda out: render(
                "kubernetes/node-uncordon.sh.j2", drained=re.sub(r"[^A-Za-z0-9 ._:-]", "", out or ""), **upgrade)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready, kube_proxy]))
        return ready

    def _api_proxy(self, name: str, host: HostSpec, args: KubeNodeArgs) -> HostService:
        assert host.arch in args.api_proxy_release, "nodes behind a local proxy get haproxy's release (__main__ passes it)"
        haproxy = StagedRelease(f"{name}-apiserver-proxy", host, args.ssh, args.api_proxy_release[host.arch], parent=self)
        values = {"state_dir": STATE_DIR, "host": host.name}
        config = render("kubernetes/apiserver-proxy.cfg.j2", port=args.kubernetes.api_proxy_port,
                        servers=[(f"apiserver-{i}", a) for i, a in enumerate(args.api_servers, 1)], api_port=API_PORT)
        path = f"{NODE_DIR}/apiserver-proxy.cfg"
        return HostService(
            f"{name}-apiserver-proxy", host, args.ssh, "kube-hardway-apiserver-proxy.service",
            render("kubernetes/apiserver-proxy.service.j2", config=path, **values),
            files=[HostFile(path, config)],
            steps=[haproxy.step,
                   HostStep(render("kubernetes/apiserver-proxy-create.sh.j2", state_dir=STATE_DIR),
                            render("kubernetes/apiserver-proxy-delete.sh.j2", node_dir=NODE_DIR, conf_dir=KUBE_CONF_DIR))],
            reads=[config],
            # installed while the control plane comes up, not after it: its gate waits for an API server
            gate=Gate(f"the API server proxy on {host.name}", render(
                "kubernetes/apiserver-proxy-health.sh.j2", port=args.kubernetes.api_proxy_port, **values), timeout=240),
            opts=pulumi.ResourceOptions(parent=self, depends_on=haproxy.copies))
