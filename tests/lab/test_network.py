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
from components.spec import parse_spec
from components.templates import render
from engine.runtime import stack_config
from tests.lab.conftest import Lab

pytestmark = pytest.mark.lab

IMAGE = "kube-hardway-lab/busybox:1.35"        # preloaded from ../shared/lab-artifacts/busybox-1.35.tar
SOMEONE_ELSES_RULE = "FORWARD -s 198.51.100.7/32 -m comment --comment not-kube-hardway -j DROP"
STATE: dict[str, Any] = {}


def config(**changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(STATE["config"])
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


def lease(lab: Lab, subnet: str) -> dict[str, Any]:
    prefix = STATE["spec"].network.etcd_prefix
    net, length = subnet.split("/")
    parts = [int(x) for x in net.split(".")]
    value = int.from_bytes(bytes(parts), "big") & (0xFFFFFFFF << (32 - int(length))) & 0xFFFFFFFF
    key = f"{prefix}/subnets/{'.'.join(str(b) for b in value.to_bytes(4, 'big'))}-{length}"
    got = lab.etcdctl("get", key, "--print-value-only")
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


def restart_spans(lab: Lab, host: str, unit: str, since: float) -> list[tuple[int, int]]:
    out = lab.run(host, f"journalctl -t kube-hardway --since @{int(since)} -o json --no-pager").stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    mine = [e for e in events if e["MESSAGE"].startswith(f"{unit} restart on {host}")]
    begins = [int(e["__REALTIME_TIMESTAMP"]) for e in mine if e["MESSAGE"].endswith(": begin")]
    ends = [int(e["__REALTIME_TIMESTAMP"]) for e in mine if e["MESSAGE"].endswith(": healthy")]
    assert len(begins) == len(ends), f"{host}: a {unit} restart never became healthy: {out}"
    return list(zip(begins, ends, strict=True))


def test_deploy_puts_docker0_of_every_worker_on_its_flannel_lease(lab3: Lab) -> None:
    STATE["config"] = stack_config("lab")
    STATE["spec"] = parse_spec(STATE["config"])
    for h in lab3.hosts:
        lab3.run(h["name"], f"iptables -w -A {SOMEONE_ELSES_RULE}")
        STATE.setdefault("before", {})[h["name"]] = trace(lab3, h["name"])
    result = lab3.engine.up(STATE["config"])
    print(f"\ndeploy etcd+flannel+docker: {len(result.ops)} operations in {result.seconds:.1f}s, "
          f"SSH sessions per host {result.connections_per_host()}")
    want = render("flannel/net-conf.json.j2", net=STATE["spec"].network).strip()
    got = lab3.etcdctl("get", f"{STATE['spec'].network.etcd_prefix}/config", "--print-value-only")
    assert got.stdout.strip() == want
    subnets = set()
    for h in lab3.hosts:
        env = subnet_env(lab3, h["name"])
        assert env["FLANNEL_NETWORK"] == STATE["spec"].network.pod_cidr
        held = lease(lab3, env["FLANNEL_SUBNET"])
        assert held["PublicIP"] == h["address"] and held["BackendType"] == "vxlan", held
        assert docker0(lab3, h["name"]) == env["FLANNEL_SUBNET"]
        subnets.add(env["FLANNEL_SUBNET"])
        verify = lab3.run(h["name"], "systemd-analyze verify /etc/systemd/system/flanneld.service "
                          "/etc/systemd/system/docker.service /etc/systemd/system/docker.socket 2>&1", check=False)
        assert verify.returncode == 0 and not verify.stdout.strip(), verify.stdout
    assert len(subnets) == len(lab3.hosts)


def test_containers_on_different_hosts_reach_each_other_both_ways(lab3: Lab) -> None:
    assert_containers_reach_each_other(lab3)


def test_docker_runs_as_configured_and_keeps_forwarding_and_other_rules(lab3: Lab) -> None:
    docker = STATE["spec"].docker
    for h in lab3.hosts:
        info = json.loads(lab3.run(h["name"], "docker info --format '{{json .}}'").stdout)
        spec = STATE["spec"]
        cache = mirrors(tuple(x for x in spec.hosts if x.name in spec.registry.hosts), spec.registry)
        assert [m.rstrip("/") for m in info["RegistryConfig"]["Mirrors"]] == [*cache, *docker.registry_mirrors]
        assert info["DockerRootDir"] == docker.data_root and info["CgroupDriver"] == docker.cgroup_driver
        assert info["DefaultRuntime"] == "kh-lab-runc"
        hairpin = lab3.run(h["name"], "cat /sys/class/net/docker0/brif/*/hairpin_mode").stdout.split()
        assert hairpin and set(hairpin) == {"1"}, "containers started after deploy get hairpin mode too"
    host = lab3.hosts[1]["name"]
    lab3.run(host, "systemctl restart docker")
    after = trace(lab3, host)
    assert after["forward"] == "ACCEPT" and after["someone-else"] == "1", after


def test_noop_rerun_runs_no_command(lab3: Lab) -> None:
    assert lab3.engine.up(STATE["config"]).ops == []


def test_a_daemon_json_change_restarts_docker_one_worker_at_a_time(lab3: Lab) -> None:
    pids = {h["name"]: lab3.run(h["name"], "systemctl show -p MainPID --value docker").stdout.strip() for h in lab3.hosts}
    since = time.time() - 1
    STATE["config"] = config(docker={"maxConcurrentDownloads": 5})
    result = lab3.engine.up(STATE["config"])
    print(f"\ndaemon.json change: {result.seconds:.1f}s")
    spans = []
    for h in lab3.hosts:
        assert '"max-concurrent-downloads": 5' in lab3.run(h["name"], "cat /etc/docker/daemon.json").stdout
        assert lab3.run(h["name"], "systemctl show -p MainPID --value docker").stdout.strip() != pids[h["name"]]
        mine = restart_spans(lab3, h["name"], "docker.service", since)
        assert len(mine) == 1, mine
        spans += mine
    spans.sort()
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert end <= begin, f"two Docker restarts overlapped: {spans}"
    assert_containers_reach_each_other(lab3)


@pytest.mark.parametrize("backend", ["host-gw", "udp"])
def test_a_backend_change_converges_with_traffic_working_again(lab3: Lab, backend: str) -> None:
    STATE["config"] = config(network={"backend": backend})
    result = lab3.engine.up(STATE["config"])
    print(f"\nbackend -> {backend}: {result.seconds:.1f}s")
    device = {"vxlan": "flannel.1", "udp": "flannel0", "host-gw": None}[backend]
    for h in lab3.hosts:
        env = subnet_env(lab3, h["name"])
        # flannel's udp backend records no BackendType in its leases
        assert lease(lab3, env["FLANNEL_SUBNET"]).get("BackendType", "udp") == backend
        assert docker0(lab3, h["name"]) == env["FLANNEL_SUBNET"]
        state = trace(lab3, h["name"])
        for dev in ("flannel.1", "flannel0"):
            assert state[dev] == ("present" if dev == device else "absent"), (h["name"], state)
    assert_containers_reach_each_other(lab3)
    assert lab3.engine.up(STATE["config"]).ops == []


def test_destroy_leaves_nothing_of_ours(lab3: Lab) -> None:
    for h in lab3.hosts:
        lab3.run(h["name"], "docker rm -f kh-probe >/dev/null 2>&1 || true")
    lab3.engine.destroy()
    for h in lab3.hosts:
        after = trace(lab3, h["name"])
        assert after == STATE["before"][h["name"]], f"{h['name']} differs after destroy"
        lab3.run(h["name"], f"iptables -w -D {SOMEONE_ELSES_RULE}")
