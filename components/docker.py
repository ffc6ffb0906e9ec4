"""DockerNode: Docker on every worker, with docker0 on the worker's flannel subnet.

One component for all workers (a component per worker was one more resource per worker in the
stack's state: the SDK's preview hardly noticed, the engine checkpoints each); its commands are named
per worker (`docker-<host>-daemon`), with the URNs they had when each worker had its own component
(a URN holds the parent's type, not its name). Per worker, in parallel with every other worker:
kernel settings and the takeover record (`prepare`) → the binaries (static tarball, or the
distribution's package) → daemon.json, the socket unit and the restart helpers (one command) →
docker.service, which reads flannel's `DOCKER_NETWORK_OPTIONS` → a health gate (Docker answers,
docker0 is inside the flannel subnet) → image tarballs for air-gapped hosts, loaded once and again when a file changes.

A change Docker must restart for (daemon.json, a new binary, a new flannel network) goes through
`rolling-restart`: one worker at a time, cluster-wide, under a lock kept in etcd, each waiting
until its Docker is healthy again. Destroy gives back what was there: a distribution's Docker that
ran before is enabled and running again, with its own daemon.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import pulumi

from components.artifacts import ReleaseFiles, StagedRelease, copy_image_tarballs
from components.layout import (
    DOCKER_HEALTH,
    ETCD_LOCK_PASSWORD,
    FLANNEL_DOCKER_ENV,
    FLANNEL_SUBNET_FILE,
    KUBELET_PULL_CREDENTIALS,
    ROLLING_RESTART,
    STATE_DIR,
    UNIT_DIR,
)
from components.links import ETCD_LOCK_USER, EtcdAccess, RegistryAccess
from components.remote import Gate, HostCommand, HostFile, HostService, HostStep, rolling_restart
from components.spec import DockerSpec, HostSpec, SshSpec
from components.templates import render


@dataclass(frozen=True)
class DockerArgs:
    workers: tuple[HostSpec, ...]
    ssh: SshSpec
    docker: DockerSpec
    release: Mapping[str, ReleaseFiles]     # per architecture among the workers
    network_ready: Mapping[str, pulumi.Resource]   # per worker: flannel holds its lease
    network_digest: str                     # a new flannel network needs a Docker restart
    etcd: EtcdAccess                        # the cluster-wide restart lock: how a worker reaches etcd
    lock_password: pulumi.Output[str]       # etcd user kube-hardway-lock's (a secret)
    images_dir: str                         # where docker.preloadImages are (artifacts.dir)
    registry: RegistryAccess | None = None  # the cluster's registry and cache, when there are


def daemon_config(docker: DockerSpec, cache_mirrors: tuple[str, ...] = ()) -> dict[str, object]:
    """daemon.json. `userland-proxy: false` makes Docker set hairpin mode on every docker0 port,
    for containers started later too, so a container reaches itself through a published port."""
    settings: dict[str, object] = {
        "data-root": docker.data_root,
        "exec-opts": [f"native.cgroupdriver={docker.cgroup_driver}"],
        "log-driver": "json-file",
        "log-opts": {"max-size": docker.log_max_size, "max-file": str(docker.log_max_files)},
        "max-concurrent-downloads": docker.max_concurrent_downloads,
        "userland-proxy": False,
    }
    if cache_mirrors or docker.registry_mirrors:
        settings["registry-mirrors"] = list(dict.fromkeys([*cache_mirrors, *docker.registry_mirrors]))
    if docker.insecure_registries:
        settings["insecure-registries"] = list(docker.insecure_registries)
    return {**docker.extra_config, **settings}


class DockerNode(pulumi.ComponentResource):
    ready: dict[str, HostService]           # per worker: Docker answers on the flannel subnet
    # per worker, what a kubelet waits for: Docker, and the images it may not be able to pull (pause)
    settled: dict[str, pulumi.Resource]

    def __init__(self, name: str, args: DockerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:docker:DockerNode", name, None, opts)
        self.ready, self.settled = {}, {}
        for host in args.workers:
            ready = self.ready[host.name] = self._docker(f"{name}-{host.name}", host, args)
            self.settled[host.name] = self._preload(f"{name}-{host.name}", host, args, ready) \
                if args.docker.preload_images else ready
        self.register_outputs({})

    def _docker(self, name: str, host: HostSpec, args: DockerArgs) -> HostService:
        ssh, docker, release = args.ssh, args.docker, args.release[host.arch]
        values = {"host": host.name, "state_dir": STATE_DIR}
        # The takeover record first: it must see the host as it was, before any package install.
        prepare = HostStep(render("docker/prepare-create.sh.j2", **values),
                           render("docker/prepare-delete.sh.j2", **values))
        binaries = StagedRelease(name, host, ssh, release, parent=self)
        registry = args.registry
        lock = replace(args.etcd, user=ETCD_LOCK_USER, password_file=ETCD_LOCK_PASSWORD)
        daemon_json = render("docker/daemon.json.j2",
                             settings=daemon_config(docker, registry.mirrors if registry else ()))
        files = [
            HostFile("/etc/docker/daemon.json", daemon_json),
            HostFile(f"{UNIT_DIR}/docker.socket", render("docker/docker.socket.j2")),
            HostFile(DOCKER_HEALTH, render("docker/health.sh.j2", host=host.name, subnet_file=FLANNEL_SUBNET_FILE), "0755"),
            HostFile(ROLLING_RESTART, render("remote/rolling-restart.sh.j2", host=host.name, etcd=lock,
                                             hosts=len(args.workers)), "0755"),
            HostFile(lock.password_file, args.lock_password, "0600"),
        ]
        if registry:
            # Docker reads certs.d per connection: a new registry needs no restart
            files += [HostFile(f"/etc/docker/certs.d/{e}/ca.crt", registry.ca_cert) for e in registry.endpoints]
            if registry.pull_credentials is not None:
                files.append(HostFile(KUBELET_PULL_CREDENTIALS, registry.pull_credentials, "0600"))
        return HostService(
            f"{name}-daemon", host, ssh, "docker.service",
            render("docker/docker.service.j2", host=host.name, docker_env=FLANNEL_DOCKER_ENV,
                   dockerd=binaries.executable("dockerd"), system_containerd=release.source == "package"),
            files=files, steps=[prepare, binaries.step],
            reads=[binaries.identity, daemon_json, args.network_digest],
            restart=rolling_restart("docker.service", docker.health_timeout, DOCKER_HEALTH),
            gate=Gate(f"docker on {host.name}", render("remote/script-gate.sh.j2", script=DOCKER_HEALTH),
                      timeout=docker.health_timeout),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*binaries.copies, args.network_ready[host.name]]))

    def _preload(self, name: str, host: HostSpec, args: DockerArgs, ready: HostService) -> HostCommand:
        images, copies = copy_image_tarballs(f"{name}-image", host, args.ssh, args.docker.preload_images,
                                             args.images_dir, self)
        values = {"host": host.name, "state_dir": STATE_DIR, "images": images}
        return HostCommand(
            f"{name}-images", host, args.ssh,
            create=render("docker/images-create.sh.j2", **values),
            delete=render("docker/images-delete.sh.j2", **values),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready, *copies]))
