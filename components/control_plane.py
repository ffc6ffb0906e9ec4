"""ControlPlane: kube-apiserver, kube-controller-manager and kube-scheduler on every master.

Each is its own unit (one `HostService` each, in one SSH session) from the artifact source, with
its flags rendered for the Kubernetes version being deployed, and a health gate over TLS. The API
server talks to etcd with its own etcd client cert, authorizes with Node,RBAC, refuses anonymous
requests (`--anonymous-auth=false`: even `/livez` wants a client cert), verifies kubelets' serving
certs with the cluster CA and dials them by address. The controller-manager signs node client
certs with the cluster CA (TLS bootstrap) and does not allocate node CIDRs: flannel does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_random as random
from pulumi_command import remote

from components.artifacts import ReleaseFiles, StagedRelease
from components.layout import ADMIN_KUBECONFIG, API_PORT, AUDIT_LOG, CONTROL_PLANE_ROLE, KUBE_CONF_DIR, KUBE_PKI, STATE_DIR
from components.links import EtcdEndpoints
from components.pki import ControlPlaneCerts, kubeconfig
from components.remote import Gate, HostCommand, HostFile, HostService, rolling_restart
from components.spec import HostSpec, ImagesSpec, KubernetesSpec, NetworkSpec, SshSpec
from components.spec.versions import numbers
from components.templates import render

BOOTSTRAPPERS = "system:bootstrappers:kube-hardway"
BINDINGS = ["kube-hardway:node-bootstrapper", "kube-hardway:node-autoapprove-bootstrap",
            "kube-hardway:node-autoapprove-renewal", "kube-hardway:apiserver-kubelet-client"]


@dataclass(frozen=True)
class ControlPlaneArgs:
    masters: tuple[HostSpec, ...]
    ssh: SshSpec
    network: NetworkSpec
    version: str
    certs: ControlPlaneCerts
    etcd: EtcdEndpoints
    release: Mapping[str, ReleaseFiles]     # per architecture among the masters
    kubernetes: KubernetesSpec
    images: ImagesSpec
    nodes: tuple[str, ...] = ()             # the stack's nodes: a change renews the bootstrap token


# how long a stopping API server drains its watches (closing them at a paced rate so their clients
# reconnect to the other masters); without it (< 1.27, or unset) the watches hold the HTTP server
# open until --request-timeout, 60 s: each restart of a rolling change then took over a minute (60.1 s
# to stop, measured in the lab with 1.24). Whatever still runs after API_STOP_SECONDS is killed, as
# the kubelet kills kubeadm's API server pod after its 30 s grace period.
WATCH_DRAIN_SECONDS = 15
API_STOP_SECONDS = 30


def apiserver_flags(host: HostSpec, network: NetworkSpec, etcd_servers: str, version: str) -> list[tuple[str, str]]:
    drain = [("shutdown-watch-termination-grace-period", f"{WATCH_DRAIN_SECONDS}s")] \
        if numbers(version)[:2] >= (1, 27) else []
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
        ("audit-policy-file", f"{KUBE_CONF_DIR}/audit-policy.yaml"),
        ("audit-log-path", AUDIT_LOG),
        ("audit-log-maxage", "7"),
        ("audit-log-maxbackup", "10"),
        ("audit-log-maxsize", "100"),
        *drain,
    ]


def controller_manager_flags(network: NetworkSpec, kubeconfig_path: str) -> list[tuple[str, str]]:
    return [
        *scheduler_flags(kubeconfig_path),
        ("cluster-cidr", network.pod_cidr),
        ("allocate-node-cidrs", "false"),     # flannel leases the node subnets
        ("service-cluster-ip-range", network.service_cidr),
        ("cluster-signing-cert-file", KUBE_PKI["ca"]),
        ("cluster-signing-key-file", KUBE_PKI["ca_key"]),
        ("root-ca-file", KUBE_PKI["ca"]),
        ("service-account-private-key-file", KUBE_PKI["sa_key"]),
        ("use-service-account-credentials", "true"),
        ("controllers", "*,bootstrapsigner,tokencleaner"),
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
    ready: list[pulumi.Resource]

    def __init__(self, name: str, args: ControlPlaneArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:control_plane:ControlPlane", name, None, opts)
        certs, ssh, net = args.certs, args.ssh, args.network
        etcd_servers = ",".join(args.etcd.client_endpoints)
        self.endpoints = [f"https://{m.address}:{API_PORT}" for m in args.masters]
        self.ready = []
        for host in args.masters:
            binaries = StagedRelease(f"{name}-{host.name}", host, ssh, args.release[host.arch], parent=self)
            local = f"https://127.0.0.1:{API_PORT}"
            pki_files = [
                HostFile(KUBE_PKI["ca"], certs.ca.cert_pem), HostFile(KUBE_PKI["ca_key"], certs.ca.key_pem, "0600"),
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
                HostFile(ADMIN_KUBECONFIG, kubeconfig(local, certs.ca.cert_pem, certs.admin, "admin"), "0600"),
            ]
            unit = {"version": args.version, "host": host.name, "bin_dir": binaries.bin_dir}
            apiserver = HostService(
                f"{name}-apiserver-{host.name}", host, ssh, "kube-apiserver.service",
                render("kubernetes/component.service.j2", component="kube-apiserver", notify=True, logs="kubernetes",
                       stop_timeout=API_STOP_SECONDS,
                       after=["network-online.target", "etcd.service"],
                       flags=apiserver_flags(host, net, etcd_servers, args.version), **unit),
                files=pki_files, steps=[binaries.step],
                reads=[binaries.identity, *(f.content for f in pki_files)],
                # a change restarts the API servers one master at a time (Docker's lock in etcd)
                restart=rolling_restart("kube-apiserver.service", 180, f"{binaries.bin_dir}/kubectl --kubeconfig "
                                        f"{ADMIN_KUBECONFIG} --request-timeout=5s get --raw /readyz"),
                gate=Gate(f"kube-apiserver on {host.name}", render(
                    "kubernetes/apiserver-health.sh.j2", host=host.name, bin_dir=binaries.bin_dir,
                    kubeconfig=ADMIN_KUBECONFIG), timeout=180),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*binaries.copies, args.etcd.health]))
            self.ready.append(apiserver)
            for component, pair, flags in (
                ("kube-controller-manager", certs.controller_manager, controller_manager_flags),
                ("kube-scheduler", certs.scheduler, None),
            ):
                path = f"{KUBE_CONF_DIR}/{component.removeprefix('kube-')}.kubeconfig"
                config = kubeconfig(local, certs.ca.cert_pem, pair, component)
                rendered = flags(net, path) if flags else scheduler_flags(path)
                port = 10257 if component == "kube-controller-manager" else 10259
                self.ready.append(HostService(
                    f"{name}-{component.removeprefix('kube-')}-{host.name}", host, ssh, f"{component}.service",
                    render("kubernetes/component.service.j2", component=component, notify=False, logs="",
                           after=["kube-apiserver.service"], flags=rendered, **unit),
                    files=[HostFile(path, config, "0600")],
                    reads=[binaries.identity, config],
                    restart=rolling_restart(f"{component}.service", 180,
                                            f"curl -sfk --max-time 5 https://127.0.0.1:{port}/healthz"),
                    gate=Gate(f"{component} on {host.name}", render(
                        "kubernetes/local-health.sh.j2", component=component, host=host.name, port=port), timeout=120),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[apiserver])))
        self.bootstrap = self._bootstrap(name, args, binaries.bin_dir)
        self.register_outputs({"endpoints": self.endpoints})

    def _bootstrap(self, name: str, args: ControlPlaneArgs, bin_dir: str) -> HostCommand:
        """The cluster objects the program owns, applied once from the first master: the kubelet TLS
        bootstrap token and bindings, and the API server's rights on kubelets."""
        child = pulumi.ResourceOptions(parent=self)
        # a bootstrap token is <6 of [a-z0-9]>.<16 of [a-z0-9]> (the id is public, the secret is not)
        self.token_id = random.RandomString(f"{name}-token-id", length=6, special=False, upper=False, opts=child)
        token_secret = random.RandomPassword(f"{name}-token-secret", length=16, special=False, upper=False, opts=child)
        # (the secret half keeps the joined token secret; KubeNode's bootstrap kubeconfig carries it)
        self.bootstrap_token: pulumi.Output[str] = pulumi.Output.concat(self.token_id.result, ".", token_secret.result)
        net, kube = args.network, args.kubernetes
        coredns = render("kubernetes/coredns.yaml.j2", cluster_dns=net.cluster_dns, domain=net.cluster_domain,
                         upstream=kube.dns_upstream, replicas=kube.dns_replicas, image=args.images.coredns,
                         # a kubelet < 1.25 admits no-new-privileges pods only after parsing the
                         # runtime's version as Docker's, which cri-dockerd's "v1" is not ("Cannot
                         # enforce NoNewPrivs: illegal version string"; seen with 1.24 in the lab)
                         no_new_privs=numbers(args.version)[:2] >= (1, 25))
        ttl = kube.bootstrap_token_ttl_hours
        manifest = pulumi.Output.all(self.token_id.result, token_secret.result).apply(lambda t: render(
            "kubernetes/bootstrap.yaml.j2", master=args.masters[0].name, token_id=t[0], token_secret=t[1],
            group=BOOTSTRAPPERS, ttl_hours=ttl) + "---\n" + coredns)
        values = {"kubectl": f"{bin_dir}/kubectl", "kubeconfig": ADMIN_KUBECONFIG, "bindings": BINDINGS,
                  "objects": ["bootstrap token", *BINDINGS, "CoreDNS"]}
        self._kubectl = values
        # the node list is in the script: a node added (or removed) re-applies, and the token is
        # valid for another ttl hours for the new kubelet's first certificate
        return HostCommand(
            f"{name}-bootstrap", args.masters[0], args.ssh,
            create=self.token_id.result.apply(lambda t: render(
                "kubernetes/bootstrap-create.sh.j2", token_id=t, ttl_hours=ttl, nodes=sorted(args.nodes), **values)),
            delete=self.token_id.result.apply(lambda t: render("kubernetes/bootstrap-delete.sh.j2", token_id=t, **values)),
            stdin=manifest, logging=remote.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=self.ready))

    def node_set(self, name: str, args: ControlPlaneArgs, nodes: dict[str, pulumi.Resource]) -> HostCommand:
        """The stack's nodes, recorded on the first master. A node removed from the stack is drained
        and its Node object deleted by this command's update, which the engine runs before it deletes
        that node's kubelet (deletes of removed resources come last). After every node: on destroy
        it goes first, and the kubelets go without draining."""
        state = f"{STATE_DIR}/nodes"
        return HostCommand(f"{name}-nodes", args.masters[0], args.ssh,
                           create=render("kubernetes/nodes-create.sh.j2", nodes=sorted(nodes), state_dir=STATE_DIR,
                                         masters=sorted(m.name for m in args.masters if m.name in nodes),
                                         taint=CONTROL_PLANE_ROLE,
                                         timeout=args.kubernetes.node_timeout, host=args.masters[0].name,
                                         **self._kubectl),
                           delete=f"rm -f {state} {state}.new",
                           opts=pulumi.ResourceOptions(parent=self, depends_on=[self.bootstrap, *nodes.values()]))

    def dns_ready(self, name: str, args: ControlPlaneArgs, nodes: list[pulumi.Resource]) -> HostCommand:
        """Cluster DNS answers: CoreDNS is rolled out (its readiness probe passes once it serves),
        checked from the first master when every node is Ready."""
        script = render("kubernetes/dns-ready.sh.j2", timeout=args.kubernetes.node_timeout, **self._kubectl)
        return HostCommand(f"{name}-dns-health", args.masters[0], args.ssh, create=script,
                           triggers=[args.images.coredns, args.kubernetes.dns_replicas],
                           opts=pulumi.ResourceOptions(parent=self, depends_on=[self.bootstrap, *nodes]))
