"""EtcdCluster: an etcd cluster with mutual TLS on every host with role `etcd`.

Per member, in parallel with the other members (no member waits for another):
binaries (from the artifact source) and the `etcd` user + 0700 data dir → certs, keys and the
restart helper (one command) → the systemd unit, started without blocking, because a new cluster
only becomes ready once a quorum of members runs. One health gate then waits until every member
answers over TLS and all agree on the membership, and names the members that do not.

A change that restarts etcd (a flag, a cert, a new binary) replaces the members' units in
parallel, but each member's restart goes through `etcd-restart`: one member at a time under a lock
kept in etcd, only while the others hold quorum, waiting until it is healthy again.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from components.artifacts import InstalledRelease, bin_dir, etcd_release
from components.pki import ClusterPKI
from components.remote import STATE_DIR, HealthGate, HostCommand, HostFile, RemoteFiles, SystemdUnit
from components.spec import ClusterSpec, HostSpec
from components.templates import render

PKI_DIR = "/etc/etcd/pki"
PATHS = {
    "ca": f"{PKI_DIR}/ca.crt",
    "server_cert": f"{PKI_DIR}/server.crt",
    "server_key": f"{PKI_DIR}/server.key",
    "peer_cert": f"{PKI_DIR}/peer.crt",
    "peer_key": f"{PKI_DIR}/peer.key",
    "client_cert": f"{PKI_DIR}/healthcheck-client.crt",
    "client_key": f"{PKI_DIR}/healthcheck-client.key",
}
RESTART_HELPER = "/usr/local/lib/kube-hardway/etcd-restart"


def client_url(host: HostSpec) -> str:
    return f"https://{host.internal_address}:2379"


class EtcdCluster(pulumi.ComponentResource):
    client_endpoints: list[str]

    def __init__(self, name: str, spec: ClusterSpec, pki: ClusterPKI,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:etcd:EtcdCluster", name, None, opts)
        members = spec.etcd_hosts
        release = etcd_release(spec.versions["etcd"])
        # Keeps a member of another cluster from joining this one by mistake; not a secret.
        token = random.RandomId(f"{name}-cluster-token", byte_length=8,
                                opts=pulumi.ResourceOptions(parent=self))
        initial_cluster = ",".join(f"{m.name}=https://{m.internal_address}:2380" for m in members)
        binaries_dir = bin_dir(spec)

        units: list[SystemdUnit] = []
        for host in members:
            child = pulumi.ResourceOptions(parent=self)
            binaries = InstalledRelease(f"{name}-binaries-{host.name}", host, spec, release, opts=child)
            values = {"state_dir": STATE_DIR, "data_dir": spec.etcd.data_dir}
            account = HostCommand(
                f"{name}-account-{host.name}", host, spec.ssh,
                create=render("etcd-account.sh.j2", **values),
                delete=render("etcd-account-delete.sh.j2", **values),
                opts=child)
            others = [m for m in members if m != host]
            files = [
                HostFile(PATHS["ca"], pki.etcd_ca.cert_pem),
                HostFile(PATHS["server_cert"], pki.etcd_server[host.name].cert_pem),
                HostFile(PATHS["server_key"], pki.etcd_server[host.name].key_pem, "0600", "etcd:etcd"),
                HostFile(PATHS["peer_cert"], pki.etcd_peer[host.name].cert_pem),
                HostFile(PATHS["peer_key"], pki.etcd_peer[host.name].key_pem, "0600", "etcd:etcd"),
                HostFile(PATHS["client_cert"], pki.etcd_healthcheck_client.cert_pem),
                HostFile(PATHS["client_key"], pki.etcd_healthcheck_client.key_pem, "0600"),
                HostFile(RESTART_HELPER, render(
                    "etcd-restart.sh.j2", name=host.name, count=len(members),
                    others=",".join(client_url(m) for m in others),
                    others_named=" ".join(f"{m.name}={client_url(m)}" for m in others),
                    bin_dir=binaries_dir, pki=PATHS), "0755"),
            ]
            written = RemoteFiles(f"{name}-files-{host.name}", host, spec.ssh, files,
                                  opts=pulumi.ResourceOptions(parent=self, depends_on=[account]))
            unit_file = token.hex.apply(lambda t, host=host: render(
                "etcd.service.j2", name=host.name, address=host.internal_address,
                bin_dir=binaries_dir, data_dir=spec.etcd.data_dir,
                initial_cluster=initial_cluster, cluster_token=t, pki=PATHS,
                extra_args=spec.etcd.extra_args))
            units.append(SystemdUnit(
                f"{name}-unit-{host.name}", host, spec.ssh, "etcd.service", unit_file,
                reads=[f.content for f in files], no_block=True,
                restart=f"{RESTART_HELPER} {spec.etcd.health_timeout}",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[written, binaries.ready])))

        gate_host = members[0]
        check_members = [{"name": m.name, "url": client_url(m)} for m in members]
        self.health = HealthGate(
            f"{name}-health", gate_host, spec.ssh,
            what=f"etcd cluster ({len(members)} members)",
            check=render("etcd-health.sh.j2", members=check_members,
                         bin_dir=binaries_dir, pki=PATHS),
            triggers=[u.digest for u in units],
            timeout=spec.etcd.health_timeout,
            opts=pulumi.ResourceOptions(parent=self, depends_on=units))

        self.client_endpoints = [client_url(m) for m in members]
        self.ca_file = PATHS["ca"]
        self.client_cert_file = PATHS["client_cert"]
        self.client_key_file = PATHS["client_key"]
        self.register_outputs({
            "clientEndpoints": self.client_endpoints,
            "caFile": self.ca_file,
            "clientCertFile": self.client_cert_file,
            "clientKeyFile": self.client_key_file,
        })
