"""`registry`: a private registry and a pull-through cache on chosen hosts (off when unset)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.spec.artifacts import ArtifactsSpec
from components.spec.hosts import ROLES, HostSpec
from components.spec.problems import Problems, directory, flag, integer, string, url

KEY = "registry"
KNOWN = ("hosts", "private", "cache", "storageDir", "keepStorage", "seedImages", "healthTimeoutSeconds")
PRIVATE_KEYS = ("enabled", "port", "pushPort", "username")
CACHE_KEYS = ("enabled", "port", "upstream")
DOCKER_HUB = "https://registry-1.docker.io"


@dataclass(frozen=True)
class RegistrySpec:
    hosts: tuple[str, ...] = ()             # host names; empty: no registry
    private: bool = True                    # the registry the team pushes to (htpasswd auth)
    private_port: int = 5000                # where nodes pull, read-only, with a pull-only login
    push_port: int = 5002                   # where the team pushes, with the push login (stack output)
    username: str = "kube-hardway"          # the push user; nodes pull as <username>-pull
    cache: bool = True                      # the pull-through cache of `upstream`
    cache_port: int = 5001
    upstream: str = DOCKER_HUB
    storage_dir: str = "/var/lib/kube-hardway-registry"
    keep_storage: bool = True               # destroy keeps the stored images unless false
    seed_images: tuple[str, ...] = ()       # `docker save` tarballs in artifacts.dir, pushed once
    health_timeout: int = 60

    @property
    def enabled(self) -> bool:
        return bool(self.hosts)


def parse(registry: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> RegistrySpec:
    d = RegistrySpec()
    if not registry:
        return d
    hosts: tuple[HostSpec, ...] = parsed["hosts"]
    artifacts: ArtifactsSpec = parsed["artifacts"]
    wanted = registry.get("hosts")
    wanted = [wanted] if isinstance(wanted, str) else wanted
    names: list[str] = []
    if not isinstance(wanted, list) or not wanted:
        p.add("registry.hosts", "must name where the registry runs: a role (master, node, etcd) or host "
              "names, like [node1]")
    else:
        for i, item in enumerate(wanted):
            matches = [h.name for h in hosts if h.name == item or (item in ROLES and h.has(item))]
            if not matches:
                p.add(f"registry.hosts[{i}]", f"{item!r} is neither a host name nor a role ({', '.join(ROLES)})")
            names += [m for m in matches if m not in names]
    private = p.section("registry.private", registry.get("private"), PRIVATE_KEYS)
    cache = p.section("registry.cache", registry.get("cache"), CACHE_KEYS)
    private_on = flag(private.get("enabled"), "registry.private.enabled", p, d.private)
    cache_on = flag(cache.get("enabled"), "registry.cache.enabled", p, d.cache)
    if not (private_on or cache_on):
        p.add("registry", "both registry.private.enabled and registry.cache.enabled are false; "
              "remove the registry section instead")
    private_port = integer(private.get("port"), "registry.private.port", p, d.private_port, 1, 65535)
    cache_port = integer(cache.get("port"), "registry.cache.port", p, d.cache_port, 1, 65535)
    push_port = integer(private.get("pushPort"), "registry.private.pushPort", p, d.push_port, 1, 65535)
    if private_on and cache_on and private_port == cache_port:
        p.add("registry.cache.port", f"is the private registry's port too ({private_port}); a registry "
              "cannot be both a private registry and a cache, so each needs its own port")
    if private_on and push_port in (private_port, cache_port if cache_on else None):
        p.add("registry.private.pushPort", f"{push_port} is taken by the registry's pull port or the cache: "
              "pushes go to a registry instance of their own, on its own port")
    username = string(private.get("username"), "registry.private.username", p, d.username) or d.username
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", username):
        p.add("registry.private.username", f"must be letters, digits, '.', '_' or '-', got {username!r}")
    upstream = string(cache.get("upstream"), "registry.cache.upstream", p, d.upstream) or d.upstream
    url(upstream, "registry.cache.upstream", p)
    storage = directory(string(registry.get("storageDir"), "registry.storageDir", p, d.storage_dir) or d.storage_dir,
                        "registry.storageDir", p, d.storage_dir)
    seeds = registry.get("seedImages") or []
    if not isinstance(seeds, list):
        p.add("registry.seedImages", "must be a list of `docker save` tarballs in artifacts.dir")
        seeds = []
    for i, name in enumerate(seeds):
        if not isinstance(name, str) or "/" in name or not (Path(artifacts.dir) / name).is_file():
            p.add(f"registry.seedImages[{i}]", f"{name!r} must be the name of a `docker save` tarball in "
                  f"artifacts.dir ({artifacts.dir})")
    if seeds and not private_on:
        p.add("registry.seedImages", "seeds go into the private registry; set registry.private.enabled: true")
    workers = {h.name for h in hosts if h.has("node") or h.has("master")}
    if seeds and names and names[0] not in workers:
        p.add("registry.seedImages", f"are pushed with Docker on {names[0]}, which runs none (role node or master)")
    return RegistrySpec(
        hosts=tuple(names), private=private_on, private_port=private_port, push_port=push_port, username=username,
        cache=cache_on,
        cache_port=cache_port, upstream=upstream.rstrip("/"), storage_dir=storage.rstrip("/"),
        keep_storage=flag(registry.get("keepStorage"), "registry.keepStorage", p, d.keep_storage),
        seed_images=tuple(seeds),
        health_timeout=integer(registry.get("healthTimeoutSeconds"), "registry.healthTimeoutSeconds", p,
                               d.health_timeout, 5, 3600))
