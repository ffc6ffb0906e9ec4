"""ClusterPKI: every key and certificate the cluster needs, made with pulumi-tls.

Two CAs, as kubeadm does:

* the **Kubernetes CA** signs the API server's serving cert and every client cert the API server
  authenticates (admin, controller-manager, scheduler, kube-proxy), and each kubelet's serving cert
  (its client cert is issued by the controller-manager with the same CA, through TLS bootstrap);
* the **etcd CA** signs etcd's server and peer certs and the few etcd client certs (API server,
  flanneld, the health check).

Why separate: etcd lets in any client whose cert chains to its trusted CA, and etcd access is
cluster-admin (every Secret is in it). With one CA, every kubelet, kube-proxy and admin cert would
also open etcd. With two, only the holders of the etcd client certs can talk to etcd, and an
etcd peer cert cannot log in to the API server. The cost is one more CA cert on etcd hosts.

Inside etcd, a client cert's common name is its etcd user (EtcdCluster turns auth on): `root` (the
members' admin cert), `kube-apiserver-etcd-client`, `flanneld` (its network prefix only),
`kube-hardway-lock` (the restart locks only) and `kube-etcd-healthcheck-client` (no key at all).
Workers reach etcd through its JSON gateway, which refuses a named cert once auth is on, so they
also get `etcd-gateway-client`, a cert with no name that only opens the TLS session: what it may
read is decided by the password it logs in with. Client certs name no host (no SAN): the members'
peer port accepts only certs that name `localhost` (`--peer-cert-allowed-hostname`), which only
the members' own server and peer certs do, so no client cert opens it.

Private keys are Pulumi secrets end to end (pulumi-tls marks `privateKeyPem` secret); leaf certs
carry only the usages they need (server vs client auth) and only the CAs may sign. Leaf certs are
re-issued (a new certificate for the same key) by
the first `pulumi up` inside their last `pki.renewBeforeHours` (pulumi-tls `early_renewal_hours`),
and the services that read them restart as for any changed file, one host at a time. A CA is never
re-issued by itself: the program warns (at preview too) once one is inside that window.
`expiry` is each certificate's end, for the stack output `certificates`.

CA rotation (`pki.cas.<kind>`, kubeadm's manual sequence as three runs): each kind has a list of
CAs; the first signs every leaf cert of its kind, and every host and kubeconfig trusts them all (a
bundle, in list order). `[ca, ca-2]` makes ca-2 trusted everywhere; `[ca-2, ca]` re-issues every
leaf from it (both still trusted, so a restarted service and one not yet restarted still talk);
`[ca-2]` drops the old one. `ca_check` is each host's preflight part: it refuses a CA that would
sign before that host trusts it, or dropping the CA that signed what the host runs, before
anything changes anywhere.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components.layout import (
    CLUSTER_ADMINS_GROUP,
    ETCD_PKI,
    FLANNELD_PKI,
    KUBE_PKI,
    NODE_CA,
    REGISTRY_PKI,
)
from components.spec import HostSpec, NetworkSpec, PkiSpec
from components.templates import render

SERVER = ["digital_signature", "key_encipherment", "server_auth"]
CLIENT = ["digital_signature", "key_encipherment", "client_auth"]
SERVER_AND_CLIENT = ["digital_signature", "key_encipherment", "server_auth", "client_auth"]
CA = ["cert_signing", "crl_signing", "digital_signature"]


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key (a secret Output)."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]


def kubeconfig(server: str, ca: pulumi.Input[str], pair: KeyPair, user: str) -> pulumi.Output[str]:
    """A kubeconfig for `pair` with everything inline (a secret: it holds the key)."""
    return pulumi.Output.all(ca, pair.cert_pem, pair.key_pem).apply(lambda v: render(
        "kubernetes/kubeconfig.j2", cluster="kube-hardway", server=server, user=user, ca=v[0], cert=v[1], key=v[2]))


@dataclass(frozen=True)
class Trust:
    """One kind's CAs (`pki.cas.<kind>`): the one that signs, and every one a host trusts."""

    kind: str                               # kubernetes or etcd
    names: tuple[str, ...]                  # the first signs
    certs: tuple[pulumi.Output[str], ...]   # each name's cert, in that order
    signer: KeyPair

    @property
    def bundle(self) -> pulumi.Output[str]:
        """What a host trusts: every CA's cert, the signer's first (one CA: exactly its cert)."""
        return pulumi.Output.all(*self.certs).apply(lambda pems: "".join(p if p.endswith("\n") else p + "\n" for p in pems))


# where each kind's bundle lives on a host with each role: the preflight's CA check reads them
TRUST_FILES = {
    "kubernetes": {"master": (KUBE_PKI["ca"], NODE_CA), "node": (NODE_CA,), "registry": (REGISTRY_PKI["ca"],)},
    "etcd": {"etcd": (ETCD_PKI["ca"],), "master": (KUBE_PKI["etcd_ca"], FLANNELD_PKI["ca"]), "node": (FLANNELD_PKI["ca"],)},
}


def _pem_body(pem: str) -> str:
    """A certificate's base64 body on one line: what the CA check compares on the host."""
    return "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))


def ca_check(host: HostSpec, trusts: tuple[Trust, ...], registry: bool) -> pulumi.Output[str]:
    """The preflight's part on `host`: every bundle of each kind already there must hold the CA that
    signs now (a new CA is trusted everywhere a run before it signs), and its first CA (the one that
    signed what runs here) must still be listed (it is dropped a run after the new one signed)."""
    roles = set(host.roles) | ({"registry"} if registry else set())
    kinds = [(t, sorted({f for role, paths in TRUST_FILES[t.kind].items() if role in roles for f in paths}))
             for t in trusts]
    kinds = [(t, files) for t, files in kinds if files]

    def check(pems: list[list[str]]) -> str:   # each kind's CA certs, in `kinds` order
        return render("remote/ca-check.sh.j2", host=host.name, kinds=[
            {"key": f"pki.cas.{t.kind}", "names": t.names, "files": files, "bodies": [_pem_body(p) for p in certs]}
            for (t, files), certs in zip(kinds, pems, strict=True)])
    return pulumi.Output.all(*(pulumi.Output.all(*t.certs) for t, _ in kinds)).apply(check)


@dataclass(frozen=True)
class EtcdCerts:
    """What the etcd members need."""

    ca_cert: pulumi.Output[str]
    server: Mapping[str, KeyPair]           # per member name
    peer: Mapping[str, KeyPair]
    healthcheck_client: KeyPair             # the gate and the restart helper on each member
    admin: KeyPair                          # etcd user root: auth setup and flannel's config
    lock_client: KeyPair                    # etcd user kube-hardway-lock: the members' restart lock


@dataclass(frozen=True)
class EtcdClientCerts:
    """What one etcd client (flanneld, the API server) needs to reach etcd."""

    ca_cert: pulumi.Output[str]
    client: KeyPair


@dataclass(frozen=True)
class FlannelCerts(EtcdClientCerts):
    """flanneld's etcd client cert, and the nameless cert a worker's scripts open etcd's JSON
    gateway with (they log in with a password)."""

    gateway: KeyPair


@dataclass(frozen=True)
class ControlPlaneCerts:
    ca: KeyPair                             # the Kubernetes CA that signs (the controller-manager signs kubelets' with it)
    ca_bundle: pulumi.Output[str]           # what the control plane trusts: every Kubernetes CA
    apiserver: KeyPair
    apiserver_kubelet_client: KeyPair
    admin: KeyPair                          # group CLUSTER_ADMINS_GROUP: cluster-admin by a binding
    super_admin: KeyPair                    # system:masters: only to make that binding
    controller_manager: KeyPair
    scheduler: KeyPair
    service_account_private_key_pem: pulumi.Output[str]
    service_account_public_key_pem: pulumi.Output[str]
    etcd: EtcdClientCerts


@dataclass(frozen=True)
class NodeCerts:
    ca_cert: pulumi.Output[str]
    # per worker: the kubelet's SERVING cert, which the API server verifies (its client cert comes
    # from TLS bootstrap and rotates itself, signed by the controller-manager with the same CA)
    kubelet: Mapping[str, KeyPair]
    kube_proxy: KeyPair


@dataclass(frozen=True)
class PkiArgs:
    pki: PkiSpec
    network: NetworkSpec
    etcd_hosts: tuple[HostSpec, ...]
    masters: tuple[HostSpec, ...]
    workers: tuple[HostSpec, ...]           # every host that runs a kubelet
    registry_hosts: tuple[HostSpec, ...] = ()


class ClusterPKI(pulumi.ComponentResource):
    """Every key and cert, grouped by the component that uses them (`etcd`, `flannel`,
    `control_plane`, `nodes`), so each component is handed only its own."""

    etcd: EtcdCerts
    flannel: FlannelCerts
    control_plane: ControlPlaneCerts
    nodes: NodeCerts
    registry: Mapping[str, KeyPair]         # serving cert per registry host, from the Kubernetes CA
    trusts: tuple[Trust, ...]               # the Kubernetes CAs, the etcd CAs

    def __init__(self, name: str, args: PkiArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:pki:ClusterPKI", name, None, opts)
        self._spec = args.pki
        self._name = name
        self.expiry: dict[str, pulumi.Output[str]] = {}     # each certificate's end, for the stack output

        kubernetes_trust, etcd_trust = self._trust("kubernetes"), self._trust("etcd")
        self.trusts = (kubernetes_trust, etcd_trust)
        kubernetes_ca, kubernetes_bundle = kubernetes_trust.signer, kubernetes_trust.bundle
        etcd_ca, etcd_bundle = etcd_trust.signer, etcd_trust.bundle

        server: dict[str, KeyPair] = {}
        peer: dict[str, KeyPair] = {}
        for host in args.etcd_hosts:
            sans_dns = [host.name, "localhost"]
            sans_ip = sorted({host.internal_address, host.address, "127.0.0.1"})
            # etcd's gRPC gateway dials its own member with the serving cert, so that cert is a
            # client cert too (as kubeadm makes it); serverAuth alone gets the gateway rejected
            # ("incompatible key usage") every few seconds.
            server[host.name] = self._leaf(
                f"etcd-server-{host.name}", etcd_ca, host.name, None, SERVER_AND_CLIENT, sans_dns, sans_ip)
            # Peers dial each other and are dialled, so the peer cert is both server and client.
            peer[host.name] = self._leaf(
                f"etcd-peer-{host.name}", etcd_ca, host.name, None, SERVER_AND_CLIENT, sans_dns, sans_ip)
        self.etcd = EtcdCerts(
            etcd_bundle, server, peer,
            healthcheck_client=self._leaf(
                "etcd-healthcheck-client", etcd_ca, "kube-etcd-healthcheck-client", None, CLIENT),
            admin=self._leaf("etcd-root-client", etcd_ca, "root", None, CLIENT),
            lock_client=self._leaf("etcd-lock-client", etcd_ca, "kube-hardway-lock", None, CLIENT))
        apiserver_etcd = EtcdClientCerts(etcd_bundle, self._leaf(
            "apiserver-etcd-client", etcd_ca, "kube-apiserver-etcd-client", None, CLIENT))
        self.flannel = FlannelCerts(
            etcd_bundle, self._leaf("flanneld-etcd-client", etcd_ca, "flanneld", None, CLIENT),
            gateway=self._leaf("etcd-gateway-client", etcd_ca, None, "kube-hardway", CLIENT))

        network = args.network
        domain_names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                        f"kubernetes.default.svc.{network.cluster_domain}", "localhost"]
        master_ips = {ip for m in args.masters for ip in (m.address, m.internal_address)}
        # The service-account signing key: the API server signs tokens with the private half and
        # verifies them (and the controller-manager signs) with it; no certificate is needed.
        sa_key = self._key("service-account")
        self.control_plane = ControlPlaneCerts(
            ca=kubernetes_ca,
            ca_bundle=kubernetes_bundle,
            apiserver=self._leaf(
                "kube-apiserver", kubernetes_ca, "kube-apiserver", None, SERVER,
                domain_names + [m.name for m in args.masters],
                sorted(master_ips | {network.kubernetes_service_ip, "127.0.0.1"})),
            # bound to system:kubelet-api-admin (ClusterObjects), nothing more
            apiserver_kubelet_client=self._leaf(
                "kube-apiserver-kubelet-client", kubernetes_ca, "kube-apiserver-kubelet-client", None, CLIENT),
            admin=self._leaf("admin", kubernetes_ca, "admin", CLUSTER_ADMINS_GROUP, CLIENT),
            super_admin=self._leaf("super-admin", kubernetes_ca, "kube-hardway-super-admin", "system:masters", CLIENT),
            controller_manager=self._leaf(
                "kube-controller-manager", kubernetes_ca, "system:kube-controller-manager", None, CLIENT),
            scheduler=self._leaf("kube-scheduler", kubernetes_ca, "system:kube-scheduler", None, CLIENT),
            service_account_private_key_pem=sa_key.private_key_pem,
            service_account_public_key_pem=sa_key.public_key_pem,
            etcd=apiserver_etcd,
        )
        kube_proxy = self._leaf("kube-proxy", kubernetes_ca, "system:kube-proxy", None, CLIENT)
        self.nodes = NodeCerts(kubernetes_bundle, {
            node.name: self._leaf(f"kubelet-serving-{node.name}", kubernetes_ca,
                                  f"system:node:{node.name}", "system:nodes", SERVER,
                                  [node.name], sorted({node.address, node.internal_address}))
            for node in args.workers
        }, kube_proxy)
        # Docker trusts the Kubernetes CA for the registry endpoints only (certs.d/<host:port>/)
        self.registry = {
            host.name: self._leaf(f"registry-{host.name}", kubernetes_ca, host.name, None, SERVER,
                                  [host.name, "localhost"], sorted({host.address, host.internal_address, "127.0.0.1"}))
            for host in args.registry_hosts
        }

        self.register_outputs({
            "kubernetesCaCertPem": kubernetes_bundle,
            "etcdCaCertPem": etcd_bundle,
        })

    def _key(self, name: str) -> tls.PrivateKey:
        pki = self._spec
        return tls.PrivateKey(
            f"{self._name}-{name}-key",
            algorithm=pki.algorithm,
            ecdsa_curve="P256" if pki.algorithm == "ECDSA" else None,
            rsa_bits=pki.rsa_bits if pki.algorithm == "RSA" else None,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _trust(self, kind: str) -> Trust:
        cas = {name: self._ca(name) for name in self._spec.cas(kind)}
        names = tuple(cas)
        return Trust(kind, names, tuple(ca.cert_pem for ca in cas.values()), cas[names[0]])

    def _ca(self, name: str) -> KeyPair:
        """A CA named `name` (`kubernetes-ca`, `etcd-ca`, or one of those with a suffix, for a rotation):
        its resources and common name are that name, so the first CA of every stack keeps its own."""
        key = self._key(name)
        cert = tls.SelfSignedCert(
            f"{self._name}-{name}-cert",
            private_key_pem=key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(common_name=name, organization="kube-hardway"),
            validity_period_hours=self._spec.ca_validity_hours,
            is_ca_certificate=True,
            set_subject_key_id=True,
            allowed_uses=CA,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.expiry[name] = cert.validity_end_time
        # nothing re-issues a CA (every cert it signed would go with it): say so in time, at preview too
        cert.validity_end_time.apply(functools.partial(_warn_if_ending, name, self._spec.early_renewal_hours))
        return KeyPair(cert_pem=cert.cert_pem, key_pem=key.private_key_pem)

    def _leaf(self, name: str, ca: KeyPair, common_name: str | None, organization: str | None,
              uses: list[str], dns_names: list[str] | None = None,
              ip_addresses: list[str] | None = None) -> KeyPair:
        key = self._key(name)
        csr = tls.CertRequest(
            f"{self._name}-{name}-csr",
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=common_name, organization=organization),
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            opts=pulumi.ResourceOptions(parent=self),
        )
        cert = tls.LocallySignedCert(
            f"{self._name}-{name}-cert",
            cert_request_pem=csr.cert_request_pem,
            ca_private_key_pem=ca.key_pem,
            ca_cert_pem=ca.cert_pem,
            validity_period_hours=self._spec.leaf_validity_hours,
            early_renewal_hours=self._spec.early_renewal_hours,
            set_subject_key_id=True,
            allowed_uses=uses,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.expiry[name] = cert.validity_end_time
        return KeyPair(cert_pem=cert.cert_pem, key_pem=key.private_key_pem)


def _warn_if_ending(name: str, hours: int, end: str | None) -> None:
    if not end:
        return
    left = dt.datetime.fromisoformat(end.replace("Z", "+00:00")) - dt.datetime.now(dt.UTC)
    if left <= dt.timedelta(hours=hours):
        pulumi.log.warn(f"pki: the CA {name} expires at {end} (in {max(left.total_seconds(), 0) / 3600:.0f}h, inside "
                        f"pki.renewBeforeHours): rotate it (README, \"Certificates\") before every certificate it signed stops working")
