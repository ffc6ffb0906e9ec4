"""RegistrySeed: the images of `registry.seedImages` pushed into the private registry, once (again
when a tarball changes), with the Docker of the first registry host (a worker: the spec checks it).

The tarballs come from `artifacts.dir` over SFTP; the push login (base64 of user:password, a
secret) reaches Docker on stdin, never on a command line. Destroy removes what the push left on
the host; the stored images stay with the registry's storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.artifacts import copy_image_tarballs
from components.layout import STATE_DIR
from components.links import REGISTRY, moved_from
from components.remote import HostCommand
from components.spec import HostSpec, SshSpec
from components.templates import render


@dataclass(frozen=True)
class RegistrySeedArgs:
    host: HostSpec                          # the first registry host, whose Docker pushes
    ssh: SshSpec
    images: tuple[str, ...]                 # registry.seedImages: `docker save` tarballs
    images_dir: str                         # where they are (artifacts.dir)
    push_url: str                           # the private registry, host:port
    docker_auth: pulumi.Output[str]         # base64 of user:password, a secret
    registry_ready: list[pulumi.Resource]   # the registries answer
    docker_ready: pulumi.Resource           # the host's Docker runs


class RegistrySeed(pulumi.ComponentResource):
    def __init__(self, name: str, args: RegistrySeedArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:registry_seed:RegistrySeed", name, None, opts)
        # the copies and the push shipped in the Registry component named "registry" as
        # registry-seed-copy-<file> and registry-seed: the aliases keep them (nothing is pushed again)
        images, copies = copy_image_tarballs(f"{name}-copy", args.host, args.ssh, args.images, args.images_dir, self,
                                             prefix="seed-", moved_from=REGISTRY)
        values = {"state_dir": STATE_DIR, "images": images, "endpoint": args.push_url}
        self.pushed = HostCommand(
            f"{name}-push", args.host, args.ssh,
            create=render("registry/seed-create.sh.j2", **values),
            delete=render("registry/seed-delete.sh.j2", **values),
            stdin=pulumi.Output.concat(args.docker_auth, "\n"),
            logging=remote.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self, aliases=[moved_from("registry-seed", REGISTRY)],
                                        depends_on=[*args.registry_ready, args.docker_ready, *copies]))
        self.register_outputs({})
