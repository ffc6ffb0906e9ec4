"""ClusterObjects: the Kubernetes objects kube-hardway owns, applied from the first master with the
admin kubeconfig once the API servers answer: the kubelets' TLS bootstrap token (a
`bootstrap.kubernetes.io/token` Secret that expires `kubernetes.bootstrapTokenTtlHours` after the
node set last changed), the bindings that let a bootstrapping kubelet ask for its client cert and
have it (and its renewals) approved without a human, the API server's rights on kubelets, and
CoreDNS at `network.clusterDns`.

The token is made here (pulumi-random, the secret half a Pulumi secret) and handed to every
KubeNode's bootstrap kubeconfig; the node list is in the apply script, so a node added or removed
re-applies, and the token is valid for another TTL for the new kubelet's first certificate; so
are the cluster's CAs (a digest), for a CA rotation's runs, in which every kubelet bootstraps again.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_random as random
from pulumi_command import remote

from components.layout import ADMIN_KUBECONFIG, CLUSTER_ADMINS_GROUP, SUPER_ADMIN_KUBECONFIG
from components.links import CONTROL_PLANE, moved_from
from components.remote import HostCommand
from components.spec import HostSpec, ImagesSpec, KubernetesSpec, NetworkSpec, SshSpec
from components.templates import render

BOOTSTRAPPERS = "system:bootstrappers:kube-hardway"
BINDINGS = ["kube-hardway:node-bootstrapper", "kube-hardway:node-autoapprove-bootstrap",
            "kube-hardway:node-autoapprove-renewal", "kube-hardway:apiserver-kubelet-client"]


@dataclass(frozen=True)
class ClusterObjectsArgs:
    master: HostSpec                        # where kubectl runs (the first master)
    ssh: SshSpec
    kubectl: str                            # its path on that master
    network: NetworkSpec
    kubernetes: KubernetesSpec
    images: ImagesSpec
    no_new_privs_pods: bool                 # pods with allowPrivilegeEscalation: false start (spec.runs_no_new_privs_pods)
    nodes: tuple[str, ...]                  # the stack's nodes: a change renews the bootstrap token
    api_ready: list[pulumi.Resource]        # the API servers answer
    encryption_writer: str = "identity"     # how every API server writes Secrets (ControlPlane)
    # the Kubernetes CAs (pki.cas.kubernetes): a digest of what the cluster trusts (a change renews the
    # bootstrap token: every kubelet bootstraps again), and the one that signs
    trust: pulumi.Input[str] = ""
    signer: str = "kubernetes-ca"


class ClusterObjects(pulumi.ComponentResource):
    bootstrap_token: pulumi.Output[str]     # <id>.<secret>, a secret
    applied: HostCommand                    # the objects exist

    def __init__(self, name: str, args: ClusterObjectsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:cluster_objects:ClusterObjects", name, None, opts)
        def child(was: str) -> pulumi.ResourceOptions:     # shipped in ControlPlane as `was`: same token
            return pulumi.ResourceOptions(parent=self, aliases=[moved_from(was, CONTROL_PLANE)])

        # a bootstrap token is <6 of [a-z0-9]>.<16 of [a-z0-9]> (the id is public, the secret is not)
        token_id = random.RandomString(f"{name}-token-id", length=6, special=False, upper=False,
                                       opts=child("control-plane-token-id"))
        token_secret = random.RandomPassword(f"{name}-token-secret", length=16, special=False, upper=False,
                                             opts=child("control-plane-token-secret"))
        # (the secret half keeps the joined token secret; KubeNode's bootstrap kubeconfig carries it)
        self.bootstrap_token = pulumi.Output.concat(token_id.result, ".", token_secret.result)
        net, kube = args.network, args.kubernetes
        coredns = render("kubernetes/coredns.yaml.j2", cluster_dns=net.cluster_dns, domain=net.cluster_domain,
                         upstream=kube.dns_upstream, replicas=min(kube.dns_replicas, len(args.nodes)), image=args.images.coredns,
                         no_new_privs=args.no_new_privs_pods,
                         signer=None if args.signer == "kubernetes-ca" else args.signer)
        ttl = kube.bootstrap_token_ttl_hours
        manifest = pulumi.Output.all(token_id.result, token_secret.result).apply(lambda t: render(
            "kubernetes/bootstrap.yaml.j2", master=args.master.name, token_id=t[0], token_secret=t[1],
            group=BOOTSTRAPPERS, ttl_hours=ttl) + "---\n" + coredns)
        values = {"kubectl": args.kubectl, "kubeconfig": ADMIN_KUBECONFIG, "bindings": BINDINGS,
                  "super_admin_kubeconfig": SUPER_ADMIN_KUBECONFIG, "group": CLUSTER_ADMINS_GROUP,
                  "objects": [CLUSTER_ADMINS_GROUP, "bootstrap token", *BINDINGS, "CoreDNS"]}
        self.applied = HostCommand(
            f"{name}-bootstrap", args.master, args.ssh,
            create=pulumi.Output.all(token_id.result, args.trust).apply(lambda t: render(
                "kubernetes/bootstrap-create.sh.j2", token_id=t[0], trust=t[1], ttl_hours=ttl, nodes=sorted(args.nodes),
                **values)),
            delete=token_id.result.apply(lambda t: render("kubernetes/bootstrap-delete.sh.j2", token_id=t, **values)),
            stdin=manifest, logging=remote.Logging.STDERR,
            opts=pulumi.ResourceOptions.merge(child("control-plane-bootstrap"),
                                              pulumi.ResourceOptions(depends_on=args.api_ready)))
        # Secrets stored before (plain, or with a key no longer first) are written again
        self.rewritten = HostCommand(
            f"{name}-encryption", args.master, args.ssh,
            create=render("kubernetes/encryption-rewrite.sh.j2", writer=args.encryption_writer, **values),
            delete=": the Secrets stay as they are stored", logging=remote.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.applied]))
        self.register_outputs({})
