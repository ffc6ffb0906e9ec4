"""Registry: a private registry and a pull-through cache (CNCF distribution) on chosen hosts.

A registry v2 cannot be both, so each role is its own systemd unit with its own config, port and
storage, run from the artifact source (the upstream release, or the distribution's package) and
not as a container: the registry must not depend on the Docker it serves. Both serve TLS with a
cert from the cluster PKI; every Docker daemon trusts the Kubernetes CA for these endpoints only
(`/etc/docker/certs.d/<host:port>/ca.crt`, written by DockerNode), so no `insecure-registries`.
The cache is every worker's first `registry-mirrors` entry.

The private registry is two instances of one storage: nodes pull from a read-only one
(`registry.private.port`) with a pull-only login, from a root-only credentials file, so pods need
no image pull secrets; the team pushes to its own port (`registry.private.pushPort`) with the push
login, which is only in the `registry` stack output (htpasswd alone lets any login push, so root on
a worker could otherwise overwrite any image every node runs). Both passwords are generated and
kept secret. Seeding `registry.seedImages` is RegistrySeed's, with the push login.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from components.artifacts import ReleaseFiles, StagedRelease
from components.layout import REGISTRY_CONFIG_DIR, REGISTRY_HTPASSWD, REGISTRY_PKI, REGISTRY_UNITS, STATE_DIR
from components.links import RegistryAccess
from components.pki import KeyPair
from components.remote import Gate, HostFile, HostService, HostStep
from components.spec import HostSpec, SshSpec
from components.spec.registry import RegistrySpec
from components.templates import render


@dataclass(frozen=True)
class RegistryArgs:
    hosts: tuple[HostSpec, ...]
    ssh: SshSpec
    registry: RegistrySpec
    ca_cert: pulumi.Output[str]
    certs: dict[str, KeyPair]               # serving cert per registry host
    release: dict[str, ReleaseFiles]        # per architecture among the registry hosts
    images_dir: str                         # where registry.seedImages are (artifacts.dir)


def endpoints(hosts: tuple[HostSpec, ...], spec: RegistrySpec, push: bool = True) -> tuple[str, ...]:
    """Every host:port a client may name a registry by: what Docker needs a CA for (certs.d); with
    `push` false, only where nodes pull."""
    ports = [p for p, on in ((spec.private_port, spec.private), (spec.push_port, spec.private and push),
                             (spec.cache_port, spec.cache and push)) if on]
    return tuple(dict.fromkeys(f"{n}:{p}" for h in hosts for p in ports
                               for n in (h.internal_address, h.address, h.name)))


def mirrors(hosts: tuple[HostSpec, ...], spec: RegistrySpec) -> tuple[str, ...]:
    """The cache, as Docker's registry-mirrors entries (ahead of the user's own)."""
    return tuple(f"https://{h.internal_address}:{spec.cache_port}" for h in hosts) if spec.cache else ()


class Registry(pulumi.ComponentResource):
    ready: list[pulumi.Resource]

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:registry:Registry", name, None, opts)
        spec, ssh = args.registry, args.ssh
        roles = [r for r, on in (("private", spec.private), ("push", spec.private), ("cache", spec.cache)) if on]
        storage = {r: f"{spec.storage_dir}/{'private' if r == 'push' else r}" for r in roles}
        ports = {"private": spec.private_port, "push": spec.push_port, "cache": spec.cache_port}
        password = random.RandomPassword(f"{name}-password", length=32, special=False,
                                         opts=pulumi.ResourceOptions(parent=self)) if spec.private else None
        pull_password = random.RandomPassword(f"{name}-pull-password", length=32, special=False,
                                              opts=pulumi.ResourceOptions(parent=self)) if spec.private else None
        logins = {"private": (f"{spec.username}-pull", pull_password), "push": (spec.username, password)}
        self.ready = []
        for host in args.hosts:
            binaries = StagedRelease(f"{name}-{host.name}", host, ssh, args.release[host.arch], parent=self)
            values = {"host": host.name, "state_dir": STATE_DIR, "storage": spec.storage_dir,
                      "storage_dirs": list(dict.fromkeys(storage.values())), "keep_storage": spec.keep_storage}
            prepare = HostStep(render("registry/prepare-create.sh.j2", **values),
                               render("registry/prepare-delete.sh.j2", **values))
            pki = args.certs[host.name]
            shared = [HostFile(REGISTRY_PKI["ca"], args.ca_cert), HostFile(REGISTRY_PKI["cert"], pki.cert_pem),
                      HostFile(REGISTRY_PKI["key"], pki.key_pem, "0600")]
            previous: list[pulumi.Resource] = list(binaries.copies)
            for i, role in enumerate(roles):
                port = ports[role]
                config_path = f"{REGISTRY_CONFIG_DIR}/{role}.yml"
                htpasswd = REGISTRY_HTPASSWD.get(role)
                config = render("registry/config.yml.j2", role=role, host=host.name, storage=storage[role],
                                port=port, pki=REGISTRY_PKI, htpasswd=htpasswd, read_only=role == "private",
                                upstream=spec.upstream if role == "cache" else None)
                files = [HostFile(config_path, config)]
                if htpasswd:
                    user, secret = logins[role]
                    assert secret is not None, "the private registry's logins exist with it"
                    files.append(HostFile(htpasswd, pulumi.Output.concat(user, ":", secret.bcrypt_hash, "\n"), "0600"))
                first = i == 0   # the first role carries what both share: the install, certs, storage
                service = HostService(
                    f"{name}-{role}-{host.name}", host, ssh, REGISTRY_UNITS[role],
                    render("registry/registry.service.j2", role=role, host=host.name, port=port,
                           registry=binaries.executable("registry"), config=config_path),
                    files=[*shared, *files] if first else files,
                    steps=[prepare, binaries.step] if first else [],
                    reads=[binaries.identity, *(f.content for f in [*shared, *files])],
                    gate=Gate(f"the {role} registry on {host.name}", render(
                        "registry/health.sh.j2", role=role, host=host.name, address=host.internal_address, port=port,
                        ca=REGISTRY_PKI["ca"], unit=REGISTRY_UNITS[role], upstream=spec.upstream if role == "cache" else None),
                        timeout=spec.health_timeout),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=previous))
                previous = [service]
                self.ready.append(service)

        self.hosts = args.hosts
        self.private_endpoints = endpoints(args.hosts, spec, push=False) if spec.private else ()
        first_host = args.hosts[0]
        self.push_url = f"{first_host.internal_address}:{spec.push_port}" if spec.private else None
        self.pull_url = f"{first_host.internal_address}:{spec.private_port}" if spec.private else None
        self.username = spec.username if spec.private else None
        self.password = password.result if password is not None else None
        # what a docker client sends: base64 of user:password (the seed step pushes, a worker pulls)
        self.docker_auth = _docker_auth(spec.username, password)
        self.pull_auth = _docker_auth(f"{spec.username}-pull", pull_password)
        self.access = RegistryAccess(mirrors(args.hosts, spec), endpoints(args.hosts, spec), args.ca_cert,
                                     self.pull_credentials())
        self.register_outputs({"pushUrl": self.push_url})

    def pull_credentials(self) -> pulumi.Output[str] | None:
        """The kubelet's node-wide image pull credentials (`<root-dir>/config.json`): pods pull from
        the private registry without image pull secrets."""
        if self.pull_auth is None:
            return None
        return pulumi.Output.all(self.pull_auth).apply(lambda a: json.dumps(
            {"auths": {e: {"auth": a[0]} for e in self.private_endpoints}}, indent=2) + "\n")


def _docker_auth(user: str, password: random.RandomPassword | None) -> pulumi.Output[str] | None:
    return password.result.apply(lambda p: base64.b64encode(f"{user}:{p}".encode()).decode()) if password else None
