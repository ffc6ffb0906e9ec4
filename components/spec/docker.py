"""`docker`: the Docker daemon on every worker (daemon.json settings)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.spec.problems import Problems, integer, string, string_list, url

KEY = "docker"
KNOWN = ("registryMirrors", "insecureRegistries", "maxConcurrentDownloads", "dataRoot", "extraConfig")


@dataclass(frozen=True)
class DockerSpec:
    registry_mirrors: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    max_concurrent_downloads: int = 3
    data_root: str = "/var/lib/docker"
    extra_config: Mapping[str, Any] = field(default_factory=dict)  # merged into daemon.json


def parse(docker: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> DockerSpec:
    d = DockerSpec()
    mirrors = string_list(docker.get("registryMirrors"), "docker.registryMirrors", p)
    for i, m in enumerate(mirrors):
        url(m, f"docker.registryMirrors[{i}]", p)
    insecure = string_list(docker.get("insecureRegistries"), "docker.insecureRegistries", p)
    for i, r in enumerate(insecure):
        if not re.match(r"^[A-Za-z0-9.-]+(:\d+)?$|^[0-9.]+/\d+$", r):
            p.add(f"docker.insecureRegistries[{i}]", f"{r!r} must be host[:port] or a CIDR")
    data_root = string(docker.get("dataRoot"), "docker.dataRoot", p, d.data_root) or d.data_root
    if not data_root.startswith("/"):
        p.add("docker.dataRoot", f"must be an absolute path, got {data_root!r}")
    extra = docker.get("extraConfig") or {}
    if not isinstance(extra, Mapping):
        p.add("docker.extraConfig", "must be a map of daemon.json settings, like {log-level: warn}")
        extra = {}
    return DockerSpec(
        registry_mirrors=mirrors, insecure_registries=insecure, data_root=data_root,
        max_concurrent_downloads=integer(docker.get("maxConcurrentDownloads"),
                                         "docker.maxConcurrentDownloads", p, d.max_concurrent_downloads, 1, 64),
        extra_config=dict(extra),
    )
