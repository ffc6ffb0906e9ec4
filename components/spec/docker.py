"""`docker`: the Docker daemon on every worker (daemon.json settings, images to preload)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.spec.artifacts import ArtifactsSpec
from components.spec.problems import Problems, directory, integer, string, string_list, url, valid_values

KEY = "docker"
KNOWN = ("registryMirrors", "insecureRegistries", "maxConcurrentDownloads", "dataRoot", "cgroupDriver",
         "logMaxSize", "logMaxFiles", "preloadImages", "healthTimeoutSeconds", "extraConfig")
CGROUP_DRIVERS = ("systemd", "cgroupfs")
# daemon.json settings kube-hardway writes itself (from the keys above, or because the network
# needs them), and settings that flannel's options pass as flags (Docker refuses a setting given
# both ways): docker.extraConfig may not set them.
MANAGED_DAEMON_SETTINGS = frozenset({
    "registry-mirrors", "insecure-registries", "max-concurrent-downloads", "data-root", "exec-opts",
    "log-driver", "log-opts", "userland-proxy", "iptables", "ip-forward", "bip", "mtu", "ip-masq",
    "bridge", "hosts",
})


@dataclass(frozen=True)
class DockerSpec:
    registry_mirrors: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    max_concurrent_downloads: int = 3
    data_root: str = "/var/lib/docker"
    # what kubeadm configures since 1.22, and what the kubelet will be told Docker uses
    cgroup_driver: str = "systemd"
    log_max_size: str = "50m"
    log_max_files: int = 5
    preload_images: tuple[str, ...] = ()    # `docker save` tarballs in artifacts.dir
    health_timeout: int = 120
    extra_config: Mapping[str, Any] = field(default_factory=dict)  # merged into daemon.json


def parse(docker: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> DockerSpec:
    d = DockerSpec()
    artifacts: ArtifactsSpec = parsed["artifacts"]
    mirrors = string_list(docker.get("registryMirrors"), "docker.registryMirrors", p)
    for i, m in enumerate(mirrors):
        url(m, f"docker.registryMirrors[{i}]", p)
    insecure = string_list(docker.get("insecureRegistries"), "docker.insecureRegistries", p)
    for i, r in enumerate(insecure):
        if not re.match(r"^[A-Za-z0-9.-]+(:\d+)?$|^[0-9.]+/\d+$", r):
            p.add(f"docker.insecureRegistries[{i}]", f"{r!r} must be host[:port] or a CIDR")
    data_root = string(docker.get("dataRoot"), "docker.dataRoot", p, d.data_root) or d.data_root
    if data_root.rstrip("/") != d.data_root:     # Docker's own default is its own directory
        data_root = directory(data_root, "docker.dataRoot", p, "/data/docker")
    driver = docker.get("cgroupDriver", d.cgroup_driver)
    if driver not in CGROUP_DRIVERS:
        p.add("docker.cgroupDriver", f"unknown cgroup driver {driver!r}; {valid_values(driver, CGROUP_DRIVERS, 'drivers')}")
        driver = d.cgroup_driver
    size = str(docker.get("logMaxSize", d.log_max_size))
    if not re.fullmatch(r"[1-9][0-9]*[kmg]", size):
        p.add("docker.logMaxSize", f"must be a size like 50m (k, m or g), got {size!r}")
        size = d.log_max_size
    images = string_list(docker.get("preloadImages"), "docker.preloadImages", p)
    for i, name in enumerate(images):
        if "/" in name or not (Path(artifacts.dir) / name).is_file():
            p.add(f"docker.preloadImages[{i}]", f"{name!r} must be the name of a `docker save` tarball in "
                  f"artifacts.dir ({artifacts.dir})")
    extra = docker.get("extraConfig") or {}
    if not isinstance(extra, Mapping):
        p.add("docker.extraConfig", "must be a map of daemon.json settings, like {log-level: warn}")
        extra = {}
    for key in sorted(set(extra) & MANAGED_DAEMON_SETTINGS):
        p.add(f"docker.extraConfig.{key}", "is set by kube-hardway itself (from docker.* or the flannel "
              "network); use the docker key for it, or leave it to the network")
    return DockerSpec(
        registry_mirrors=mirrors, insecure_registries=insecure, data_root=data_root,
        max_concurrent_downloads=integer(docker.get("maxConcurrentDownloads"),
                                         "docker.maxConcurrentDownloads", p, d.max_concurrent_downloads, 1, 64),
        cgroup_driver=driver, log_max_size=size,
        log_max_files=integer(docker.get("logMaxFiles"), "docker.logMaxFiles", p, d.log_max_files, 1, 100),
        preload_images=images,
        health_timeout=integer(docker.get("healthTimeoutSeconds"), "docker.healthTimeoutSeconds", p,
                               d.health_timeout, 10, 3600),
        extra_config={k: v for k, v in extra.items() if k not in MANAGED_DAEMON_SETTINGS},
    )
