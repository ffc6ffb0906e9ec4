"""EtcdCluster on three real machines, in the order an operator lives it: deploy, check, re-run,
lose a member, roll a change under load, destroy. Each test builds on the state the previous
one left (the module is one deployment's life)."""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.harness import DeploymentError
from engine.runtime import stack_config
from tests.lab.conftest import Lab

pytestmark = pytest.mark.lab

ON_HOST_ETCDCTL = ("ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert=/etc/etcd/pki/ca.crt "
                   "--cert=/etc/etcd/pki/root-client.crt --key=/etc/etcd/pki/root-client.key")   # user root

# what a machine looks like before kube-hardway touches it, per host
BEFORE: dict[str, dict[str, str]] = {}


def snapshot(lab: Lab, host: str) -> dict[str, str]:
    probe = ("getent passwd etcd >/dev/null && echo user=yes || echo user=no; "
             "for p in /etc/systemd/system/etcd.service /usr/local/bin/etcd /usr/local/bin/etcdctl /etc/etcd "
             "/var/lib/etcd/member /var/lib/kube-hardway /usr/local/lib/kube-hardway/etcd-restart; do "
             "[ -e $p ] && echo $p=present || echo $p=absent; done; "
             "echo active=$(systemctl is-active etcd 2>/dev/null || true); "
             "echo tarballs=$(ls /var/tmp | grep -c etcd || true)")
    out = lab.run(host, probe).stdout
    return dict(line.split("=", 1) for line in out.split())


def main_pids(lab: Lab) -> dict[str, str]:
    return {h["name"]: lab.run(h["name"], "systemctl show -p MainPID --value etcd").stdout.strip()
            for h in lab.etcd_hosts}


def restart_spans(lab: Lab, host: str) -> list[tuple[int, int]]:
    """(begin, healthy) of each rolling restart on `host`, in µs of the shared kernel clock."""
    out = lab.run(host, "journalctl -t kube-hardway -o json --no-pager").stdout
    # (restarts only: the machines' journal also holds an earlier module's node drains, "drain <node> …")
    events = [e for e in (json.loads(line) for line in out.splitlines() if line.strip()) if " restart on " in e["MESSAGE"]]
    begins = [int(e["__REALTIME_TIMESTAMP"]) for e in events if e["MESSAGE"].endswith(": begin")]
    ends = [int(e["__REALTIME_TIMESTAMP"]) for e in events if e["MESSAGE"].endswith(": healthy")]
    assert len(begins) == len(ends), f"{host}: a restart never became healthy: {out}"
    return list(zip(begins, ends, strict=True))


NEWER_ETCD = "3.5.30"  # ../shared/lab-artifacts/etcd-v3.5.30-linux-amd64.tar.gz, linked into the lab's bundle


def version_of(lab: Lab, host: str) -> str:
    """The etcd version a member reports about itself (`endpoint status` on the member)."""
    out = lab.run(host, ON_HOST_ETCDCTL.format(endpoints="https://127.0.0.1:2379") + " endpoint status -w json").stdout
    return json.loads(out)[0]["Status"]["version"]


def assert_no_member_rejects_itself(lab: Lab, since: float, settle: float = 6.0) -> None:
    """etcd's gRPC gateway dials its own member every few seconds with the serving cert; a cert
    without clientAuth gets it rejected. Nothing from a member's own addresses may be rejected
    since `since` (the TLS test's own plain-HTTP probes from the member are rejected by design)."""
    time.sleep(settle)  # long enough for the gateway's next dial (every 1-5 s)
    for h in lab.etcd_hosts:
        own = ("127.0.0.1", h["address"])
        log = lab.run(h["name"], f"journalctl -u etcd --since @{int(since)} --no-pager "
                      "| grep 'rejected connection' || true").stdout
        # capnslog (3.4): `rejected connection from "127.0.0.1:…"`; zap (3.5): `"remote-addr":"127.0.0.1:…"`
        mine = re.compile(r'(from \\?"|"remote-addr":")(' + "|".join(re.escape(a) for a in own) + "):")
        # `EOF` and `connection reset by peer` are a client that hung up mid-handshake (a flanneld
        # or the kube-apiserver being restarted on this host; seen once in CI), not a certificate
        # refused: only refusals count
        hung_up = ('error "EOF"', '"error":"EOF"', "connection reset by peer")
        from_self = [line for line in log.splitlines() if mine.search(line) and not any(h in line for h in hung_up)]
        assert from_self == [], f"{h['name']} rejects its own connections: {from_self[-3:]}"


def test_deploy_brings_up_a_tls_cluster_healthy_on_every_member(lab3: Lab) -> None:
    for h in [*lab3.hosts, *lab3.spares]:
        BEFORE[h["name"]] = snapshot(lab3, h["name"])
    started = time.time()
    result = lab3.engine.up(lab3.config)
    assert {op.host for op in result.ops} == {h["address"] for h in lab3.hosts} | {"localhost"}
    # each release file is checked once on the admin machine, however many hosts install it (the
    # API server proxy's package files, one check each, too)
    checks = sorted(op.name for op in result.ops if op.host == "localhost")
    debs = sorted(p.name for p in (Path(lab3.info["artifactsDir"]) / "apiServerProxy" / "amd64").glob("*.deb"))
    proxy = [c for c in checks if c.startswith("release-apiServerProxy-amd64-fetch-")]
    assert debs and proxy == [f"release-apiServerProxy-amd64-fetch-{d}" for d in debs], (proxy, debs)
    assert [c for c in checks if c not in proxy] == [
        "node-releases-amd64",    # a worker's release files, linked into the one directory its copy takes
        "release-criDockerd-amd64-fetch", "release-etcd-amd64-fetch", "release-flannel-amd64-fetch",
        *[f"release-kubernetes-control-plane-amd64-fetch-{b}" for b in
          ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")],
        "release-kubernetes-kube-proxy-amd64-fetch", "release-kubernetes-kubelet-amd64-fetch"]
    print(f"\ndeploy: {len(result.ops)} remote operations in {result.seconds:.1f}s, "
          f"per host {result.connections_per_host()}")
    cluster_ids = set()
    for h in lab3.etcd_hosts:
        # on the member itself, with the certs the deployment put there
        health = lab3.run(h["name"], ON_HOST_ETCDCTL.format(endpoints="https://127.0.0.1:2379") + " endpoint health")
        assert "is healthy" in health.stdout + health.stderr
        members = lab3.etcdctl("member", "list", "-w", "json", endpoints=f"https://{h['address']}:2379")
        assert members.returncode == 0, members.stderr
        data = json.loads(members.stdout)
        assert sorted(m["name"] for m in data["members"]) == sorted(x["name"] for x in lab3.etcd_hosts)
        cluster_ids.add(data["header"]["cluster_id"])
    assert len(cluster_ids) == 1
    assert_no_member_rejects_itself(lab3, since=started)
    for h in lab3.hosts:   # release files waited in a directory only root may write, and are gone
        staged = lab3.run(h["name"], "stat -c '%a %U' /var/lib/kube-hardway/staging; ls -A /var/lib/kube-hardway/staging").stdout
        assert staged.strip() == "700 root", f"{h['name']}: {staged}"


def test_only_clients_with_an_etcd_ca_cert_get_in(lab3: Lab) -> None:
    assert lab3.etcdctl("put", "kube-hardway-probe", "ok").returncode == 0
    no_cert = lab3.etcdctl("get", "kube-hardway-probe", cert="none", timeout="3s")
    assert no_cert.returncode != 0, "a client without a cert was served"
    other_ca = lab3.etcdctl("get", "kube-hardway-probe", cert="kubernetes-admin", timeout="3s")
    assert other_ca.returncode != 0, "a cert from the Kubernetes CA opened etcd"
    # the members say why: the TLS handshake itself was refused
    host = lab3.etcd_hosts[0]
    log = lab3.run(host["name"], "journalctl -u etcd --no-pager | grep 'rejected connection'").stdout
    assert "didn't provide a certificate" in log, log[-2000:]
    assert "certificate signed by unknown authority" in log, log[-2000:]
    listeners = lab3.run(host["name"], "ss -Hltnp | grep etcd | awk '{print $4}'").stdout.split()
    assert sorted(listeners) == sorted([f"{host['address']}:2379", "127.0.0.1:2379", f"{host['address']}:2380"])
    for listener in listeners:  # every listener speaks TLS only: plain HTTP is turned away
        reply = lab3.run(host["name"], f"curl -s -m 3 http://{listener}/health || echo refused", check=False)
        assert '"health"' not in reply.stdout, f"{listener} answered plain HTTP: {reply.stdout}"


def test_noop_rerun_executes_no_command(lab3: Lab) -> None:
    result = lab3.engine.up(lab3.config)
    assert result.ops == []


def test_forced_rerun_converges_without_restarting_or_rekeying(lab3: Lab) -> None:
    assert lab3.etcdctl("put", "written-before-forced-rerun", "still-here").returncode == 0
    pids = main_pids(lab3)
    certs = {h["name"]: lab3.run(h["name"], "sha256sum /etc/etcd/pki/*").stdout for h in lab3.etcd_hosts}
    result = lab3.engine.up(lab3.config, forced=True)
    assert len(result.executed("create")) >= 4 * len(lab3.etcd_hosts)
    assert main_pids(lab3) == pids, "a forced re-run restarted etcd"
    assert {h["name"]: lab3.run(h["name"], "sha256sum /etc/etcd/pki/*").stdout for h in lab3.etcd_hosts} == certs
    got = lab3.etcdctl("get", "written-before-forced-rerun", "--print-value-only")
    assert got.stdout.strip() == "still-here"


def test_snapshots_are_taken_checked_and_pruned_and_one_restores_elsewhere(lab3: Lab, tmp_path: Path) -> None:
    """etcd-backup.timer on the first member: each run saves a snapshot that reads back, 0600 in a
    0700 directory, and keeps only the newest `etcd.backup.keep`; a copy taken to this machine is a
    whole etcd: restored into a new data dir here, it holds a key written before the snapshot (a
    restore of the cluster from one, `etcd.restoreFrom`, is not built yet)."""
    backups = lab3.engine.up(lab3.config).outputs["etcdBackups"]
    host = backups["host"]
    assert host == lab3.etcd_hosts[0]["name"] and backups["dir"] == "/var/lib/etcd-backup", backups
    timer = lab3.run(host, "systemctl is-active etcd-backup.timer; "
                     "systemctl show -p NextElapseUSecRealtime --value etcd-backup.timer").stdout.split("\n")
    assert timer[0] == "active" and timer[1].strip(), timer
    keep2 = copy.deepcopy(lab3.config)
    keep2["etcd"] = {**keep2.get("etcd", {}), "backup": {"keep": 2}}
    pids = main_pids(lab3)
    result = lab3.engine.up(keep2)
    assert [op.name for op in result.ops] == [f"etcd-backup-{host}"], [op.name for op in result.ops]
    assert main_pids(lab3) == pids, "a backup setting restarted etcd"
    lab3.config = keep2
    assert lab3.etcdctl("put", "kept-by-the-snapshot", "yes").returncode == 0
    for _ in range(3):
        lab3.run(host, "systemctl start etcd-backup.service")
        time.sleep(1.1)   # one snapshot per second: the names carry the time
    listing = lab3.run(host, "stat -c '%a %U' /var/lib/etcd-backup; cd /var/lib/etcd-backup && stat -c '%n %a' *").stdout.split("\n")
    assert listing[0] == "700 root", listing
    files = sorted(line.split()[0] for line in listing[1:] if line.strip())
    assert len(files) == 2 and all(f.startswith("etcd-snapshot-") and f.endswith(".db") for f in files), listing
    assert all(line.split()[1] == "600" for line in listing[1:] if line.strip()), listing
    journal = lab3.run(host, "journalctl -t kube-hardway --no-pager -o cat | grep 'etcd snapshot'").stdout
    assert journal.count("etcd snapshot /var/lib/etcd-backup/") >= 3, journal
    # to the admin machine (README: scp), then restored into a data dir of its own
    copy_path = tmp_path / files[-1]
    import lab

    copy_path.write_bytes(subprocess.run([*lab.ssh_command(host), f"cat /var/lib/etcd-backup/{files[-1]}"],
                                         capture_output=True, check=True, timeout=60).stdout)
    status = subprocess.run(["etcdctl", "snapshot", "status", str(copy_path), "-w", "json"], capture_output=True, text=True,
                            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert status.returncode == 0 and json.loads(status.stdout)["totalKey"] > 0, status.stdout + status.stderr
    restored = tmp_path / "restored"
    done = subprocess.run(["etcdctl", "snapshot", "restore", str(copy_path), "--data-dir", str(restored)],
                          capture_output=True, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert b"kept-by-the-snapshot" in (restored / "member" / "snap" / "db").read_bytes()


def test_with_one_member_down_writes_go_on_and_the_gate_names_it(lab3: Lab) -> None:
    down = lab3.etcd_hosts[-1]
    # stopped and cut off: a re-run starts etcd again (converging), but it stays unreachable
    cut = "iptables -{} INPUT -i host0 -p tcp -m multiport --dports 2379,2380 -j DROP"
    lab3.run(down["name"], f"systemctl stop etcd && {cut.format('A')}")
    try:
        put = lab3.etcdctl("put", "written-with-a-member-down", "yes")
        assert put.returncode == 0, put.stderr
        impatient = copy.deepcopy(lab3.config)
        impatient["etcd"] = {"healthTimeoutSeconds": 10}
        with pytest.raises(DeploymentError) as failed:
            lab3.engine.up(impatient)
        assert list(failed.value.failures) == ["etcd-health"], failed.value
        message = failed.value.failures["etcd-health"]
        assert f"etcd member {down['name']} (https://{down['address']}:2379) is unhealthy" in message, message
        assert all(h["name"] not in message for h in lab3.etcd_hosts[:-1]), message
    finally:
        lab3.run(down["name"], cut.format("D"))
    lab3.engine.up(lab3.config)  # reachable again: the gate passes


class UnderLoad:
    """A writer every 50 ms (retrying a failed write once, like a real client such as the API
    server) and a watcher of how many members are down at once, while a change rolls."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.writes = 0
        self.failures: list[str] = []   # failed at the first try
        self.lost: list[str] = []       # failed after the retry too
        self.most_down = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, daemon=True),
                         threading.Thread(target=self._watch, daemon=True)]

    def __enter__(self) -> UnderLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(2)
        self._stop.set()
        for t in self._threads:
            t.join()

    def _write(self) -> None:
        while not self._stop.is_set():
            r = self.lab.etcdctl("put", "rolling-writer", str(self.writes), timeout="3s")
            self.writes += 1
            if r.returncode != 0:
                self.failures.append(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "?")
                time.sleep(0.5)
                if self.lab.etcdctl("put", "rolling-writer", str(self.writes), timeout="3s").returncode != 0:
                    self.lost.append(self.failures[-1])
            time.sleep(0.05)

    def _watch(self) -> None:
        endpoints = self.lab.endpoints().split(",")
        with ThreadPoolExecutor(len(endpoints)) as pool:
            while not self._stop.is_set():
                # `endpoint status` is answered by each member alone (health needs a leader, and
                # an election during a restart makes every member briefly "unhealthy")
                down = self._down(pool, endpoints)
                if down > 1:
                    # on this 2-core machine a stall of a few seconds can time out every member's
                    # answer at once (seen in CI: 3 "down" while every write but one succeeded).
                    # Members really down are still down a moment later; a stall is over.
                    down = min(down, self._down(pool, endpoints))
                self.most_down = max(self.most_down, down)

    def _down(self, pool: ThreadPoolExecutor, endpoints: list[str]) -> int:
        codes = pool.map(lambda ep: self.lab.etcdctl("endpoint", "status", endpoints=ep,
                                                     timeout="2s").returncode, endpoints)
        return sum(1 for c in codes if c != 0)

    def assert_rolled_safely(self, what: str) -> None:
        print(f"\n{what}: {self.writes} writes during it, {len(self.failures)} failed at first try "
              f"{self.failures[:3]}, {len(self.lost)} lost after one retry; "
              f"at most {self.most_down} member(s) down at once")
        assert self.most_down <= 1, f"{self.most_down} members were down at the same time"
        assert self.writes > 20
        assert self.lost == [], f"{len(self.lost)} of {self.writes} writes were lost: {self.lost}"
        # a write in flight while the leader hands over can time out; once per member restart at most
        assert len(self.failures) <= len(self.lab.etcd_hosts) // 2, \
            f"{len(self.failures)} of {self.writes} writes failed at the first try: {self.failures}"


def assert_restarts_never_overlapped(lab: Lab) -> None:
    """Each member's last restart began after the previous one was healthy again."""
    spans = sorted(restart_spans(lab, h["name"])[-1] for h in lab.etcd_hosts)
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False)), f"overlapping restarts: {spans}"


def test_rolling_change_restarts_one_member_at_a_time_and_loses_no_write(lab3: Lab) -> None:
    pids = main_pids(lab3)
    changed = copy.deepcopy(lab3.config)
    changed["etcd"] = {"extraArgs": {"heartbeat-interval": "150", "election-timeout": "1500"}}
    started = time.time()
    with UnderLoad(lab3) as load:
        result = lab3.engine.up(changed)
    load.assert_rolled_safely(f"rolling change ({result.seconds:.1f}s)")
    after = main_pids(lab3)
    assert all(after[n] != pids[n] for n in pids), "every member runs the new flags"
    for h in lab3.etcd_hosts:
        unit = lab3.run(h["name"], "systemctl cat etcd").stdout
        assert "--heartbeat-interval=150" in unit
    assert_restarts_never_overlapped(lab3)
    assert_no_member_rejects_itself(lab3, since=started)
    lab3.config = changed


def test_a_restart_that_would_lose_quorum_is_refused_and_restarts_nothing(lab3: Lab) -> None:
    cut_off = lab3.etcd_hosts[-1]
    healthy = [h["name"] for h in lab3.etcd_hosts[:-1]]
    # the member runs but nobody can reach it: it counts as down for quorum
    isolate = "iptables -{} INPUT -i host0 -p tcp -m multiport --dports 2379,2380 -j DROP"
    lab3.run(cut_off["name"], isolate.format("A"))
    before = main_pids(lab3)
    change = copy.deepcopy(lab3.config)
    change["etcd"] = {"extraArgs": {"heartbeat-interval": "100", "election-timeout": "1000"},
                      "healthTimeoutSeconds": 10}
    try:
        with pytest.raises(DeploymentError) as failed:
            lab3.engine.up(change)
        for name in healthy:
            message = failed.value.failures.get(f"etcd-{name}", "")
            assert f"refusing to restart etcd on {name}: members {cut_off['name']}" in message, failed.value
        assert {n: main_pids(lab3)[n] for n in healthy} == {n: before[n] for n in healthy}
        assert lab3.etcdctl("put", "written-while-refusing", "yes").returncode == 0
    finally:
        lab3.run(cut_off["name"], isolate.format("D"))
    lab3.engine.up(change)  # once the member is reachable again, the same change goes through
    assert all(main_pids(lab3)[n] != before[n] for n in healthy)
    lab3.config = change


def test_a_new_release_upgrades_every_member_one_at_a_time(lab3: Lab) -> None:
    """3.4.23 (Debian bookworm's, the lab's bundle) -> 3.5.30 (../shared/lab-artifacts): only the
    release changes, and that alone must restart etcd, rolling, under load."""
    bundle = f"etcd-v{NEWER_ETCD}-linux-amd64.tar.gz"
    assert bundle in lab3.info.get("sharedArtifacts", []), (
        f"the lab has no {bundle}: it comes from ../shared/lab-artifacts (see lab/README.md); "
        "point KH_LAB_SHARED_ARTIFACTS at that folder")
    assert {version_of(lab3, h["name"]) for h in lab3.etcd_hosts} == {lab3.config["versions"]["etcd"]}
    upgraded = copy.deepcopy(lab3.config)
    upgraded["versions"] = {**upgraded["versions"], "etcd": NEWER_ETCD}
    started = time.time()
    with UnderLoad(lab3) as load:
        result = lab3.engine.up(upgraded)
    load.assert_rolled_safely(f"upgrade to {NEWER_ETCD} ({result.seconds:.1f}s)")
    assert {op.name for op in result.executed("update")} >= {f"etcd-{h['name']}" for h in lab3.etcd_hosts}
    for h in lab3.etcd_hosts:  # asked of each member itself
        assert version_of(lab3, h["name"]) == NEWER_ETCD
    assert_restarts_never_overlapped(lab3)
    assert_no_member_rejects_itself(lab3, since=started)
    assert lab3.engine.up(upgraded).ops == []
    lab3.config = upgraded


def member_list(lab: Lab) -> list[dict]:
    got = lab.etcdctl("member", "list", "-w", "json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)["members"]


def voters(lab: Lab) -> list[str]:
    """The started, voting members' names (a learner or a member never started is not one)."""
    return sorted(m.get("name", "") for m in member_list(lab) if m.get("name") and not m.get("isLearner"))


def etcd_servers(lab: Lab) -> dict[str, str]:
    """What each API server is told to use: its unit's --etcd-servers."""
    found = {}
    for m in (h["name"] for h in lab.config["hosts"] if "master" in h["roles"]):
        flag = re.search(r"--etcd-servers=(\S+)", lab.run(m, "systemctl cat kube-apiserver").stdout)
        assert flag, f"{m}: kube-apiserver has no --etcd-servers"
        found[m] = flag[1]
    return found


def api_server_answers(lab: Lab, result_kubeconfig: str) -> None:
    kubectl = Path(lab.info["artifactsDir"]) / "kubectl"
    path = lab.workdir / "admin.kubeconfig"
    path.write_text(result_kubeconfig)
    path.chmod(0o600)
    done = subprocess.run([str(kubectl), "--kubeconfig", str(path), "--request-timeout=20s", "create", "configmap",
                           f"kh-member-probe-{int(time.time() * 1000)}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_etcd_members_come_and_go_through_up_one_at_a_time_and_lose_no_write(lab3: Lab) -> None:
    """3 -> 4 -> 3 members: the spare machine joins (a learner, promoted once caught up), then the
    first member leaves (`member remove` before its host stops etcd), each under a writer; a run
    that would change two members at once is refused by the preflight and changes nothing."""
    first, spare = lab3.etcd_hosts[0], lab3.spares[0]
    original = [h["name"] for h in lab3.etcd_hosts]
    grown = copy.deepcopy(lab3.config)
    # the default gate timeout: a learner is promoted once it has caught up (the earlier tests set 10 s)
    grown["etcd"] = {k: v for k, v in grown.get("etcd", {}).items() if k != "healthTimeoutSeconds"}
    grown["hosts"].append({"name": spare["name"], "address": spare["address"], "roles": ["etcd"],
                           "hostKey": spare["hostKey"]})
    both = copy.deepcopy(grown)
    [gone] = [h for h in both["hosts"] if h["name"] == first["name"]]
    gone["roles"] = [r for r in gone["roles"] if r != "etcd"]
    with pytest.raises(DeploymentError) as refused:
        lab3.engine.up(both)
    members_now = [f"preflight-{n}" for n in original if n != first["name"]]
    for step in members_now:
        message = refused.value.failures.get(step, "")
        assert "hosts: this run would add etcd member(s) " + spare["name"] in message and \
            f"remove {first['name']}" in message and "one etcd member per run" in message, refused.value
    assert voters(lab3) == sorted(original)
    assert lab3.run(spare["name"], "systemctl is-active etcd", check=False).stdout.strip() != "active"

    for step, config, want in (("add", grown, sorted([*original, spare["name"]])),
                               ("remove", both, sorted([n for n in original if n != first["name"]] + [spare["name"]]))):
        with UnderLoad(lab3) as load:
            result = lab3.engine.up(config)
        lab3.config = config
        load.assert_rolled_safely(f"etcd member {step} ({result.seconds:.1f}s)")
        assert voters(lab3) == want and len(member_list(lab3)) == len(want), member_list(lab3)
        urls = sorted(f"https://{h['address']}:2379" for h in lab3.etcd_hosts)
        assert all(sorted(v.split(",")) == urls for v in etcd_servers(lab3).values()), etcd_servers(lab3)
        api_server_answers(lab3, result.outputs["kubeconfig"])
        assert lab3.engine.up(config).ops == [], f"a re-run after the member {step} ran commands"
    # the member that left: etcd stopped, its data gone, and the others forgot it
    assert lab3.run(first["name"], "systemctl is-active etcd", check=False).stdout.strip() != "active"
    assert lab3.run(first["name"], "test -e /var/lib/etcd/member && echo kept || echo gone").stdout.strip() == "gone"
    # the audit trail (`journalctl -t kube-hardway`): the spare joined as a learner, a gate promoted
    # it, a gate removed the first member
    said = {h["name"]: lab3.run(h["name"], "journalctl -t kube-hardway --no-pager -o cat").stdout
            for h in [*lab3.hosts, spare]}
    assert "added as a learner" in said[spare["name"]], said[spare["name"]]
    trail = "\n".join(said.values())
    assert f"etcd member {spare['name']} promoted" in trail and f"etcd member {first['name']} (" in trail, trail


def test_a_killed_and_wiped_etcd_host_comes_back_as_a_new_member_through_up(lab3: Lab) -> None:
    """The spare, a member since the previous test, dies: etcd killed, everything kube-hardway put
    there wiped, a new SSH host key (a new machine at the same address). The operator pins the new
    key in the stack and runs `up`: the old member is removed, the new one added as a learner and
    promoted; the other members are not restarted."""
    import lab

    spare = lab3.spares[0]
    assert spare["name"] in voters(lab3), "the previous test leaves the spare a member"
    old_id = next(m["ID"] for m in member_list(lab3) if m.get("name") == spare["name"])
    # (what the image has stays: Debian's etcd user and its empty /var/lib/etcd, as on a new machine)
    lab3.run(spare["name"], "systemctl kill -s KILL etcd; systemctl stop etcd; "
             "rm -rf /var/lib/etcd/member /etc/etcd /var/lib/kube-hardway /usr/local/lib/kube-hardway "
             "/etc/systemd/system/etcd.service /usr/local/bin/etcd /usr/local/bin/etcdctl /usr/local/bin/etcdutl && "
             "systemctl daemon-reload")
    # (a write may time out while the others elect a new leader, if the spare led: seen twice)
    deadline = time.time() + 20
    while (put := lab3.etcdctl("put", "written-with-the-spare-dead", "yes")).returncode != 0 and time.time() < deadline:
        time.sleep(1)
    assert put.returncode == 0, put.stderr
    others = {n: p for n, p in main_pids(lab3).items() if n != spare["name"]}
    replaced = copy.deepcopy(lab3.config)
    [entry] = [h for h in replaced["hosts"] if h["name"] == spare["name"]]
    entry["hostKey"] = lab.new_host_key(spare["name"])
    result = lab3.engine.up(replaced)
    lab3.config = replaced
    print(f"\nreplaced member {spare['name']}: {len(result.ops)} remote operations in {result.seconds:.1f}s")
    assert voters(lab3) == sorted(h["name"] for h in lab3.etcd_hosts) and len(member_list(lab3)) == len(lab3.etcd_hosts)
    new_id = next(m["ID"] for m in member_list(lab3) if m.get("name") == spare["name"])
    assert new_id != old_id, "the member was not replaced"
    assert {n: p for n, p in main_pids(lab3).items() if n != spare["name"]} == others, "a member that stayed restarted"
    got = lab3.etcdctl("get", "written-with-the-spare-dead", "--print-value-only",
                       endpoints=f"https://{spare['address']}:2379")
    assert got.stdout.strip() == "yes", got.stderr
    assert lab3.engine.up(replaced).ops == []


def test_destroy_leaves_the_machines_as_they_were(lab3: Lab) -> None:
    result = lab3.engine.destroy()
    lab3.config = stack_config(lab3.engine.stack)      # the next deployments: the stack file's three members again
    assert result.executed("delete")
    for h in [*lab3.hosts, *lab3.spares]:   # the spare was a member until now
        after = snapshot(lab3, h["name"])
        assert after == BEFORE[h["name"]], f"{h['name']} differs after destroy"
        assert after["/etc/etcd"] == "absent" and after["/usr/local/bin/etcd"] == "absent"
        assert after["active"] != "active"


def test_package_source_deploys_from_the_distribution_packages(lab3: Lab) -> None:
    # the lab's Debian image ships etcd-server: nothing to install, and destroy must not purge it
    config = copy.deepcopy(lab3.config)
    # flannel, cri-dockerd and Kubernetes have no distribution package: they stay on the lab's bundle
    config["artifacts"] = {"source": "package",
                           "sources": {"flannel": "local", "criDockerd": "local", "kubernetes": "local",
                                       "apiServerProxy": "local"},
                           "dir": lab3.info["artifactsDir"]}
    engine = type(lab3.engine)(lab3.workdir / "package-state.json")
    result = engine.up(config)
    assert not [o for o in result.ops if o.action == "copy" and o.name.startswith("etcd-")]
    for h in lab3.etcd_hosts:
        assert "ExecStart=/usr/bin/etcd" in lab3.run(h["name"], "systemctl cat etcd").stdout
    health = lab3.run(lab3.etcd_hosts[0]["name"], ON_HOST_ETCDCTL.format(endpoints=lab3.endpoints()) + " endpoint health")
    assert (health.stdout + health.stderr).count("is healthy") == len(lab3.etcd_hosts), health.stderr
    engine.destroy()
    for h in lab3.hosts:
        assert snapshot(lab3, h["name"]) == BEFORE[h["name"]]
        assert lab3.run(h["name"], "test -x /usr/bin/etcd && echo kept").stdout.strip() == "kept"


class MirrorLog(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # the stdlib names it so
        MirrorLog.requests.append(self.path)


def test_download_source_fetches_each_file_once_over_http_and_verifies_it(lab3: Lab, tmp_path: Path) -> None:
    """`download` for real: a mirror on the lab bridge (the host's 10.88.0.1) serving the lab's etcd
    release in upstream's layout. The version is not pinned, so the sum comes from the mirror's
    SHA256SUMS at `up`, with a warning at plan time."""
    version = lab3.info["etcdVersion"]
    asset = f"etcd-v{version}-linux-amd64.tar.gz"
    served = tmp_path / "mirror" / f"v{version}"
    served.mkdir(parents=True)
    shutil.copy(Path(lab3.info["artifactsDir"]) / asset, served / asset)
    digest = hashlib.sha256((served / asset).read_bytes()).hexdigest()
    (served / "SHA256SUMS").write_text(f"{digest}  {asset}\n")
    handler = functools.partial(MirrorLog, directory=str(tmp_path / "mirror"))
    MirrorLog.requests = []
    server = http.server.ThreadingHTTPServer((lab3.info["gateway"], 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = copy.deepcopy(stack_config(lab3.engine.stack))
    config["versions"]["etcd"] = version
    # everything else from local files in the same dir (the lab's bundle, etcd left out), Docker from Debian
    (tmp_path / "cache").mkdir()
    for path in Path(lab3.info["artifactsDir"]).iterdir():
        if not path.name.startswith("etcd-"):
            (tmp_path / "cache" / path.name).symlink_to(path)
    config["artifacts"] = {"source": "download", "dir": str(tmp_path / "cache"),
                           "sources": {"flannel": "local", "criDockerd": "local", "docker": "package",
                                       "registry": "package", "kubernetes": "local", "apiServerProxy": "local"},
                           "mirrors": {"etcd": f"http://{lab3.info['gateway']}:{server.server_port}"}}
    engine = type(lab3.engine)(lab3.workdir / "download-state.json")
    try:
        result = engine.up(config)
        assert any(f"artifacts.checksums.{asset}" in w for w in result.warnings), result.warnings
        assert sorted(MirrorLog.requests) == sorted([f"/v{version}/SHA256SUMS", f"/v{version}/{asset}"])
        assert (tmp_path / "cache" / "etcd" / version / "amd64" / asset).read_bytes() == (served / asset).read_bytes()
        etcd_copies = [o for o in result.ops if o.action == "copy" and o.name.startswith("etcd-")]
        assert len(etcd_copies) == len(lab3.etcd_hosts)  # to every member
        health = lab3.run(lab3.etcd_hosts[0]["name"], ON_HOST_ETCDCTL.format(endpoints=lab3.endpoints()) + " endpoint health")
        assert (health.stdout + health.stderr).count("is healthy") == len(lab3.etcd_hosts), health.stderr
        assert engine.up(config).ops == [] and len(MirrorLog.requests) == 2  # no-op: nothing fetched again
    finally:
        server.shutdown()
        engine.destroy()
    for h in lab3.hosts:
        assert snapshot(lab3, h["name"]) == BEFORE[h["name"]]
