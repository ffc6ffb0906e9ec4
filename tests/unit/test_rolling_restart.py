"""The rolling-restart helper (templates/remote/rolling-restart.sh.j2) run for real, several hosts
at once, against a fake etcd JSON gateway (a `curl` that keeps the keys, revisions and leases in a
file): one host at a time, a failed restart keeps the lock marked failed, and whoever waits its
turn in the same run gives up at once, while a mark left by an earlier run does not stop anyone."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

from components.links import EtcdAccess
from components.templates import render
from tests.unit import fake_etcd

UNIT = "kubelet.service"


def lab(tmp_path: Path) -> Path:
    return fake_etcd.install(tmp_path)


def start(tmp_path: Path, host: str, check: str, wait_s: int = 5, args: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """The helper as installed on `host`, restarting UNIT with `check` (or run with `args` instead)."""
    etcd = EtcdAccess(("https://192.0.2.1:2379",), user="lock", password_file=str(tmp_path / "password"))
    script = tmp_path / f"rolling-restart-{host}"
    script.write_text(render("remote/rolling-restart.sh.j2", host=host, etcd=etcd, hosts=3))
    return subprocess.Popen(["sh", str(script), *(args or (UNIT, str(wait_s), check))], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": f"{tmp_path / 'stub'}:/usr/bin:/bin"})


def lock(state: Path) -> str | None:
    kv = fake_etcd.get(state, f"kube-hardway/rolling-restart/{UNIT}")
    return kv["value"] if kv else None


def wait_for(condition, timeout: float = 20) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_restart_that_fails_marks_the_lock_and_the_hosts_waiting_their_turn_give_up_at_once(tmp_path: Path) -> None:
    state = lab(tmp_path)
    a = start(tmp_path, "a", "false", wait_s=3)            # never healthy
    wait_for(lambda: lock(state) == "a")
    began = time.monotonic()
    b = start(tmp_path, "b", "true")
    _, a_err = a.communicate(timeout=30)
    _, b_err = b.communicate(timeout=30)
    assert a.returncode == 1 and "is not healthy 3s after its restart" in a_err, a_err
    assert lock(state) == "failed:a"                      # kept, marked: no other host restarts with this change
    assert b.returncode == 1, b_err
    assert "b: kubelet.service was not restarted: its restart on a failed while this one waited its turn" in b_err
    assert "holds the rolling-restart lock" in b_err
    # b gave up once a's restart failed (3 s), not at its deadline: 3 hosts x (5 + 30) s (the margin
    # is for a loaded CI machine, where every fake `curl` is a Python start)
    assert time.monotonic() - began < 45


def test_a_failed_mark_from_an_earlier_run_is_taken_back_by_its_host_and_waited_for_by_the_others(tmp_path: Path) -> None:
    state = lab(tmp_path)
    failed = start(tmp_path, "a", "false", wait_s=1)
    failed.communicate(timeout=30)
    assert lock(state) == "failed:a"
    b = start(tmp_path, "b", "true")                      # the next run: b waits (a may restart again)...
    time.sleep(3)
    assert b.poll() is None, b.communicate()
    a = start(tmp_path, "a", "true")                      # ...a's restart takes its lock back, and gives it up healthy
    _, a_err = a.communicate(timeout=30)
    _, b_err = b.communicate(timeout=30)
    assert (a.returncode, b.returncode) == (0, 0), (a_err, b_err)
    assert lock(state) is None


def test_a_drain_stops_at_once_at_a_nodes_failed_upgrade_whenever_it_failed(tmp_path: Path) -> None:
    state = lab(tmp_path)
    etcd = json.loads(state.read_text())
    key = base64.b64encode(f"kube-hardway/rolling-restart/{UNIT}".encode()).decode()
    etcd["kv"][key] = {"value": base64.b64encode(b"failed:for:a").decode(), "lease": "9", "create_revision": 1,
                       "mod_revision": 1}
    state.write_text(json.dumps(etcd))                    # marked by an earlier run's upgrade of node a
    began = time.monotonic()
    drain = start(tmp_path, "m1", "", args=("hold", UNIT, "b", "60"))
    _, err = drain.communicate(timeout=30)
    assert drain.returncode == 1 and "b: not drained: the upgrade of a failed" in err, err
    assert time.monotonic() - began < 30 and lock(state) == "failed:for:a"   # its wait was 60 s


def test_the_lock_logs_in_to_etcd_once_and_again_when_the_member_dropped_its_token(tmp_path: Path) -> None:
    state = lab(tmp_path)
    fake_etcd.auth_on(state)
    a = start(tmp_path, "a", "true")
    _, a_err = a.communicate(timeout=30)
    assert a.returncode == 0, a_err
    assert fake_etcd.logins(state) == 1                   # one bcrypt on the member for the lease, the lock and its release
    fake_etcd.put(state, f"kube-hardway/rolling-restart/{UNIT}", "c")   # another host's turn
    b = start(tmp_path, "b", "true")
    wait_for(lambda: fake_etcd.logins(state) == 2)        # b's login, then its polls of the lock
    time.sleep(1.5)
    assert fake_etcd.logins(state) == 2                   # (polling took no new login)
    fake_etcd.forget_tokens(state)
    fake_etcd.delete(state, f"kube-hardway/rolling-restart/{UNIT}")
    _, b_err = b.communicate(timeout=30)
    assert b.returncode == 0, b_err                       # the refused token: a new login, and on
    assert fake_etcd.logins(state) > 2
    assert lock(state) is None
