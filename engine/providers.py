"""What pulumi-tls and pulumi-random do, for the mock runtime: real keys, real certificates, real
randomness (via `cryptography` and `secrets`), so tests can parse and verify what the program asked
for. Property names and semantics follow the providers' schemas (pulumi-tls 5.x, pulumi-random 4.x).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import secrets
import string
from collections.abc import Callable
from typing import Any

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1, "P521": ec.SECP521R1}
SUBJECT_FIELDS = {
    "commonName": NameOID.COMMON_NAME, "organization": NameOID.ORGANIZATION_NAME,
    "organizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME, "country": NameOID.COUNTRY_NAME,
    "locality": NameOID.LOCALITY_NAME, "province": NameOID.STATE_OR_PROVINCE_NAME,
    "postalCode": NameOID.POSTAL_CODE, "serialNumber": NameOID.SERIAL_NUMBER,
}
KEY_USAGES = {
    "digital_signature": "digital_signature", "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment", "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement", "cert_signing": "key_cert_sign", "crl_signing": "crl_sign",
    "encipher_only": "encipher_only", "decipher_only": "decipher_only",
}
EXT_KEY_USAGES = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING, "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING, "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "any_extended": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}

TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
TLS_SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
TLS_CERT_REQUEST = "tls:index/certRequest:CertRequest"
TLS_LOCALLY_SIGNED = "tls:index/locallySignedCert:LocallySignedCert"


def _pem(data: bytes) -> str:
    return data.decode()


def private_key(inputs: dict[str, Any]) -> dict[str, Any]:
    algorithm = inputs.get("algorithm", "RSA")
    if algorithm == "RSA":
        key: Any = rsa.generate_private_key(65537, int(inputs.get("rsaBits", 2048)))
    elif algorithm == "ECDSA":
        key = ec.generate_private_key(CURVES[inputs.get("ecdsaCurve", "P224")]())
    elif algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"tls PrivateKey: unsupported algorithm {algorithm!r}")
    pub = key.public_key()
    openssh_pub = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    legacy = serialization.PrivateFormat.TraditionalOpenSSL if algorithm != "ED25519" else serialization.PrivateFormat.PKCS8
    blob = base64.b64decode(openssh_pub.split()[1])
    return {
        **inputs,
        "privateKeyPem": _pem(key.private_bytes(serialization.Encoding.PEM, legacy, serialization.NoEncryption())),
        "privateKeyPemPkcs8": _pem(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())),
        "privateKeyOpenssh": _pem(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption())),
        "publicKeyPem": _pem(pub.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)),
        "publicKeyOpenssh": openssh_pub.decode() + "\n",
        "publicKeyFingerprintSha256": "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("="),
        "publicKeyFingerprintMd5": ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest()),
    }


def _subject(subject: dict[str, Any] | None) -> x509.Name:
    attrs = [x509.NameAttribute(SUBJECT_FIELDS[k], str(v)) for k, v in (subject or {}).items()
             if k in SUBJECT_FIELDS and v]
    return x509.Name(attrs)


def _sans(dns: list[str] | None, ips: list[str] | None, uris: list[str] | None = None) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
    names += [x509.UniformResourceIdentifier(u) for u in uris or []]
    return names


def _load_key(pem: str) -> Any:
    return serialization.load_pem_private_key(pem.encode(), password=None)


def _sign_algorithm(key: Any) -> Any:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _build_cert(inputs: dict[str, Any], subject: x509.Name, public_key: Any, issuer: x509.Name,
                signer: Any, sans: list[x509.GeneralName], issuer_public_key: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    hours = int(inputs["validityPeriodHours"])
    end = now + dt.timedelta(hours=hours)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(end))
    uses = inputs.get("allowedUses") or []
    flags = {v: False for v in KEY_USAGES.values()}
    for use in uses:
        if use in KEY_USAGES:
            flags[KEY_USAGES[use]] = True
    is_ca = bool(inputs.get("isCaCertificate"))
    if is_ca:
        flags["key_cert_sign"] = True  # the provider always lets a CA certificate sign
    if any(flags.values()):
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    ekus = [EXT_KEY_USAGES[u] for u in uses if u in EXT_KEY_USAGES]
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer_public_key is not None and issuer_public_key is not public_key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
    cert = builder.sign(signer, _sign_algorithm(signer))
    early = int(inputs.get("earlyRenewalHours") or 0)
    return {
        **inputs,
        "certPem": _pem(cert.public_bytes(serialization.Encoding.PEM)),
        "validityStartTime": now.isoformat().replace("+00:00", "Z"),
        "validityEndTime": end.isoformat().replace("+00:00", "Z"),
        "readyForRenewal": early >= hours,
    }


def self_signed_cert(inputs: dict[str, Any]) -> dict[str, Any]:
    key = _load_key(inputs["privateKeyPem"])
    subject = _subject(inputs.get("subject"))
    out = _build_cert(inputs, subject, key.public_key(), subject, key,
                      _sans(inputs.get("dnsNames"), inputs.get("ipAddresses"), inputs.get("uris")),
                      None)
    return {**out, "keyAlgorithm": inputs.get("keyAlgorithm", "")}


def cert_request(inputs: dict[str, Any]) -> dict[str, Any]:
    key = _load_key(inputs["privateKeyPem"])
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(inputs.get("subject")))
    sans = _sans(inputs.get("dnsNames"), inputs.get("ipAddresses"), inputs.get("uris"))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, _sign_algorithm(key))
    return {**inputs, "certRequestPem": _pem(csr.public_bytes(serialization.Encoding.PEM))}


def locally_signed_cert(inputs: dict[str, Any]) -> dict[str, Any]:
    csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
    ca_cert = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
    ca_key = _load_key(inputs["caPrivateKeyPem"])
    try:
        sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    return _build_cert(inputs, csr.subject, csr.public_key(), ca_cert.subject, ca_key, sans,
                       ca_cert.public_key())


# ---------------------------------------------------------------- pulumi-random -----------------

def random_id(inputs: dict[str, Any]) -> dict[str, Any]:
    raw = secrets.token_bytes(int(inputs["byteLength"]))
    prefix = inputs.get("prefix") or ""
    b64url = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return {**inputs, "hex": prefix + raw.hex(), "b64Url": prefix + b64url, "b64Std": prefix + base64.b64encode(raw).decode(),
            "dec": prefix + str(int.from_bytes(raw, "big"))}


def random_password(inputs: dict[str, Any]) -> dict[str, Any]:
    length = int(inputs["length"])
    alphabet = ""
    if inputs.get("lower", True):
        alphabet += string.ascii_lowercase
    if inputs.get("upper", True):
        alphabet += string.ascii_uppercase
    if inputs.get("numeric", True):
        alphabet += string.digits
    if inputs.get("special", True):
        alphabet += inputs.get("overrideSpecial") or "!@#$%&*()-_=+[]{}<>:?"
    result = "".join(secrets.choice(alphabet) for _ in range(length))
    # pulumi-random hashes the first 72 bytes (bcrypt's limit), cost 10, `$2a$` prefix
    hashed = bcrypt.hashpw(result.encode()[:72], bcrypt.gensalt(rounds=10, prefix=b"2a")).decode()
    return {**inputs, "result": result, "bcryptHash": hashed}


def random_bytes(inputs: dict[str, Any]) -> dict[str, Any]:
    raw = secrets.token_bytes(int(inputs["length"]))
    return {**inputs, "base64": base64.b64encode(raw).decode(), "hex": raw.hex()}


RANDOM_BYTES = "random:index/randomBytes:RandomBytes"
RANDOM_ID = "random:index/randomId:RandomId"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_STRING = "random:index/randomString:RandomString"

# type token -> (function producing the outputs, the resource's id output)
GENERATORS = {
    TLS_PRIVATE_KEY: private_key,
    TLS_SELF_SIGNED: self_signed_cert,
    TLS_CERT_REQUEST: cert_request,
    TLS_LOCALLY_SIGNED: locally_signed_cert,
    RANDOM_BYTES: random_bytes,
    RANDOM_ID: random_id,
    RANDOM_PASSWORD: random_password,
    RANDOM_STRING: random_password,
}


def resource_id(typ: str, outputs: dict[str, Any]) -> str:
    if typ == RANDOM_ID:
        return outputs["b64Url"]
    if typ == TLS_PRIVATE_KEY:
        return hashlib.sha1(outputs["publicKeyPem"].encode()).hexdigest()
    if typ in (TLS_SELF_SIGNED, TLS_LOCALLY_SIGNED):
        cert = x509.load_pem_x509_certificate(outputs["certPem"].encode())
        return str(cert.serial_number)
    return "none" if typ in (RANDOM_PASSWORD, RANDOM_STRING, RANDOM_BYTES) else hashlib.sha1(repr(sorted(outputs)).encode()).hexdigest()
