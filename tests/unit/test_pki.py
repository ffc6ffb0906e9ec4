"""ClusterPKI under mocks that make real keys and certs: chains, SANs, subjects, usages, expiry."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine.mocks import RecordingMocks, Registration
from engine.runtime import run_program, stack_config
from tests.unit.test_spec import base

LOCALLY_SIGNED = "tls:index/locallySignedCert:LocallySignedCert"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"


@pytest.fixture(scope="module")
def deployed() -> RecordingMocks:
    cfg = base()
    cfg["hosts"][0]["internalAddress"] = "10.0.0.200"
    mocks = RecordingMocks()
    run_program(cfg, mocks)
    return mocks


def cert(reg: Registration) -> x509.Certificate:
    return x509.load_pem_x509_certificate(reg.outputs["certPem"].encode())


def leaf(mocks: RecordingMocks, name: str) -> x509.Certificate:
    return cert(mocks.named(f"pki-{name}-cert"))


def sans(c: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)), {str(i) for i in ext.get_values_for_type(x509.IPAddress)}


def subject(c: x509.Certificate) -> tuple[str, list[str]]:
    cn = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = [a.value for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return str(cn), [str(o) for o in orgs]


def ekus(c: x509.Certificate) -> set[Any]:
    return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_every_leaf_verifies_against_its_ca_and_only_cas_sign(deployed: RecordingMocks) -> None:
    cas = {subject(cert(r))[0]: cert(r) for r in deployed.of_type(SELF_SIGNED)}
    assert set(cas) == {"kubernetes-ca", "etcd-ca"}
    for ca in cas.values():
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    leaves = deployed.of_type(LOCALLY_SIGNED)
    assert len(leaves) == 3 * 2 + 6 + 7 + 3  # etcd server+peer per member, 6 etcd clients, 7 k8s, kubelets
    for reg in leaves:
        c = cert(reg)
        issuer = cas[str(c.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)]
        c.verify_directly_issued_by(issuer)
        assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca, reg.name
        assert not c.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign, reg.name


def test_etcd_certs_come_from_the_etcd_ca_and_kubernetes_certs_do_not(deployed: RecordingMocks) -> None:
    for name in ("etcd-server-node1", "etcd-peer-node2", "etcd-healthcheck-client", "apiserver-etcd-client",
                 "flanneld-etcd-client"):
        assert leaf(deployed, name).issuer.rfc4514_string().startswith("O=kube-hardway,CN=etcd-ca") or \
            "CN=etcd-ca" in leaf(deployed, name).issuer.rfc4514_string()
    for name in ("admin", "kube-apiserver", "kubelet-serving-node3"):
        assert "CN=kubernetes-ca" in leaf(deployed, name).issuer.rfc4514_string()


ETCD_CLIENTS = {"etcd-healthcheck-client": "kube-etcd-healthcheck-client", "etcd-root-client": "root",
                "etcd-lock-client": "kube-hardway-lock", "apiserver-etcd-client": "kube-apiserver-etcd-client",
                "flanneld-etcd-client": "flanneld", "etcd-gateway-client": None}


def test_etcd_client_certs_name_their_etcd_user_and_no_host(deployed: RecordingMocks) -> None:
    """etcd takes a client cert's CN as its user; the gateway cert has none (the gateway refuses a
    named cert with auth on). The peer port accepts only certs naming localhost
    (--peer-cert-allowed-hostname): no client cert may carry a SAN, or it would open the peer port."""
    for name, user in ETCD_CLIENTS.items():
        c = leaf(deployed, name)
        assert "CN=etcd-ca" in c.issuer.rfc4514_string(), name
        cns = [a.value for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        assert cns == ([user] if user else []), name
        with pytest.raises(x509.ExtensionNotFound):
            c.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert ekus(c) == {ExtendedKeyUsageOID.CLIENT_AUTH}, name
    for member in ("node1", "node2", "node3"):
        for kind in ("server", "peer"):
            assert "localhost" in sans(leaf(deployed, f"etcd-{kind}-{member}"))[0]


def test_etcd_member_sans_cover_every_way_to_reach_it(deployed: RecordingMocks) -> None:
    dns, ips = sans(leaf(deployed, "etcd-server-node1"))
    assert dns == {"node1", "localhost"}
    assert ips == {"10.0.0.200", "192.168.1.200", "127.0.0.1"}
    peer = leaf(deployed, "etcd-peer-node2")
    assert sans(peer)[1] == {"192.168.1.201", "127.0.0.1"}
    assert ekus(peer) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # etcd's gRPC gateway dials its own member with the serving cert: it must be a client cert too
    assert ekus(leaf(deployed, "etcd-server-node1")) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_apiserver_cert_names_the_service_and_every_master_address(deployed: RecordingMocks) -> None:
    c = leaf(deployed, "kube-apiserver")
    dns, ips = sans(c)
    assert {"kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local"} <= dns
    assert {"10.254.0.1", "127.0.0.1", "192.168.1.200", "10.0.0.200"} <= ips
    assert "192.168.1.201" not in ips  # not a master
    assert ekus(c) == {ExtendedKeyUsageOID.SERVER_AUTH}


@pytest.mark.parametrize("name,cn,orgs", [
    ("admin", "admin", ["kube-hardway:cluster-admins"]),       # bound to cluster-admin, revocably
    ("super-admin", "kube-hardway-super-admin", ["system:masters"]),   # only to make that binding
    ("kube-controller-manager", "system:kube-controller-manager", []),
    ("kube-scheduler", "system:kube-scheduler", []),
    ("kube-proxy", "system:kube-proxy", []),
    ("kube-apiserver-kubelet-client", "kube-apiserver-kubelet-client", []),  # system:kubelet-api-admin only
])
def test_client_certs_carry_the_identities_rbac_expects(deployed: RecordingMocks, name: str, cn: str,
                                                        orgs: list[str]) -> None:
    c = leaf(deployed, name)
    assert subject(c) == (cn, orgs)
    assert ekus(c) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_one_kubelet_serving_cert_per_worker_that_the_api_server_can_verify(deployed: RecordingMocks) -> None:
    names = {r.name for r in deployed.of_type(LOCALLY_SIGNED) if r.name.startswith("pki-kubelet-")}
    assert names == {"pki-kubelet-serving-node1-cert", "pki-kubelet-serving-node2-cert", "pki-kubelet-serving-node3-cert"}
    c = leaf(deployed, "kubelet-serving-node2")
    assert subject(c) == ("system:node:node2", ["system:nodes"])
    assert ekus(c) == {ExtendedKeyUsageOID.SERVER_AUTH}
    dns, ips = sans(c)
    assert dns == {"node2"} and "192.168.1.201" in ips


def test_validity_follows_the_config(deployed: RecordingMocks) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = cert(deployed.of_type(SELF_SIGNED)[0])
    assert abs((ca.not_valid_after_utc - now) - dt.timedelta(hours=87600)) < dt.timedelta(minutes=5)
    admin = leaf(deployed, "admin")
    assert abs((admin.not_valid_after_utc - now) - dt.timedelta(hours=8760)) < dt.timedelta(minutes=5)
    assert deployed.named("pki-admin-cert").inputs["earlyRenewalHours"] == 720


def test_keys_are_ecdsa_p256_by_default_and_rsa_on_request() -> None:
    mocks = RecordingMocks()
    run_program(base(), mocks)
    assert isinstance(leaf(mocks, "admin").public_key(), ec.EllipticCurvePublicKey)
    cfg = base()
    cfg["pki"] = {"algorithm": "RSA", "rsaBits": 3072}
    mocks = RecordingMocks()
    run_program(cfg, mocks)
    key = leaf(mocks, "admin").public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072


def test_private_keys_are_secret_outputs(deployed: RecordingMocks) -> None:
    keys = deployed.of_type("tls:index/privateKey:PrivateKey")
    assert keys and all("privateKeyPem" in k.additional_secret_outputs for k in keys)
    for csr in deployed.of_type("tls:index/certRequest:CertRequest"):
        assert "privateKeyPem" in csr.secret_paths, csr.name
    for signed in deployed.of_type(LOCALLY_SIGNED):
        assert "caPrivateKeyPem" in signed.secret_paths, signed.name


def test_dev_stack_sans_use_the_classic_addresses() -> None:
    mocks = RecordingMocks()
    run_program(stack_config("dev"), mocks, stack="dev")
    assert ipaddress.ip_address("192.168.1.200") in {
        ipaddress.ip_address(i) for i in sans(leaf(mocks, "kube-apiserver"))[1]}


def test_a_ca_inside_the_renewal_window_is_warned_about_and_one_outside_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    import pulumi

    from components import pki

    said: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: said.append(message))
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=100)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1000)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pki._warn_if_ending("etcd-ca", 720, soon)
    pki._warn_if_ending("kubernetes-ca", 720, later)
    assert len(said) == 1 and "the CA etcd-ca expires" in said[0] and "pki.renewBeforeHours" in said[0], said


def pems(bundle: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle.encode())


@pytest.fixture(scope="module")
def rotating() -> tuple[RecordingMocks, dict[str, Any]]:
    """Both CAs in a rotation: a new Kubernetes CA that signs, a new etcd CA only trusted."""
    cfg = base()
    cfg["pki"] = {"cas": {"kubernetes": ["kubernetes-ca-2", "kubernetes-ca"], "etcd": ["etcd-ca", "etcd-ca-2"]}}
    mocks = RecordingMocks()
    return mocks, run_program(cfg, mocks).outputs


def test_a_rotation_trusts_every_listed_ca_and_signs_with_the_first(rotating: tuple[RecordingMocks, dict[str, Any]]) -> None:
    mocks, outputs = rotating
    cas = {subject(cert(r))[0]: cert(r) for r in mocks.of_type(SELF_SIGNED)}
    assert set(cas) == {"kubernetes-ca", "kubernetes-ca-2", "etcd-ca", "etcd-ca-2"}
    assert {r.name for r in mocks.of_type(SELF_SIGNED)} == {f"pki-{n}-cert" for n in cas}   # the first keeps its name
    for name in ("admin", "kube-apiserver", "kubelet-serving-node3", "kube-proxy", "super-admin"):
        leaf(mocks, name).verify_directly_issued_by(cas["kubernetes-ca-2"])
    for name in ("etcd-server-node1", "etcd-peer-node2", "apiserver-etcd-client", "flanneld-etcd-client"):
        leaf(mocks, name).verify_directly_issued_by(cas["etcd-ca"])
    # what every host and the kubeconfig trust: both, the signer's first
    assert pems(outputs["kubernetesCaCertPem"]) == [cas["kubernetes-ca-2"], cas["kubernetes-ca"]]
    import base64

    import yaml
    config = yaml.safe_load(outputs["kubeconfig"])
    trusted = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    assert pems(trusted) == [cas["kubernetes-ca-2"], cas["kubernetes-ca"]]
    assert set(outputs["certificates"]) >= {"kubernetes-ca", "kubernetes-ca-2", "etcd-ca", "etcd-ca-2"}


def test_the_controller_manager_signs_with_one_cert_and_trusts_every_ca(
        rotating: tuple[RecordingMocks, dict[str, Any]]) -> None:
    """kube-controller-manager refuses a signing cert file of more than one certificate: it gets
    the signer alone (ca-signer.crt), and ca.crt (every CA) for what it trusts."""
    import base64

    mocks, _ = rotating
    service = mocks.named("control-plane-controller-manager-node1").inputs
    paths = [line.split()[1] for line in service["create"].splitlines() if line.startswith("put /")]
    files = dict(zip(paths, (base64.b64decode(line).decode() for line in service["stdin"].splitlines()), strict=True))
    unit = files["/etc/systemd/system/kube-controller-manager.service"]
    assert "--cluster-signing-cert-file=/etc/kubernetes/pki/ca-signer.crt" in unit
    assert "--root-ca-file=/etc/kubernetes/pki/ca.crt" in unit
    signer = {subject(cert(r))[0]: cert(r) for r in mocks.of_type(SELF_SIGNED)}["kubernetes-ca-2"]
    assert pems(files["/etc/kubernetes/pki/ca-signer.crt"]) == [signer]


def ca_check_script(tmp_path: Any, listed: list[x509.Certificate], names: list[str]) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    from components.pki import _pem_body
    from components.templates import render

    bodies = [_pem_body(c.public_bytes(Encoding.PEM).decode()) for c in listed]
    return render("remote/ca-check.sh.j2", host="node1", kinds=[{
        "key": "pki.cas.kubernetes", "names": names, "files": [str(tmp_path / "ca.crt"), str(tmp_path / "absent.crt")],
        "bodies": bodies}])


@pytest.mark.parametrize("was,now,refusal", [
    ([], ["kubernetes-ca"], None),                                             # a new host: nothing to compare
    (["kubernetes-ca"], ["kubernetes-ca"], None),
    (["kubernetes-ca"], ["kubernetes-ca", "kubernetes-ca-2"], None),           # 1: trusted everywhere
    (["kubernetes-ca", "kubernetes-ca-2"], ["kubernetes-ca-2", "kubernetes-ca"], None),  # 2: signs
    (["kubernetes-ca-2", "kubernetes-ca"], ["kubernetes-ca-2"], None),         # 3: the old one goes
    (["kubernetes-ca"], ["kubernetes-ca-2", "kubernetes-ca"], "kubernetes-ca-2 would sign certificates before this host trusts it"),
    (["kubernetes-ca"], ["kubernetes-ca-2"], "trusts none of the CAs listed there"),    # a swap in one run
    (["kubernetes-ca-2"], ["kubernetes-ca"], "runs a cluster made with other keys"),   # or another cluster's
    (["kubernetes-ca", "kubernetes-ca-2"], ["kubernetes-ca-2"], "the CA that signed the certificates this host runs with"),
])
def test_the_ca_check_lets_a_rotation_go_one_step_per_run(rotating: tuple[RecordingMocks, dict[str, Any]], tmp_path: Any,
                                                          was: list[str], now: list[str], refusal: str | None) -> None:
    """The preflight's CA check, run here on a host's bundle as each run of the rotation left it:
    the three steps pass; a CA that signs before it is trusted, or the old CA dropped while it still
    signs what runs, is refused naming pki.cas.kubernetes, before anything changes."""
    import subprocess

    from cryptography.hazmat.primitives.serialization import Encoding

    mocks, _ = rotating
    cas = {subject(cert(r))[0]: cert(r) for r in mocks.of_type(SELF_SIGNED)}
    if was:
        (tmp_path / "ca.crt").write_text("".join(cas[n].public_bytes(Encoding.PEM).decode() for n in was))
    done = subprocess.run(["sh", "-c", "set -eu\n" + ca_check_script(tmp_path, [cas[n] for n in now], now)],
                          capture_output=True, text=True)
    if refusal is None:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 1 and refusal in done.stderr, done.stderr
        assert "preflight of node1: nothing was changed on any host; pki.cas.kubernetes:" in done.stderr
