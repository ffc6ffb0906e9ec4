"""FlannelNetwork: a pod subnet per worker, leased from etcd, and the overlay between them.

The network config (`network.*`) lives at `<network.etcdPrefix>/config`, written with the etcd API
the configured flannel reads (v3 from flannel 0.18, v2 before). Every worker (role `node` or
`master`: the API server must reach pods and services too) runs flanneld from the artifact source
with its own etcd client cert; after it has a lease, `mk-docker-opts.sh` writes Docker's options
for the host's subnet. Workers do not wait for one another.

A change of the network itself (`podCidr`, `subnetLen`, `subnetMin`/`subnetMax`, `backend`) cannot
roll: hosts on different backends or networks do not reach each other, and flanneld started next to
an old lease ignores it. So it goes: flanneld stops on every worker and its old devices and routes
are removed, the new config is written and the old leases removed, flanneld starts everywhere, and
Docker restarts one worker at a time (DockerNode reads `network_digest`) to put docker0 on the new
subnet. Containers get new addresses; pod networking is down from the first stop until the last
Docker restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi

from components.artifacts import ReleaseFiles, StagedRelease
from components.layout import FLANNEL_DOCKER_ENV, FLANNEL_SUBNET_FILE, FLANNELD_PKI, STATE_DIR
from components.links import ETCD_FLANNELD_USER, EtcdAccess, EtcdEndpoints
from components.pki import FlannelCerts
from components.remote import Gate, HostCommand, HostFile, HostService
from components.spec import HostSpec, NetworkSpec, SshSpec
from components.templates import render

PORTS = {"vxlan": "8472/udp", "udp": "8285/udp", "host-gw": "nothing (host-gw routes plain IP)"}


@dataclass(frozen=True)
class FlannelArgs:
    workers: tuple[HostSpec, ...]
    ssh: SshSpec
    network: NetworkSpec
    etcd_api: int                          # 3, or 2 for flannel < 0.18
    etcd: EtcdEndpoints
    certs: FlannelCerts
    release: Mapping[str, ReleaseFiles]    # per architecture among the workers
    # flannel < 0.21.3 can miss a peer's new lease (versions.flannel_drops_lease_events): its gate
    # restarts flanneld, which lists every lease again, when a route stays missing
    drops_lease_events: bool = False


class FlannelNetwork(pulumi.ComponentResource):
    ready: dict[str, HostService]          # per worker: flanneld runs, its lease is held, subnet.env agrees

    def __init__(self, name: str, args: FlannelArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:flannel:FlannelNetwork", name, None, opts)
        net, ssh = args.network, args.ssh
        config = render("flannel/net-conf.json.j2", net=net).strip()
        self.network_digest = digest_of(config)    # DockerNode restarts Docker when it changes
        self.etcd_access = EtcdAccess(tuple(args.etcd.client_endpoints))
        access = self.etcd_access
        prefix = net.etcd_prefix

        hosts: list[HostCommand] = []
        for host in args.workers:
            values = {"host": host.name, "config": config, "state_dir": STATE_DIR, "backend": net.backend,
                      "ports": PORTS[net.backend], "digest": self.network_digest}
            hosts.append(HostCommand(
                f"{name}-host-{host.name}", host, ssh,
                create=render("flannel/host-create.sh.j2", **values),
                delete=render("flannel/host-delete.sh.j2", **values),
                opts=pulumi.ResourceOptions(parent=self)))

        etcd_values = {"api": args.etcd_api, "prefix": prefix, "etcdctl": args.etcd.etcdctl,
                       "endpoints": ",".join(args.etcd.client_endpoints), "pki": args.etcd.client_pki}
        # After every worker's flannel-host step: on a network change, all flanneld are stopped.
        self.config = HostCommand(
            f"{name}-config", args.etcd.admin_host, ssh,
            create=render("flannel/config-create.sh.j2", config=config, **etcd_values),
            delete=render("flannel/config-delete.sh.j2", **etcd_values),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.etcd.health, *filter(None, [args.etcd.users]), *hosts]))

        self.ready = {}
        for host in args.workers:
            binaries = StagedRelease(f"{name}-{host.name}", host, ssh, args.release[host.arch], parent=self)
            files = [   # what flanneld reads: a change restarts it
                HostFile(access.ca, args.certs.ca_cert),
                HostFile(FLANNELD_PKI["cert"], args.certs.client.cert_pem),
                HostFile(FLANNELD_PKI["key"], args.certs.client.key_pem, "0600"),
            ]
            gateway = [  # what the health check logs in to etcd's gateway with
                HostFile(access.cert, args.certs.gateway.cert_pem),
                HostFile(access.key, args.certs.gateway.key_pem, "0600"),
                HostFile(access.password_file, args.etcd.passwords[ETCD_FLANNELD_USER], "0600"),
            ]
            iface = host.iface or host.internal_address
            self.ready[host.name] = HostService(
                f"{name}-{host.name}", host, ssh, "flanneld.service",
                render("flannel/flanneld.service.j2", bin_dir=binaries.bin_dir, prefix=prefix, iface=iface,
                       endpoints=",".join(access.endpoints), pki=FLANNELD_PKI, subnet_file=FLANNEL_SUBNET_FILE,
                       docker_env=FLANNEL_DOCKER_ENV),
                files=[*files, *gateway], steps=[binaries.step],
                # the network config is read from etcd at start: a new one needs a new start
                reads=[binaries.identity, config, *(f.content for f in files)],
                gate=Gate(f"flannel on {host.name}", render(
                    "flannel/health-check.sh.j2", host=host.name, etcd=access, api=args.etcd_api, prefix=prefix,
                    subnet_file=FLANNEL_SUBNET_FILE, pod_cidr=net.pod_cidr, backend=net.backend, iface=host.iface,
                    address=host.internal_address, workers=len(args.workers), repair=args.drops_lease_events),
                    timeout=net.health_timeout),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*binaries.copies, self.config]))

        self.register_outputs({"network": config})


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
