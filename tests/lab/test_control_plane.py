"""The control plane on a real master: reached from this machine with the exported kubeconfig,
closed to anonymous callers, every component healthy, an audit log, re-run, destroy. The module
is one deployment's life (the lab stack: kh-lab-1 and kh-lab-2 are the masters)."""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.harness import DeploymentError, Engine
from tests.lab.conftest import Lab
from tests.lab.deployment import Deployment, bootstrap_token, deploy, restart_spans

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def deployment(lab3: Lab, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The lab stack deployed on the lab machines: this module's deployment."""
    return deploy(lab3, tmp_path_factory.mktemp("control-plane"))


def masters(lab: Lab) -> list[dict[str, Any]]:
    names = [h["name"] for h in lab.config["hosts"] if "master" in h["roles"]]
    return [h for h in lab.hosts if h["name"] in names]


def master(lab: Lab) -> dict[str, Any]:
    return masters(lab)[0]


def test_deploy_gives_a_kubeconfig_that_works_from_here(deployment: Deployment) -> None:
    result = deployment.first_up
    steps = {op.name: round(op.seconds, 1) for op in result.ops if op.name.startswith("control-plane-")}
    print(f"\ndeploy with the control plane: {result.seconds:.1f}s; its steps: {steps}")
    assert result.outputs["apiEndpoints"] == [f"https://{m['address']}:6443" for m in masters(deployment.lab)]
    livez = deployment.kubectl("get", "--raw", "/livez")
    assert (livez.returncode, livez.stdout) == (0, "ok"), livez.stderr
    namespaces = deployment.kubectl("get", "namespaces", "-o", "json")
    assert {"default", "kube-system"} <= {n["metadata"]["name"] for n in json.loads(namespaces.stdout)["items"]}


def test_every_component_is_healthy_and_leads(deployment: Deployment) -> None:
    statuses = json.loads(deployment.kubectl("get", "componentstatuses", "-o", "json").stdout)["items"]
    unhealthy = [s["metadata"]["name"] for s in statuses
                 if not any(c["type"] == "Healthy" and c["status"] == "True" for c in s["conditions"])]
    assert unhealthy == [] and len(statuses) == 2 + len(deployment.lab.etcd_hosts), statuses
    leases = deployment.kubectl("-n", "kube-system", "get", "lease", "kube-controller-manager", "kube-scheduler",
                     "-o", "jsonpath={.items[*].spec.holderIdentity}")
    holders = leases.stdout.split()
    assert leases.returncode == 0 and len(holders) == 2, leases.stdout + leases.stderr
    assert all(any(h.startswith(m["name"] + "_") for m in masters(deployment.lab)) for h in holders), holders


def pod(name: str, namespace: str, restricted: bool) -> str:
    """A pod that is privileged, or one that meets the Pod Security "restricted" profile."""
    security = ('{allowPrivilegeEscalation: false, runAsNonRoot: true, runAsUser: 1000, '
                'capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}') if restricted else "{privileged: true}"
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers: [{{name: c, image: kube-hardway-lab/busybox:1.35, command: [sh, -c, "grep NoNewPrivs /proc/self/status"],
                securityContext: {security}}}]
"""


def assert_the_kubelet_runs_it_as_the_plan_said(deployment: Deployment) -> None:
    """The restricted pod runs to completion with NoNewPrivs set — unless the plan warned that this
    kubelet and cri-dockerd cannot (the lab's 1.24.0-alpha.1 and 0.4.3): then the kubelet refuses it
    with exactly that reason, as the warning says."""
    deadline, status = time.time() + 120, {}
    while time.time() < deadline:
        status = json.loads(deployment.kubectl("-n", "kh-restricted", "get", "pod", "restricted", "-o", "json").stdout)["status"]
        if status.get("phase") in ("Succeeded", "Failed") or status.get("reason") == "NoNewPrivs":
            break
        time.sleep(2)
    if deployment.spec.runs_no_new_privs_pods:
        assert status.get("phase") == "Succeeded", status
        logs = deployment.kubectl("-n", "kh-restricted", "logs", "restricted").stdout
        assert logs.split() == ["NoNewPrivs:", "1"], logs
    else:
        assert status.get("reason") == "NoNewPrivs" and "Cannot enforce NoNewPrivs" in status.get("message", ""), status


def test_pod_security_admission_enforces_namespace_labels_and_the_stack_default(deployment: Deployment) -> None:
    """A namespace labelled restricted refuses a privileged pod and admits a restricted one; a
    namespace without a label gets the stack's kubernetes.podSecurity.defaultEnforce (baseline in
    the lab), which refuses the privileged pod too; kube-system is exempt."""
    assert deployment.spec.kubernetes.pod_security_default == "baseline"
    deployment.kubectl("create", "namespace", "kh-restricted")
    deployment.kubectl("create", "namespace", "kh-unlabelled")
    try:
        deployment.kubectl("label", "namespace", "kh-restricted", "pod-security.kubernetes.io/enforce=restricted")
        for namespace in ("kh-restricted", "kh-unlabelled"):
            refused = deployment.kubectl("apply", "-f", "-", stdin=pod("privileged", namespace, False), check=False)
            assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, (namespace, refused.stderr)
        admitted = deployment.kubectl("apply", "-f", "-", stdin=pod("restricted", "kh-restricted", True), check=False)
        assert admitted.returncode == 0, admitted.stderr
        assert_the_kubelet_runs_it_as_the_plan_said(deployment)
        exempt = deployment.kubectl("apply", "--dry-run=server", "-f", "-", stdin=pod("privileged", "kube-system", False),
                                    check=False)
        assert exempt.returncode == 0, exempt.stderr
    finally:
        deployment.kubectl("delete", "namespace", "kh-restricted", "kh-unlabelled", "--wait=false", check=False)


def test_anonymous_requests_are_refused(deployment: Deployment) -> None:
    ca = deployment.lab.pem_file("pki-kubernetes-ca-cert", "certPem", "kubernetes-ca.crt")
    for path in ("/api", "/livez", "/api/v1/namespaces/kube-system/secrets"):
        code = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
                               f"https://{master(deployment.lab)['address']}:6443{path}"], capture_output=True, text=True).stdout
        assert code == "401", f"{path}: {code}"


def test_the_api_server_writes_an_audit_log(deployment: Deployment) -> None:
    assert deployment.kubectl("create", "namespace", "kh-audit-probe").returncode == 0
    log = deployment.lab.run(master(deployment.lab)["name"], "grep -c kh-audit-probe /var/log/kubernetes/audit.log", check=False).stdout
    assert int(log.strip() or 0) >= 1


def test_the_bootstrap_token_may_ask_for_node_certs_and_nothing_else_and_expires(deployment: Deployment) -> None:
    bindings = deployment.kubectl("get", "clusterrolebinding", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    assert {"kube-hardway:node-bootstrapper", "kube-hardway:node-autoapprove-bootstrap",
            "kube-hardway:node-autoapprove-renewal", "kube-hardway:apiserver-kubelet-client"} <= set(bindings)
    data = bootstrap_token(deployment)
    # kubeadm's 24 h from the deploy (the master's clock is the host's: they share a kernel)
    left = datetime.strptime(data["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(hours=23) < left <= timedelta(hours=24), data["expiration"]
    bearer = f"{data['token-id']}.{data['token-secret']}"
    ca = deployment.lab.pem_file("pki-kubernetes-ca-cert", "certPem", "kubernetes-ca.crt")

    def status(path: str) -> str:
        return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
                               "-H", f"Authorization: Bearer {bearer}",
                               f"https://{master(deployment.lab)['address']}:6443{path}"], capture_output=True, text=True).stdout
    assert status("/apis/certificates.k8s.io/v1/certificatesigningrequests") == "200"
    assert status("/api/v1/namespaces/kube-system/secrets") == "403"


def test_noop_rerun_runs_no_command(deployment: Deployment) -> None:
    assert deployment.up().ops == []


def test_a_new_api_server_cert_restarts_one_master_at_a_time(deployment: Deployment) -> None:
    """Rotating the API server's serving cert (`--replace` of its tls resource) restarts
    kube-apiserver on each master under the rolling lock: the restart spans never overlap, and the
    exported kubeconfig (same CA) works throughout and after."""
    since = time.time() - 1
    result = deployment.up(replace=("pki-kube-apiserver-cert",))
    print(f"\nAPI server cert rotated: {result.seconds:.1f}s")
    restarted = sorted(op.name for op in result.ops if op.action == "update")
    assert restarted == sorted(f"control-plane-apiserver-{m['name']}" for m in masters(deployment.lab)), restarted
    spans = sorted(span for m in masters(deployment.lab)
                   for span in restart_spans(deployment.lab, m["name"], "kube-apiserver.service", since))
    assert len(spans) == len(masters(deployment.lab))
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two API servers restarted together: {spans}"
    for m in masters(deployment.lab):   # where a restart's time goes: the old process's stop, as systemd saw it
        out = deployment.lab.run(m["name"], f"journalctl -u kube-apiserver.service --since @{int(since)} -o json --no-pager").stdout
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        at = {e["MESSAGE"].split()[0]: int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in events
              if e["MESSAGE"].startswith(("Stopping kube-apiserver", "Stopped kube-apiserver", "Started kube-apiserver"))}
        if {"Stopping", "Stopped", "Started"} <= set(at):
            print(f"{m['name']}: kube-apiserver stopped in {at['Stopped'] - at['Stopping']:.1f}s, "
                  f"started {at['Started'] - at['Stopped']:.1f}s later")
        else:
            print(f"{m['name']}: systemd's messages: {[e['MESSAGE'] for e in events if 'kube-apiserver' in e['MESSAGE']]}")
    assert deployment.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    assert deployment.up().ops == []


def test_leaf_certs_inside_their_renewal_window_are_reissued_by_up_and_the_cas_are_not(deployment: Deployment) -> None:
    """An `up` run as if the leaf certs' lifetime had passed down to their last
    `pki.renewBeforeHours` (the harness's clock; pulumi-tls plans the same replacement on that day):
    every leaf cert is re-issued, no CA is, the services that read them restart one host at a time,
    and the cluster answers throughout and after; the next `up` runs nothing."""
    pki = deployment.spec.pki
    lab = deployment.lab
    before = deployment.up().outputs["certificates"]
    member = lab.etcd_hosts[0]["name"]
    files = "/etc/etcd/pki/ca.crt /etc/etcd/pki/server.crt /etc/kubernetes/pki/ca.crt /etc/kubernetes/pki/apiserver.crt"
    on_host = lab.run(member, f"sha256sum {files}").stdout.split("\n")
    since = time.time() - 1
    result = deployment.up(hours_later=pki.leaf_validity_hours - pki.early_renewal_hours + 1)
    after = result.outputs["certificates"]
    cas = {name for name in before if name.endswith("-ca")}
    assert cas == {"kubernetes-ca", "etcd-ca"}, sorted(before)
    assert {n: after[n] for n in cas} == {n: before[n] for n in cas}, "a CA was re-issued"
    stale = sorted(n for n in before if n not in cas and after[n] <= before[n])
    assert stale == [], f"not re-issued: {stale}"
    print(f"\n{len(before) - len(cas)} leaf certs re-issued: {result.seconds:.1f}s, "
          f"{len([op for op in result.ops if op.action == 'update'])} services updated")
    now = lab.run(member, f"sha256sum {files}").stdout.split("\n")
    assert [now[0], now[2]] == [on_host[0], on_host[2]] and now[1] != on_host[1] and now[3] != on_host[3], (on_host, now)
    spans = sorted(span for m in masters(lab) for span in restart_spans(lab, m["name"], "kube-apiserver.service", since))
    assert len(spans) == len(masters(lab))
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two API servers restarted together: {spans}"
    assert deployment.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    assert "is healthy" in (lab.etcdctl("endpoint", "health").stdout + lab.etcdctl("endpoint", "health").stderr)
    assert deployment.up().ops == []


def stored_secrets(deployment: Deployment) -> dict[str, str]:
    """How etcd holds each Secret: `<provider>:<key>` from the value's `k8s:enc:` prefix, or plain."""
    out = deployment.lab.etcdctl("get", "/registry/secrets/", "--prefix", "-w", "json")
    stored = {}
    for kv in json.loads(out.stdout).get("kvs", []):
        found = re.match(rb"k8s:enc:([a-z]+):v1:([a-z0-9-]+):", base64.b64decode(kv["value"]))
        stored[base64.b64decode(kv["key"]).decode()] = f"{found[1].decode()}:{found[2].decode()}" if found else "plain"
    return stored


def test_secrets_are_encrypted_at_rest_and_a_key_rotation_rewrites_them(deployment: Deployment) -> None:
    """Every Secret in etcd is encrypted with the first key (those from before the deploy's
    rewrite too). A new key may not write before both API servers can read it (refused on the
    hosts, nothing changed); the documented rotation — add it second, put it first (every Secret
    rewritten with it), drop the old one — keeps every Secret readable throughout."""
    probe = "/registry/secrets/default/kh-encryption-probe"
    deployment.kubectl("create", "secret", "generic", "kh-encryption-probe", "--from-literal=v=still-here")
    stored = stored_secrets(deployment)
    assert stored[probe] == "secretbox:key-1" and set(stored.values()) == {"secretbox:key-1"}, stored
    kube = deployment.config.get("kubernetes", {})

    def keys(*names: str) -> dict[str, Any]:
        return {**deployment.config, "kubernetes": {**kube, "encryption": {"keys": list(names)}}}

    def readable() -> None:
        got = deployment.kubectl("get", "secret", "kh-encryption-probe", "-o", "jsonpath={.data.v}").stdout
        assert base64.b64decode(got) == b"still-here"
        deployment.kubectl("get", "secrets", "-A", "-o", "name")

    with pytest.raises(DeploymentError) as refused:
        deployment.up(keys("key-2"))
    assert set(refused.value.failures) == {f"control-plane-apiserver-{m['name']}" for m in masters(deployment.lab)}
    assert all("kubernetes.encryption.keys: key key-2 would write Secrets before" in f
               for f in refused.value.failures.values()), refused.value.failures
    assert set(stored_secrets(deployment).values()) == {"secretbox:key-1"}
    readable()
    timings = {}
    for step in (("key-1", "key-2"), ("key-2", "key-1"), ("key-2",)):
        result = deployment.up(keys(*step))
        timings[",".join(step)] = result.seconds
        rewrote = "cluster-objects-encryption" in {op.name for op in result.ops}
        assert rewrote == (step[0] == "key-2" and len(step) == 2), (step, [op.name for op in result.ops])
        readable()
    stored = stored_secrets(deployment)
    assert stored[probe] == "secretbox:key-2" and set(stored.values()) == {"secretbox:key-2"}, stored
    print(f"\nkey rotation, run by run: {timings}")
    deployment.config = keys("key-2")
    assert deployment.up().ops == []


def common_names(pem: str) -> list[str]:
    """Each certificate's common name in a PEM text, in order."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return [str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
            for c in x509.load_pem_x509_certificates(pem.encode())]


def issuer_of(pem: str) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return str(x509.load_pem_x509_certificate(pem.encode()).issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def admin_answers(kubeconfig_text: str, ca_file: str, address: str, workdir: Path) -> int:
    """The HTTP status of /readyz asked with this kubeconfig's admin cert, trusting `ca_file`."""
    import http.client
    import ssl

    import yaml

    user = yaml.safe_load(kubeconfig_text)["users"][0]["user"]
    cert, key = workdir / "old-admin.crt", workdir / "old-admin.key"
    for path, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
        path.write_bytes(base64.b64decode(user[field]))
        path.chmod(0o600)
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(str(cert), str(key))
    connection = http.client.HTTPSConnection(address, 6443, context=context, timeout=10)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_ca_rotation_trusts_then_signs_then_drops_and_every_step_keeps_the_cluster(
        deployment: Deployment, tmp_path: Path) -> None:
    """Both CAs rotated through `pki.cas`, kubeadm's three steps, one `up` each: the new CA trusted
    everywhere; then every cert re-issued from it (every kubelet bootstraps again for a client cert
    from it); then the old one dropped. A new CA that would sign at once is refused by every
    preflight, nothing changed. After each run: every node Ready, the API servers ready, every
    bundle on the hosts and each kubelet's own kubeconfig hold the listed CAs, restarts one host at
    a time; an admin cert of the old CA works until the drop and not after."""
    lab = deployment.lab
    pki = deployment.config.get("pki", {})

    def cas(kubernetes: list[str], etcd: list[str]) -> dict[str, Any]:
        return {**deployment.config, "pki": {**pki, "cas": {"kubernetes": kubernetes, "etcd": etcd}}}

    roles = {h["name"]: set(h["roles"]) for h in lab.config["hosts"]}
    nodes = sorted(n for n, r in roles.items() if r & {"master", "node"})
    first_master, member = masters(lab)[0], lab.etcd_hosts[0]["name"]
    bundles = "/etc/kubernetes/pki/ca.crt /etc/etcd/pki/ca.crt"
    files_before = lab.run(first_master["name"], f"sha256sum {bundles}").stdout
    with pytest.raises(DeploymentError) as refused:
        deployment.up(cas(["kubernetes-ca-2", "kubernetes-ca"], ["etcd-ca"]))
    failures = {k: v for k, v in refused.value.failures.items() if v != "not started: an earlier step failed"}
    assert set(failures) == {f"preflight-{n}" for n in nodes}, refused.value.failures
    assert all("pki.cas.kubernetes: kubernetes-ca-2 would sign certificates before this host trusts it" in v
               for v in failures.values()), failures
    assert lab.run(first_master["name"], f"sha256sum {bundles}").stdout == files_before

    old_admin = Path(deployment.kubeconfig).read_text()          # signed by kubernetes-ca
    since = time.time() - 1
    timings = {}
    steps = ((["kubernetes-ca", "kubernetes-ca-2"], ["etcd-ca", "etcd-ca-2"]),
             (["kubernetes-ca-2", "kubernetes-ca"], ["etcd-ca-2", "etcd-ca"]),
             (["kubernetes-ca-2"], ["etcd-ca-2"]))
    for i, (kubernetes, etcd) in enumerate(steps, 1):
        result = deployment.up(cas(kubernetes, etcd))
        timings[f"{i}: {kubernetes[0]} signs, trusted {'+'.join(kubernetes)}"] = (
            round(result.seconds, 1), len(result.ops))
        Path(deployment.kubeconfig).write_text(result.outputs["kubeconfig"])
        assert deployment.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
        ready = deployment.kubectl("get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}="
                                   "{.status.conditions[?(@.type=='Ready')].status} {end}").stdout.split()
        assert sorted(ready) == [f"{n}=True" for n in nodes], (i, ready)
        assert common_names(lab.run(first_master["name"], "cat /etc/kubernetes/pki/ca.crt").stdout) == kubernetes
        assert common_names(lab.run(member, "cat /etc/etcd/pki/ca.crt").stdout) == etcd
        for n in nodes:
            client = lab.run(n, "sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "
                                "/var/lib/kubelet/pki/kubelet-client-current.pem").stdout
            assert issuer_of(client) == kubernetes[0], (i, n, "the kubelet's client cert is not from the signing CA")
            data = lab.run(n, "sed -n 's/^ *certificate-authority-data: //p' /etc/kubernetes/node/kubelet.kubeconfig").stdout
            assert common_names(base64.b64decode(data).decode()) == kubernetes, (i, n, "the kubelet did not bootstrap again")
        trusted = tmp_path / f"trusted-{i}.crt"
        trusted.write_text(result.outputs["kubernetesCaCertPem"])
        status = admin_answers(old_admin, str(trusted), first_master["address"], tmp_path)
        assert status == (401 if i == 3 else 200), (i, status, "an admin cert of the old CA")
    print(f"\nCA rotation, run by run (seconds, remote operations): {timings}")
    rollout = deployment.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s")
    assert "successfully rolled out" in rollout.stdout, rollout.stdout
    for unit, hosts in (("kube-apiserver.service", [m["name"] for m in masters(lab)]),
                        ("etcd", [h["name"] for h in lab.etcd_hosts])):
        spans = sorted(span for h in hosts for span in restart_spans(lab, h, unit, since))
        assert len(spans) >= 2 * len(hosts), (unit, spans)    # runs 1 and 2 restart each; run 3 too where a file changed
        for (_, end), (begin, _) in itertools.pairwise(spans):
            assert end <= begin, f"two {unit} restarted together: {spans}"
    deployment.config = cas(*steps[-1])
    assert deployment.up().ops == []


def test_a_host_without_curl_fails_its_preflight_before_anything_runs_anywhere(
        deployment: Deployment, tmp_path: Path) -> None:
    """A new stack on these machines, one of them without curl: that host's preflight fails naming
    it and curl, and no copy, step or service ran on any host. The new stack's CAs are not the ones
    the machines' cluster trusts: every other host's preflight refuses for that, naming pki.cas
    (a cluster made with other keys), before anything changes."""
    lab, host = deployment.lab, deployment.lab.hosts[-1]["name"]
    fresh = tmp_path / "state.json"
    lab.run(host, "mv /usr/bin/curl /usr/bin/curl.kh-hidden")
    try:
        with pytest.raises(DeploymentError) as failed:
            Engine(fresh, stack=lab.engine.stack).up(deployment.config)
    finally:
        lab.run(host, "mv /usr/bin/curl.kh-hidden /usr/bin/curl")
    print(f"\n{failed.value}")
    # the admin machine's steps (the checks of release files, the directory of a worker's releases)
    # wait for no host: one still queued when the preflight failed is "not started" (seen in CI),
    # one already done is not in the failures
    failures = {k: v for k, v in failed.value.failures.items()
                if not (k.startswith(("release-", "node-releases-")) and v == "not started: an earlier step failed")}
    assert set(failures) <= {f"preflight-{h['name']}" for h in lab.hosts} and f"preflight-{host}" in failures, failures
    message = failures.pop(f"preflight-{host}")
    assert f"preflight of {host}: nothing was installed on any host; this host lacks:" in message, message
    assert "- curl: install package curl" in message and message.count("\n  - ") == 1, message
    assert all(v == "not started: an earlier step failed" or (
        "nothing was changed on any host; pki.cas.kubernetes: " in v and "runs a cluster made with other keys" in v)
        for v in failures.values()), failures
    state = json.loads(fresh.read_text())
    ran = sorted(r["name"] for r in state["resources"].values() if r["typ"].startswith("command:remote:"))
    assert ran == [], ran


def test_destroy_removes_the_control_plane(deployment: Deployment) -> None:
    deployment.lab.engine.destroy()
    for m in masters(deployment.lab):
        left = deployment.lab.run(m["name"], "ls /etc/kubernetes /etc/systemd/system/kube-* /usr/local/bin/kube-* "
                        "2>/dev/null; systemctl is-active kube-apiserver 2>/dev/null; true").stdout.split()
        assert left in ([], ["inactive"]), (m["name"], left)
