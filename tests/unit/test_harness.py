"""The executing harness behaves like the engine and pulumi-command, checked with a fake SSH
transport (the lab tests run it over real SSH)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pulumi
import pulumi_random as random
import pytest
from pulumi_command import remote

import engine.harness as harness
from engine.harness import DeploymentError, Engine, Op, Result
from tests.unit.conftest import FakeHosts

CONN = remote.ConnectionArgs(host="192.0.2.10", user="root")


def program(**commands: dict[str, Any]) -> Any:
    def run() -> None:
        token = random.RandomId("token", byte_length=4)
        previous = None
        for name, args in commands.items():
            opts = pulumi.ResourceOptions(depends_on=[previous] if previous else None,
                                          delete_before_replace=args.pop("dbr", False),
                                          aliases=[pulumi.Alias(name=a) for a in args.pop("aliases", [])],
                                          ignore_changes=args.pop("ignore", None))
            previous = remote.Command(name, connection=CONN, opts=opts, **args)
        pulumi.export("token", token.hex)
    return run


def test_unchanged_inputs_run_nothing_and_keep_random_values(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    first = engine.up({}, program=program(a={"create": "make a", "delete": "rm a"}))
    assert [c for c, _ in hosts.calls] == ["make a"]
    assert first.executed("create")[0].name == "a"
    again = engine.up({}, program=program(a={"create": "make a", "delete": "rm a"}))
    assert again.ops == [] and len(hosts.calls) == 1
    assert again.outputs["token"] == first.outputs["token"]


def test_changed_stdin_runs_update_or_create_in_place(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    engine.up({}, program=program(a={"create": "make a", "delete": "rm a", "stdin": "v1"}))
    engine.up({}, program=program(a={"create": "make a", "delete": "rm a", "stdin": "v2"}))
    engine.up({}, program=program(a={"create": "make a", "update": "refresh a", "delete": "rm a", "stdin": "v3"}))
    assert hosts.calls == [("make a", "v1"), ("make a", "v2"), ("refresh a", "v3")]


def test_changed_triggers_replace_create_first_then_old_delete(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    engine.up({}, program=program(a={"create": "make a1", "delete": "rm a1", "triggers": ["1"]}))
    engine.up({}, program=program(a={"create": "make a2", "delete": "rm a2", "triggers": ["2"]}))
    assert [c for c, _ in hosts.calls] == ["make a1", "make a2", "rm a1"]


def test_a_renamed_resource_is_replaced_unless_an_alias_names_its_old_name(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    engine.up({}, program=program(a={"create": "make a", "delete": "rm a"}))
    renamed = engine.up({}, program=program(b={"create": "make a", "delete": "rm a"}))
    assert sorted(f"{o.action} {o.name}" for o in renamed.ops) == ["create b", "delete a"]
    moved = engine.up({}, program=program(c={"create": "make a", "delete": "rm a", "aliases": ["b"]}))
    assert moved.ops == []
    assert engine.up({}, program=program(c={"create": "make a", "delete": "rm a"})).ops == []


def test_ignored_changes_keep_the_old_value_and_neither_update_nor_replace(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    engine.up({}, program=program(a={"create": "make a", "delete": "rm a", "triggers": ["1"]}))
    # a renamed resource that dropped its triggers: ignored, the old ones stay; nothing runs
    moved = engine.up({}, program=program(b={"create": "make a", "delete": "rm a", "aliases": ["a"], "ignore": ["triggers"]}))
    assert moved.ops == [] and [c for c, _ in hosts.calls] == ["make a"]
    # other changes still update in place; the kept triggers still never replace
    again = engine.up({}, program=program(b={"create": "make b", "delete": "rm b", "triggers": ["2"], "ignore": ["triggers"]}))
    assert [f"{o.action} {o.name}" for o in again.ops] == ["update b"]
    # without ignoreChanges the old triggers would have replaced it
    replaced = engine.up({}, program=program(b={"create": "make b", "delete": "rm b", "triggers": ["2"]}))
    assert [f"{o.action} {o.name}" for o in replaced.executed()] == ["create b", "delete b"]


def test_delete_before_replace_deletes_first(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    engine.up({}, program=program(a={"create": "make a1", "delete": "rm a1", "triggers": ["1"], "dbr": True}))
    engine.up({}, program=program(a={"create": "make a2", "delete": "rm a2", "triggers": ["2"], "dbr": True}))
    assert [c for c, _ in hosts.calls] == ["make a1", "rm a1", "make a2"]


def test_removed_resources_and_destroy_delete_dependants_first(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    engine.up({}, program=program(a={"create": "make a", "delete": "rm a", "stdin": "secret"},
                                  b={"create": "make b", "delete": "rm b"},
                                  c={"create": "make c", "delete": "rm c"}))
    engine.up({}, program=program(a={"create": "make a", "delete": "rm a", "stdin": "secret"}))
    assert [c for c, _ in hosts.calls][-2:] == ["rm c", "rm b"]
    engine.destroy()
    assert hosts.calls[-1] == ("rm a", "secret")  # delete runs with the old inputs, stdin included
    assert not engine.up({}, program=program()).ops


def test_forced_rerun_creates_again_with_the_same_random_values(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    first = engine.up({}, program=program(a={"create": "make a"}, b={"create": "make b"}))
    forced = engine.up({}, program=program(a={"create": "make a"}, b={"create": "make b"}), forced=True)
    assert [c for c, _ in hosts.calls] == ["make a", "make b", "make a", "make b"]
    assert forced.outputs["token"] == first.outputs["token"]


def test_a_failure_names_the_step_keeps_what_succeeded_and_starts_nothing_after(tmp_path: Path,
                                                                                 hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    with pytest.raises(DeploymentError) as failed:
        engine.up({}, program=program(a={"create": "make a"}, b={"create": "FAIL b"}, c={"create": "make c"}))
    assert "b" in failed.value.failures and "Process exited with status 1" in failed.value.failures["b"]
    assert [c for c, _ in hosts.calls] == ["make a", "FAIL b"]
    engine.up({}, program=program(a={"create": "make a"}, b={"create": "fixed b"}, c={"create": "make c"}))
    assert [c for c, _ in hosts.calls][2:] == ["fixed b", "make c"]  # a was kept, not re-run


def test_environment_is_refused_like_a_stock_sshd(tmp_path: Path, hosts: FakeHosts) -> None:
    with pytest.raises(DeploymentError, match="setenv"):
        Engine(tmp_path / "state.json").up({}, program=program(a={"create": "x", "environment": {"A": "1"}}))
    assert hosts.calls == []


def test_stdout_loses_exactly_one_trailing_newline(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    engine.up({}, program=program(a={"create": "make a"}))
    state = harness.State(tmp_path / "state.json")
    assert [r["outputs"]["stdout"] for r in state.resources.values() if r["name"] == "a"] == ["ran make a"]


def test_a_delete_before_replace_whose_create_failed_is_created_by_the_next_run(tmp_path: Path,
                                                                                hosts: FakeHosts) -> None:
    """The engine marks the deleted old instance PendingReplacement: a later run replaces it
    though nothing changed, without deleting it again; once created, a run is a no-op again."""
    engine = Engine(tmp_path / "state.json")
    a = {"create": "make a", "delete": "rm a", "dbr": True}
    engine.up({}, program=program(a=dict(a)))
    with pytest.raises(DeploymentError):
        engine.up({}, program=program(a={**a, "create": "FAIL a"}), replace=("a",))
    assert [c for c, _ in hosts.calls] == ["make a", "rm a", "FAIL a"]
    again = engine.up({}, program=program(a=dict(a)))
    assert [f"{o.action} {o.name}" for o in again.ops] == ["create a"]
    assert [c for c, _ in hosts.calls][3:] == ["make a"]
    assert engine.up({}, program=program(a=dict(a))).ops == []


def test_the_critical_path_follows_what_each_step_waited_for_longest() -> None:
    ops = [Op("create", "preflight", "h1", 0.5, began=0.1, urn="p"),
           Op("copy", "small-copy", "h1", 1.0, began=0.7, urn="c1", needs=("p",)),
           Op("copy", "big-copy", "h1", 5.0, began=0.8, urn="c2", needs=("p",)),
           Op("create", "service", "h1", 2.0, began=6.3, urn="s", needs=("c1", "c2", "not-run-here")),
           Op("create", "elsewhere", "h2", 1.0, began=1.0, urn="e", needs=("p",))]
    path = Result(ops=ops).critical_path()
    assert [(op.name, round(waited, 1)) for op, waited in path] == [
        ("preflight", 0.1), ("big-copy", 0.2), ("service", 0.5)]


def test_an_up_records_what_each_step_waited_for(tmp_path: Path, hosts: FakeHosts,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def run(conn: dict[str, Any], command: str, stdin: str | None) -> tuple[int, str, str]:
        # as a service's health gate says it on stderr once it passes (a gate may run twice in a step)
        return 0, "", "waited 2.5s for: b on h1\nwaited 0.5s for: b on h1\n" if command == "make b" else ""
    monkeypatch.setattr(harness, "ssh_run", run)
    result = Engine(tmp_path / "state.json").up({}, program=program(
        a={"create": "make a"}, b={"create": "make b"}, c={"create": "make c"}))
    assert [op.name for op, _ in result.critical_path()] == ["a", "b", "c"]
    assert all(op.began >= 0 and op.ended <= result.seconds for op in result.ops)
    assert {op.name: op.health_wait for op in result.ops} == {"a": 0.0, "b": 3.0, "c": 0.0}
    report = result.critical_path_report()      # what make lab and deploy_bench print
    assert [line.split()[2] for line in report] == ["a", "b", "c"] and "health  3.0s" in report[1], report


def test_a_certificate_is_reissued_once_inside_its_early_renewal_hours_and_not_before(tmp_path: Path,
                                                                                      hosts: FakeHosts) -> None:
    import pulumi_tls as tls

    def pki() -> None:
        key = tls.PrivateKey("key", algorithm="ECDSA", ecdsa_curve="P256")
        ca = tls.SelfSignedCert("ca", private_key_pem=key.private_key_pem, validity_period_hours=1000,
                                is_ca_certificate=True, allowed_uses=["cert_signing"],
                                subject=tls.SelfSignedCertSubjectArgs(common_name="ca"))
        csr = tls.CertRequest("csr", private_key_pem=key.private_key_pem,
                              subject=tls.CertRequestSubjectArgs(common_name="leaf"))
        leaf = tls.LocallySignedCert("leaf", cert_request_pem=csr.cert_request_pem, ca_private_key_pem=key.private_key_pem,
                                     ca_cert_pem=ca.cert_pem, validity_period_hours=100, early_renewal_hours=10,
                                     allowed_uses=["server_auth"])
        remote.Command("uses", connection=CONN, create="install cert", stdin=leaf.cert_pem)
        pulumi.export("certs", {"ca": ca.cert_pem, "leaf": leaf.cert_pem})

    engine = Engine(tmp_path / "state.json")
    first = engine.up({}, program=pki)
    assert engine.up({}, program=pki, hours_later=89).ops == []           # 11h left: outside the window
    renewed = engine.up({}, program=pki, hours_later=91)                   # 9h left: inside
    assert renewed.outputs["certs"]["leaf"] != first.outputs["certs"]["leaf"]
    assert renewed.outputs["certs"]["ca"] == first.outputs["certs"]["ca"]   # 909h left, no early renewal
    assert [op.name for op in renewed.ops] == ["uses"]                     # what reads it runs again
    assert engine.up({}, program=pki).ops == []        # the new one runs from now (the clock is real again)


def test_a_copy_is_one_sftp_put_with_the_pinned_host_key_and_dial_retries_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    answers = [(255, "ssh: connect to host 192.0.2.10 port 2222: Connection refused"), (0, "")]

    def run(argv: list[str], input: str, **_: Any) -> Any:
        opts = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-o")
        key = Path(argv[argv.index("-i") + 1])
        known = Path(opts["UserKnownHostsFile"])
        seen.append({"argv": argv, "opts": opts, "input": input, "known": known.read_text(), "key": key.read_text(),
                     "key_mode": key.stat().st_mode & 0o777, "key_path": key})
        code, err = answers.pop(0)
        return type("Done", (), {"returncode": code, "stdout": "", "stderr": err})()

    monkeypatch.setattr(harness.subprocess, "run", run)
    monkeypatch.setattr(harness.time, "sleep", lambda _: None)
    conn = {"host": "192.0.2.10", "port": 2222, "user": "admin", "privateKey": "KEY", "hostKey": "ssh-ed25519 AAAApin",
            "dialErrorLimit": 3}
    harness.sftp_put(conn, "/cache/kubelet", "/var/lib/staging/kubelet")
    assert len(seen) == 2                          # a refused dial is retried, as the provider's dial loop does
    first = seen[0]
    assert first["argv"][:3] == ["sftp", "-b", "-"] and first["argv"][-1] == "admin@192.0.2.10"
    assert first["input"] == 'put "/cache/kubelet" "/var/lib/staging/kubelet"\n'
    assert first["opts"]["StrictHostKeyChecking"] == "yes" and first["opts"]["HostKeyAlgorithms"] == "ssh-ed25519"
    assert first["known"] == "[192.0.2.10]:2222 ssh-ed25519 AAAApin\n"
    assert (first["key"], first["key_mode"]) == ("KEY\n", 0o600) and not first["key_path"].exists()

    answers[:] = [(255, "Host key verification failed.\r\nConnection closed")]
    with pytest.raises(Exception, match="host key mismatch for 192.0.2.10"):
        harness.sftp_put(conn, "/cache/kubelet", "/var/lib/staging/kubelet")
    assert len(seen) == 3                          # a host key that is not the pinned one is not retried
    answers[:] = [(1, 'dest open "/nope/kubelet": No such file or directory')]
    with pytest.raises(OSError, match="No such file"):
        harness.sftp_put(conn, "/cache/kubelet", "/nope/kubelet")
    assert len(seen) == 4                          # nor is a failed put


def test_the_checkpoint_holds_every_change_without_steps_waiting_for_its_writes(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps finishing together do not queue behind the checkpoint's writes: one writer takes the
    newest state each time, and `flush` (which `Engine` does before it returns) waits for the last."""
    writes: list[int] = []
    save = harness.State._save

    def slow_save(self: harness.State, snapshot: dict) -> None:
        time.sleep(0.2)
        writes.append(len(snapshot["resources"]))
        save(self, snapshot)

    monkeypatch.setattr(harness.State, "_save", slow_save)
    state = harness.State(tmp_path / "state.json")
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: state.put(f"urn:{i}", {"name": str(i)}), range(40)))
    state.drop("urn:0")
    assert time.monotonic() - began < 2            # 41 changes; written one at a time, 8.2 s
    state.flush()
    assert 2 <= len(writes) <= 4 and writes[-1] == 39
    assert sorted(harness.State(tmp_path / "state.json").resources) == sorted(f"urn:{i}" for i in range(1, 40))
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600


def test_a_second_update_of_the_same_stack_is_refused_while_one_runs(tmp_path: Path, hosts: FakeHosts) -> None:
    engine = Engine(tmp_path / "state.json")
    with engine._locked():
        with pytest.raises(DeploymentError, match="another update of this stack is running"):
            Engine(tmp_path / "state.json").up({}, program=program(a={"create": "make a"}))
        with pytest.raises(DeploymentError, match="another update of this stack is running"):
            Engine(tmp_path / "state.json").destroy()
    assert hosts.calls == []
    engine.up({}, program=program(a={"create": "make a"}))
    assert [c for c, _ in hosts.calls] == ["make a"]


def test_a_directory_is_copied_as_pulumi_command_copies_a_file_archive(tmp_path: Path) -> None:
    """pulumi-command 1.2.1's sftpCopy: a directory `d` (no trailing slash) goes to
    `remotePath/d`, made if missing, its files overwritten; a file to `remotePath`. The copy is
    re-run when a file in the directory changes (the engine hashes an archive's contents)."""
    d = tmp_path / "node-releases"
    (d / "sub").mkdir(parents=True)
    (d / "kubelet").write_text("1")
    (d / "sub" / "x").write_text("2")
    batch = harness._sftp_batch(str(d), "/staging").splitlines()
    assert batch[:2] == ['-mkdir "/staging"', '-mkdir "/staging/node-releases"']
    assert sorted(batch[2:]) == sorted(['-mkdir "/staging/node-releases/sub"',
                                        f'put "{d}/kubelet" "/staging/node-releases/kubelet"',
                                        f'put "{d}/sub/x" "/staging/node-releases/sub/x"'])
    assert harness._sftp_batch(str(d / "kubelet"), "/staging/k") == f'put "{d}/kubelet" "/staging/k"\n'
    before = harness._asset_fingerprint(pulumi.FileArchive(str(d)))
    (d / "sub" / "x").write_text("3")
    assert harness._asset_fingerprint(pulumi.FileArchive(str(d))) != before
