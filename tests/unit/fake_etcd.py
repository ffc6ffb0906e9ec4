"""A fake etcd JSON gateway for worker scripts run for real in unit tests: a `curl` on PATH that
keeps keys, revisions and leases in a JSON file, and answers as etcd's gateway does (compact JSON)."""

from __future__ import annotations

import base64
import fcntl
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FAKE_CURL = r'''#!PYTHON
import base64, fcntl, json, sys, time
args = sys.argv[1:]
url = next(a for a in args if a.startswith("https://"))
path = url.split("/", 3)[3]
data = args[args.index("-d") + 1] if "-d" in args else sys.stdin.read()
config = sys.stdin.read() if "-K" in args else ""   # curl -K -: the token's header, on stdin
token = config.partition("Authorization: ")[2].partition('"')[0]
with open(STATE, "r+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    st = json.load(f)
    # with "auth" on, a login (its count kept) gives a token, and a call without a token it gave is
    # refused as the gateway refuses it: 401, which curl --fail turns into exit 22
    if st.get("auth") and path != "v3/auth/authenticate" and token not in st.get("tokens", []):
        print(json.dumps({"error": "etcdserver: invalid auth token", "code": 16}, separators=(",", ":")))
        print("curl: (22) The requested URL returned error: 401", file=sys.stderr)
        sys.exit(22 if "--fail" in args else 0)
    body = json.loads(data or "{}")
    rev = st["rev"]
    def header(): return {"cluster_id": "1", "member_id": "2", "revision": str(st["rev"]), "raft_term": "3"}
    def put(key, value, lease):
        old = st["kv"].get(key)
        st["rev"] += 1
        st["kv"][key] = {"value": value, "lease": lease or "0", "create_revision": old["create_revision"] if old else st["rev"],
                         "mod_revision": st["rev"]}
    def shown(key, kv, keys_only=False):
        out = {"key": key, "create_revision": str(kv["create_revision"]), "mod_revision": str(kv["mod_revision"]),
               "version": "1"}
        if not keys_only:
            out["value"] = kv["value"]
        if kv["lease"] != "0":
            out["lease"] = kv["lease"]
        return out
    if path == "v3/auth/authenticate":
        out = {}
        if st.get("auth"):
            st["logins"] = st.get("logins", 0) + 1
            out = {"header": header(), "token": f"token.{st['logins']}"}
            st.setdefault("tokens", []).append(out["token"])
    elif path == "v3/lease/grant":
        st["lease"] += 1
        st.setdefault("leases", {})[str(st["lease"])] = {"granted": 3600, "at": time.time()}
        out = {"ID": str(st["lease"]), "TTL": "3600"}
    elif path == "v3/lease/timetolive":
        lease = st.get("leases", {}).get(str(body["ID"]))
        out = {"header": header(), "ID": str(body["ID"]), "TTL": "-1"}
        if lease:
            out.update(TTL=str(int(lease["granted"] - (time.time() - lease["at"]))), grantedTTL=str(lease["granted"]))
    elif path == "v3/lease/revoke":
        st["kv"] = {k: v for k, v in st["kv"].items() if v["lease"] != body["ID"]}
        st["rev"] += 1
        out = {"header": header()}
    elif path == "v3/kv/put":
        put(body["key"], body["value"], body.get("lease"))
        out = {"header": header()}
    elif path == "v3/kv/range":
        out = {"header": header()}
        if "range_end" in body:
            low, high = base64.b64decode(body["key"]), base64.b64decode(body["range_end"])
            keys = sorted(k for k in st["kv"] if low <= base64.b64decode(k) < high)
        else:
            keys = [body["key"]] if body["key"] in st["kv"] else []
        if keys:
            out.update(kvs=[shown(k, st["kv"][k], body.get("keys_only", False)) for k in keys], count=str(len(keys)))
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


def install(tmp_path: Path, stubs: tuple[str, ...] = ("systemctl", "logger", "journalctl")) -> Path:
    """The fake gateway as `curl` in tmp_path/stub (with empty `stubs`), an empty keyspace, and a
    password file; returns the state file."""
    state = tmp_path / "etcd.json"
    state.write_text(json.dumps({"rev": 1, "lease": 0, "kv": {}, "leases": {}}))
    stub = tmp_path / "stub"
    stub.mkdir(exist_ok=True)
    (stub / "curl").write_text(FAKE_CURL.replace("PYTHON", sys.executable).replace("STATE", repr(str(state))))
    for name in stubs:
        (stub / name).write_text("#!/bin/sh\n")
    for f in stub.iterdir():
        f.chmod(0o755)
    (tmp_path / "password").write_text("pw")
    return state


@contextmanager
def _keyspace(state: Path, write: bool = False) -> Iterator[dict]:
    """The keyspace under the lock the fake `curl` takes: it rewrites the file in place, so a read
    without the lock can see it empty. With `write`, the yielded dict is written back."""
    with state.open("r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        st = json.load(f)
        yield st
        if write:
            f.seek(0)
            f.truncate()
            json.dump(st, f)


def put(state: Path, key: str, value: str, lease_granted: int = 0, age: float = 0) -> int:
    """Write `key` as a client would; with `lease_granted`, under a lease of that TTL granted `age`
    seconds ago. Returns the key's revision."""
    with _keyspace(state, write=True) as st:
        st["rev"] += 1
        lease = "0"
        if lease_granted:
            st["lease"] += 1
            lease = str(st["lease"])
            st["leases"][lease] = {"granted": lease_granted, "at": time.time() - age}
        encoded = base64.b64encode(key.encode()).decode()
        st["kv"][encoded] = {"value": base64.b64encode(value.encode()).decode(), "lease": lease,
                             "create_revision": st["rev"], "mod_revision": st["rev"]}
        return int(st["rev"])


def auth_on(state: Path) -> None:
    """etcd auth enabled: every call needs a token from a login."""
    with _keyspace(state, write=True) as st:
        st["auth"] = True


def forget_tokens(state: Path) -> None:
    """The member forgets the tokens it gave, as a restart makes it."""
    with _keyspace(state, write=True) as st:
        st["tokens"] = []


def logins(state: Path) -> int:
    with _keyspace(state) as st:
        return int(st.get("logins", 0))


def delete(state: Path, key: str) -> None:
    with _keyspace(state, write=True) as st:
        st["kv"].pop(base64.b64encode(key.encode()).decode(), None)
        st["rev"] += 1


def get(state: Path, key: str) -> dict | None:
    with _keyspace(state) as st:
        kv = st["kv"].get(base64.b64encode(key.encode()).decode())
    return {**kv, "value": base64.b64decode(kv["value"]).decode()} if kv else None
