"""The private registry and the pull-through cache on three real machines: deploy, push with the
generated login (and be refused without it), pull through the cache from a registry on the lab
bridge, keep serving with that upstream stopped, re-run, destroy. The module is one deployment's
life; the upstream is a registry this test starts on the host's bridge address (never the internet).
"""

from __future__ import annotations

import json
import statistics
import subprocess
from typing import Any

import pytest

from components.layout import KUBELET_PULL_CREDENTIALS
from components.layout import REGISTRY_UNITS as UNITS
from lab.common import MACHINES_DIR
from lab.stackfile import UPSTREAM_PORT
from tests.lab.conftest import Lab
from tests.lab.deployment import Deployment, deploy

pytestmark = pytest.mark.lab

SEEDED = "kube-hardway-lab/busybox:1.35"            # lab stack: registry.seedImages [busybox-1.35.tar]


@pytest.fixture(scope="module")
def deployment(lab3: Lab, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The lab stack deployed on the lab machines: this module's deployment."""
    return deploy(lab3, tmp_path_factory.mktemp("registry"))


def registry_host(lab: Lab) -> dict[str, Any]:
    return next(h for h in lab.hosts if h["name"] == lab.config["registry"]["hosts"][0])


def private(lab: Lab) -> str:
    """Where nodes pull (read-only, the pull login)."""
    return f"{registry_host(lab)['address']}:{lab.config['registry'].get('private', {}).get('port', 5000)}"


def push_endpoint(lab: Lab) -> str:
    """Where the team pushes (the push login of the stack output)."""
    return f"{registry_host(lab)['address']}:{lab.config['registry'].get('private', {}).get('pushPort', 5002)}"


def ca_file(lab: Lab) -> str:
    return lab.pem_file("pki-kubernetes-ca-cert", "certPem", "kubernetes-ca.crt")


def curl(lab: Lab, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", ca_file(lab), *args, url],
                          capture_output=True, text=True)


def docker_login_config(deployment: Deployment, host: str) -> str:
    """A throwaway docker client config on `host` holding the generated push login."""
    lab, out = deployment.lab, deployment.first_up.outputs["registry"]
    auth = subprocess.run(["base64", "-w0"], input=f"{out['username']}:{out['password']}", capture_output=True,
                          text=True).stdout
    path = "/root/kh-registry-test"
    lab.run(host, f"mkdir -p -m 0700 {path} && printf '%s' '{{\"auths\":{{\"{push_endpoint(lab)}\":{{\"auth\":\"{auth}\"}}}}}}' "
                  f"> {path}/config.json && chmod 0600 {path}/config.json")
    return path


def node_login_config(lab: Lab, host: str) -> str:
    """A docker client config on `host` with what the node itself holds: the kubelet's pull login,
    for the pull endpoint and (as a worker's root could try) for the push endpoint too."""
    auth = json.loads(lab.run(host, f"cat {KUBELET_PULL_CREDENTIALS}").stdout)["auths"][private(lab)]["auth"]
    path = "/root/kh-node-login"
    lab.run(host, f"mkdir -p -m 0700 {path} && printf '%s' '{{\"auths\":{{\"{private(lab)}\":{{\"auth\":\"{auth}\"}},"
                  f"\"{push_endpoint(lab)}\":{{\"auth\":\"{auth}\"}}}}}}' > {path}/config.json && chmod 0600 {path}/config.json")
    return path


def test_deploy_runs_both_registries_over_tls_and_every_docker_trusts_them(deployment: Deployment) -> None:
    assert deployment.config["registry"]["hosts"] == ["kh-lab-1"], "the lab stack puts the registry on kh-lab-1"
    result = deployment.first_up
    steps = {op.name: round(op.seconds, 1) for op in result.ops if op.name.startswith(("registry-", "release-registry"))}
    print(f"\ndeploy with the registry: {len(result.ops)} operations in {result.seconds:.1f}s; the registry's own "
          f"steps (the cache starts after the private one; the seed after Docker): {steps}")
    reg = registry_host(deployment.lab)
    for role, unit in UNITS.items():
        assert deployment.lab.run(reg["name"], f"systemctl is-active {unit}").stdout.strip() == "active", role
    # Debian's own docker-registry (in the lab image, enabled, on :5000) stood aside
    assert deployment.lab.run(reg["name"], "systemctl is-active docker-registry", check=False).stdout.strip() == "inactive"
    # from the host: TLS with the cluster CA; the private one wants a login, the cache does not
    assert curl(deployment.lab, f"https://{private(deployment.lab)}/v2/", "-o", "/dev/null", "-w", "%{http_code}").stdout == "401"
    cache = deployment.first_up.outputs["registry"]["cacheMirrors"][0]
    assert curl(deployment.lab, f"{cache}/v2/", "-o", "/dev/null", "-w", "%{http_code}").stdout == "200"
    for h in deployment.lab.hosts:
        info = json.loads(deployment.lab.run(h["name"], "docker info --format '{{json .}}'").stdout)
        assert info["RegistryConfig"]["Mirrors"][0].rstrip("/") == cache, "the cache is the first mirror"
        insecure = set(info["RegistryConfig"]["InsecureRegistryCIDRs"]) - {"127.0.0.0/8", "::1/128"}
        assert insecure == set() and private(deployment.lab) not in info["RegistryConfig"]["IndexConfigs"], info["RegistryConfig"]
        deployment.lab.run(h["name"], f"test -s /etc/docker/certs.d/{private(deployment.lab)}/ca.crt")
        mode = deployment.lab.run(h["name"], f"stat -c %a {KUBELET_PULL_CREDENTIALS}").stdout.strip()
        assert mode == "600", f"{h['name']}: pull credentials are mode {mode}"


def test_the_seeded_image_is_in_the_private_registry(deployment: Deployment) -> None:
    out = deployment.first_up.outputs["registry"]
    assert (out["pushUrl"], out["pullUrl"]) == (push_endpoint(deployment.lab), private(deployment.lab))
    repo, tag = SEEDED.split(":")
    listed = curl(deployment.lab, f"https://{push_endpoint(deployment.lab)}/v2/{repo}/tags/list",
                  "-u", f"{out['username']}:{out['password']}")
    assert json.loads(listed.stdout)["tags"] == [tag], listed.stdout + listed.stderr
    # the push login is the team's: it does not open the nodes' read-only endpoint
    assert curl(deployment.lab, f"https://{private(deployment.lab)}/v2/", "-u", f"{out['username']}:{out['password']}",
                "-o", "/dev/null", "-w", "%{http_code}").stdout == "401"


def test_push_needs_the_generated_login(deployment: Deployment) -> None:
    host, lab = "kh-lab-2", deployment.lab
    target = f"{push_endpoint(lab)}/team/app:1"
    lab.run(host, f"docker tag {SEEDED} {target}")
    anonymous = lab.run(host, f"docker push {target} 2>&1", check=False)
    assert anonymous.returncode != 0 and "no basic auth credentials" in anonymous.stdout, anonymous.stdout
    config = docker_login_config(deployment, host)
    pushed = lab.run(host, f"docker --config {config} push {target} 2>&1", check=False)
    assert pushed.returncode == 0, pushed.stdout
    # and a worker that never had it pulls it from the nodes' endpoint with its own pull login
    lab.run("kh-lab-3", f"docker rmi {private(lab)}/team/app:1 2>/dev/null || true")
    lab.run("kh-lab-3", f"docker --config {node_login_config(lab, 'kh-lab-3')} pull {private(lab)}/team/app:1")


def test_a_nodes_login_pulls_but_cannot_push(deployment: Deployment) -> None:
    """Root on a worker holds the kubelet's registry login: it pulls, and no push with it lands —
    the push endpoint does not know it (401), the nodes' endpoint is read-only."""
    node, lab = "kh-lab-3", deployment.lab
    config = node_login_config(lab, node)
    lab.run(node, f"docker --config {config} pull {private(lab)}/{SEEDED}")
    for endpoint, refusal in ((push_endpoint(lab), "unauthorized"), (private(lab), "")):
        target = f"{endpoint}/{SEEDED.split(':')[0]}:overwritten"
        lab.run(node, f"docker tag {private(lab)}/{SEEDED} {target}")
        pushed = lab.run(node, f"docker --config {config} push {target} 2>&1", check=False)
        assert pushed.returncode != 0 and refusal in pushed.stdout.lower(), (endpoint, pushed.stdout)
        print(f"\npush with a node's login to {endpoint}: {pushed.stdout.strip().splitlines()[-1]}")
    out = deployment.first_up.outputs["registry"]
    tags = curl(lab, f"https://{push_endpoint(lab)}/v2/{SEEDED.split(':')[0]}/tags/list", "-u", f"{out['username']}:{out['password']}")
    assert "overwritten" not in tags.stdout, tags.stdout


def upstream_host(lab: Lab) -> dict[str, Any]:
    """The cache's upstream in the lab stack: Debian's docker-registry on the last machine."""
    upstream = lab.config["registry"]["cache"]["upstream"]
    assert upstream == f"http://{lab.hosts[-1]['address']}:{UPSTREAM_PORT}", upstream
    return lab.hosts[-1]


def pull_seconds(lab: Lab, host: str, image: str) -> float:
    out = lab.run(host, f"s=$(date +%s%N); docker pull -q {image} >/dev/null && echo $(( $(date +%s%N) - s ))").stdout
    return int(out.strip()) / 1e9


def test_workers_pull_through_the_cache_and_keep_pulling_with_upstream_stopped(deployment: Deployment) -> None:
    up = upstream_host(deployment.lab)["name"]
    # three images of 8 MiB of fresh random data each, in the upstream only (Docker allows plain
    # HTTP to localhost); Docker Hub-style names, since a mirror only serves docker.io names
    names = [f"kh-upstream/app{i}:1" for i in range(3)]
    for name in names:
        deployment.lab.run(up, f"docker rm -f kh-seed >/dev/null 2>&1; docker run --name kh-seed {SEEDED} "
                     f"sh -c 'head -c 8388608 /dev/urandom > /payload' && docker commit kh-seed {name} >/dev/null "
                     f"&& docker rm kh-seed >/dev/null && docker tag {name} localhost:{UPSTREAM_PORT}/{name} "
                     f"&& docker push -q localhost:{UPSTREAM_PORT}/{name} >/dev/null "
                     f"&& docker rmi {name} localhost:{UPSTREAM_PORT}/{name} >/dev/null")
    first, second = [h["name"] for h in deployment.lab.hosts if h["name"] != up][:2]
    cold = [pull_seconds(deployment.lab, first, n) for n in names]      # each a cache miss: fetched from upstream
    cached = MACHINES_DIR / registry_host(deployment.lab)["name"] / "root/var/lib/kube-hardway-registry/cache/docker/registry/v2"
    assert sorted(p.name for p in (cached / "repositories/kh-upstream").iterdir()) == ["app0", "app1", "app2"]
    deployment.lab.run(up, "systemctl stop docker-registry")
    try:
        warm = [pull_seconds(deployment.lab, second, n) for n in names]  # upstream stopped: only the cache has them
    finally:
        deployment.lab.run(up, "systemctl start docker-registry")
    print(f"\npull of an 8 MiB image through the cache: from upstream (cache miss) median "
          f"{statistics.median(cold):.2f}s {[round(c, 2) for c in cold]}; from the cache with upstream stopped, "
          f"median {statistics.median(warm):.2f}s {[round(w, 2) for w in warm]}")


def test_noop_rerun_runs_no_command(deployment: Deployment) -> None:
    assert deployment.up().ops == []


def test_destroy_keeps_only_the_stored_images(deployment: Deployment) -> None:
    deployment.lab.engine.destroy()
    reg = registry_host(deployment.lab)["name"]
    left = deployment.lab.run(reg, "ls /etc/kube-hardway-registry /etc/systemd/system/kube-hardway-registry* "
                         "/var/lib/kube-hardway 2>/dev/null; true").stdout.strip()
    assert left == "", left
    deployment.lab.run(reg, "test -d /var/lib/kube-hardway-registry/private/docker/registry/v2/repositories/kube-hardway-lab")
    assert deployment.lab.run(reg, "systemctl is-active docker-registry").stdout.strip() == "active", "Debian's registry is back"
    for h in deployment.lab.hosts:
        left = deployment.lab.run(h["name"], f"ls /etc/docker/certs.d/*/ca.crt {KUBELET_PULL_CREDENTIALS} 2>/dev/null; true").stdout
        assert left.strip() == "", f"{h['name']}: {left}"
    deployment.lab.run(reg, "rm -rf /var/lib/kube-hardway-registry")   # the next module starts from bare machines
