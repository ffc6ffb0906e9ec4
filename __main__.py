"""kube-hardway: read the stack config, build the cluster, export how to reach it."""

import pulumi

from components.etcd import EtcdCluster
from components.pki import ClusterPKI
from components.spec import load_spec

spec = load_spec()
pki = ClusterPKI("pki", spec)
etcd = EtcdCluster("etcd", spec, pki)

pulumi.export("etcdEndpoints", etcd.client_endpoints)
pulumi.export("etcdctl", {
    "caFile": etcd.ca_file,
    "certFile": etcd.client_cert_file,
    "keyFile": etcd.client_key_file,
    "onHosts": [h.name for h in spec.etcd_hosts],
})
pulumi.export("kubernetesCaCertPem", pki.kubernetes_ca.cert_pem)
