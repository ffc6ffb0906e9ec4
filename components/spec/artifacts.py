"""`artifacts`: where release files come from (see components/artifacts.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.releases import DEFAULT_VERSIONS, DISTRIBUTION_PACKAGES, PACKAGE_SOURCES
from components.spec.problems import Problems, string, url, valid_values

KEY = "artifacts"
KNOWN = ("source", "sources", "dir", "mirrors", "checksums")
ARTIFACT_SOURCES = ("download", "local", "package")
DEFAULT_DOWNLOAD_CACHE = "~/.cache/kube-hardway"


@dataclass(frozen=True)
class ArtifactsSpec:
    source: str = "download"
    dir: str = DEFAULT_DOWNLOAD_CACHE
    mirrors: Mapping[str, str] = field(default_factory=dict)
    checksums: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)  # per component, overriding `source`

    def source_of(self, component: str) -> str:
        """Where `component` comes from; what only a distribution packages comes from its
        packages unless the stack says `local`."""
        default = "package" if component in DISTRIBUTION_PACKAGES else self.source
        return self.sources.get(component, default)


def parse(art: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> ArtifactsSpec:
    d = ArtifactsSpec()
    source = art.get("source", d.source)
    if source not in ARTIFACT_SOURCES:
        p.add("artifacts.source", f"unknown source {source!r}; {valid_values(source, ARTIFACT_SOURCES, 'sources')} "
              "(download: fetch from upstream or artifacts.mirrors; local: from artifacts.dir; "
              "package: the distribution's packages)")
    sources = art.get("sources") or {}
    if not isinstance(sources, Mapping):
        p.add("artifacts.sources", "must be a map of component -> source, like {docker: package}")
        sources = {}
    p.unknown_keys("artifacts.sources", sources, (*DEFAULT_VERSIONS, *DISTRIBUTION_PACKAGES))
    allowed = {**{name: ARTIFACT_SOURCES for name in DEFAULT_VERSIONS},
               **{name: PACKAGE_SOURCES for name in DISTRIBUTION_PACKAGES}}
    for name, value in sources.items():
        if name in allowed and value not in allowed[name]:
            p.add(f"artifacts.sources.{name}", f"unknown source {value!r}; {valid_values(value, allowed[name], 'sources')}"
                  + (" (package: from the hosts' repository; local: the package files, with their dependencies, "
                     f"in artifacts.dir/{name}/<arch>/)" if name in DISTRIBUTION_PACKAGES else ""))
    sources = {k: v for k, v in sources.items() if k in allowed and v in allowed[k]}
    local = source == "local" or "local" in sources.values()
    directory = string(art.get("dir"), "artifacts.dir", p)
    if local and directory is None:
        p.add("artifacts.dir", "is required when artifacts.source (or one of artifacts.sources) is 'local': "
              "the directory holding the release files (e.g. etcd-v3.6.14-linux-amd64.tar.gz)")
    resolved = (parsed["base_dir"] / os.path.expanduser(directory or d.dir)).resolve()
    if local and directory is not None and not resolved.is_dir():
        p.add("artifacts.dir", f"directory {resolved} does not exist")
    mirrors = art.get("mirrors") or {}
    if not isinstance(mirrors, Mapping):
        p.add("artifacts.mirrors", "must be a map of component -> base URL")
        mirrors = {}
    p.unknown_keys("artifacts.mirrors", mirrors, tuple(DEFAULT_VERSIONS))
    for name, base in mirrors.items():
        url(str(base), f"artifacts.mirrors.{name}", p, ("http", "https", "file"))
    return ArtifactsSpec(source=source if source in ARTIFACT_SOURCES else d.source,
                         dir=str(resolved), mirrors={k: str(v).rstrip("/") for k, v in mirrors.items()},
                         sources=sources,
                         checksums=_checksums(art.get("checksums"), p))


def _checksums(value: Any, p: Problems) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        p.add("artifacts.checksums", "must be a map of release file name -> sha256, like "
              "{etcd-v3.6.99-linux-amd64.tar.gz: 0123...}")
        return {}
    sums: dict[str, str] = {}
    for name, digest in value.items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest.strip()):
            p.add(f"artifacts.checksums.{name}", f"must be a sha256 (64 hex digits), got {digest!r}")
        else:
            sums[str(name)] = digest.strip().lower()
    return sums
