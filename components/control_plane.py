"""ControlPlane: kube-apiserver, kube-controller-manager and kube-scheduler on every master.

Each is its own unit (one `HostService` each, in one SSH session) from the artifact source, with
its flags rendered for the Kubernetes version being deployed, and a health gate over TLS. The API
server talks to etcd with its own etcd client cert, authorizes with Node,RBAC, refuses anonymous
requests (`--anonymous-auth=false`: even `/livez` wants a client cert), verifies kubelets' serving
certs with the cluster CA and dials them by address. The controller-manager signs node client
certs with the cluster CA (TLS bootstrap) and does not allocate node CIDRs: flannel does.

What the cluster holds (the bootstrap token, bindings, CoreDNS) is ClusterObjects'; what runs once
every node is Ready (the node set, the DNS check) is NodeSet's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from components.artifacts import ReleaseFiles, StagedRelease
from components.layout import (
    ADMIN_KUBECONFIG,
    ADMISSION_CONFIG,
    API_PORT,
    AUDIT_LOG,
    ENCRYPTION_CONFIG,
    KUBE_CONF_DIR,
    KUBE_PKI,
    SUPER_ADMIN_KUBECONFIG,
)
from components.links import EtcdEndpoints
from components.pki import ControlPlaneCerts, kubeconfig
from components.remote import Gate, HostFile, HostService, HostStep, rolling_restart
from components.spec import HostSpec, NetworkSpec, SshSpec
from components.spec.kubernetes import ENCRYPTION_PROVIDERS
from components.spec.versions import KubernetesVersion
from components.templates import render


@dataclass(frozen=True)
class ControlPlaneArgs:
    masters: tuple[HostSpec, ...]
    ssh: SshSpec
    network: NetworkSpec
    version: KubernetesVersion
    certs: ControlPlaneCerts
    etcd: EtcdEndpoints
    release: Mapping[str, ReleaseFiles]     # per architecture among the masters
    pod_security_default: str | None = None  # kubernetes.podSecurity.defaultEnforce
    encryption_provider: str = "secretbox"   # kubernetes.encryption.provider
    encryption_keys: tuple[str, ...] = ("key-1",)   # kubernetes.encryption.keys: the first writes


# how long a stopping API server drains its watches (closing them at a paced rate so their clients
# reconnect to the other masters); without it (< 1.27, or unset) the watches hold the HTTP server
# open until --request-timeout, 60 s: each restart of a rolling change then took over a minute (60.1 s
# to stop, measured in the lab with 1.24). Whatever still runs after API_STOP_SECONDS is killed, as
# the kubelet kills kubeadm's API server pod after its 30 s grace period.
WATCH_DRAIN_SECONDS = 15
API_STOP_SECONDS = 30


def api_stop(version: KubernetesVersion) -> dict[str, object]:
    """How long systemd lets kube-apiserver stop before it kills it, and why (the unit's comment). A
    release that drains its watches gets API_STOP_SECONDS; an older one is killed once the drain would
    have ended: it closes its listener at SIGTERM (1.24 in the lab: "Stopped listening" 9 ms after
    systemd's "Stopping") and what holds it is its open watches, until --request-timeout's 60 s, so
    every stop ended in the kill, and the 15 s more before it only kept those clients on a server
    that is going away."""
    if version.drains_watches:
        return {"stop_timeout": API_STOP_SECONDS, "stop_why": "kubeadm's grace period for its static pod"}
    return {"stop_timeout": WATCH_DRAIN_SECONDS, "stop_why": "as long as a watch drain: it serves nothing new once stopping"}


def encryption_providers(provider: str) -> list[str]:
    """The EncryptionConfiguration's providers, the one that writes first (`identity` for `none`),
    then every other, so that what an earlier setting wrote stays readable."""
    writes = "identity" if provider == "none" else provider
    return [writes, *(p for p in (*ENCRYPTION_PROVIDERS, "identity") if p not in (writes, "none"))]


def apiserver_flags(host: HostSpec, network: NetworkSpec, etcd_servers: str, version: KubernetesVersion,
                    pod_security_default: str | None = None) -> list[tuple[str, str]]:
    drain = [("shutdown-watch-termination-grace-period", f"{WATCH_DRAIN_SECONDS}s")] \
        if version.drains_watches else []
    # (PodSecurity itself is on by default from 1.23: a namespace's labels work without this)
    admission = [("admission-control-config-file", ADMISSION_CONFIG)] if pod_security_default else []
    return [
        ("advertise-address", host.internal_address),
        ("secure-port", str(API_PORT)),
        ("allow-privileged", "true"),
        ("anonymous-auth", "false"),
        ("authorization-mode", "Node,RBAC"),
        ("enable-admission-plugins", "NodeRestriction"),
        ("enable-bootstrap-token-auth", "true"),
        ("client-ca-file", KUBE_PKI["ca"]),
        ("tls-cert-file", KUBE_PKI["apiserver"]),
        ("tls-private-key-file", KUBE_PKI["apiserver_key"]),
        ("etcd-servers", etcd_servers),
        ("etcd-cafile", KUBE_PKI["etcd_ca"]),
        ("etcd-certfile", KUBE_PKI["etcd_client"]),
        ("etcd-keyfile", KUBE_PKI["etcd_client_key"]),
        ("kubelet-client-certificate", KUBE_PKI["kubelet_client"]),
        ("kubelet-client-key", KUBE_PKI["kubelet_client_key"]),
        ("kubelet-certificate-authority", KUBE_PKI["ca"]),
        # the API server dials kubelets by address: hosts need no DNS for each other
        ("kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname"),
        ("service-account-issuer", f"https://kubernetes.default.svc.{network.cluster_domain}"),
        ("service-account-key-file", KUBE_PKI["sa_pub"]),
        ("service-account-signing-key-file", KUBE_PKI["sa_key"]),
        ("service-cluster-ip-range", network.service_cidr),
        # Secrets at rest (always: with provider none it still reads what an earlier provider wrote)
        ("encryption-provider-config", ENCRYPTION_CONFIG),
        ("audit-policy-file", f"{KUBE_CONF_DIR}/audit-policy.yaml"),
        ("audit-log-path", AUDIT_LOG),
        ("audit-log-maxage", "7"),
        ("audit-log-maxbackup", "10"),
        ("audit-log-maxsize", "100"),
        *admission,
        *drain,
    ]


def controller_manager_flags(network: NetworkSpec, kubeconfig_path: str) -> list[tuple[str, str]]:
    return [
        *scheduler_flags(kubeconfig_path),
        ("cluster-cidr", network.pod_cidr),
        ("allocate-node-cidrs", "false"),     # flannel leases the node subnets
        ("service-cluster-ip-range", network.service_cidr),
        ("cluster-signing-cert-file", KUBE_PKI["ca_signer"]),     # one cert: ca.crt may hold two
        ("cluster-signing-key-file", KUBE_PKI["ca_key"]),
        ("root-ca-file", KUBE_PKI["ca"]),
        ("service-account-private-key-file", KUBE_PKI["sa_key"]),
        ("use-service-account-credentials", "true"),
        ("controllers", "*,bootstrapsigner,tokencleaner"),
        # The node lifecycle controller lifts a node's not-ready:NoExecute taint (put on whenever a
        # pass sees the node NotReady, as a starting or restarted kubelet may post) on its pass over
        # the nodes, every 5 s by default: a node Ready for up to 5 s stayed unschedulable, and
        # every node gate waited for it. Every 2 s (kubespray's fast-update profile): the pass
        # reads its informer's cache and writes only what changed.
        ("node-monitor-period", "2s"),
    ]


def scheduler_flags(kubeconfig_path: str) -> list[tuple[str, str]]:
    """What the scheduler needs, and the controller-manager starts with: its kubeconfig, a local
    TLS port, leader election."""
    return [
        ("kubeconfig", kubeconfig_path),
        ("authentication-kubeconfig", kubeconfig_path),
        ("authorization-kubeconfig", kubeconfig_path),
        ("bind-address", "127.0.0.1"),
        ("leader-elect", "true"),
    ]


class ControlPlane(pulumi.ComponentResource):
    ready: list[pulumi.Resource]         # every component on every master, each past its health gate
    api_servers: list[pulumi.Resource]   # of them, the API servers

    def _encryption_config(self, name: str, args: ControlPlaneArgs) -> pulumi.Output[str]:
        """The EncryptionConfiguration (a secret): a 32-byte key per name in kubernetes.encryption.keys,
        made once and kept in the state; a name that leaves the list is its key destroyed."""
        keys = [random.RandomBytes(f"{name}-encryption-{key}", length=32, opts=pulumi.ResourceOptions(parent=self))
                for key in args.encryption_keys]
        providers = encryption_providers(args.encryption_provider)
        return pulumi.Output.secret(pulumi.Output.all(*(k.base64 for k in keys)).apply(lambda secrets: render(
            "kubernetes/encryption.yaml.j2", providers=providers,
            keys=[{"name": n, "secret": s} for n, s in zip(args.encryption_keys, secrets, strict=True)])))

    def __init__(self, name: str, args: ControlPlaneArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:control_plane:ControlPlane", name, None, opts)
        certs, ssh, net = args.certs, args.ssh, args.network
        etcd_servers = ",".join(args.etcd.client_endpoints)
        self.endpoints = [f"https://{m.address}:{API_PORT}" for m in args.masters]
        self.ready, self.api_servers = [], []
        self.encryption_config = self._encryption_config(name, args)
        for host in args.masters:
            binaries = StagedRelease(f"{name}-{host.name}", host, ssh, args.release[host.arch], parent=self)
            local = f"https://127.0.0.1:{API_PORT}"
            pki_files = [
                HostFile(KUBE_PKI["ca"], certs.ca_bundle), HostFile(KUBE_PKI["ca_key"], certs.ca.key_pem, "0600"),
                HostFile(KUBE_PKI["apiserver"], certs.apiserver.cert_pem),
                HostFile(KUBE_PKI["apiserver_key"], certs.apiserver.key_pem, "0600"),
                HostFile(KUBE_PKI["kubelet_client"], certs.apiserver_kubelet_client.cert_pem),
                HostFile(KUBE_PKI["kubelet_client_key"], certs.apiserver_kubelet_client.key_pem, "0600"),
                HostFile(KUBE_PKI["etcd_ca"], certs.etcd.ca_cert),
                HostFile(KUBE_PKI["etcd_client"], certs.etcd.client.cert_pem),
                HostFile(KUBE_PKI["etcd_client_key"], certs.etcd.client.key_pem, "0600"),
                HostFile(KUBE_PKI["sa_key"], certs.service_account_private_key_pem, "0600"),
                HostFile(KUBE_PKI["sa_pub"], certs.service_account_public_key_pem),
                HostFile(f"{KUBE_CONF_DIR}/audit-policy.yaml", render("kubernetes/audit-policy.yaml.j2")),
                HostFile(ADMIN_KUBECONFIG, kubeconfig(local, certs.ca_bundle, certs.admin, "admin"), "0600"),
            ]
            # not the API server's: no restart when it changes
            helper_files = [HostFile(SUPER_ADMIN_KUBECONFIG, kubeconfig(
                local, certs.ca_bundle, certs.super_admin, "super-admin"), "0600")]
            pki_files.append(HostFile(ENCRYPTION_CONFIG, self.encryption_config, "0600"))
            if args.pod_security_default:
                pki_files.append(HostFile(ADMISSION_CONFIG, render(
                    "kubernetes/admission.yaml.j2", level=args.pod_security_default,
                    api=args.version.pod_security_config_api)))
            unit = {"version": args.version, "host": host.name, "bin_dir": binaries.bin_dir}
            encryption_check = HostStep(render(
                "kubernetes/encryption-check.sh.j2", host=host.name, config=ENCRYPTION_CONFIG,
                writer=args.encryption_keys[0], masters=len(args.masters), provider=args.encryption_provider))
            apiserver = HostService(
                f"{name}-apiserver-{host.name}", host, ssh, "kube-apiserver.service",
                render("kubernetes/component.service.j2", component="kube-apiserver", notify=True, logs="kubernetes",
                       **api_stop(args.version),
                       after=["network-online.target", "etcd.service"],
                       flags=apiserver_flags(host, net, etcd_servers, args.version, args.pod_security_default),
                       **unit),
                files=[*pki_files, *helper_files], steps=[binaries.step, encryption_check],
                reads=[binaries.identity, *(f.content for f in pki_files)],
                # a change restarts the API servers one master at a time (Docker's lock in etcd)
                restart=rolling_restart("kube-apiserver.service", 180, render(
                    "kubernetes/apiserver-restart-check.sh.j2", bin_dir=binaries.bin_dir, kubeconfig=ADMIN_KUBECONFIG).strip()),
                gate=Gate(f"kube-apiserver on {host.name}", render(
                    "kubernetes/apiserver-health.sh.j2", host=host.name, bin_dir=binaries.bin_dir,
                    kubeconfig=ADMIN_KUBECONFIG), timeout=180),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*binaries.copies, args.etcd.health]))
            self.ready.append(apiserver)
            self.api_servers.append(apiserver)
            # the signing cert (with ca.key, which the API server's files bring) is the controller-manager's
            signer = [HostFile(KUBE_PKI["ca_signer"], certs.ca.cert_pem)]
            for component, pair, flags, own in (
                ("kube-controller-manager", certs.controller_manager, controller_manager_flags, signer),
                ("kube-scheduler", certs.scheduler, None, []),
            ):
                path = f"{KUBE_CONF_DIR}/{component.removeprefix('kube-')}.kubeconfig"
                config = kubeconfig(local, certs.ca_bundle, pair, component)
                rendered = flags(net, path) if flags else scheduler_flags(path)
                port = 10257 if component == "kube-controller-manager" else 10259
                self.ready.append(HostService(
                    f"{name}-{component.removeprefix('kube-')}-{host.name}", host, ssh, f"{component}.service",
                    render("kubernetes/component.service.j2", component=component, notify=False, logs="",
                           after=["kube-apiserver.service"], flags=rendered, **unit),
                    files=[HostFile(path, config, "0600"), *own],
                    reads=[binaries.identity, config, *(f.content for f in own)],
                    restart=rolling_restart(f"{component}.service", 180, render(
                        "kubernetes/local-restart-check.sh.j2", port=port).strip()),
                    gate=Gate(f"{component} on {host.name}", render(
                        "kubernetes/local-health.sh.j2", component=component, host=host.name, port=port), timeout=120),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[apiserver])))
        self.kubectl = f"{binaries.bin_dir}/kubectl"     # the same path on every master
        # what the stored Secrets must be rewritten for (ClusterObjects does, once every API server runs it)
        writes = encryption_providers(args.encryption_provider)[0]
        self.encryption_writer = writes if writes == "identity" else f"{writes}:{args.encryption_keys[0]}"
        self.register_outputs({"endpoints": self.endpoints})
