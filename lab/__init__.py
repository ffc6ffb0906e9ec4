"""Local test lab for kube-hardway: N systemd-nspawn machines on a private bridge (root, Python
3.11 stdlib only). See lab/README.md.

    import lab
    info = lab.up(hosts=3)      # same dict as /var/lib/kube-hardway-lab/state.json
    lab.run("kh-lab-1", "hostname")
    lab.down()
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from lab.artifacts import ARTIFACTS_DIR, ensure_api_server_proxy_debs, ensure_artifacts, ensure_shared_artifacts
from lab.common import (
    BRIDGE,
    HOST_IP,
    KEY_FILE,
    KNOWN_HOSTS,
    MACHINES_DIR,
    MAX_HOSTS,
    PULUMI_CONFIG,
    SHARED_STATE_DIR,
    STATE_DIR,
    STATE_FILE,
    LabError,
    atomic_write,
    check_prereqs,
    ensure_lab_key,
    keyscan,
    lab_lock,
    load_state,
    locked,
    log,
    public_state,
    sh,
    ssh_base_args,
)
from lab.common import (
    STACK as STACK,
)
from lab.machines import prepare_machine, start_machine, stop_machines, wait_all, write_known_hosts
from lab.network import create_bridge, links, remove_network
from lab.processes import lab_mounts, lab_nspawn_pids, pid_alive
from lab.rootfs import ensure_rootfs, rootfs_key, rootfs_path
from lab.stackfile import write_pulumi_config

ARTIFACTS_LOCK = SHARED_STATE_DIR / ".artifacts.lock"


def machines_of(state: dict) -> list[dict]:
    """Every machine the lab booted: the stack's hosts, then the spares (booted, not in the stack
    file: a host a test adds to the stack, an etcd member say)."""
    return [*state.get("hosts", []), *state.get("spares", [])]


def _healthy(state: dict | None) -> bool:
    if not state or not state.get("hosts"):
        return False
    if state.get("rootfsKey") != rootfs_key():
        return False
    if BRIDGE not in links():
        return False
    for h in machines_of(state):
        if not pid_alive(h.get("nspawnPid")) or not pid_alive(h.get("pid")):
            return False
        if keyscan(h["address"]) != h["hostKey"]:
            return False
    return True


# /proc/sys is read-only inside a machine, and a kubelet refuses to start when these differ from
# what it wants (it writes them only when they differ). They are global: set once on this host.
KUBELET_SYSCTLS = {"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1"}


def set_kubelet_sysctls() -> None:
    for key, value in KUBELET_SYSCTLS.items():
        path = Path("/proc/sys") / key
        if path.read_text().strip() != value:
            log(f"setting {key.replace('/', '.')}={value} on this host (kubelets in the machines need it)")
            path.write_text(value + "\n")


def up(hosts: int = 3, spares: int = 0) -> dict:
    """Bring up `hosts` machines for the stack file and `spares` more outside it (no-op if an
    identical healthy lab is up). Returns state dict."""
    if not 1 <= hosts + spares <= MAX_HOSTS or hosts < 1 or spares < 0:
        raise LabError(f"--hosts plus --spares must be between 1 and {MAX_HOSTS}")
    check_prereqs(for_up=True)
    with lab_lock():
        state = load_state()
        if state and len(state.get("hosts", [])) == hosts and len(state.get("spares", [])) == spares \
                and _healthy(state):
            log(f"lab with {hosts} host(s) and {spares} spare(s) already up and healthy")
            with locked(ARTIFACTS_LOCK):
                state["sharedArtifacts"] = ensure_shared_artifacts()
            atomic_write(STATE_FILE, json.dumps(state, indent=2) + "\n")
            write_pulumi_config(state)
            return public_state(state)
        if state or lab_nspawn_pids() or BRIDGE in links() or lab_mounts() or MACHINES_DIR.exists():
            log("tearing down existing/stale lab first")
            down()
        root = ensure_rootfs()
        with locked(ARTIFACTS_LOCK):      # every lab's, built once
            etcd_version = ensure_artifacts(root)
            api_server_proxy_debs = ensure_api_server_proxy_debs(root)
            shared_files = ensure_shared_artifacts()
        ensure_lab_key()
        create_bridge()
        set_kubelet_sysctls()
        machines = [prepare_machine(root, i, hosts + spares) for i in range(1, hosts + spares + 1)]
        write_known_hosts(machines)
        for m in machines:
            start_machine(m)
        try:
            wait_all(machines)
        except LabError as e:
            raise LabError(f"{e}\n(lab left running for inspection; `python3 -m lab down` cleans up)") from None
        state = {
            "hosts": [m.state() for m in machines[:hosts]],
            "spares": [m.state() for m in machines[hosts:]],
            "privateKeyFile": str(KEY_FILE),
            "knownHostsFile": str(KNOWN_HOSTS),
            "artifactsDir": str(ARTIFACTS_DIR),
            "etcdVersion": etcd_version,
            "apiServerProxyDebs": api_server_proxy_debs,
            "sharedArtifacts": shared_files,
            "bridge": BRIDGE,
            "gateway": HOST_IP,
            "rootfs": str(root),
            "rootfsKey": rootfs_key(),
            "pulumiConfig": str(PULUMI_CONFIG),
        }
        atomic_write(STATE_FILE, json.dumps(state, indent=2) + "\n")
        write_pulumi_config(state)
        log(f"lab up: {', '.join(h['name'] + '=' + h['address'] for h in state['hosts'])}"
            + (f"; spares (not in the stack file): {', '.join(h['name'] for h in state['spares'])}" if spares else ""))
        return public_state(state)


def down() -> None:
    """Stop all lab machines and remove everything except the rootfs cache, lab key and artifacts."""
    check_prereqs(for_up=False)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    from lab.dns import stop_daemon

    stop_daemon()                   # the resolver `python3 -m lab up` started, if any
    with lab_lock():
        state = load_state() or {}
        stop_machines(state)
        # mounts (deepest first)
        for mp in sorted(lab_mounts(), key=lambda s: s.count("/"), reverse=True):
            if sh("umount", mp, check=False).returncode != 0:
                sh("umount", "-l", mp, check=False)
        if lab_mounts():
            raise LabError(f"still mounted, not deleting machine dirs: {lab_mounts()}")
        remove_network()
        # files
        if MACHINES_DIR.exists():
            shutil.rmtree(MACHINES_DIR)
        for f in (STATE_FILE, KNOWN_HOSTS):
            f.unlink(missing_ok=True)
        log("lab is down")


def status() -> dict:
    state = load_state()
    present = links() if shutil.which("ip") else []
    result: dict[str, Any] = {"up": False, "hosts": [], "bridge": BRIDGE if BRIDGE in present else None,
              "rootfsCache": str(rootfs_path()), "rootfsCached": (rootfs_path() / ".kh-lab-rootfs").exists(),
              "stateFile": str(STATE_FILE) if state else None}
    if not state:
        stray = lab_nspawn_pids()
        if stray:
            result["strayNspawnPids"] = stray
        leftovers = ([f"bridge {BRIDGE}"] if BRIDGE in present else []) + lab_mounts() \
            + ([str(MACHINES_DIR)] if MACHINES_DIR.exists() else [])
        if leftovers:
            result["leftovers"] = leftovers
        return result
    ok = True
    for h in machines_of(state):
        running = pid_alive(h.get("nspawnPid")) and pid_alive(h.get("pid"))
        key = keyscan(h["address"]) if running else None
        ssh_ok = key == h["hostKey"]
        ok = ok and running and ssh_ok
        result["hosts"].append({**h, "running": running, "ssh": ssh_ok})
    result["up"] = ok and bool(result["hosts"])
    for k in ("privateKeyFile", "knownHostsFile", "artifactsDir", "etcdVersion", "rootfs"):
        result[k] = state.get(k)
    return result


def new_host_key(host: str) -> str:
    """Give `host` a new SSH host key, as a replacement machine at the same address would have:
    sshd restarted on it, the lab's known_hosts and state updated. Returns the new `hostKey`."""
    with lab_lock():
        state = load_state() or {}
        [machine] = [h for h in machines_of(state) if h["name"] == host]
        got = run(host, "rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N '' -C root@" + host
                  + " -f /etc/ssh/ssh_host_ed25519_key && systemctl restart ssh")
        if got.returncode != 0:
            raise LabError(f"{host}: a new host key: {got.stdout}{got.stderr}")
        key = keyscan(machine["address"])
        if key is None:
            raise LabError(f"{host}: sshd does not answer with its new host key")
        machine["hostKey"] = key
        atomic_write(STATE_FILE, json.dumps(state, indent=2) + "\n")
        atomic_write(KNOWN_HOSTS, "".join(f"{h['name']},{h['address']} {h['hostKey']}\n" for h in machines_of(state)))
        write_pulumi_config(state)
        return key


def _resolve(host: str) -> str:
    state = load_state() or {}
    for h in machines_of(state):
        if host in (h["name"], h["address"]):
            return h["address"]
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", host):
        return host
    raise LabError(f"unknown lab host {host!r} (is the lab up?)")


def ssh_command(host: str) -> list[str]:
    """argv prefix to ssh into a lab host as root (append the remote command)."""
    return ssh_base_args() + [f"root@{_resolve(host)}"]


def run(host: str, command: str, *, check: bool = False, timeout: float | None = 300,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a shell command on a lab host via ssh (lab key, pinned known_hosts)."""
    p = subprocess.run(ssh_command(host) + [command], capture_output=True, text=True,
                       timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise LabError(f"{host}: `{command}` failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p
