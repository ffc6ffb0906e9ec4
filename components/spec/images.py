"""`images`: every container image the cluster itself runs, so each can come from any registry or
from a tarball in `docker.preloadImages` (air-gapped hosts). Defaults are upstream's (kubeadm's
constants) for the default Kubernetes version: pause 3.10.2 and CoreDNS v1.14.6 for 1.37 (read from
minikube's copy of kubeadm's image table for v1.37.0-rc.0; kubeadm's own constants.go was not readable)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.spec.problems import Problems, string

KEY = "images"
KNOWN = ("pause", "coredns")
# registry/path:tag or @sha256:digest, as Docker references them
REFERENCE = re.compile(r"^[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?(:[A-Za-z0-9_.-]{1,128}|@sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class ImagesSpec:
    pause: str = "registry.k8s.io/pause:3.10.2"
    coredns: str = "registry.k8s.io/coredns/coredns:v1.14.6"


def parse(images: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> ImagesSpec:
    d = ImagesSpec()
    chosen = {}
    for key in KNOWN:
        value = string(images.get(key), f"images.{key}", p, getattr(d, key)) or getattr(d, key)
        if not REFERENCE.match(value):
            p.add(f"images.{key}", f"{value!r} is not an image reference with a tag, like {getattr(d, key)}")
        chosen[key] = value
    return ImagesSpec(**chosen)
