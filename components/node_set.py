"""NodeSet: what runs once every node of the stack is Ready, from the first master.

* Cluster DNS answers: CoreDNS (applied by ClusterObjects) is rolled out, its readiness probe
  passing once it serves.
* The stack's nodes, their roles and the Kubernetes version they run, recorded (a node's drain
  before an upgrade reads its version there): a node removed from the stack is cordoned, drained
  and its Node object deleted by this command's update, which the engine runs before it deletes
  that node's kubelet (deletes of removed resources come last); a node whose role changed gets the
  control-plane taint and label set or removed (a kubelet registers its taints only once). On
  destroy it goes first, and the kubelets then go without draining.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi

from components.layout import ADMIN_KUBECONFIG, CONTROL_PLANE_ROLE, DRAIN_FAILED, NODES_FILE, STATE_DIR
from components.links import CONTROL_PLANE, moved_from
from components.remote import HostCommand
from components.spec import HostSpec, ImagesSpec, KubernetesSpec, SshSpec
from components.spec.versions import KubernetesVersion
from components.templates import render


@dataclass(frozen=True)
class NodeSetArgs:
    master: HostSpec                        # where kubectl runs (the first master)
    ssh: SshSpec
    kubectl: str                            # its path on that master
    masters: tuple[str, ...]                # the stack's masters
    kubernetes: KubernetesSpec
    images: ImagesSpec
    version: KubernetesVersion              # what every node runs once this run is done
    # every node's gate (Ready), by name: once they all passed in an upgrade, every node was drained
    # and runs `version` (its uncordon may still be under way)
    nodes: Mapping[str, pulumi.Resource]
    objects: pulumi.Resource                # ClusterObjects applied (CoreDNS among them)
    # every control-plane component past its gate (the scheduler places CoreDNS; the nodes waited
    # only for the API servers, through the objects)
    control_plane: tuple[pulumi.Resource, ...] = ()


class NodeSet(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodeSetArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:node_set:NodeSet", name, None, opts)
        values = {"kubectl": args.kubectl, "kubeconfig": ADMIN_KUBECONFIG}
        self.dns_ready = HostCommand(
            f"{name}-dns-health", args.master, args.ssh,
            create=render("kubernetes/dns-ready.sh.j2", timeout=args.kubernetes.node_timeout, **values),
            triggers=[args.images.coredns, args.kubernetes.dns_replicas],
            opts=pulumi.ResourceOptions(parent=self, aliases=[moved_from("control-plane-dns-health", CONTROL_PLANE)],
                                        depends_on=[args.objects, *args.control_plane, *args.nodes.values()]))
        self.recorded = HostCommand(
            f"{name}-record", args.master, args.ssh,
            create=render("kubernetes/nodes-create.sh.j2", nodes=sorted(args.nodes), state_dir=STATE_DIR, list=NODES_FILE,
                          version=args.version,
                          masters=sorted(m for m in args.masters if m in args.nodes), taint=CONTROL_PLANE_ROLE,
                          timeout=args.kubernetes.node_timeout, host=args.master.name, **values),
            delete=render("kubernetes/nodes-delete.sh.j2", state=NODES_FILE, failed=DRAIN_FAILED),
            opts=pulumi.ResourceOptions(parent=self, aliases=[moved_from("control-plane-nodes", CONTROL_PLANE)],
                                        depends_on=[args.objects, *args.nodes.values()]))
        self.register_outputs({})
