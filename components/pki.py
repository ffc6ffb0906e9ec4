"""ClusterPKI: every key and certificate the cluster needs, made with pulumi-tls.

Two CAs, as kubeadm does:

* the **Kubernetes CA** signs the API server's serving cert and every client cert the API server
  authenticates (admin, controller-manager, scheduler, kube-proxy, `system:node:<name>`);
* the **etcd CA** signs etcd's server and peer certs and the few etcd client certs (API server,
  flanneld, the health check).

Why separate: etcd authorises any client whose cert chains to its trusted CA, and etcd access is
cluster-admin (every Secret is in it). With one CA, every kubelet, kube-proxy and admin cert would
also open etcd. With two, only the holders of the three etcd client certs can talk to etcd, and an
etcd peer cert cannot log in to the API server. The cost is one more CA cert on etcd hosts.

Private keys are Pulumi secrets end to end (pulumi-tls marks `privateKeyPem` secret); leaf certs
carry only the usages they need (server vs client auth) and only the CAs may sign. Leaf certs are
re-issued on the `pulumi up` after they enter their last `early_renewal_hours`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components.spec import ClusterSpec

SERVER = ["digital_signature", "key_encipherment", "server_auth"]
CLIENT = ["digital_signature", "key_encipherment", "client_auth"]
PEER = ["digital_signature", "key_encipherment", "server_auth", "client_auth"]
CA = ["cert_signing", "crl_signing", "digital_signature"]


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key (a secret Output)."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]


class ClusterPKI(pulumi.ComponentResource):
    kubernetes_ca: KeyPair
    etcd_ca: KeyPair
    etcd_server: dict[str, KeyPair]
    etcd_peer: dict[str, KeyPair]

    def __init__(self, name: str, spec: ClusterSpec, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:pki:ClusterPKI", name, None, opts)
        self._spec = spec
        self._name = name

        self.kubernetes_ca = self._ca("kubernetes-ca", "kubernetes-ca")
        self.etcd_ca = self._ca("etcd-ca", "etcd-ca")

        self.etcd_server = {}
        self.etcd_peer = {}
        for host in spec.etcd_hosts:
            sans_dns = [host.name, "localhost"]
            sans_ip = sorted({host.internal_address, host.address, "127.0.0.1"})
            self.etcd_server[host.name] = self._leaf(
                f"etcd-server-{host.name}", self.etcd_ca, host.name, None, SERVER, sans_dns, sans_ip)
            # Peers dial each other and are dialled, so the peer cert is both server and client.
            self.etcd_peer[host.name] = self._leaf(
                f"etcd-peer-{host.name}", self.etcd_ca, host.name, None, PEER, sans_dns, sans_ip)
        self.etcd_healthcheck_client = self._leaf(
            "etcd-healthcheck-client", self.etcd_ca, "kube-etcd-healthcheck-client", None, CLIENT)
        self.apiserver_etcd_client = self._leaf(
            "apiserver-etcd-client", self.etcd_ca, "kube-apiserver-etcd-client", None, CLIENT)
        self.flanneld_etcd_client = self._leaf(
            "flanneld-etcd-client", self.etcd_ca, "flanneld", None, CLIENT)

        network = spec.network
        domain_names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                        f"kubernetes.default.svc.{network.cluster_domain}", "localhost"]
        master_ips = {ip for m in spec.masters for ip in (m.address, m.internal_address)}
        self.apiserver = self._leaf(
            "kube-apiserver", self.kubernetes_ca, "kube-apiserver", None, SERVER,
            domain_names + [m.name for m in spec.masters],
            sorted(master_ips | {network.kubernetes_service_ip, "127.0.0.1"}))
        self.apiserver_kubelet_client = self._leaf(
            "kube-apiserver-kubelet-client", self.kubernetes_ca, "kube-apiserver-kubelet-client",
            "system:masters", CLIENT)
        self.admin = self._leaf("admin", self.kubernetes_ca, "admin", "system:masters", CLIENT)
        self.controller_manager = self._leaf(
            "kube-controller-manager", self.kubernetes_ca, "system:kube-controller-manager",
            None, CLIENT)
        self.scheduler = self._leaf(
            "kube-scheduler", self.kubernetes_ca, "system:kube-scheduler", None, CLIENT)
        self.kube_proxy = self._leaf("kube-proxy", self.kubernetes_ca, "system:kube-proxy", None, CLIENT)
        self.kubelet = {
            node.name: self._leaf(f"kubelet-{node.name}", self.kubernetes_ca,
                                  f"system:node:{node.name}", "system:nodes", CLIENT)
            for node in spec.nodes
        }

        # The service-account signing key: the API server signs tokens with the private half and
        # verifies them (and the controller-manager signs) with it; no certificate is needed.
        sa_key = self._key("service-account")
        self.service_account_private_key_pem = sa_key.private_key_pem
        self.service_account_public_key_pem = sa_key.public_key_pem

        self.register_outputs({
            "kubernetesCaCertPem": self.kubernetes_ca.cert_pem,
            "etcdCaCertPem": self.etcd_ca.cert_pem,
        })

    def _key(self, name: str) -> tls.PrivateKey:
        pki = self._spec.pki
        return tls.PrivateKey(
            f"{self._name}-{name}-key",
            algorithm=pki.algorithm,
            ecdsa_curve="P256" if pki.algorithm == "ECDSA" else None,
            rsa_bits=pki.rsa_bits if pki.algorithm == "RSA" else None,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _ca(self, name: str, common_name: str) -> KeyPair:
        key = self._key(name)
        cert = tls.SelfSignedCert(
            f"{self._name}-{name}-cert",
            private_key_pem=key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(common_name=common_name, organization="kube-hardway"),
            validity_period_hours=self._spec.pki.ca_validity_hours,
            is_ca_certificate=True,
            set_subject_key_id=True,
            allowed_uses=CA,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return KeyPair(cert_pem=cert.cert_pem, key_pem=key.private_key_pem)

    def _leaf(self, name: str, ca: KeyPair, common_name: str, organization: str | None,
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
            validity_period_hours=self._spec.pki.leaf_validity_hours,
            early_renewal_hours=self._spec.pki.early_renewal_hours,
            set_subject_key_id=True,
            allowed_uses=uses,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return KeyPair(cert_pem=cert.cert_pem, key_pem=key.private_key_pem)
