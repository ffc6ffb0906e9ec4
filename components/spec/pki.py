"""`pki`: key algorithm, certificate lifetimes and the CAs of the cluster PKI."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.spec.problems import Problems, integer

KEY = "pki"
KNOWN = ("algorithm", "cas", "renewBeforeHours", "rsaBits", "validityHours")
PKI_ALGORITHMS = ("ECDSA", "RSA")
# the two CAs (`pki.cas.<kind>`), each a list of names: the first signs, every one is trusted (a
# rotation in flight); the default name is the CA every stack starts with
CA_KINDS = ("kubernetes", "etcd")


@dataclass(frozen=True)
class PkiSpec:
    algorithm: str = "ECDSA"
    rsa_bits: int = 2048
    ca_validity_hours: int = 87600
    leaf_validity_hours: int = 8760
    early_renewal_hours: int = 720          # `renewBeforeHours`: a leaf cert is re-issued by the first `up` inside them
    # `cas`: per kind, the CAs' names; the first signs every leaf cert, all are trusted
    kubernetes_cas: tuple[str, ...] = ("kubernetes-ca",)
    etcd_cas: tuple[str, ...] = ("etcd-ca",)

    def cas(self, kind: str) -> tuple[str, ...]:
        return self.kubernetes_cas if kind == "kubernetes" else self.etcd_cas


def _cas(kind: str, value: Any, p: Problems) -> tuple[str, ...]:
    """`pki.cas.<kind>`: one CA, or two while one is rotated (the new one trusted, then signing)."""
    key, default = f"pki.cas.{kind}", f"{kind}-ca"
    name = re.compile(rf"^{default}(-[a-z0-9]{{1,20}})?$")
    if value is None:
        return (default,)
    how = (f"must list one CA, or two while one is rotated (the first signs, both are trusted), each "
           f"{default} or {default}-<suffix of lowercase letters and digits>, like [{default}, {default}-2]")
    if not isinstance(value, list) or not 1 <= len(value) <= 2 or len(set(map(str, value))) != len(value):
        p.add(key, f"{how}; got {value!r}")
        return (default,)
    bad = [i for i, v in enumerate(value) if not isinstance(v, str) or not name.match(v)]
    for i in bad:
        p.add(f"{key}[{i}]", f"{how}; got {value[i]!r}")
    return (default,) if bad else tuple(value)


def parse(pki: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> PkiSpec:
    d = PkiSpec()
    algorithm = str(pki.get("algorithm", d.algorithm)).upper()
    if algorithm not in PKI_ALGORITHMS:
        p.add("pki.algorithm", f"unknown algorithm {pki.get('algorithm')!r}; valid: ECDSA (P-256, default) or RSA")
    bits = integer(pki.get("rsaBits"), "pki.rsaBits", p, d.rsa_bits, 2048, 8192)
    if bits % 1024:
        p.add("pki.rsaBits", f"must be 2048, 3072 or 4096, got {bits}")
    validity = pki.get("validityHours") or {}
    if not isinstance(validity, Mapping):
        p.add("pki.validityHours", "must be a map like {ca: 87600, leaf: 8760}")
        validity = {}
    p.unknown_keys("pki.validityHours", validity, ("ca", "leaf"))
    ca = integer(validity.get("ca"), "pki.validityHours.ca", p, d.ca_validity_hours, 24, 876000)
    leaf = integer(validity.get("leaf"), "pki.validityHours.leaf", p, d.leaf_validity_hours, 24, 876000)
    if leaf > ca:
        p.add("pki.validityHours.leaf", f"{leaf}h outlives the CA ({ca}h); certificates would "
              "outlive their issuer")
    renew = integer(pki.get("renewBeforeHours"), "pki.renewBeforeHours", p, min(d.early_renewal_hours, leaf // 10),
                    1, 876000)
    if renew >= leaf:
        p.add("pki.renewBeforeHours", f"{renew}h is not less than the leaf lifetime (pki.validityHours.leaf, {leaf}h): "
              "every `up` would re-issue every certificate")
    cas = p.section("pki.cas", pki.get("cas"), CA_KINDS)
    return PkiSpec(algorithm=algorithm if algorithm in PKI_ALGORITHMS else d.algorithm, rsa_bits=bits,
                   ca_validity_hours=ca, leaf_validity_hours=leaf, early_renewal_hours=renew,
                   kubernetes_cas=_cas("kubernetes", cas.get("kubernetes"), p), etcd_cas=_cas("etcd", cas.get("etcd"), p))
