"""The cluster objects the first master applies (TLS bootstrap RBAC, the token, CoreDNS): what they
grant, to whom, and that they agree with the PKI and the network settings."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.cluster_objects import BINDINGS, BOOTSTRAPPERS
from engine.mocks import RecordingMocks
from engine.runtime import run_program, stack_config


@pytest.fixture(scope="module")
def applied() -> tuple[RecordingMocks, list[dict[str, Any]]]:
    mocks = RecordingMocks()
    run_program(stack_config("dev"), mocks, stack="dev")
    docs = [d for d in yaml.safe_load_all(mocks.named("cluster-objects-bootstrap").inputs["stdin"]) if d]
    return mocks, docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_the_token_authenticates_bootstrappers_only(applied: tuple[RecordingMocks, list[dict[str, Any]]]) -> None:
    _, docs = applied
    (name, secret), = of_kind(docs, "Secret").items()
    data = secret["stringData"]
    assert secret["type"] == "bootstrap.kubernetes.io/token" and secret["metadata"]["namespace"] == "kube-system"
    assert name == f"bootstrap-token-{data['token-id']}"
    assert data["usage-bootstrap-authentication"] == "true" and data["auth-extra-groups"] == BOOTSTRAPPERS
    # the manifest carries the secret half, so the command's stdin must be a secret
    mocks, _ = applied
    assert "stdin" in mocks.named("cluster-objects-bootstrap").secret_paths


def test_bindings_grant_node_bootstrap_auto_approval_and_the_api_servers_kubelet_access_only(
        applied: tuple[RecordingMocks, list[dict[str, Any]]]) -> None:
    mocks, docs = applied
    bindings = of_kind(docs, "ClusterRoleBinding")
    granted = {name: (b["roleRef"]["name"], [(s["kind"], s["name"]) for s in b["subjects"]])
               for name, b in bindings.items() if name in BINDINGS or name.startswith("kube-hardway:")}
    client = mocks.named("pki-kube-apiserver-kubelet-client-csr").inputs["subject"]["commonName"]
    assert granted == {
        "kube-hardway:node-bootstrapper": ("system:node-bootstrapper", [("Group", BOOTSTRAPPERS)]),
        "kube-hardway:node-autoapprove-bootstrap": (
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient", [("Group", BOOTSTRAPPERS)]),
        "kube-hardway:node-autoapprove-renewal": (
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", [("Group", "system:nodes")]),
        "kube-hardway:apiserver-kubelet-client": ("system:kubelet-api-admin", [("User", client)]),
    }
    # nothing else is bound to a broad role, and no role of ours has wildcards
    assert not [n for n, b in bindings.items() if b["roleRef"]["name"] in ("cluster-admin", "admin", "edit")]
    for role in of_kind(docs, "ClusterRole").values():
        for rule in role["rules"]:
            assert "*" not in rule.get("verbs", []) and "*" not in rule.get("resources", []), role["metadata"]["name"]


def test_coredns_serves_at_cluster_dns_and_forwards_to_the_configured_upstream() -> None:
    config = stack_config("dev")
    config["kubernetes"] = {"dns": {"upstream": ["192.0.2.53"], "replicas": 3}}
    mocks = RecordingMocks()
    run_program(config, mocks, stack="dev")
    docs = [d for d in yaml.safe_load_all(mocks.named("cluster-objects-bootstrap").inputs["stdin"]) if d]
    service = of_kind(docs, "Service")["kube-dns"]
    assert service["spec"]["clusterIP"] == "10.254.0.2"
    corefile = of_kind(docs, "ConfigMap")["coredns"]["data"]["Corefile"]
    assert "forward . 192.0.2.53" in corefile and "kubernetes cluster.local" in corefile
    assert of_kind(docs, "Deployment")["coredns"]["spec"]["replicas"] == 3


def bootstrap_applied(tmp_path: Path, kube: dict[str, Any], hosts: list[dict[str, Any]] | None = None) -> tuple[str, str]:
    """(the create script, what kubectl was given): the script run for real, kubectl a fake that logs."""
    cfg = stack_config("dev")
    cfg["kubernetes"] = kube
    if hosts is not None:
        cfg["hosts"] = hosts
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    command = mocks.named("cluster-objects-bootstrap").inputs
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path}/calls\ncase \"$*\" in *apply*) cat > {tmp_path}/applied ;; esac\n")
    kubectl.chmod(0o755)
    script = command["create"].replace("/usr/local/bin/kubectl", str(kubectl))
    assert str(kubectl) in script
    done = subprocess.run(["sh", "-c", script], input=command["stdin"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return script, (tmp_path / "applied").read_text()


def test_the_bootstrap_token_expires_a_day_after_the_node_set_last_changed(tmp_path: Path) -> None:
    """kubeadm's 24 h: the token only serves a new kubelet's first certificate. The expiration is
    set on the master when the objects are applied; a node added or removed re-applies them."""
    script, applied = bootstrap_applied(tmp_path, {})
    [secret] = [d for d in yaml.safe_load_all(applied) if d and d["kind"] == "Secret"]
    expires = datetime.strptime(secret["stringData"]["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(hours=23, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=24)
    hosts = stack_config("dev")["hosts"]
    fewer, _ = bootstrap_applied(tmp_path, {}, [h for h in hosts if h["name"] != "node3"])
    assert fewer != script and "node3" in script and "node3" not in fewer

    week, applied = bootstrap_applied(tmp_path, {"bootstrapTokenTtlHours": 168})
    [secret] = [d for d in yaml.safe_load_all(applied) if d and d["kind"] == "Secret"]
    assert secret["stringData"]["expiration"] > (datetime.now(UTC) + timedelta(hours=167)).strftime("%Y-%m-%dT%H")


def test_a_bootstrap_token_that_never_expires_drops_an_earlier_expiration(tmp_path: Path) -> None:
    script, applied = bootstrap_applied(tmp_path, {"bootstrapTokenTtlHours": 0})
    [secret] = [d for d in yaml.safe_load_all(applied) if d and d["kind"] == "Secret"]
    assert "expiration" not in secret["stringData"]
    assert "node1" not in script                     # the node set does not matter then
    [patch] = [c for c in (tmp_path / "calls").read_text().splitlines() if "patch" in c]
    assert f"patch secret {secret['metadata']['name']}" in patch and '"/data/expiration"' in patch


def test_coredns_replicas_go_one_per_node_and_a_drain_evicts_one_at_a_time(
        applied: tuple[RecordingMocks, list[dict[str, Any]]]) -> None:
    """Required, not preferred, apart: replicas scheduled while one node was Ready shared it, and
    stayed there (a node lost took cluster DNS with it) until a rollout restart spread them."""
    _, docs = applied
    spec = of_kind(docs, "Deployment")["coredns"]["spec"]["template"]["spec"]
    assert spec["affinity"]["podAntiAffinity"] == {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]}
    budget = of_kind(docs, "PodDisruptionBudget")["coredns"]
    assert budget["apiVersion"] == "policy/v1" and budget["metadata"]["namespace"] == "kube-system"
    # maxUnavailable, not minAvailable: with one replica a drain still goes through
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {"k8s-app": "kube-dns"}}}


@pytest.mark.parametrize(("replicas", "nodes", "deployed"), [(2, 3, 2), (3, 3, 3), (5, 3, 3), (2, 1, 1)])
def test_coredns_runs_at_most_one_replica_per_node(replicas: int, nodes: int, deployed: int) -> None:
    """One per node: more replicas than nodes would never all schedule (the DNS step would wait out
    its timeout for them)."""
    config = stack_config("dev")
    config["hosts"] = [h if i < nodes else {**h, "roles": [r for r in h["roles"] if r != "node"]}
                       for i, h in enumerate(config["hosts"])]
    config["kubernetes"] = {"dns": {"replicas": replicas}}
    mocks = RecordingMocks()
    run_program(config, mocks, stack="dev")
    docs = [d for d in yaml.safe_load_all(mocks.named("cluster-objects-bootstrap").inputs["stdin"]) if d]
    assert of_kind(docs, "Deployment")["coredns"]["spec"]["replicas"] == deployed


def test_a_ca_rotation_renews_the_bootstrap_token_in_each_run_and_rolls_coredns_when_the_signer_changes() -> None:
    """Each run of a rotation changes what the nodes trust, and every kubelet bootstraps again then:
    the objects' script carries the digest of the Kubernetes CAs the nodes trust (the same digest the
    kubelet's step compares), so they are applied again (the token's expiry renewed) whenever that
    changes. CoreDNS's pods start again only when the CA that signs changes (step 2): they read the
    CAs they trust when they start. The default CA adds no annotation."""
    import hashlib

    def objects(cas: list[str] | None) -> dict[str, Any]:
        cfg = stack_config("dev")
        if cas:
            cfg["pki"] = {**cfg.get("pki", {}), "cas": {"kubernetes": cas}}
        mocks = RecordingMocks()
        outputs = run_program(cfg, mocks, stack="dev").outputs
        reg = mocks.named("cluster-objects-bootstrap")
        trust = hashlib.sha256(outputs["kubernetesCaCertPem"].encode()).hexdigest()[:16]
        assert f"CAs ({trust})" in reg.inputs["create"], "the objects do not follow the CAs the nodes trust"
        assert f"!= {trust} ]" in mocks.named("node-node2-kubelet").inputs["create"], "the kubelet compares another digest"
        docs = [d for d in yaml.safe_load_all(reg.inputs["stdin"]) if d]
        return of_kind(docs, "Deployment")["coredns"]["spec"]["template"]["metadata"]

    assert "annotations" not in objects(None)
    assert "annotations" not in objects(["kubernetes-ca", "kubernetes-ca-2"])
    assert objects(["kubernetes-ca-2", "kubernetes-ca"])["annotations"] == {"kube-hardway/signing-ca": "kubernetes-ca-2"}
