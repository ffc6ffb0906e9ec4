"""kube-hardway: read the stack config, build the cluster, export how to reach it."""

import pulumi

from components import artifacts
from components.cluster_objects import ClusterObjects, ClusterObjectsArgs
from components.control_plane import ControlPlane, ControlPlaneArgs
from components.docker import DockerArgs, DockerNode
from components.etcd import EtcdArgs, EtcdCluster, membership_check
from components.flannel import FlannelArgs, FlannelNetwork
from components.kube_node import KubeNode, KubeNodeArgs, api_server_url, uses_api_proxy, version_check
from components.links import ETCD_LOCK_USER
from components.node_set import NodeSet, NodeSetArgs
from components.pki import ClusterPKI, PkiArgs, ca_check, kubeconfig
from components.preflight import Preflight, PreflightArgs
from components.registry import Registry, RegistryArgs
from components.registry_seed import RegistrySeed, RegistrySeedArgs
from components.remote import digest
from components.spec import load_spec
from components.spec.versions import flannel_drops_lease_events, flannel_etcd_api

spec = load_spec()
workers = spec.workers


def release(component: str, hosts: tuple, *binaries: str, role: str = "") -> dict[str, artifacts.ReleaseFiles]:
    """`component`'s release files for the architectures among `hosts` (only `binaries`, when given)."""
    return artifacts.provide(component, spec.versions[component], (h.arch for h in hosts), spec.artifacts,
                             binaries=binaries, role=role)


etcd_api = flannel_etcd_api(spec.versions["flannel"])
registry_hosts = tuple(h for h in spec.hosts if h.name in spec.registry.hosts)
master_addresses = tuple(m.address for m in spec.masters)
proxied = uses_api_proxy(spec.kubernetes, master_addresses)   # nodes reach several API servers through haproxy

# Every release first: a missing release file is a config error before any host is touched.
etcd_release = release("etcd", spec.etcd_hosts)
flannel_release = release("flannel", workers)
registry_release = release("registry", registry_hosts) if spec.registry.enabled else {}
docker_release = release("docker", workers)
control_plane_release = release("kubernetes", spec.masters, "kube-apiserver", "kube-controller-manager",
                                "kube-scheduler", "kubectl", role="control-plane")
node_release = {binary: release("kubernetes", workers, binary, role=binary) for binary in ("kubelet", "kube-proxy")}
cri_dockerd_release = release("criDockerd", workers)
api_proxy_release = artifacts.distribution_packages("apiServerProxy", (h.arch for h in workers), spec.artifacts) \
    if proxied else {}

pki = ClusterPKI("pki", PkiArgs(pki=spec.pki, network=spec.network, etcd_hosts=spec.etcd_hosts,
                                masters=spec.masters, workers=workers, registry_hosts=registry_hosts))

# every connection below waits until every host passed its preflight
# (on a member that runs already, the preflight also refuses an etcd membership change it cannot make safely)
etcdctl = f"{artifacts.bin_dir(spec.artifacts.source_of('etcd'))}/etcdctl"
# (and on a node, a Kubernetes version change that skips a minor version or goes back one; on any
# host, a CA that would sign before the host trusts it, or leave while it signs what runs there)
checks = {h.name: pulumi.Output.concat(
    membership_check(h, spec.etcd_hosts, spec.etcd, etcdctl) if h.has("etcd") else "",
    version_check(h, spec.kubernetes_version, h.has("master")) if h in workers else "",
    ca_check(h, pki.trusts, h in registry_hosts)) for h in spec.hosts}
ssh = Preflight("preflight", PreflightArgs(spec, uses_api_proxy=proxied, checks=checks)).ssh
# a worker's release files in one copy (the etcd members' and masters' keep their own: they start
# the cluster, and wait for nothing else); before the components that install them, which find it
# on their ReleaseFiles
artifacts.HostReleases("node-releases", workers, ssh, spec.artifacts, lambda h: (
    flannel_release[h.arch], docker_release[h.arch], cri_dockerd_release[h.arch],
    node_release["kubelet"][h.arch], node_release["kube-proxy"][h.arch]))
etcd = EtcdCluster("etcd", EtcdArgs(
    members=spec.etcd_hosts, ssh=ssh, etcd=spec.etcd, certs=pki.etcd,
    release=etcd_release, enable_v2=etcd_api == 2, flannel_prefix=spec.network.etcd_prefix, masters=spec.masters))
network = FlannelNetwork("flannel", FlannelArgs(
    workers=workers, ssh=ssh, network=spec.network, etcd_api=etcd_api, etcd=etcd.endpoints,
    drops_lease_events=flannel_drops_lease_events(spec.versions["flannel"]),
    certs=pki.flannel, release=flannel_release))
registry = Registry("registry", RegistryArgs(
    hosts=registry_hosts, ssh=ssh, registry=spec.registry, ca_cert=pki.control_plane.ca_bundle,
    certs=dict(pki.registry), release=registry_release, images_dir=spec.artifacts.dir,
)) if spec.registry.enabled else None
docker = DockerNode("docker", DockerArgs(
    workers=workers, ssh=ssh, docker=spec.docker, release=docker_release,
    network_ready=network.ready, network_digest=network.network_digest, etcd=network.etcd_access,
    lock_password=etcd.passwords[ETCD_LOCK_USER], images_dir=spec.artifacts.dir,
    registry=registry.access if registry else None))
if registry:
    if spec.registry.seed_images:   # the spec makes sure the first registry host is a worker
        assert registry.push_url and registry.docker_auth, "seeding needs the private registry (the spec checks it)"
        RegistrySeed("registry-seed", RegistrySeedArgs(
            host=registry_hosts[0], ssh=ssh, images=spec.registry.seed_images, images_dir=spec.artifacts.dir,
            push_url=registry.push_url, docker_auth=registry.docker_auth, registry_ready=registry.ready,
            docker_ready=docker.ready[registry_hosts[0].name]))
    pulumi.export("registry", {
        "pushUrl": registry.push_url, "username": registry.username, "password": registry.password,
        "pullUrl": registry.pull_url,
        "cacheMirrors": list(registry.access.mirrors), "caCertPem": pki.control_plane.ca_bundle})

control_plane = ControlPlane("control-plane", ControlPlaneArgs(
    masters=spec.masters, ssh=ssh, network=spec.network, version=spec.kubernetes_version,
    certs=pki.control_plane, etcd=etcd.endpoints, pod_security_default=spec.kubernetes.pod_security_default,
    encryption_provider=spec.kubernetes.encryption_provider, encryption_keys=spec.kubernetes.encryption_keys,
    release=control_plane_release))
objects = ClusterObjects("cluster-objects", ClusterObjectsArgs(
    master=spec.masters[0], ssh=ssh, kubectl=control_plane.kubectl, network=spec.network,
    kubernetes=spec.kubernetes, images=spec.images, no_new_privs_pods=spec.runs_no_new_privs_pods,
    # (the API servers only: the nodes come up while the controller-managers and schedulers start)
    nodes=tuple(h.name for h in workers), api_ready=control_plane.api_servers,
    encryption_writer=control_plane.encryption_writer,
    trust=digest(pki.control_plane.ca_bundle), signer=spec.pki.kubernetes_cas[0]))

nodes = KubeNode("node", KubeNodeArgs(
    workers=workers, ssh=ssh, version=spec.kubernetes_version, kubernetes=spec.kubernetes, network=spec.network,
    images=spec.images, cgroup_driver=spec.docker.cgroup_driver,
    api_servers=master_addresses, certs=pki.nodes, bootstrap_token=objects.bootstrap_token,
    kubelet_release=node_release["kubelet"], kube_proxy_release=node_release["kube-proxy"],
    cri_dockerd_release=cri_dockerd_release, api_proxy_release=api_proxy_release,
    docker_running=docker.ready, docker_ready=docker.settled, control_plane_ready=[objects.applied],
    admin=spec.masters[0], kubectl=control_plane.kubectl))
NodeSet("node-set", NodeSetArgs(
    master=spec.masters[0], ssh=ssh, kubectl=control_plane.kubectl, masters=tuple(h.name for h in spec.masters),
    kubernetes=spec.kubernetes, images=spec.images, version=spec.kubernetes_version,
    nodes=nodes.ready,
    objects=objects.applied, control_plane=tuple(control_plane.ready)))

admin_endpoint = spec.kubernetes.api_endpoint or control_plane.endpoints[0]
pulumi.export("kubeconfig", pulumi.Output.secret(
    kubeconfig(admin_endpoint, pki.control_plane.ca_bundle, pki.control_plane.admin, "admin")))
pulumi.export("apiEndpoints", control_plane.endpoints)
pulumi.export("etcdEndpoints", etcd.client_endpoints)
pulumi.export("certificates", pki.expiry)   # each certificate's end (validityEndTime)
if etcd.backups:   # where the snapshots are: copy one away with scp (README "Backups and restore")
    pulumi.export("etcdBackups", etcd.backups)
pulumi.export("etcdctl", {
    "caFile": etcd.ca_file,
    "certFile": etcd.client_cert_file,
    "keyFile": etcd.client_key_file,
    "onHosts": [h.name for h in spec.etcd_hosts],
})
pulumi.export("podNetwork", {"cidr": spec.network.pod_cidr, "backend": spec.network.backend,
                             "etcdKey": f"{spec.network.etcd_prefix}/config"})
pulumi.export("workers", [h.name for h in workers])
pulumi.export("nodes", list(nodes.ready))
pulumi.export("nodeApiServer", api_server_url(spec.kubernetes, master_addresses))
pulumi.export("kubernetesCaCertPem", pki.control_plane.ca_bundle)
