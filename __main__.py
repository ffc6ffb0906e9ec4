"""kube-hardway: read the stack config, build the cluster, export how to reach it."""

import pulumi

from components import artifacts
from components.etcd import EtcdArgs, EtcdCluster
from components.pki import ClusterPKI, PkiArgs
from components.spec import load_spec

spec = load_spec()
pki = ClusterPKI("pki", PkiArgs(pki=spec.pki, network=spec.network, etcd_hosts=spec.etcd_hosts,
                                masters=spec.masters, nodes=spec.nodes))
etcd = EtcdCluster("etcd", EtcdArgs(
    members=spec.etcd_hosts, ssh=spec.ssh, etcd=spec.etcd, certs=pki.etcd,
    release=artifacts.provide("etcd", spec.versions["etcd"], (h.arch for h in spec.etcd_hosts), spec.artifacts)))

pulumi.export("etcdEndpoints", etcd.client_endpoints)
pulumi.export("etcdctl", {
    "caFile": etcd.ca_file,
    "certFile": etcd.client_cert_file,
    "keyFile": etcd.client_key_file,
    "onHosts": [h.name for h in spec.etcd_hosts],
})
pulumi.export("kubernetesCaCertPem", pki.control_plane.ca.cert_pem)
