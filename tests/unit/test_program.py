"""The whole program under recording mocks: preview, secret hygiene, and the shape of the graph."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from engine.mocks import RecordingMocks, Registration
from engine.runtime import run_program, stack_config

COMMAND = "command:remote:Command"
# the only warnings of the dev stack: default releases upstream publishes no sums for
# upstream publishes no sums for these; the Kubernetes default is not pinned yet (its four
# control-plane binaries take upstream's .sha256 files during `up`)
UNPINNED = ["artifacts.checksums.cri-dockerd-0.4.3.amd64.tgz", "artifacts.checksums.docker-29.7.2.tgz",
            "artifacts.checksums.flannel-v0.28.9-linux-amd64.tar.gz", *["versions.kubernetes"] * 6]


def warned_keys(warnings: list[str]) -> list[str]:
    return sorted(w.split(":")[1].split(" ")[0] for w in warnings)


@pytest.fixture(scope="module")
def dev() -> RecordingMocks:
    mocks = RecordingMocks()
    run = run_program(stack_config("dev"), mocks, stack="dev")
    assert warned_keys(run.warnings) == UNPINNED
    return mocks


def test_dev_stack_previews_with_unknown_outputs_and_warns_only_of_unpinned_files() -> None:
    mocks = RecordingMocks(preview=True)
    run = run_program(stack_config("dev"), mocks, preview=True, stack="dev")
    assert warned_keys(run.warnings) == UNPINNED
    certs = mocks.of_type("tls:index/locallySignedCert:LocallySignedCert")
    assert certs and all("certPem" not in c.outputs for c in certs)
    member = mocks.named("etcd-node1")
    assert "stdin" not in member.inputs or member.inputs["stdin"] is None or not isinstance(member.inputs["stdin"], str)
    # what is known at preview is shown: what the member's delete would remove
    assert "/etc/etcd/pki/server.key" in member.inputs["delete"]


def test_dev_stack_exports_the_etcd_endpoints_and_client_paths() -> None:
    run = run_program(stack_config("dev"), RecordingMocks(), stack="dev")
    assert run.outputs["etcdEndpoints"] == [f"https://192.168.1.{i}:2379" for i in (200, 201, 202)]
    assert run.outputs["etcdctl"]["certFile"] == "/etc/etcd/pki/root-client.crt"   # user root, on members
    assert "BEGIN CERTIFICATE" in run.outputs["kubernetesCaCertPem"]


def _private_keys(mocks: RecordingMocks) -> list[str]:
    return [k.outputs["privateKeyPem"] for k in mocks.of_type("tls:index/privateKey:PrivateKey")]


def _walk(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _walk(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [x for i, v in enumerate(value) for x in _walk(v, f"{path}[{i}]")]
    return [(path, value)] if isinstance(value, str) else []


def test_no_private_key_reaches_a_command_line_or_an_unsecret_input(dev: RecordingMocks) -> None:
    keys = _private_keys(dev)
    assert len(keys) > 20
    needles = {k.strip().splitlines()[1] for k in keys}  # a line of each key's body
    needles |= {base64.b64encode(k.encode()).decode()[:60] for k in keys}  # as written on stdin
    for reg in dev.registrations:
        for path, text in _walk(reg.inputs):
            if any(n in text for n in needles):
                assert path in reg.secret_paths or any(path.startswith(p) for p in reg.secret_paths), \
                    f"{reg.name}.{path} carries a private key but is not secret"
                assert path not in ("create", "update", "delete"), f"{reg.name}.{path} puts a key on a command line"


def test_commands_never_use_ssh_setenv_and_hide_stdout_that_could_hold_secrets(dev: RecordingMocks) -> None:
    for reg in dev.of_type(COMMAND):
        assert not reg.inputs.get("environment"), f"{reg.name}: stock sshd refuses setenv"
        assert reg.inputs.get("addPreviousOutputInEnv") is False, reg.name
        if "stdin" in reg.secret_paths:
            assert reg.inputs["logging"] in ("stderr", "none"), reg.name


def test_key_files_are_written_0600(dev: RecordingMocks) -> None:
    for reg in dev.of_type(COMMAND):
        for line in re.findall(r"^put (\S+) (\d+) (\S+)$", reg.inputs.get("create", ""), re.M):
            if line[0].endswith(".key"):
                assert line[1] == "0600", f"{reg.name} writes {line[0]} with mode {line[1]}"


# commands earlier releases made, kept as no-ops so that their old deletes never run (etcd.py)
RETIRED = re.compile(r"etcd-(account|files)-node\d|etcd-binaries-node\d-install")


def test_every_command_that_changes_a_host_can_undo_it(dev: RecordingMocks) -> None:
    for reg in dev.of_type(COMMAND):
        if "-health" in reg.name or reg.name.startswith("preflight-node"):
            continue  # a check changes nothing
        if RETIRED.fullmatch(reg.name) or reg.name == "preflight-passed":      # nothing to run, ever: no SSH session either
            assert not any(reg.inputs.get(k) for k in ("create", "update", "delete")), reg.name
            continue
        if reg.name.endswith(("-drain", "-uncordon")):   # an upgrade's drain is undone by its uncordon
            assert not reg.inputs.get("create") and not reg.inputs.get("delete") and reg.inputs.get("update"), reg.name
            assert dev.named(reg.name.rsplit("-", 1)[0] + "-uncordon"), reg.name
            continue
        assert reg.inputs.get("delete"), f"{reg.name} has no delete"


def _host_of(name: str, hosts: list[str]) -> str | None:
    return next((h for h in hosts if name.endswith(f"-{h}") or f"-{h}-" in name), None)


# The cluster-wide steps, each a deliberate barrier between hosts, and why.
BARRIERS = {
    "preflight-passed": "nothing is installed on any host until every host passed its preflight",
    "cluster-objects-bootstrap": "the cluster objects are applied once, when every API server is ready",
    "cluster-objects-encryption": "the Secrets are rewritten once every API server writes them the new way; nothing waits on it",
    "node-set-dns-health": "cluster DNS is checked once, when every node is Ready",
    "node-set-record": "the node list is recorded (and a removed node drained) after every node; nothing waits on it",
    "etcd-health": "flanneld needs a serving etcd cluster",
    "etcd-auth": "etcd's users and roles are made, then auth turned on, once the cluster serves; flannel's config waits for it",
    "flannel-config": "on a network change, flanneld stops on every worker before the new config is written",
}


def test_hosts_do_not_wait_for_each_other(dev: RecordingMocks) -> None:
    """A host's step waits only for steps of the same host, the admin machine's fetch of a shared
    release file, and the named cluster-wide barriers."""
    hosts = ["node1", "node2", "node3"]
    by_urn = {r.urn: r for r in dev.registrations}
    remote = [r for r in dev.registrations if r.typ.startswith("command:remote:")]
    assert sorted(r.name for r in remote if _host_of(r.name, hosts) is None) == sorted(BARRIERS)
    for reg in remote:
        mine = _host_of(reg.name, hosts)
        if mine is None:
            continue
        for dep in reg.dependencies:
            other = by_urn.get(dep)
            if other is not None and other.typ.startswith("command:remote:") and other.name not in BARRIERS:
                assert _host_of(other.name, hosts) == mine, f"{reg.name} waits for {other.name}"


def longest_remote_chain(mocks: RecordingMocks, kinds: str = "command:") -> list[str]:
    by_urn = {r.urn: r for r in mocks.registrations}
    children: dict[str, list[str]] = {}
    for r in mocks.registrations:
        if r.parent:
            children.setdefault(r.parent, []).append(r.urn)

    def expand(urn: str) -> list[str]:  # a dependency on a component means on all its children
        reg = by_urn.get(urn)
        if reg is None or reg.custom:
            return [urn]
        return [u for c in children.get(urn, []) for u in expand(c)]

    memo: dict[str, list[str]] = {}

    def chain(urn: str) -> list[str]:
        if urn not in memo:
            reg = by_urn[urn]
            best: list[str] = []
            for dep in reg.dependencies:
                for d in expand(dep):
                    if d in by_urn:
                        candidate = chain(d)
                        best = candidate if len(candidate) > len(best) else best
            memo[urn] = best + ([reg.name] if reg.typ.startswith(kinds) else [])
        return memo[urn]

    return max((chain(r.urn) for r in mocks.registrations if r.custom), key=len)


def test_longest_chain_of_remote_steps_is_short(dev: RecordingMocks) -> None:
    # every host's preflight and the barrier after them, etcd (the copy of its release -> the
    # member -> health -> its users and roles, auth on), flannel's config, flanneld (one step:
    # install, files, unit, gate), Docker
    # (one step: prepare, install, files, unit, gate), cri-dockerd, the kubelet (until its node is
    # Ready), the cluster DNS check: README reports this chain
    chain = longest_remote_chain(dev, "command:remote:")
    shape = [re.sub(r"node\d", "N", step) for step in chain]
    assert len(chain) == 12 and shape[:2] == ["preflight-N", "preflight-passed"], chain
    assert shape[4:-1] == ["etcd-health", "etcd-auth", "flannel-config", "flannel-N", "docker-N-daemon", "node-N-cri-dockerd",
                           "node-N-kubelet"], chain
    # then the DNS check, or beside it what runs nothing on a new node (its uncordon) or once (the node set's record)
    assert shape[-1] in ("node-set-dns-health", "node-set-record", "node-N-uncordon"), chain
    # and in front of it at most the admin machine's one fetch of the release file (beside the preflight)
    everything = longest_remote_chain(dev)
    assert len(everything) <= len(chain) + 1 and everything[0].startswith(("release-", "preflight-")), everything


def test_the_nodes_wait_for_the_api_servers_not_the_rest_of_the_control_plane(dev: RecordingMocks) -> None:
    """The cluster objects (and the kubelets after them) need an API server only: the
    controller-managers and schedulers start beside them (a kubelet's CSR waits for its signature
    by a watch); the DNS check, which needs the scheduler, waits for the whole control plane."""
    by_name = {r.name: r for r in dev.registrations}
    api_servers = {r.urn for r in dev.registrations if "-apiserver-" in r.name and r.typ == "command:remote:Command"}
    others = {r.urn for r in dev.registrations
              if r.name.startswith(("control-plane-controller-manager-", "control-plane-scheduler-"))}
    assert api_servers and others
    objects = set(by_name["cluster-objects-bootstrap"].dependencies)
    assert api_servers <= objects and not others & objects
    assert api_servers | others <= set(by_name["node-set-dns-health"].dependencies)


def registration_names(mocks: RecordingMocks, typ: str) -> list[str]:
    return sorted(r.name for r in mocks.of_type(typ))


def test_an_etcd_member_restarts_when_a_file_it_reads_changes() -> None:
    first, second = RecordingMocks(), RecordingMocks()
    run_program(stack_config("dev"), first, stack="dev")
    run_program(stack_config("dev"), second, stack="dev")  # new keys: every cert differs
    a: Registration = first.named("etcd-node1")
    b: Registration = second.named("etcd-node1")
    assert "triggers" not in a.inputs   # an update, never a replacement
    digests = [re.search(r"digest ([0-9a-f]{16})\)", r.inputs["create"]).group(1) for r in (a, b)]  # type: ignore[union-attr]
    assert digests[0] != digests[1]
    assert "/usr/local/lib/kube-hardway/etcd-restart 120" in a.inputs["create"]   # the rolling restart


def test_etcd_snapshots_run_on_the_first_member_on_their_schedule_and_can_be_turned_off() -> None:
    run = run_program(stack_config("dev"), mocks := RecordingMocks(), stack="dev")
    assert run.outputs["etcdBackups"] == {"host": "node1", "dir": "/var/lib/etcd-backup",
                                          "schedule": "*-*-* 00/6:00:00", "keep": 12}
    timer = mocks.named("etcd-backup-node1")
    assert "etcd-backup.timer" in timer.inputs["create"]
    files = [base64.b64decode(line).decode() for line in timer.inputs["stdin"].splitlines()]
    assert any("OnCalendar=*-*-* 00/6:00:00" in f for f in files)
    assert any("snapshot save" in f and "tail -n +13" in f for f in files)
    assert "rm -f /var/lib/etcd-backup/etcd-snapshot-*.db" in timer.inputs["delete"]
    no_backup = stack_config("dev")
    no_backup["etcd"] = {**no_backup.get("etcd", {}), "backup": {"enabled": False}}
    run = run_program(no_backup, off := RecordingMocks(), stack="dev")
    assert "etcdBackups" not in run.outputs and not [r for r in off.registrations if "backup" in r.name]


def test_an_etcd_member_starts_through_its_join_helper_with_no_initial_cluster_in_its_unit(dev: RecordingMocks) -> None:
    member = dev.named("etcd-node2")
    files = [base64.b64decode(line).decode() for line in member.inputs["stdin"].splitlines()]
    [unit] = [f for f in files if "ExecStart=" in f and "[Service]" in f]
    assert "ExecStartPre=+/usr/local/lib/kube-hardway/etcd-join" in unit
    assert "EnvironmentFile=-/etc/etcd/initial-cluster.env" in unit
    assert "--initial-cluster=" not in unit and "--initial-cluster-state" not in unit
    [join] = [f for f in files if "etcd's ExecStartPre" in f]
    assert "member add node2 --learner --peer-urls=https://192.168.1.201:2380" in join
    # the preflight of a member that runs already compares the member list with the stack
    assert "node1=https://192.168.1.200:2380 node2=https://192.168.1.201:2380" in dev.named("preflight-node2").inputs["create"]


def test_a_restore_stops_every_writer_before_any_member_is_rebuilt_and_starts_them_after_the_gate(tmp_path) -> None:
    snapshot = tmp_path / "etcd-snapshot-20261202T000000Z.db"
    snapshot.write_bytes(b"not really a snapshot")
    config = stack_config("dev")
    config["etcd"] = {**config.get("etcd", {}), "restoreFrom": str(snapshot)}
    run_program(config, mocks := RecordingMocks(), stack="dev")
    by_name = {r.name: r for r in mocks.registrations}
    restores = sorted(n for n in by_name if n.startswith("etcd-restore-"))
    [restore_id] = {n.split("-")[2] for n in restores}
    stops = [n for n in restores if "-stop-" in n]
    rebuilds = [f"etcd-restore-{restore_id}-node{i}" for i in (1, 2, 3)]
    masters = [h["name"] for h in config["hosts"] if "master" in h["roles"]]
    assert sorted(stops) == sorted(f"etcd-restore-{restore_id}-stop-{h['name']}" for h in config["hosts"]
                                   if {"etcd", "master"} & set(h["roles"]))
    for rebuild in rebuilds:    # each member waits for every stop
        assert {by_name[s].urn for s in stops} <= set(by_name[rebuild].dependencies), rebuild
        assert "snapshot restore" in by_name[rebuild].inputs["create"]
        assert f"--initial-cluster-token kube-hardway-restore-{restore_id}" in by_name[rebuild].inputs["create"]
    health = by_name["etcd-health"]
    assert {by_name[r].urn for r in rebuilds} <= set(health.dependencies)
    for m in masters:
        assert health.urn in by_name[f"etcd-restore-{restore_id}-start-{m}"].dependencies
    for stop in stops:   # and nothing stops before every member has the snapshot
        assert {by_name[f"etcd-restore-{restore_id}-copy-node{i}"].urn for i in (1, 2, 3)} <= set(by_name[stop].dependencies)
