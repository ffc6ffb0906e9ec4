"""FlannelNetwork and DockerNode under recording mocks: what each backend, etcd API and docker.*
setting renders into, and which changes restart what."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.docker import daemon_config
from components.links import EtcdAccess
from components.spec import parse_spec
from components.templates import render
from engine.mocks import RecordingMocks, Registration
from engine.runtime import run_program, stack_config
from tests.unit import fake_etcd

FLANNELD = "/etc/systemd/system/flanneld.service"
DOCKERD = "/etc/systemd/system/docker.service"


def dev(**sections: dict[str, Any]) -> dict[str, Any]:
    cfg = stack_config("dev")
    for key, values in sections.items():
        cfg[key] = {**cfg.get(key, {}), **values}
    return cfg


def planned(cfg: dict[str, Any]) -> RecordingMocks:
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    return mocks


def written(reg: Registration, path: str) -> str:
    """The content a HostService writes to `path` (one base64 line per file on stdin)."""
    paths = [line.split()[1] for line in reg.inputs["create"].splitlines() if line.startswith("put ")]
    return base64.b64decode(reg.inputs["stdin"].splitlines()[paths.index(path)]).decode()


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "udp"])
def test_network_config_per_backend_is_what_flannel_reads(backend: str) -> None:
    spec = parse_spec(dev(network={"backend": backend, "subnetMin": "172.30.10.0", "subnetMax": "172.30.99.0"}))
    config = json.loads(render("flannel/net-conf.json.j2", net=spec.network))
    assert config == {"Network": "172.30.0.0/16", "SubnetLen": 24, "SubnetMin": "172.30.10.0",
                      "SubnetMax": "172.30.99.0", "Backend": {"Type": backend}}
    step = planned(dev(network={"backend": backend})).named("flannel-config")
    assert json.loads(render("flannel/net-conf.json.j2", net=parse_spec(dev(network={"backend": backend})).network)) \
        == {"Network": "172.30.0.0/16", "SubnetLen": 24, "Backend": {"Type": backend}}
    assert f'"Backend": {{"Type": "{backend}"}}' in step.inputs["create"]


def test_flannel_018_and_later_read_the_v3_keyspace() -> None:
    mocks = planned(stack_config("dev"))
    create = mocks.named("flannel-config").inputs["create"]
    assert "ctl put " in create and "ETCDCTL_API=3" in create and "ETCDCTL_API=2" not in create
    assert "--enable-v2" not in written(mocks.named("etcd-node1"), "/etc/systemd/system/etcd.service")


@pytest.mark.parametrize("version,repairs", [("0.20.2", True), ("0.21.2", True), ("0.21.3", False), ("0.28.9", False)])
def test_only_a_flannel_that_drops_lease_events_is_restarted_for_a_missing_route(version: str, repairs: bool) -> None:
    """Before v0.21.3 flanneld's watch can drop a peer's new lease (no route until the peer renews it,
    a day later): its gate restarts it to list the leases again. A later flanneld gets every event:
    its gate waits for the route and never restarts it."""
    gate = planned(dev(versions={"flannel": version})).named("flannel-node1").inputs["create"]
    assert ("restarted it to re-read the leases" in gate) == repairs
    assert "no route to the pod subnet(s)$missing of other workers yet" in gate


PREFIX = "/kubernetes/network"
FAKE_IP = """#!/bin/sh
# `ip route show SUBNET`: the route when the routes file lists it
[ "$1 $2" = "route show" ] && grep -qx "$3" ROUTES && echo "$3 via $3 dev flannel.1 onlink"
exit 0
"""
FAKE_SYSTEMCTL = """#!/bin/sh
case "$1" in
  show) cat ACTIVE ;;
  restart) echo "$2" >> RESTARTS; date -u '+%a %Y-%m-%d %H:%M:%S UTC' > ACTIVE ;;
esac
"""


class FlannelHost:
    """Worker w1's flannel health check (repair on: a flanneld that drops lease events) run for real
    against the fake etcd gateway, with a fake `ip route` and a fake flanneld unit."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.state = fake_etcd.install(tmp_path, stubs=())
        self.routes, self.restarts, self.active = tmp_path / "routes", tmp_path / "restarts", tmp_path / "active"
        self.routes.write_text("")
        for name, text in (("ip", FAKE_IP), ("systemctl", FAKE_SYSTEMCTL)):
            stub = tmp_path / "stub" / name
            stub.write_text(text.replace("ROUTES", str(self.routes)).replace("RESTARTS", str(self.restarts))
                            .replace("ACTIVE", str(self.active)))
            stub.chmod(0o755)
        (tmp_path / "subnet.env").write_text("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.1.1/24\n")
        etcd = EtcdAccess(("https://192.0.2.1:2379",), password_file=str(tmp_path / "password"))
        check = render("flannel/health-check.sh.j2", host="w1", etcd=etcd, api=3, prefix=PREFIX,
                       subnet_file=str(tmp_path / "subnet.env"), pod_cidr="172.30.0.0/16", backend="vxlan",
                       iface=None, address="10.0.0.1", workers=3, repair=True)
        (tmp_path / "check").write_text(f"check() {{\n{check}\n}}\ncheck\n")
        self.lease("172.30.1.0", "10.0.0.1", age=60)
        self.running_for(60)

    def lease(self, subnet: str, ip: str, age: float) -> None:
        attrs = json.dumps({"PublicIP": ip, "BackendType": "vxlan"}, separators=(",", ":"))   # as flanneld writes it
        fake_etcd.put(self.state, f"{PREFIX}/subnets/{subnet}-24", attrs, lease_granted=86400, age=age)

    def running_for(self, seconds: int) -> None:
        self.active.write_text(subprocess.run(["date", "-u", "-d", f"-{seconds} seconds", "+%a %Y-%m-%d %H:%M:%S UTC"],
                                              capture_output=True, text=True, check=True).stdout)

    def route(self, subnet: str) -> None:
        self.routes.write_text(self.routes.read_text() + f"{subnet}/24\n")

    def check(self) -> tuple[int, str]:
        p = subprocess.run(["sh", str(self.tmp / "check")], capture_output=True, text=True,
                           env={"PATH": f"{self.tmp / 'stub'}:/usr/bin:/bin"})
        return p.returncode, p.stdout + p.stderr

    def restarted(self) -> int:
        return len(self.restarts.read_text().split()) if self.restarts.exists() else 0


def test_a_dropped_lease_event_restarts_flanneld_at_once_and_only_once_per_lease(tmp_path: Path) -> None:
    """A route still missing 2 s after a peer's lease, with flanneld running for 2 s, is an event its
    watch dropped: the check restarts flanneld then, not after a fixed wait. A route still missing
    after the restart that listed its lease is something else: named, never restarted for again."""
    w1 = FlannelHost(tmp_path)
    fake_etcd.auth_on(w1.state)                          # (the check logs in once for all its reads)
    w1.lease("172.30.2.0", "10.0.0.2", age=30)
    w1.route("172.30.2.0")
    w1.lease("172.30.3.0", "10.0.0.3", age=3)          # made 3 s ago, no route: its event was dropped
    code, out = w1.check()
    assert code == 1 and w1.restarted() == 1, out
    assert fake_etcd.logins(w1.state) == 1
    assert "flanneld dropped the lease event(s) of 172.30.3.0/24" in out
    code, out = w1.check()                               # flanneld listing its leases after the restart
    assert code == 1 and w1.restarted() == 1 and "still has no route" not in out, out
    w1.running_for(3)                                    # its listing had the lease: no dropped event
    code, out = w1.check()
    assert code == 1 and w1.restarted() == 1, out
    assert "flanneld was restarted after the lease(s) of 172.30.3.0/24 were made and still has no route" in out
    w1.route("172.30.3.0")
    code, out = w1.check()
    assert code == 0 and "routes to 2 other worker(s)" in out, out
    w1.lease("172.30.4.0", "10.0.0.4", age=2)          # a later peer's event dropped too: one more restart
    code, out = w1.check()
    assert code == 1 and w1.restarted() == 2 and "lease event(s) of 172.30.4.0/24" in out, out


# a lease "just made": granted 30 s from now in the fake's clock, so it is younger than the check's 2 s
# however long this machine takes to get to the check (a lease made at 0 s was 2 s old once under load)
JUST_MADE = -30


@pytest.mark.parametrize(("lease_age", "running"), [(JUST_MADE, 60), (30, 0)])
def test_a_lease_event_in_flight_or_a_flanneld_still_listing_is_waited_for(tmp_path: Path, lease_age: int,
                                                                         running: int) -> None:
    w1 = FlannelHost(tmp_path)
    w1.running_for(running)
    w1.lease("172.30.2.0", "10.0.0.2", age=lease_age)
    w1.lease("172.30.3.0", "10.0.0.3", age=lease_age)
    code, out = w1.check()
    assert code == 1 and w1.restarted() == 0, out
    assert out.strip() == "w1: no route to the pod subnet(s) 172.30.2.0/24 172.30.3.0/24 of other workers yet"


def test_flannel_before_018_gets_the_v2_keyspace_and_an_etcd_serving_it() -> None:
    mocks = planned(dev(versions={"flannel": "0.17.0", "etcd": "3.5.30"}))
    create = mocks.named("flannel-config").inputs["create"]
    assert "ETCDCTL_API=2" in create and "ctl set " in create and "ctl put " not in create
    assert "--enable-v2=true" in written(mocks.named("etcd-node1"), "/etc/systemd/system/etcd.service")
    assert "/v2/keys/kubernetes/network/subnets" in mocks.named("flannel-node1").inputs["create"]


def test_flanneld_talks_tls_to_etcd_with_both_cert_and_key_and_its_own_key_is_private() -> None:
    mocks = planned(stack_config("dev"))
    unit = written(mocks.named("flannel-node2"), FLANNELD)
    for flag in ("-etcd-cafile=/etc/flannel/pki/ca.crt", "-etcd-certfile=/etc/flannel/pki/flanneld.crt",
                 "-etcd-keyfile=/etc/flannel/pki/flanneld.key", "-iface=192.168.1.201", "-ip-masq",
                 "-subnet-file=/run/flannel/subnet.env", "-etcd-endpoints=https://192.168.1.200:2379,"):
        assert flag in unit, flag
    assert "mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -f /run/flannel/subnet.env -d /run/flannel/docker" in unit
    assert "put /etc/flannel/pki/flanneld.key 0600" in mocks.named("flannel-node2").inputs["create"]


def test_a_host_iface_is_what_flanneld_binds_to() -> None:
    cfg = stack_config("dev")
    cfg["hosts"][1]["iface"] = "eth1"
    assert "-iface=eth1" in written(planned(cfg).named("flannel-node2"), FLANNELD)


def test_daemon_json_holds_the_docker_settings_and_the_extra_config() -> None:
    spec = parse_spec(dev(docker={"registryMirrors": ["https://mirror.example:5000"], "insecureRegistries": ["10.0.0.5:5000"],
                                  "dataRoot": "/data/docker", "cgroupDriver": "cgroupfs",
                                  "extraConfig": {"log-level": "warn", "default-runtime": "runc"}}))
    settings = daemon_config(spec.docker)
    assert settings == {
        "data-root": "/data/docker", "exec-opts": ["native.cgroupdriver=cgroupfs"], "log-driver": "json-file",
        "log-opts": {"max-size": "50m", "max-file": "5"}, "max-concurrent-downloads": 3, "userland-proxy": False,
        "registry-mirrors": ["https://mirror.example:5000"], "insecure-registries": ["10.0.0.5:5000"],
        "log-level": "warn", "default-runtime": "runc"}
    mocks = planned(dev(docker={"dataRoot": "/data/docker"}))
    assert json.loads(written(mocks.named("docker-node1-daemon"), "/etc/docker/daemon.json"))["data-root"] == "/data/docker"


def test_docker_unit_takes_flannels_options_and_keeps_forwarding_open() -> None:
    unit = written(planned(stack_config("dev")).named("docker-node1-daemon"), DOCKERD)
    assert "EnvironmentFile=-/run/flannel/docker" in unit and "$DOCKER_NETWORK_OPTIONS" in unit
    assert "iptables -w -P FORWARD ACCEPT" in unit and "iptables -F" not in unit
    assert "Requires=flanneld" not in unit  # a flanneld restart must not stop every container


def unit_digest(mocks: RecordingMocks, name: str) -> str:
    """What a HostService restarts its unit on: the digest of the unit and what it reads."""
    found = re.search(r"digest ([0-9a-f]{16})\)", mocks.named(name).inputs["create"])
    assert found, name
    return found.group(1)


def test_a_daemon_json_change_restarts_docker_only_through_the_rolling_helper() -> None:
    before, after = planned(stack_config("dev")), planned(dev(docker={"maxConcurrentDownloads": 7}))
    assert unit_digest(before, "docker-node1-daemon") != unit_digest(after, "docker-node1-daemon")
    # (each mock run makes new keys, so only what does not read a key can be compared across runs)
    assert written(before.named("flannel-node1"), FLANNELD) == written(after.named("flannel-node1"), FLANNELD)
    for name in ("flannel-host-node1", "flannel-config"):
        assert before.named(name).inputs["create"] == after.named(name).inputs["create"], name
    create = after.named("docker-node1-daemon").inputs["create"]
    assert "/usr/local/lib/kube-hardway/rolling-restart docker.service 120 /usr/local/lib/kube-hardway/docker-health" in create


def test_a_backend_change_stops_flannel_everywhere_before_the_new_config_then_restarts_docker() -> None:
    before, after = planned(stack_config("dev")), planned(dev(network={"backend": "host-gw"}))
    for host in ("node1", "node2", "node3"):
        assert before.named(f"flannel-host-{host}").inputs["create"] != after.named(f"flannel-host-{host}").inputs["create"]
        assert unit_digest(before, f"flannel-{host}") != unit_digest(after, f"flannel-{host}")
        assert unit_digest(before, f"docker-{host}-daemon") != unit_digest(after, f"docker-{host}-daemon")
    config = after.named("flannel-config")
    hosts = {after.named(f"flannel-host-{h}").urn for h in ("node1", "node2", "node3")}
    assert hosts <= set(config.dependencies), "the config is written only once flanneld stopped on every worker"
    assert config.urn in after.named("flannel-node2").dependencies
    assert "del_tree /kubernetes/network/subnets" in config.inputs["create"]


def test_images_are_copied_and_loaded_again_only_when_a_file_changes(tmp_path: Any) -> None:
    (tmp_path / "busybox.tar").write_bytes(b"one")
    cfg = dev(docker={"preloadImages": ["busybox.tar"]}, artifacts={"sources": {"etcd": "local"}, "dir": str(tmp_path)})
    cfg["artifacts"] = {"source": "package", "dir": str(tmp_path),
                        "sources": {"flannel": "download", "docker": "package", "kubernetes": "download",
                                    "criDockerd": "download"}}
    first = planned(cfg)
    (tmp_path / "busybox.tar").write_bytes(b"two")
    second = planned(cfg)
    copy1, copy2 = first.named("docker-node1-image-busybox.tar"), second.named("docker-node1-image-busybox.tar")
    assert copy1.inputs["remotePath"] == "/var/lib/kube-hardway/staging/busybox.tar"
    assert copy1.inputs["triggers"] != copy2.inputs["triggers"]
    load = second.named("docker-node1-images")
    assert "docker load -i /var/lib/kube-hardway/staging/busybox.tar" in load.inputs["create"]
    assert copy2.urn in load.dependencies and second.named("docker-node1-daemon").urn in load.dependencies
    # cri-dockerd starts beside the loads (it asks for the pause image only when a pod is made); the
    # kubelet waits for both
    cri, kubelet = second.named("node-node1-cri-dockerd"), second.named("node-node1-kubelet")
    assert second.named("docker-node1-daemon").urn in cri.dependencies and load.urn not in cri.dependencies
    assert {load.urn, cri.urn} <= set(kubelet.dependencies)
