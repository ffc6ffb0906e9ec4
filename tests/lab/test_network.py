"""FlannelNetwork and DockerNode on three real machines, as an operator lives them: deploy, prove
containers reach each other across hosts, re-run, change daemon.json, change the backend, destroy.
Each test builds on the state the previous one left (the module is one deployment's life)."""

from __future__ import annotations

import copy
import itertools
import json
import time
from typing import Any

import pytest

from components.registry import mirrors
from components.templates import render
from tests.lab.conftest import Lab
from tests.lab.deployment import Deployment, deploy, restart_spans

pytestmark = pytest.mark.lab

IMAGE = "kube-hardway-lab/busybox:1.35"        # preloaded from ../shared/lab-artifacts/busybox-1.35.tar
SOMEONE_ELSES_RULE = "FORWARD -s 198.51.100.7/32 -m comment --comment not-kube-hardway -j DROP"


@pytest.fixture(scope="module")
def network(lab3: Lab, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The lab stack deployed on the lab machines, each with a FORWARD rule of someone else's that
    Docker and flannel must leave alone: this module's deployment."""
    for h in lab3.hosts:
        lab3.run(h["name"], f"iptables -w -A {SOMEONE_ELSES_RULE}")
    return deploy(lab3, tmp_path_factory.mktemp("network"), trace)


def changed(deployment: Deployment, /, **changes: Any) -> dict[str, Any]:
    """The current config with `changes` merged into its sections."""
    cfg = copy.deepcopy(deployment.config)
    for section, values in changes.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def trace(lab: Lab, host: str) -> dict[str, str]:
    """What a machine shows of flannel and Docker (compared before deploy and after destroy)."""
    probe = ("for p in /etc/systemd/system/flanneld.service /etc/systemd/system/docker.service "
             "/etc/systemd/system/docker.socket /usr/local/bin/flanneld /usr/local/bin/mk-docker-opts.sh /etc/flannel "
             "/run/flannel /etc/docker/daemon.json /var/lib/kube-hardway /usr/local/lib/kube-hardway "
             "/etc/sysctl.d/90-kube-hardway-docker.conf; do [ -e $p ] && echo $p=present || echo $p=absent; done; "
             "for d in flannel.1 flannel0; do ip link show $d >/dev/null 2>&1 && echo $d=present || echo $d=absent; done; "
             "echo docker=$(systemctl is-active docker)/$(systemctl is-enabled docker); "
             "echo docker-unit=$(systemctl show -p FragmentPath --value docker); "
             "echo forward=$(iptables -w -S FORWARD | sed -n 's/^-P FORWARD //p'); "
             "echo flannel-rules=$(iptables-save | grep -c flanneld || true); "
             "echo someone-else=$(iptables -w -S FORWARD | grep -c not-kube-hardway || true); "
             "echo images=$(docker images -q | wc -l)")
    return dict(line.split("=", 1) for line in lab.run(host, probe).stdout.splitlines())


def subnet_env(lab: Lab, host: str) -> dict[str, str]:
    out = lab.run(host, "cat /run/flannel/subnet.env").stdout
    return dict(line.split("=", 1) for line in out.split())


def docker0(lab: Lab, host: str) -> str:
    return lab.run(host, "ip -4 -o addr show dev docker0 | awk '{print $4}'").stdout.strip()


def lease(network: Deployment, subnet: str) -> dict[str, Any]:
    prefix = network.spec.network.etcd_prefix
    net, length = subnet.split("/")
    parts = [int(x) for x in net.split(".")]
    value = int.from_bytes(bytes(parts), "big") & (0xFFFFFFFF << (32 - int(length))) & 0xFFFFFFFF
    key = f"{prefix}/subnets/{'.'.join(str(b) for b in value.to_bytes(4, 'big'))}-{length}"
    got = network.lab.etcdctl("get", key, "--print-value-only")
    assert got.returncode == 0 and got.stdout.strip(), f"no lease {key}: {got.stderr}"
    return json.loads(got.stdout)


def start_containers(lab: Lab) -> dict[str, str]:
    """A busybox container on every worker (replacing an old one); name -> container address."""
    addresses = {}
    for h in lab.hosts:
        lab.run(h["name"], f"docker rm -f kh-probe >/dev/null 2>&1; docker run -d --name kh-probe {IMAGE} sleep 3600")
        addresses[h["name"]] = lab.run(
            h["name"], "docker inspect -f '{{.NetworkSettings.IPAddress}}' kh-probe").stdout.strip()
    return addresses


def assert_containers_reach_each_other(lab: Lab) -> None:
    addresses = start_containers(lab)
    for src, dst in itertools.permutations(addresses, 2):
        ping = lab.run(src, f"docker exec kh-probe ping -c 2 -W 3 {addresses[dst]}", check=False)
        assert ping.returncode == 0, f"container on {src} cannot reach {dst}'s ({addresses[dst]}): {ping.stdout}{ping.stderr}"
    gateway = lab.info["gateway"]  # the admin side: only answers masqueraded traffic (it has no pod routes)
    for h in lab.hosts:
        ping = lab.run(h["name"], f"docker exec kh-probe ping -c 2 -W 3 {gateway}", check=False)
        assert ping.returncode == 0, f"container on {h['name']} cannot reach {gateway}: {ping.stdout}"


def test_deploy_puts_docker0_of_every_worker_on_its_flannel_lease(network: Deployment) -> None:
    result = network.first_up
    print(f"\ndeploy etcd+flannel+docker: {len(result.ops)} operations in {result.seconds:.1f}s, "
          f"SSH sessions per host {result.connections_per_host()}")
    want = render("flannel/net-conf.json.j2", net=network.spec.network).strip()
    got = network.lab.etcdctl("get", f"{network.spec.network.etcd_prefix}/config", "--print-value-only")
    assert got.stdout.strip() == want
    subnets = set()
    for h in network.lab.hosts:
        env = subnet_env(network.lab, h["name"])
        assert env["FLANNEL_NETWORK"] == network.spec.network.pod_cidr
        held = lease(network, env["FLANNEL_SUBNET"])
        assert held["PublicIP"] == h["address"] and held["BackendType"] == "vxlan", held
        assert docker0(network.lab, h["name"]) == env["FLANNEL_SUBNET"]
        subnets.add(env["FLANNEL_SUBNET"])
        verify = network.lab.run(h["name"], "systemd-analyze verify /etc/systemd/system/flanneld.service "
                          "/etc/systemd/system/docker.service /etc/systemd/system/docker.socket 2>&1", check=False)
        assert verify.returncode == 0 and not verify.stdout.strip(), verify.stdout
    assert len(subnets) == len(network.lab.hosts)


def test_containers_on_different_hosts_reach_each_other_both_ways(network: Deployment) -> None:
    assert_containers_reach_each_other(network.lab)


def test_docker_runs_as_configured_and_keeps_forwarding_and_other_rules(network: Deployment) -> None:
    docker = network.spec.docker
    for h in network.lab.hosts:
        info = json.loads(network.lab.run(h["name"], "docker info --format '{{json .}}'").stdout)
        spec = network.spec
        cache = mirrors(tuple(x for x in spec.hosts if x.name in spec.registry.hosts), spec.registry)
        assert [m.rstrip("/") for m in info["RegistryConfig"]["Mirrors"]] == [*cache, *docker.registry_mirrors]
        assert info["DockerRootDir"] == docker.data_root and info["CgroupDriver"] == docker.cgroup_driver
        assert info["DefaultRuntime"] == "kh-lab-runc"
        hairpin = network.lab.run(h["name"], "cat /sys/class/net/docker0/brif/*/hairpin_mode").stdout.split()
        assert hairpin and set(hairpin) == {"1"}, "containers started after deploy get hairpin mode too"
    host = network.lab.hosts[1]["name"]
    network.lab.run(host, "systemctl restart docker")
    after = trace(network.lab, host)
    assert after["forward"] == "ACCEPT" and after["someone-else"] == "1", after


def test_noop_rerun_runs_no_command(network: Deployment) -> None:
    assert network.up().ops == []


def test_a_daemon_json_change_restarts_docker_one_worker_at_a_time(network: Deployment) -> None:
    pids = {h["name"]: network.lab.run(h["name"], "systemctl show -p MainPID --value docker").stdout.strip() for h in network.lab.hosts}
    since = time.time() - 1
    network.config = changed(network, docker={"maxConcurrentDownloads": 5})
    result = network.up()
    print(f"\ndaemon.json change: {result.seconds:.1f}s")
    spans = []
    for h in network.lab.hosts:
        assert '"max-concurrent-downloads": 5' in network.lab.run(h["name"], "cat /etc/docker/daemon.json").stdout
        assert network.lab.run(h["name"], "systemctl show -p MainPID --value docker").stdout.strip() != pids[h["name"]]
        mine = restart_spans(network.lab, h["name"], "docker.service", since)
        assert len(mine) == 1, mine
        spans += mine
    spans.sort()
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two Docker restarts overlapped: {spans}"
    assert_containers_reach_each_other(network.lab)


@pytest.mark.parametrize("backend", ["host-gw", "udp"])
def test_a_backend_change_converges_with_traffic_working_again(network: Deployment, backend: str) -> None:
    network.config = changed(network, network={"backend": backend})
    result = network.up()
    print(f"\nbackend -> {backend}: {result.seconds:.1f}s")
    device = {"vxlan": "flannel.1", "udp": "flannel0", "host-gw": None}[backend]
    for h in network.lab.hosts:
        env = subnet_env(network.lab, h["name"])
        # flannel's udp backend records no BackendType in its leases
        assert lease(network, env["FLANNEL_SUBNET"]).get("BackendType", "udp") == backend
        assert docker0(network.lab, h["name"]) == env["FLANNEL_SUBNET"]
        state = trace(network.lab, h["name"])
        for dev in ("flannel.1", "flannel0"):
            assert state[dev] == ("present" if dev == device else "absent"), (h["name"], state)
    assert_containers_reach_each_other(network.lab)
    assert network.up().ops == []


def test_destroy_leaves_nothing_of_ours(network: Deployment) -> None:
    for h in network.lab.hosts:
        network.lab.run(h["name"], "docker rm -f kh-probe >/dev/null 2>&1 || true")
    network.lab.engine.destroy()
    for h in network.lab.hosts:
        after = trace(network.lab, h["name"])
        assert after == network.before[h["name"]], f"{h['name']} differs after destroy"
        network.lab.run(h["name"], f"iptables -w -D {SOMEONE_ELSES_RULE}")
