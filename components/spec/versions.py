"""`versions`: which release of each component to install; defaults are the pinned releases of
components/releases.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.releases import DEFAULT_VERSIONS
from components.spec.problems import Problems, version

KEY = "versions"
KNOWN = tuple(DEFAULT_VERSIONS)


def parse(versions: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> dict[str, str]:
    return {k: version(versions.get(k), f"versions.{k}", p, v) for k, v in DEFAULT_VERSIONS.items()}
