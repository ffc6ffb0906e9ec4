"""`pki`: key algorithm and certificate lifetimes of the cluster PKI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.spec.problems import Problems, integer

KEY = "pki"
KNOWN = ("algorithm", "renewBeforeHours", "rsaBits", "validityHours")
PKI_ALGORITHMS = ("ECDSA", "RSA")


@dataclass(frozen=True)
class PkiSpec:
    algorithm: str = "ECDSA"
    rsa_bits: int = 2048
    ca_validity_hours: int = 87600
    leaf_validity_hours: int = 8760
    early_renewal_hours: int = 720          # `renewBeforeHours`: a leaf cert is re-issued by the first `up` inside them


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
    return PkiSpec(algorithm=algorithm if algorithm in PKI_ALGORITHMS else d.algorithm, rsa_bits=bits,
                   ca_validity_hours=ca, leaf_validity_hours=leaf, early_renewal_hours=renew)
