"""The rolling-restart helper (templates/remote/rolling-restart.sh.j2) run for real, several hosts
at once, against a fake etcd JSON gateway (a `curl` that keeps the keys, revisions and leases in a
file): one host at a time, a failed restart keeps the lock marked failed, and whoever waits its
turn in the same run gives up at once, while a mark left by an earlier run does not stop anyone."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

from components.links import EtcdAccess
from components.templates import render

FAKE_CURL = r'''#!PYTHON
import fcntl, json, sys
args = sys.argv[1:]
url = next(a for a in args if a.startswith("https://"))
path = url.split("/", 3)[3]
data = args[args.index("-d") + 1] if "-d" in args else sys.stdin.read()
with open(STATE, "r+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    st = json.load(f)
    body = json.loads(data or "{}")
    rev = st["rev"]
    def header(): return {"cluster_id": "1", "member_id": "2", "revision": str(st["rev"]), "raft_term": "3"}
    def put(key, value, lease):
        old = st["kv"].get(key)
        st["rev"] += 1
        st["kv"][key] = {"value": value, "lease": lease or "0", "create_revision": old["create_revision"] if old else st["rev"],
                         "mod_revision": st["rev"]}
    if path == "v3/auth/authenticate":
        out = {}
    elif path == "v3/lease/grant":
        st["lease"] += 1
        out = {"ID": str(st["lease"]), "TTL": "3600"}
    elif path == "v3/lease/revoke":
        st["kv"] = {k: v for k, v in st["kv"].items() if v["lease"] != body["ID"]}
        st["rev"] += 1
        out = {"header": header()}
    elif path == "v3/kv/put":
        put(body["key"], body["value"], body.get("lease"))
        out = {"header": header()}
    elif path == "v3/kv/range":
        kv = st["kv"].get(body["key"])
        out = {"header": header()}
        if kv:
            out.update(kvs=[{"key": body["key"], "create_revision": str(kv["create_revision"]),
                             "mod_revision": str(kv["mod_revision"]), "version": "1", "value": kv["value"]}], count="1")
    elif path == "v3/kv/txn":
        kv = st["kv"].get(body["compare"][0]["key"])
        c = body["compare"][0]
        ok = (kv is None) if c["target"] == "CREATE" else (kv is not None and kv["value"] == c["value"])
        if ok:
            for op in body["success"]:
                if "request_put" in op:
                    put(op["request_put"]["key"], op["request_put"]["value"], op["request_put"].get("lease"))
                else:
                    st["kv"].pop(op["request_delete_range"]["key"], None)
                    st["rev"] += 1
        out = {"header": header(), "succeeded": ok}
    f.seek(0); f.truncate(); json.dump(st, f)
print(json.dumps(out, separators=(",", ":")))   # as the gateway writes it
'''

UNIT = "kubelet.service"


def lab(tmp_path: Path) -> Path:
    state = tmp_path / "etcd.json"
    state.write_text(json.dumps({"rev": 1, "lease": 0, "kv": {}}))
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "curl").write_text(FAKE_CURL.replace("PYTHON", sys.executable).replace("STATE", repr(str(state))))
    for name in ("systemctl", "logger", "journalctl"):
        (stub / name).write_text("#!/bin/sh\n")
    for f in stub.iterdir():
        f.chmod(0o755)
    (tmp_path / "password").write_text("pw")
    return state


def start(tmp_path: Path, host: str, check: str, wait_s: int = 5, args: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """The helper as installed on `host`, restarting UNIT with `check` (or run with `args` instead)."""
    etcd = EtcdAccess(("https://192.0.2.1:2379",), user="lock", password_file=str(tmp_path / "password"))
    script = tmp_path / f"rolling-restart-{host}"
    script.write_text(render("remote/rolling-restart.sh.j2", host=host, etcd=etcd, hosts=3))
    return subprocess.Popen(["sh", str(script), *(args or (UNIT, str(wait_s), check))], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": f"{tmp_path / 'stub'}:/usr/bin:/bin"})


def lock(state: Path) -> str | None:
    kv = json.loads(state.read_text())["kv"].get(base64.b64encode(f"kube-hardway/rolling-restart/{UNIT}".encode()).decode())
    return base64.b64decode(kv["value"]).decode() if kv else None


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
    # b gave up once a's restart failed (3 s), not at its deadline: 3 hosts x (5 + 30) s
    assert time.monotonic() - began < 15


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
    assert time.monotonic() - began < 10 and lock(state) == "failed:for:a"
