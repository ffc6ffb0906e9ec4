"""The whole cluster on real machines, as a user gets it from `pulumi up`: every node Ready, pods on
every node talking across hosts, Services (ClusterIP, hairpin, NodePort), cluster DNS, logs and
exec through verified TLS, the Node authorizer, TLS bootstrap without a human, two masters (one
stopped: the nodes stay Ready), a rolling kubelet change, destroy. One deployment's life (the lab
stack: kh-lab-1 and kh-lab-2 are masters, kh-lab-3 a node)."""

from __future__ import annotations

import base64
import itertools
import json
import shlex
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from components.templates import render
from engine.harness import DeploymentError
from lab.dns import OUTSIDE_NAME
from lab.stackfile import UPSTREAM_PORT
from tests.lab.conftest import Lab
from tests.lab.deployment import Deployment, bootstrap_token, deploy, restart_spans

pytestmark = pytest.mark.lab
IMAGE = "kube-hardway-lab/busybox:1.35"
PULLED = "kh-pulled/busybox:1"         # on no node: the kubelet pulls it (through Docker's mirror, the cache)
DOMAIN = "cluster.local"
# every node runs one (masters are tainted: the probes tolerate it), serving its node's name
PROBES = f"""
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: kh-probe, namespace: default}}
spec:
  selector: {{matchLabels: {{app: kh-probe}}}}
  template:
    metadata: {{labels: {{app: kh-probe}}}}
    spec:
      tolerations: [{{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}}]
      terminationGracePeriodSeconds: 1
      containers:
      - name: probe
        image: {IMAGE}
        command: [sh, -c, 'mkdir -p /www && echo "$NODE" > /www/index.html && exec httpd -f -p 8080 -h /www']
        env: [{{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: kh-web-secret, namespace: default}}
stringData: {{token: only-for-kh-lab-3}}
---
apiVersion: v1
kind: Pod
metadata: {{name: kh-web, namespace: default, labels: {{app: kh-web}}}}
spec:
  nodeName: kh-lab-3
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {IMAGE}
    command: [sh, -c, 'mkdir -p /www && echo kh-web > /www/index.html && exec httpd -f -p 8080 -h /www']
    volumeMounts: [{{name: secret, mountPath: /secret}}]
  volumes: [{{name: secret, secret: {{secretName: kh-web-secret}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: kh-web, namespace: default}}
spec:
  type: NodePort
  selector: {{app: kh-web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def nodes(cluster: Deployment) -> dict[str, dict[str, Any]]:
    return {n["metadata"]["name"]: n for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]}


def ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def roles(node: dict[str, Any]) -> tuple[list[tuple[str, str]], bool]:
    """A Node's taints, every one (the gate passes a node only once the node lifecycle controller's
    not-ready/unreachable taints are gone), and whether it carries the control-plane role label."""
    return ([(t["key"], t["effect"]) for t in node["spec"].get("taints", [])],
            "node-role.kubernetes.io/control-plane" in node["metadata"]["labels"])


def roles_as_they_should_be(found: dict[str, dict[str, Any]], masters: set[str]) -> bool:
    """Masters carry exactly the control-plane taint and label; other nodes no taint at all."""
    master = ([("node-role.kubernetes.io/control-plane", "NoSchedule")], True)
    return {name: roles(node) for name, node in found.items()} == {
        name: master if name in masters else ([], False) for name in found}


def assert_roles(found: dict[str, dict[str, Any]], masters: set[str]) -> None:
    assert roles_as_they_should_be(found, masters), {name: roles(node) for name, node in found.items()}


def probes(cluster: Deployment) -> dict[str, dict[str, Any]]:
    """node name -> its probe pod"""
    pods = json.loads(cluster.kubectl("get", "pods", "-l", "app=kh-probe", "-o", "json").stdout)["items"]
    return {p["spec"]["nodeName"]: p for p in pods}


def in_pod(cluster: Deployment, pod: str, command: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("exec", pod, "--", "sh", "-c", command, check=False)


def fetch(cluster: Deployment, pod: str, url: str) -> str:
    # busybox's `wget -T` segfaults: bound it with timeout(1)
    done = in_pod(cluster, pod, f"timeout 5 wget -qO- {url}")
    assert done.returncode == 0, f"{pod} cannot fetch {url}: {done.stdout}{done.stderr}"
    return done.stdout.strip()


def trace(lab: Lab, host: str) -> dict[str, str]:
    """What a machine shows of the kubelet, kube-proxy, cri-dockerd and the API server proxy."""
    probe = ("for p in /etc/systemd/system/kubelet.service /etc/systemd/system/kube-proxy.service "
             "/etc/systemd/system/cri-docker.service /etc/systemd/system/kube-hardway-apiserver-proxy.service "
             "/usr/local/bin/kubelet /usr/local/bin/kube-proxy /usr/local/bin/cri-dockerd /var/lib/kubelet "
             "/var/lib/cri-dockerd /etc/kubernetes /run/cri-dockerd.sock; do "
             "[ -e $p ] && echo $p=present || echo $p=absent; done; "
             "echo mounts=$(grep -c ' /var/lib/kubelet' /proc/self/mounts || true); "
             "echo kube-chains=$(iptables-save | grep -c '^:KUBE-' || true); "
             "echo pod-containers=$(docker ps -aq --filter label=io.kubernetes.pod.namespace | wc -l); "
             "echo images=$(docker images --format '{{.Repository}}:{{.Tag}}@{{.ID}}' | sort | tr '\\n' ' '); "
             "echo haproxy=$(command -v haproxy || echo none); "
             # Debian's etcd package made it (empty): it must come back as it was
             "echo etcd-data-dir=$(stat -c %u:%g:%a /var/lib/etcd 2>/dev/null || echo absent)")
    return dict(line.split("=", 1) for line in lab.run(host, probe).stdout.splitlines())


@pytest.fixture(scope="module")
def cluster(lab3: Lab, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The lab stack deployed on the bare lab machines: this module's deployment."""
    return deploy(lab3, tmp_path_factory.mktemp("cluster"), trace)


@pytest.fixture(scope="module")
def workloads(cluster: Deployment) -> dict[str, str]:
    """A probe pod on every node (the DaemonSet), kh-web on kh-lab-3 with its Service and Secret:
    each node's probe pod UID, which the rolling changes later must not change."""
    cluster.kubectl("apply", "-f", "-", stdin=PROBES)
    cluster.kubectl("rollout", "status", "daemonset/kh-probe", "--timeout=120s")
    cluster.kubectl("wait", "pod/kh-web", "--for=condition=Ready", "--timeout=120s")
    return {n: p["metadata"]["uid"] for n, p in probes(cluster).items()}


def test_deploy_brings_every_node_ready_with_dns_answering(cluster: Deployment) -> None:
    result = cluster.first_up
    slowest = sorted(((round(op.seconds, 1), op.name) for op in result.ops), reverse=True)[:6]
    print(f"\nbare machines -> every node Ready, DNS answering: {result.seconds:.1f}s; slowest steps: {slowest}")
    path = [f"{op.name} {op.seconds:.1f}s (+{waited:.1f}s)" for op, waited in result.critical_path()]
    print(f"the steps that set it (work, +sat ready): {' -> '.join(path)}")
    assert "kubeconfig" in result.secret_outputs
    found = nodes(cluster)
    assert sorted(found) == sorted(h["name"] for h in cluster.lab.hosts) == sorted(result.outputs["nodes"])
    assert all(ready(n) for n in found.values()), {k: n["status"]["conditions"] for k, n in found.items()}
    masters = {h["name"] for h in cluster.lab.config["hosts"] if "master" in h["roles"]}
    assert len(masters) == 2
    assert_roles(found, masters)
    for node in found.values():
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("docker://")


def test_kubelet_client_certs_were_issued_without_a_human(cluster: Deployment) -> None:
    csrs = json.loads(cluster.kubectl("get", "csr", "-o", "json").stdout)["items"]
    bootstrap = [c for c in csrs if c["spec"]["username"].startswith("system:bootstrap:")]
    assert len(bootstrap) >= len(cluster.lab.hosts)
    for csr in bootstrap:
        approved = [c for c in csr["status"]["conditions"] if c["type"] == "Approved"]
        assert approved and approved[0]["reason"] == "AutoApproved", csr["status"]
        assert csr["status"].get("certificate"), csr["metadata"]["name"]


def test_a_renewal_csr_of_a_node_is_approved_automatically(cluster: Deployment, tmp_path: Path) -> None:
    """What the kubelet sends when its client cert nears expiry: a CSR for its own name, made with
    its current client cert. The controller-manager approves it (the selfnodeclient binding)."""
    node = "kh-lab-3"
    current = tmp_path / "current.pem"
    current.write_text(cluster.lab.run(node, "cat /var/lib/kubelet/pki/kubelet-client-current.pem").stdout)
    current.chmod(0o600)
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "new.key"), "-out", str(tmp_path / "new.csr"),
                    "-subj", f"/O=system:nodes/CN=system:node:{node}"], check=True, capture_output=True)
    import base64
    request = base64.b64encode((tmp_path / "new.csr").read_bytes()).decode()
    body = json.dumps({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                       "metadata": {"generateName": "kh-renewal-"},
                       "spec": {"request": request, "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                                "usages": ["digital signature", "key encipherment", "client auth"]}})
    ca = cluster.lab.pem_file("pki-kubernetes-ca-cert", "certPem", "kubernetes-ca.crt")
    posted = subprocess.run(["curl", "-sS", "--cacert", ca, "--cert", str(current), "--key", str(current),
                             "-H", "Content-Type: application/json", "-d", body,
                             f"https://{cluster.lab.hosts[0]['address']}:6443/apis/certificates.k8s.io/v1/certificatesigningrequests"],
                            capture_output=True, text=True)
    name = json.loads(posted.stdout)["metadata"]["name"]
    deadline = time.time() + 30
    while time.time() < deadline:
        csr = json.loads(cluster.kubectl("get", "csr", name, "-o", "json").stdout)
        conditions = {c["type"]: c.get("reason") for c in csr["status"].get("conditions", [])}
        if conditions:
            break
        time.sleep(1)
    assert conditions == {"Approved": "AutoApproved"}, csr["status"]
    assert csr["spec"]["username"] == f"system:node:{node}"
    cluster.kubectl("delete", "csr", name)


def test_pods_on_every_node_reach_each_other_both_ways(cluster: Deployment, workloads: dict[str, str]) -> None:
    pods = probes(cluster)
    assert sorted(pods) == sorted(workloads) == sorted(h["name"] for h in cluster.lab.hosts)
    for src, dst in itertools.permutations(pods, 2):
        ip = pods[dst]["status"]["podIP"]
        assert fetch(cluster, pods[src]["metadata"]["name"], f"http://{ip}:8080/") == dst, (src, dst)


def test_services_work_across_nodes_through_hairpin_and_from_outside(cluster: Deployment, workloads: dict[str, str]) -> None:
    pods = probes(cluster)
    service = json.loads(cluster.kubectl("get", "service", "kh-web", "-o", "json").stdout)
    cluster_ip, node_port = service["spec"]["clusterIP"], service["spec"]["ports"][0]["nodePort"]
    for node in ("kh-lab-1", "kh-lab-2"):       # kh-web runs on kh-lab-3
        assert fetch(cluster, pods[node]["metadata"]["name"], f"http://{cluster_ip}/") == "kh-web"
    # a pod reaches itself through its own Service (hairpin)
    assert fetch(cluster, "kh-web", f"http://{cluster_ip}/") == "kh-web"
    for h in cluster.lab.hosts:                          # a NodePort on every node, from this machine
        got = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://{h['address']}:{node_port}/"],
                             capture_output=True, text=True)
        assert got.stdout.strip() == "kh-web", f"NodePort {node_port} on {h['name']}: {got.stdout}{got.stderr}"


def test_cluster_dns_resolves_services_and_forwards_the_rest_inside_the_lab(cluster: Deployment, workloads: dict[str, str]) -> None:
    pod = probes(cluster)["kh-lab-1"]["metadata"]["name"]
    kubernetes = in_pod(cluster, pod, f"nslookup kubernetes.default.svc.{DOMAIN}")
    assert "10.254.0.1" in kubernetes.stdout, kubernetes.stdout + kubernetes.stderr
    web_ip = json.loads(cluster.kubectl("get", "service", "kh-web", "-o", "json").stdout)["spec"]["clusterIP"]
    web = in_pod(cluster, pod, f"nslookup kh-web.default.svc.{DOMAIN}")
    assert web_ip in web.stdout, web.stdout + web.stderr
    assert fetch(cluster, pod, f"http://kh-web.default.svc.{DOMAIN}/") == "kh-web"
    outside = in_pod(cluster, pod, f"nslookup {OUTSIDE_NAME}")
    assert cluster.lab.info["gateway"] in outside.stdout, outside.stdout + outside.stderr
    assert OUTSIDE_NAME in cluster.lab.resolver.queries


def coredns_nodes(cluster: Deployment) -> list[str]:
    pods = json.loads(cluster.kubectl("-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o", "json").stdout)
    # a rollout restart (dns-ready spreads the replicas) leaves the old pods Terminating for a while
    return sorted(p["spec"]["nodeName"] for p in pods["items"] if "deletionTimestamp" not in p["metadata"])


def test_cluster_dns_survives_the_loss_of_a_node(cluster: Deployment, workloads: dict[str, str]) -> None:
    """The CoreDNS replicas are on different nodes; one of those nodes is lost (its kubelet stopped,
    its CoreDNS container gone, as when the machine dies): once the node lifecycle controller has
    marked it, names resolve every time from a pod on another node, through the other replica."""
    placed = coredns_nodes(cluster)
    assert len(placed) == 2 and len(set(placed)) == 2, f"the CoreDNS replicas share a node: {placed}"
    lost = placed[-1]
    asker = next(name for name in probes(cluster) if name not in placed)
    pod = probes(cluster)[asker]["metadata"]["name"]
    cluster.lab.run(lost, "systemctl stop kubelet && docker ps -q --filter label=io.kubernetes.container.name=coredns"
                          " | xargs -r docker stop -t 1 >/dev/null")
    try:
        deadline = time.time() + 120
        while ready(nodes(cluster)[lost]) and time.time() < deadline:
            time.sleep(2)
        assert not ready(nodes(cluster)[lost]), f"{lost} still Ready with its kubelet stopped"
        # the lost replica leaves the Service's endpoints once its node is NotReady
        deadline = time.time() + 60
        while time.time() < deadline:
            endpoints = json.loads(cluster.kubectl("-n", "kube-system", "get", "endpoints", "kube-dns", "-o", "json").stdout)
            serving = [a.get("nodeName") for subset in endpoints.get("subsets", []) for a in subset.get("addresses", [])]
            if lost not in serving:
                break
            time.sleep(2)
        answers = [in_pod(cluster, pod, f"nslookup kubernetes.default.svc.{DOMAIN}") for _ in range(10)]
        failed = [a.stdout + a.stderr for a in answers if "10.254.0.1" not in a.stdout]
        assert failed == [], f"from {asker} with {lost} lost: {len(failed)} of 10 lookups failed: {failed[0]}"
    finally:
        cluster.lab.run(lost, "systemctl start kubelet")
    # back: Ready, and the lifecycle controller's not-ready/unreachable taints gone again
    masters = {h["name"] for h in cluster.config["hosts"] if "master" in h["roles"]}
    deadline = time.time() + 180
    while time.time() < deadline:
        found = nodes(cluster)
        if all(ready(n) for n in found.values()) and roles_as_they_should_be(found, masters):
            break
        time.sleep(2)
    assert all(ready(n) for n in found.values())
    assert_roles(found, masters)
    cluster.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s")


def test_logs_and_exec_go_through_the_kubelets_verified_tls(cluster: Deployment, workloads: dict[str, str]) -> None:
    for node, pod in probes(cluster).items():
        name = pod["metadata"]["name"]
        assert cluster.kubectl("exec", name, "--", "cat", "/www/index.html").stdout.strip() == node
        cluster.kubectl("logs", name)              # the API server verified the kubelet's serving cert
    coredns = cluster.kubectl("-n", "kube-system", "logs", "deployment/coredns").stdout
    assert "CoreDNS" in coredns, coredns


def test_a_node_cannot_read_a_secret_of_a_pod_on_another_node(cluster: Deployment, workloads: dict[str, str], tmp_path: Path) -> None:
    ca = cluster.lab.pem_file("pki-kubernetes-ca-cert", "certPem", "kubernetes-ca.crt")
    url = f"https://{cluster.lab.hosts[0]['address']}:6443/api/v1/namespaces/default/secrets/kh-web-secret"
    codes = {}
    for node in ("kh-lab-1", "kh-lab-3"):         # kh-web (which mounts it) runs on kh-lab-3
        cert = tmp_path / f"{node}.pem"
        cert.write_text(cluster.lab.run(node, "cat /var/lib/kubelet/pki/kubelet-client-current.pem").stdout)
        cert.chmod(0o600)
        codes[node] = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
                                      "--cert", str(cert), "--key", str(cert), url], capture_output=True, text=True).stdout
    assert codes == {"kh-lab-1": "403", "kh-lab-3": "200"}


# a range read through etcd's JSON gateway on a worker: log in ($2, password in file $3), then
# read [$4, $5) (base64) at $1 with the token; the token travels on curl's stdin
GATEWAY_RANGE = r"""
tls="--cacert /etc/flannel/pki/ca.crt --cert /etc/flannel/pki/gateway.crt --key /etc/flannel/pki/gateway.key"
token=$(printf '{"name":"%s","password":"%s"}' "$2" "$(cat "$3")" \
  | curl -sS $tls --data-binary @- "$1/v3/auth/authenticate" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[ -n "$token" ] || { echo "no token for $2"; exit 1; }
printf 'header = "Authorization: %s"\n' "$token" \
  | curl -sS $tls -K - -d "{\"key\":\"$4\",\"range_end\":\"$5\",\"keys_only\":true,\"limit\":1}" "$1/v3/kv/range"
"""


def test_a_workers_etcd_credentials_reach_flannels_keys_and_the_locks_only(cluster: Deployment) -> None:
    """Root on a worker holds flanneld's cert, the nameless gateway cert and two passwords: none of
    them reads or writes the API server's keys (every Secret), and no client cert opens the peer
    port. Each refusal is next to the same call that passes with the credential made for it."""
    lab, node = cluster.lab, "kh-lab-3"
    prefix = cluster.spec.network.etcd_prefix
    member = f"https://{lab.hosts[0]['address']}"
    ctl = (f"ETCDCTL_API=3 etcdctl --endpoints={member}:2379 --cacert=/etc/flannel/pki/ca.crt --command-timeout=5s "
           "--cert=/etc/flannel/pki/flanneld.crt --key=/etc/flannel/pki/flanneld.key ")
    denied = "permission denied"
    assert denied in lab.run(node, ctl + "get /registry/ --prefix --keys-only --limit 1", check=False).stderr
    assert denied in lab.run(node, ctl + "put /registry/kube-hardway-probe x", check=False).stderr
    assert '"Network"' in lab.run(node, ctl + f"get {prefix}/config --print-value-only").stdout
    assert lab.etcdctl("get", "/registry/namespaces/default", "--keys-only").stdout.strip()   # root does read it
    assert denied in lab.etcdctl("get", "/registry/", "--prefix", "--limit", "1", cert="healthcheck").stderr

    def gateway(user: str, password_file: str, key: str) -> str:   # a range read through the JSON gateway
        b64 = base64.b64encode(key.encode()).decode()
        end = base64.b64encode(key[:-1].encode() + bytes([ord(key[-1]) + 1])).decode()
        return lab.run(node, "sh -c " + shlex.quote(GATEWAY_RANGE) + " _ " + " ".join(
            shlex.quote(a) for a in (f"{member}:2379", user, password_file, b64, end)), check=False).stdout
    flanneld = ("flanneld", "/etc/flannel/pki/flanneld.password")
    lock = ("kube-hardway-lock", "/etc/kube-hardway/etcd-lock.password")
    for login in (flanneld, lock):
        assert denied in gateway(*login, "/registry/"), login
    assert '"count"' in gateway(*flanneld, f"{prefix}/subnets/")      # flanneld's health check
    assert '"header"' in gateway(*lock, "kube-hardway/")              # the rolling-restart lock
    assert denied in gateway(*lock, f"{prefix}/subnets/")

    def peer_port(cert: str, key: str) -> str:
        return lab.run(node, f"curl -sS --http1.1 -o /dev/null -w '%{{http_code}}' --max-time 5 --cacert /etc/etcd/pki/ca.crt "
                             f"--cert {cert} --key {key} {member}:2380/members", check=False).stdout
    assert peer_port("/etc/etcd/pki/peer.crt", "/etc/etcd/pki/peer.key") == "200"
    for cert in ("/etc/flannel/pki/flanneld", "/etc/flannel/pki/gateway", "/etc/etcd/pki/healthcheck-client",
                 "/etc/etcd/pki/lock-client"):
        assert peer_port(f"{cert}.crt", f"{cert}.key") == "000", cert


def test_no_credential_on_a_host_is_an_unrevocable_cluster_admin(cluster: Deployment, tmp_path: Path) -> None:
    """The API server's kubelet-client cert reaches the kubelets' API and nothing else; the admin
    cert is cluster-admin only through a binding: deleted, every admin cert loses it at once."""
    lab, master = cluster.lab, cluster.lab.hosts[0]["name"]
    ca = lab.pem_file("pki-kubernetes-ca-cert", "certPem", "kubernetes-ca.crt")
    server = f"https://{lab.hosts[0]['address']}:6443"
    for name in ("crt", "key"):
        path = tmp_path / f"kubelet-client.{name}"
        path.write_text(lab.run(master, f"cat /etc/kubernetes/pki/apiserver-kubelet-client.{name}").stdout)
        path.chmod(0o600)

    def as_kubelet_client(url: str) -> str:
        return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca, "--cert",
                               str(tmp_path / "kubelet-client.crt"), "--key", str(tmp_path / "kubelet-client.key"),
                               server + url], capture_output=True, text=True).stdout
    assert as_kubelet_client(f"/api/v1/nodes/{master}/proxy/healthz") == "200"   # system:kubelet-api-admin
    assert as_kubelet_client("/api/v1/secrets") == "403"                          # not system:masters
    assert cluster.kubectl("get", "secrets", "-A", "-o", "name").returncode == 0
    super_admin = "kubectl --kubeconfig /etc/kubernetes/super-admin.kubeconfig "
    binding = render("kubernetes/cluster-admins.yaml.j2", group="kube-hardway:cluster-admins")
    lab.run(master, super_admin + "delete clusterrolebinding kube-hardway:cluster-admins")
    try:
        refused = cluster.kubectl("get", "secrets", "-A", "-o", "name", check=False)
        assert refused.returncode != 0 and "forbidden" in refused.stderr, refused
    finally:
        lab.run(master, f"{super_admin} apply -f - <<'EOF'\n{binding}\nEOF")
    assert cluster.kubectl("get", "secrets", "-A", "-o", "name").returncode == 0


def test_no_node_keeps_the_bootstrap_token_once_ready(cluster: Deployment) -> None:
    secret = bootstrap_token(cluster)["token-secret"]
    for h in cluster.lab.hosts:
        found = cluster.lab.run(h["name"], f"grep -rlF {secret} /etc /var/lib/kubelet /var/lib/kube-hardway || true").stdout
        assert found.strip() == "", f"{h['name']} still holds the bootstrap token in: {found}"
        assert cluster.lab.run(h["name"], "test -s /var/lib/kubelet/pki/kubelet-client-current.pem", check=False).returncode == 0


def test_the_kubelet_has_no_read_only_port_and_refuses_anonymous_calls(cluster: Deployment) -> None:
    for h in cluster.lab.hosts:
        closed = subprocess.run(["curl", "-sS", "--max-time", "3", f"http://{h['address']}:10255/pods"],
                                capture_output=True, text=True)
        assert closed.returncode == 7, f"{h['name']}: read-only port answers: {closed.stdout[:200]}"
        code = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                               f"https://{h['address']}:10250/pods"], capture_output=True, text=True).stdout
        assert code == "401", f"{h['name']}: anonymous kubelet call answered {code}"


def test_nodes_stay_ready_while_one_master_is_down(cluster: Deployment) -> None:
    cluster.lab.run("kh-lab-1", "systemctl stop kube-apiserver")
    try:
        time.sleep(50)   # longer than the node monitor's grace period (40 s)
        second = cluster.kubeconfig + ".second"
        Path(second).write_text(Path(cluster.kubeconfig).read_text().replace(
            cluster.lab.hosts[0]["address"] + ":6443", cluster.lab.hosts[1]["address"] + ":6443"))
        Path(second).chmod(0o600)
        listed = subprocess.run([str(Path(cluster.lab.info["artifactsDir"]) / "kubectl"), "--kubeconfig", second, "get",
                                 "nodes", "-o", "json"], capture_output=True, text=True, timeout=60)
        found = {n["metadata"]["name"]: n for n in json.loads(listed.stdout)["items"]}
        assert all(ready(n) for n in found.values()), {k: n["status"]["conditions"] for k, n in found.items()}
        leases = json.loads(subprocess.run(
            [str(Path(cluster.lab.info["artifactsDir"]) / "kubectl"), "--kubeconfig", second, "-n", "kube-node-lease",
             "get", "lease", "-o", "json"], capture_output=True, text=True, timeout=60).stdout)["items"]
        renewed = {ls["metadata"]["name"]: ls["spec"]["renewTime"] for ls in leases}
        assert sorted(renewed) == sorted(h["name"] for h in cluster.lab.hosts)
    finally:
        cluster.lab.run("kh-lab-1", "systemctl start kube-apiserver")
    deadline = time.time() + 60
    while cluster.kubectl("get", "--raw", "/readyz", check=False).returncode != 0 and time.time() < deadline:
        time.sleep(2)


def tags(lab: Lab, host: str) -> list[str]:
    return lab.run(host, "docker images --format '{{.Repository}}:{{.Tag}}'").stdout.split()


def test_the_kubelet_pulls_what_a_node_lacks_through_the_cache(cluster: Deployment) -> None:
    """An image only the cache's upstream (Debian's docker-registry on the last machine) has: the
    kubelet pulls it for a pod on a master; destroy must remove it (the pod runs until the upgrade
    test deletes it: a pod no controller owns blocks a drain)."""
    upstream, node = cluster.lab.hosts[-1]["name"], cluster.lab.hosts[1]["name"]
    pushed = f"localhost:{UPSTREAM_PORT}/{PULLED}"
    cluster.lab.run(upstream, f"docker tag {IMAGE} {pushed} && docker push -q {pushed} >/dev/null && docker rmi {pushed} >/dev/null")
    assert PULLED not in tags(cluster.lab, node)
    cluster.kubectl("apply", "-f", "-", stdin=f"""
apiVersion: v1
kind: Pod
metadata: {{name: kh-pulled, namespace: default}}
spec:
  nodeName: {node}
  tolerations: [{{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}}]
  terminationGracePeriodSeconds: 1
  containers: [{{name: sleep, image: "{PULLED}", command: [sleep, "3600"]}}]
""")
    cluster.kubectl("wait", "--for=condition=Ready", "pod/kh-pulled", "--timeout=120s")
    assert PULLED in tags(cluster.lab, node)


def test_noop_rerun_runs_no_command(cluster: Deployment) -> None:
    result = cluster.up()
    print(f"\nno-op up of the whole cluster: {result.seconds:.1f}s, {len(result.ops)} remote commands")
    assert result.ops == []


def test_a_kubelet_change_restarts_one_node_at_a_time_and_workloads_keep_running(cluster: Deployment, workloads: dict[str, str]) -> None:
    since = time.time() - 1
    cluster.config = {**cluster.config, "kubernetes": {**cluster.config["kubernetes"], "kubelet": {"maxPods": 100}}}
    result = cluster.up()
    print(f"\nkubelet setting change: {result.seconds:.1f}s")
    assert sorted(op.name for op in result.ops) == sorted(f"node-{h['name']}-kubelet" for h in cluster.lab.hosts)
    spans = []
    for h in cluster.lab.hosts:
        mine = restart_spans(cluster.lab, h["name"], "kubelet.service", since)
        assert len(mine) == 1, mine
        spans += mine
    spans.sort()
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two kubelet restarts overlapped: {spans}"
    assert {n: int(node["status"]["capacity"]["pods"]) for n, node in nodes(cluster).items()} == {
        h["name"]: 100 for h in cluster.lab.hosts}
    pods = probes(cluster)
    assert {n: p["metadata"]["uid"] for n, p in pods.items()} == workloads
    assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in pods.values())
    assert cluster.up().ops == []


def kubelet_restarts_begun(lab: Lab, host: str, since: float) -> int:
    out = lab.run(host, f"journalctl -t kube-hardway --since @{int(since)} --no-pager -o cat").stdout
    return out.count(f"kubelet.service restart on {host}: begin")


def test_a_kubelet_setting_it_refuses_is_rolled_back_on_the_first_node_and_goes_no_further(
        cluster: Deployment, workloads: dict[str, str]) -> None:
    """eventRecordQPS: -1 makes the kubelet exit at start. The first node to restart fails its
    gate, names itself with the kubelet's own words, puts its previous files back and is Ready
    again; it keeps the restart lock, marked failed, so no other kubelet restarts: those waiting their
    turn give up as soon as it failed (not at their deadline) and put their files back too. The engine
    keeps the old state after a failed update, and so do the hosts: going back to the old settings is
    a no-op that is true."""
    since = time.time() - 1
    before = {h["name"]: cluster.lab.run(h["name"], "cat /etc/kubernetes/node/kubelet.yaml").stdout for h in cluster.lab.hosts}
    kube = cluster.config["kubernetes"]
    broken = {**cluster.config, "kubernetes": {**kube, "kubelet": {
        **kube.get("kubelet", {}), "healthTimeoutSeconds": 20, "extraConfig": {"eventRecordQPS": -1}}}}
    started = time.monotonic()
    with pytest.raises(DeploymentError) as failed:
        cluster.up(broken)
    took = time.monotonic() - started
    print(f"\nthe refused setting's run: {took:.1f}s")
    begun = {h["name"]: kubelet_restarts_begun(cluster.lab, h["name"], since) for h in cluster.lab.hosts}
    assert sorted(begun.values()) == [0, 0, 1], begun
    first = next(name for name, n in begun.items() if n)
    failures = failed.value.failures
    said = failures[f"node-{first}-kubelet"]
    assert f"{first}: kubelet.service is not healthy 20s after its restart" in said, said
    assert "eventrecordqps" in said.lower() and "runs with its previous files again and is healthy" in said, said
    for other in (n for n in begun if n != first):
        assert "holds the rolling-restart lock" in failures[f"node-{other}-kubelet"], failures
        assert f"its restart on {first} failed while this one waited its turn" in failures[f"node-{other}-kubelet"], failures
    # the first one failed 20 s in (and rolled back); the others' deadline was 3 nodes x (20 + 30) s
    assert took < 100, took
    for h in cluster.lab.hosts:
        assert cluster.lab.run(h["name"], "cat /etc/kubernetes/node/kubelet.yaml").stdout == before[h["name"]]
        assert cluster.lab.run(h["name"], "find /etc /usr/local/lib/kube-hardway -name '*.kube-hardway-prev'").stdout == ""
    assert all(ready(n) for n in nodes(cluster).values())
    pods = probes(cluster)
    assert {n: p["metadata"]["uid"] for n, p in pods.items()} == workloads
    assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in pods.values())
    assert cluster.up().ops == []


def test_a_node_removed_from_the_stack_is_drained_deleted_and_can_come_back(cluster: Deployment, workloads: dict[str, str]) -> None:
    """The last machine leaves the stack's nodes and stays an etcd member: it is drained (its bare
    pod goes, DaemonSet pods are left to the DaemonSet), its Node object deleted, its kubelet,
    kube-proxy, cri-dockerd, Docker and flannel removed, etcd untouched. Back in the stack, it joins
    again through TLS bootstrap, with the bootstrap token's expiration renewed."""
    expires = bootstrap_token(cluster)["expiration"]
    time.sleep(1)                                 # (the expiration has whole seconds)
    gone = cluster.lab.hosts[-1]
    hosts = [{**h, "roles": [r for r in h["roles"] if r != "node"]} if h["name"] == gone["name"] else h
             for h in cluster.config["hosts"]]
    result = cluster.up({**cluster.config, "hosts": hosts})
    print(f"\nnode removed: {result.seconds:.1f}s")
    assert "node-set-record" in [op.name for op in result.ops]
    assert not [op.name for op in result.ops if op.host == gone["address"] and "etcd" in op.name]
    assert sorted(nodes(cluster)) == sorted(h["name"] for h in cluster.lab.hosts if h != gone)
    assert cluster.kubectl("get", "pod", "kh-web", check=False).returncode != 0    # drained with --force
    left = trace(cluster.lab, gone["name"])
    assert (left["/usr/local/bin/kubelet"], left["/var/lib/kubelet"], left["pod-containers"]) == ("absent", "absent", "0")
    assert cluster.lab.run(gone["name"], "systemctl is-active etcd").stdout.strip() == "active"

    result = cluster.up()
    print(f"node back: {result.seconds:.1f}s")
    found = nodes(cluster)
    assert sorted(found) == sorted(h["name"] for h in cluster.lab.hosts) and all(ready(n) for n in found.values())
    assert bootstrap_token(cluster)["expiration"] > expires
    cluster.kubectl("rollout", "status", "daemonset/kh-probe", "--timeout=120s")
    assert fetch(cluster, probes(cluster)[cluster.lab.hosts[0]["name"]]["metadata"]["name"],
                 f"http://{probes(cluster)[gone['name']]['status']['podIP']}:8080") == gone["name"]
    assert cluster.up().ops == []


# replicas that must keep `min` serving while nodes are drained, one per node at most; each leaves
# its Service's endpoints before it stops serving (preStop), as a production web server would
def kept_serving(replicas: int, min_available: int) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: kh-kept, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: kh-kept}}}}
  template:
    metadata: {{labels: {{app: kh-kept}}}}
    spec:
      tolerations: [{{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}}]
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {{matchLabels: {{app: kh-kept}}}}
      terminationGracePeriodSeconds: 10
      containers:
      - name: web
        image: {IMAGE}
        command: [sh, -c, 'mkdir -p /www && echo kh-kept > /www/index.html && exec httpd -f -p 8080 -h /www']
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
        lifecycle: {{preStop: {{exec: {{command: [sleep, '3']}}}}}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: kh-kept, namespace: default}}
spec:
  minAvailable: {min_available}
  selector: {{matchLabels: {{app: kh-kept}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: kh-kept, namespace: default}}
spec:
  selector: {{app: kh-kept}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def drain_spans(lab: Lab, master: str, since: float) -> dict[str, tuple[int, int]]:
    """Each node's drain, as the first master logged it: node -> (begin, uncordoned), microseconds."""
    out = lab.run(master, f"journalctl -t kube-hardway --since @{int(since)} -o json --no-pager").stdout
    spans: dict[str, list[int]] = {}
    for event in (json.loads(line) for line in out.splitlines() if line.strip()):
        words = event["MESSAGE"].split()
        if words[0] == "drain" and words[-1] in ("begin", "uncordoned"):
            spans.setdefault(words[1], []).append(int(event["__REALTIME_TIMESTAMP"]))
    assert all(len(times) == 2 for times in spans.values()), out
    return {node: (times[0], times[1]) for node, times in spans.items()}


def test_a_version_change_goes_control_plane_first_then_drains_one_node_at_a_time(cluster: Deployment) -> None:
    """The lab bundle's binaries relabelled (versions.kubernetes 1.24.0-alpha.1 -> 1.24.0-alpha.0 ->
    back): each run restarts the API servers first, one at a time, then drains each node from the
    first master (cordon, evictions that respect the PodDisruptionBudget), restarts its kubelet and
    kube-proxy, waits for it Ready and uncordons it, one node at a time; a Deployment with
    `minAvailable: 1` answers through its Service the whole time. A version that skips a minor is
    refused by the preflight on every node before anything changes; a drain that a budget blocks
    gives its node back and stops the run, and the next run (the budget fixed) converges."""
    lab, master = cluster.lab, cluster.lab.hosts[0]["name"]
    head = "head -n 1 /etc/systemd/system/kubelet.service"
    before = {h["name"]: lab.run(h["name"], head).stdout for h in lab.hosts}

    def at(version: str) -> dict[str, Any]:
        return {**cluster.config, "versions": {**cluster.config.get("versions", {}), "kubernetes": version}}

    def kept_pods() -> list[str]:
        return sorted(cluster.kubectl("get", "pods", "-l", "app=kh-kept", "-o",
                                      "jsonpath={.items[*].metadata.uid}").stdout.split())
    with pytest.raises(DeploymentError) as refused:
        cluster.up(at("1.26.0"))
    said = {name: why for name, why in refused.value.failures.items() if not why.startswith("not started")}
    assert sorted(said) == sorted(f"preflight-{h['name']}" for h in lab.hosts), refused.value.failures
    assert all("versions.kubernetes: 1.26.0 skips a minor version" in why for why in said.values())
    assert {h["name"]: lab.run(h["name"], head).stdout for h in lab.hosts} == before

    # a pod no controller owns blocks a drain (kubectl refuses to delete it, and so does an upgrade):
    # the pulled image's pod goes (the image stays until destroy)
    cluster.kubectl("delete", "pod", "kh-pulled", "--ignore-not-found", "--wait=true")
    # a budget that allows no eviction, a pod on every node: the first drain cannot finish; it gives
    # its node back, the drains that waited their turn stop, no node changes, the lock is free
    cluster.kubectl("apply", "-f", "-", stdin=kept_serving(3, 3))
    cluster.kubectl("rollout", "status", "deployment/kh-kept", "--timeout=120s")
    pods = kept_pods()
    blocked = {**at("1.24.0-alpha.0"), "kubernetes": {**cluster.config.get("kubernetes", {}), "drain": {"timeoutSeconds": 10}}}
    with pytest.raises(DeploymentError) as failed:
        cluster.up(blocked)
    said = {name: why for name, why in failed.value.failures.items() if not why.startswith("not started")}
    assert sorted(said) == sorted(f"node-{h['name']}-drain" for h in lab.hosts), failed.value.failures
    [first] = [name for name, why in said.items() if "kubernetes.drain.timeoutSeconds" in why]
    assert "disruption budget" in said[first], said[first]
    node = first.removeprefix("node-").removesuffix("-drain")
    assert all(f"the drain of {node} failed while it waited its turn" in why for name, why in said.items() if name != first), said
    assert {h["name"]: lab.run(h["name"], head).stdout for h in lab.hosts} == before
    found = nodes(cluster)
    assert not [n for n, x in found.items() if x["spec"].get("unschedulable") or "kube-hardway/drained-for" in
                x["metadata"].get("annotations", {})], found
    assert lab.etcdctl("get", "kube-hardway/rolling-restart/kubelet.service").stdout == ""
    assert kept_pods() == pods

    cluster.kubectl("apply", "-f", "-", stdin=kept_serving(2, 1))
    cluster.kubectl("rollout", "status", "deployment/kh-kept", "--timeout=120s")
    ip = cluster.kubectl("get", "service", "kh-kept", "-o", "jsonpath={.spec.clusterIP}").stdout
    for version in ("1.24.0-alpha.0", "1.24.0-alpha.1"):
        since = time.time() - 1
        answers: list[str] = []
        stop = threading.Event()

        def ask(stop: threading.Event, answers: list[str]) -> None:
            while not stop.is_set():
                done = lab.run(master, f"curl -sS --max-time 2 http://{ip}/ 2>&1", check=False)
                answers.append(done.stdout.strip())
                time.sleep(0.3)

        asker = threading.Thread(target=ask, args=(stop, answers))
        asker.start()
        try:
            result = cluster.up(at(version))
        finally:
            stop.set()
            asker.join()
        cluster.config = at(version)
        spans = drain_spans(lab, master, since)
        print(f"\nKubernetes {version}: {result.seconds:.1f}s, {len(result.ops)} remote operations; "
              f"drains {[(n, round((e - b) / 1e6, 1)) for n, (b, e) in sorted(spans.items(), key=lambda s: s[1])]}; "
              f"{len(answers)} answers through the Service")
        assert sorted(spans) == sorted(h["name"] for h in lab.hosts)
        ordered = sorted(spans.values())
        for (_, end), (begin, _) in itertools.pairwise(ordered):
            assert end <= begin, f"two nodes were drained at once: {spans}"
        apiservers = [span for m in cluster.spec.masters for span in restart_spans(lab, m.name, "kube-apiserver.service", since)]
        # (the blocked run restarted them onto 1.24.0-alpha.0 already: the control plane goes first)
        assert len(apiservers) == (0 if version == "1.24.0-alpha.0" else len(cluster.spec.masters)), apiservers
        assert all(e <= ordered[0][0] for _, e in apiservers), \
            f"a node was drained before every API server ran the new version: {apiservers} {spans}"
        for h in lab.hosts:
            [(begin, end)] = restart_spans(lab, h["name"], "kubelet.service", since)
            assert spans[h["name"]][0] <= begin and end <= spans[h["name"]][1], f"{h['name']}'s kubelet restarted outside its drain"
            assert version in lab.run(h["name"], head).stdout
        assert answers and all(a == "kh-kept" for a in answers), [a for a in answers if a != "kh-kept"][:5]
        found = nodes(cluster)
        assert all(ready(n) and not n["spec"].get("unschedulable") for n in found.values())
        assert not [n for n, node in found.items() if "kube-hardway/drained-for" in node["metadata"].get("annotations", {})]
        assert lab.etcdctl("get", "kube-hardway/rolling-restart/kubelet.service").stdout == ""
        assert cluster.up().ops == []
    cluster.kubectl("delete", "-f", "-", stdin=kept_serving(2, 1))


def test_a_master_that_steps_down_and_comes_back_keeps_every_node_ready(cluster: Deployment, workloads: dict[str, str]) -> None:
    """The second master stops being one: its API server, controller-manager and scheduler go, and
    so do the workers' local proxies (one master left: the kubelets, rolling, and kube-proxies are
    pointed at it first, their bootstrapped kubeconfigs included); it loses the control-plane taint
    and label. Back as a master, the proxies return and it is tainted again."""
    second = cluster.lab.hosts[1]
    assert [h["name"] for h in cluster.config["hosts"] if "master" in h["roles"]] == [cluster.lab.hosts[0]["name"], second["name"]]
    hosts = [{**h, "roles": [r for r in h["roles"] if r != "master"]} if h["name"] == second["name"] else h
             for h in cluster.config["hosts"]]
    result = cluster.up({**cluster.config, "hosts": hosts})
    print(f"\nmaster stepped down: {result.seconds:.1f}s")
    deleted = {op.name for op in result.executed("delete")}
    assert {f"control-plane-apiserver-{second['name']}", *(f"node-{h['name']}-apiserver-proxy" for h in cluster.lab.hosts)} <= deleted
    assert cluster.lab.run(second["name"], "systemctl is-active kube-apiserver", check=False).stdout.strip() != "active"
    found = nodes(cluster)
    assert sorted(found) == sorted(h["name"] for h in cluster.lab.hosts) and all(ready(n) for n in found.values())
    assert_roles(found, {cluster.lab.hosts[0]["name"]})
    for h in cluster.lab.hosts:
        kubelet = cluster.lab.run(h["name"], "grep server: /etc/kubernetes/node/kubelet.kubeconfig").stdout
        assert f"https://{cluster.lab.hosts[0]['address']}:6443" in kubelet, (h["name"], kubelet)
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"

    result = cluster.up()
    print(f"master back: {result.seconds:.1f}s")
    found = nodes(cluster)
    assert all(ready(n) for n in found.values())
    assert_roles(found, {cluster.lab.hosts[0]["name"], second["name"]})
    for h in cluster.lab.hosts:
        assert "https://127.0.0.1:" in cluster.lab.run(h["name"], "grep server: /etc/kubernetes/node/kubelet.kubeconfig").stdout
    assert cluster.lab.run(second["name"], "systemctl is-active kube-apiserver").stdout.strip() == "active"
    cluster.kubectl("rollout", "status", "daemonset/kh-probe", "--timeout=120s")
    assert cluster.up().ops == []


def test_a_kubelet_replaced_after_the_token_expired_is_told_why_and_a_run_that_renews_it_brings_it_back(
        cluster: Deployment, workloads: dict[str, str]) -> None:
    """`--replace` of a node's kubelet deletes it first (binaries and certificates with it): alone,
    it fails at once naming the copy (of the node's releases) to replace with it, and no other node
    is touched. With the copy, past the bootstrap token's expiration the API server refuses the
    new kubelet: the run fails on that node naming kubernetes.bootstrapTokenTtlHours as soon as
    the node's gate has seen the token refused twice, 5 s apart (not after its whole timeout). A run that
    changes the TTL renews the token and creates the kubelet again (the engine's pending
    replacement): Ready."""
    node = cluster.lab.hosts[-1]["name"]
    kubelet, copy = f"node-{node}-kubelet", f"node-releases-{node}"     # the node's one copy of its releases
    token = bootstrap_token(cluster)
    cluster.kubectl("-n", "kube-system", "patch", "secret", f"bootstrap-token-{token['token-id']}", "--type=merge",
            "-p", json.dumps({"stringData": {"expiration": "2020-01-01T00:00:00Z"}}))
    with pytest.raises(DeploymentError) as failed:
        cluster.up(replace=(kubelet,))
    said = failed.value.failures[kubelet]
    assert f"{node}: kubernetes " in said and "is not installed" in said and f"--replace <URN of {copy}>" in said, said
    assert list(failed.value.failures) == [kubelet]

    started = time.monotonic()
    with pytest.raises(DeploymentError) as failed:
        cluster.up(replace=(copy, kubelet))
    print(f"\nrefused kubelet: the run failed after {time.monotonic() - started:.1f}s")
    said = failed.value.failures[kubelet]
    assert f"{node}: the API server refuses the kubelet's bootstrap token (401)" in said, said
    assert "will not become so by waiting" in said, said              # not the gate's whole timeout
    assert "kubernetes.bootstrapTokenTtlHours" in said, said
    assert list(failed.value.failures) == [kubelet]
    assert cluster.lab.run(node, "ls /var/lib/kubelet/pki/kubelet-client-current.pem", check=False).returncode != 0

    kube = cluster.config["kubernetes"]
    renewed = {**cluster.config, "kubernetes": {**kube, "bootstrapTokenTtlHours": 48}}
    result = cluster.up(renewed)
    print(f"\nkubelet back with a renewed token: {result.seconds:.1f}s")
    assert {op.name for op in result.ops} == {"cluster-objects-bootstrap", kubelet}
    assert all(ready(n) for n in nodes(cluster).values())
    expires = bootstrap_token(cluster)["expiration"]
    left = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(hours=47) < left <= timedelta(hours=48), expires
    cluster.kubectl("rollout", "status", "daemonset/kh-probe", "--timeout=120s")
    assert [op.name for op in cluster.up().ops] == ["cluster-objects-bootstrap"]
    assert cluster.up().ops == []


def test_a_snapshot_restores_the_cluster_through_up(cluster: Deployment, workloads: dict[str, str], tmp_path: Path) -> None:
    """A snapshot (etcd-backup on the first member, copied here) -> a ConfigMap deleted, another
    made -> `etcd.restoreFrom` and `up`: every member rebuilt from the snapshot with a new cluster
    ID; the first ConfigMap is back, the second gone, every node Ready, DNS answers. The same file
    again restores nothing; taking it out of the stack removes what the members held before."""
    import lab as the_lab

    lab = cluster.lab
    members = [h["name"] for h in cluster.config["hosts"] if "etcd" in h["roles"]]
    host = members[0]
    cluster.kubectl("create", "configmap", "kh-before-snapshot", "--from-literal=at=snapshot")
    lab.run(host, "systemctl start etcd-backup.service")
    newest = lab.run(host, "ls -1 /var/lib/etcd-backup/etcd-snapshot-*.db | sort | tail -n 1").stdout.strip()
    snapshot = tmp_path / Path(newest).name
    snapshot.write_bytes(subprocess.run([*the_lab.ssh_command(host), f"cat {newest}"], capture_output=True,
                                        check=True, timeout=60).stdout)
    cluster.kubectl("delete", "configmap", "kh-before-snapshot")
    cluster.kubectl("create", "configmap", "kh-after-snapshot", "--from-literal=at=later")
    ids_before = {json.loads(lab.etcdctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]["header"]["cluster_id"]}
    restored = json.loads(json.dumps(cluster.config))
    restored["etcd"] = {**restored.get("etcd", {}), "restoreFrom": str(snapshot)}
    result = cluster.up(restored)
    print(f"\nrestore: {result.seconds:.1f}s, {len(result.ops)} remote operations")
    status = json.loads(lab.etcdctl("endpoint", "status", "-w", "json").stdout)
    assert {m["Status"]["header"]["cluster_id"] for m in status} != ids_before, "the restored cluster kept its ID"
    deadline = time.time() + 120
    while cluster.kubectl("get", "--raw", "/readyz", check=False).stdout.strip() != "ok" and time.time() < deadline:
        time.sleep(2)
    assert cluster.kubectl("get", "configmap", "kh-before-snapshot", "-o", "jsonpath={.data.at}").stdout == "snapshot"
    gone = cluster.kubectl("get", "configmap", "kh-after-snapshot", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout + gone.stderr
    deadline = time.time() + 180
    while not all(ready(n) for n in nodes(cluster).values()) and time.time() < deadline:
        time.sleep(2)
    assert sorted(n for n, node in nodes(cluster).items() if ready(node)) == sorted(h["name"] for h in lab.hosts)
    pod = probes(cluster)[lab.hosts[0]["name"]]["metadata"]["name"]
    deadline = time.time() + 60
    while "10.254.0.1" not in (answer := in_pod(cluster, pod, f"nslookup kubernetes.default.svc.{DOMAIN}")).stdout \
            and time.time() < deadline:
        time.sleep(2)
    assert "10.254.0.1" in answer.stdout, answer.stdout + answer.stderr
    assert cluster.up(restored).ops == [], "the same snapshot was restored twice"
    kept = {m: lab.run(m, "ls /var/lib/etcd").stdout.split() for m in members}
    assert all(any(n.startswith("member.before-restore-") for n in names) for names in kept.values()), kept
    dropped = cluster.up()
    # (the gate checks the cluster once more: the restore was among what it waited for)
    assert dropped.ops and all(op.action == "delete" or op.name == "etcd-health" for op in dropped.ops), \
        [(o.action, o.name) for o in dropped.ops]
    left = {m: lab.run(m, "ls /var/lib/etcd").stdout.split() for m in members}
    assert all(names == ["member"] for names in left.values()), left


def test_destroy_returns_every_machine_to_its_state_before_the_deploy(cluster: Deployment) -> None:
    cluster.lab.engine.destroy()
    assert PULLED not in tags(cluster.lab, cluster.lab.hosts[1]["name"])      # pulled by the kubelet: gone with it
    for h in cluster.lab.hosts:
        # (the lab image has Debian's /var/lib/etcd: the data dir the members used was there first)
        assert cluster.before[h["name"]]["etcd-data-dir"] != "absent"
        assert trace(cluster.lab, h["name"]) == cluster.before[h["name"]], f"{h['name']} differs after destroy"
