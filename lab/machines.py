"""The machines: each an nspawn container booting real systemd from an overlay on the shared
rootfs, in its own cgroup in every hierarchy, with its own address, machine-id and host key."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lab.common import (
    BOOT_TIMEOUT,
    BRIDGE,
    CGROUP_PREFIX,
    HOST_IP,
    KEY_FILE,
    KNOWN_HOSTS,
    MACHINE_DISK,
    MACHINE_TMPFS_SIZE,
    MACHINES_DIR,
    STOP_TIMEOUT,
    LabError,
    atomic_write,
    host_address,
    host_name,
    host_of_machine,
    keyscan,
    log,
    machine_name,
    pub_line,
    sh,
    ssh_base_args,
    tail,
)
from lab.processes import (
    CHILDREN,
    cgroup_roots,
    children,
    cmdline,
    kill_all,
    lab_cgroup_members,
    lab_nspawn_pids,
    machine_cgroups,
    namespace,
    pid_alive,
    remove_cgroup_tree,
)

# extra systemd-nspawn options: let runc/dockerd use keyrings and bpf (device cgroup / seccomp)
NSPAWN_EXTRA: list[str] = ["--system-call-filter=@keyring bpf"]


@dataclass
class Machine:
    name: str
    address: str
    index: int
    dir: Path                   # machines/<name>: upper, work, the merged root, docker dirs, console.log
    root: Path                  # the mounted overlay the machine boots from
    machine_id: str
    host_key: str               # its own ed25519 host key, pinned in known_hosts and the stack file
    nspawn_pid: int | None = None
    pid: int | None = None      # the machine's init (PID 1 inside), once it exists

    def state(self) -> dict:
        return {"name": self.name, "address": self.address, "hostKey": self.host_key, "pid": self.pid,
                "nspawnPid": self.nspawn_pid, "machineId": self.machine_id,
                "consoleLog": str(self.dir / "console.log")}


def prepare_machine(root: Path, i: int, n: int) -> Machine:
    name, address = host_name(i), host_address(i)
    d = MACHINES_DIR / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    if not MACHINE_DISK:   # (`lab down` unmounts everything under the lab's state dir, deepest first)
        sh("mount", "-t", "tmpfs", "-o", f"size={MACHINE_TMPFS_SIZE},mode=0755", f"kh-lab-{machine_name(name)}", d)
    for sub in ("upper", "work", "root", "docker", "containerd"):
        (d / sub).mkdir(parents=True)
    os.chmod(d / "root", 0o755)
    merged = d / "root"
    sh("mount", "-t", "overlay", "overlay",
       "-o", f"lowerdir={root},upperdir={d / 'upper'},workdir={d / 'work'}", merged)
    machine_id = uuid.uuid4().hex
    etc = merged / "etc"
    (etc / "hostname").write_text(name + "\n")
    (etc / "machine-id").write_text(machine_id + "\n")
    os.chmod(etc / "machine-id", 0o444)
    (etc / "hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{HOST_IP}\tkh-lab-host\n"
        + "".join(f"{host_address(j)}\t{host_name(j)}\n" for j in range(1, n + 1)))
    hk = etc / "ssh/ssh_host_ed25519_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", hk)
    sshdir = merged / "root/.ssh"
    sshdir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(sshdir, 0o700)
    (sshdir / "authorized_keys").write_text(Path(str(KEY_FILE) + ".pub").read_text())
    os.chmod(sshdir / "authorized_keys", 0o600)
    return Machine(name=name, address=address, index=i, dir=d, root=merged, machine_id=machine_id,
                   host_key=pub_line(Path(str(hk) + ".pub")))


def write_known_hosts(machines: list[Machine]) -> None:
    atomic_write(KNOWN_HOSTS, "".join(f"{m.name},{m.address} {m.host_key}\n" for m in machines))


def nspawn_argv(m: Machine) -> list[str]:
    argv = ["systemd-nspawn", "-b", "--keep-unit", "--register=no", "--capability=all",
            f"--network-bridge={BRIDGE}", f"--machine={machine_name(m.name)}", f"--hostname={m.name}",
            f"--uuid={m.machine_id}", f"--directory={m.root}",
            "--console=read-only", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
            # docker's overlay2 cannot sit on the machine's overlayfs root: give it real dirs
            f"--bind={m.dir / 'docker'}:/var/lib/docker",
            f"--bind={m.dir / 'containerd'}:/var/lib/containerd",
            ]
    argv += NSPAWN_EXTRA
    if Path("/dev/net/tun").exists():
        argv.append("--bind=/dev/net/tun")  # for flannel & co later
    return argv


def start_machine(m: Machine) -> None:
    # Without systemd on the host, --keep-unit/--register=no leaves every nspawn in the
    # same cgroup and all container systemds fight over one "payload" subtree
    # (random 219/CGROUP unit failures). Give each machine its own cgroup.
    cgroups = machine_cgroups(m.name)
    for cg in cgroups:
        remove_cgroup_tree(cg)
        cg.mkdir(exist_ok=True)
        for f in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset children start empty
            if (cg / f).exists() and not (cg / f).read_text().strip():
                (cg / f).write_text((cg.parent / f).read_text())

    def enter_cgroups():
        for cg in cgroups:
            with open(cg / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    logf = open(m.dir / "console.log", "ab")
    p = subprocess.Popen(nspawn_argv(m), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True, preexec_fn=enter_cgroups)
    logf.close()
    CHILDREN[p.pid] = p
    m.nspawn_pid = p.pid
    m.pid = None
    log(f"started {m.name} (nspawn pid {p.pid})")


def boot_failure(m: Machine, why: str) -> LabError:
    return LabError(f"machine {m.name} ({m.address}) failed to boot: {why}\n"
                    f"--- last lines of {m.dir / 'console.log'} ---\n{tail(m.dir / 'console.log')}")


def wait_one(m: Machine, deadline: float) -> None:
    my_pidns = namespace("self", "pid")
    assert m.nspawn_pid is not None, f"{m.name} was not started"
    # 1. container init = child of nspawn living in a new pid namespace
    while True:
        if not pid_alive(m.nspawn_pid):
            raise boot_failure(m, "systemd-nspawn exited")
        for c in children(m.nspawn_pid):
            ns = namespace(c, "pid")
            if ns and ns != my_pidns:
                m.pid = c
        if m.pid:
            break
        if time.monotonic() > deadline:
            raise boot_failure(m, "no container init process appeared")
        time.sleep(0.05)
    # 2. network: wait for host0 then configure it from outside
    pid = str(m.pid)
    while sh("nsenter", "-t", pid, "-n", "ip", "link", "show", "host0", check=False).returncode != 0:
        if not pid_alive(m.nspawn_pid):
            raise boot_failure(m, "systemd-nspawn exited")
        if time.monotonic() > deadline:
            raise boot_failure(m, "interface host0 never appeared")
        time.sleep(0.05)
    sh("nsenter", "-t", pid, "-n", "ip", "addr", "replace", f"{m.address}/24", "dev", "host0")
    sh("nsenter", "-t", pid, "-n", "ip", "link", "set", "host0", "up")
    sh("nsenter", "-t", pid, "-n", "ip", "route", "replace", "default", "via", HOST_IP)
    # 3. sshd answers with the host key we generated
    while True:
        if not pid_alive(m.nspawn_pid):
            raise boot_failure(m, "systemd-nspawn exited")
        key = keyscan(m.address, timeout=1)
        if key == m.host_key:
            break
        if key is not None:
            raise LabError(f"{m.address} presents host key {key}, expected {m.host_key} "
                           "(address clash with something else on the bridge?)")
        if time.monotonic() > deadline:
            raise boot_failure(m, "sshd did not answer")
        time.sleep(0.2)
    make_cgroups_writable(m)
    # 4. systemd finished booting
    left = max(5, int(deadline - time.monotonic()))
    try:
        p = subprocess.run(ssh_base_args() + [f"root@{m.address}",
                                              f"timeout {left} systemctl is-system-running --wait"],
                           capture_output=True, text=True, timeout=left + 10)
    except subprocess.TimeoutExpired:
        raise boot_failure(m, "systemctl is-system-running --wait timed out") from None
    st = p.stdout.strip()
    if st == "degraded":
        failed = subprocess.run(ssh_base_args() + [f"root@{m.address}", "systemctl --failed --no-legend --plain"],
                                capture_output=True, text=True, timeout=30).stdout.split()[::4]
        log(f"{m.name}: system degraded, failed units: {' '.join(failed) or '?'}")
    elif st != "running":
        raise boot_failure(m, f"systemctl is-system-running says {st!r} {p.stderr.strip()}")
    log(f"{m.name} ready ({st}) at {m.address}")


def make_cgroups_writable(m: Machine) -> None:
    """nspawn mounts the cgroup v1 controller hierarchies read-only, so docker/runc cannot
    create container cgroups ("mkdir /sys/fs/cgroup/cpuset/docker: read-only file system").
    The machine runs in its own cgroup in every hierarchy and in a cgroup namespace, so its
    view is its own subtree: remount those rw from inside its mount namespace."""
    pid = str(m.pid)
    ro = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        if right.split()[0] == "cgroup" and f[4].startswith("/sys/fs/cgroup/") \
                and "ro" in f[5].split(","):
            ro.append(f[4])
    for mp in ro:
        sh("nsenter", "-t", pid, "-m", "mount", "-o", "remount,bind,rw", mp)


def wait_all(machines: list[Machine]) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    with ThreadPoolExecutor(max_workers=len(machines)) as ex:
        futs = [ex.submit(wait_one, m, deadline) for m in machines]
        errors = []
        for f in futs:
            try:
                f.result()
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
    if errors:
        raise LabError("\n\n".join(errors))


def stop_machines(state: dict) -> None:
    """Stop every lab machine: an orderly poweroff through nspawn, then SIGKILL for what is left
    (including machines whose nspawn died), and remove their cgroups."""
    # machine name -> live nspawn pid (by command line, plus what state.json recorded)
    nspawn = {}
    for p in lab_nspawn_pids():
        for a in cmdline(p):
            if a.startswith("--machine="):
                nspawn[host_of_machine(a.split("=", 1)[1])] = p
    machines = [*state.get("hosts", []), *state.get("spares", [])]
    for h in machines:
        if pid_alive(h.get("nspawnPid")):
            nspawn.setdefault(h["name"], h["nspawnPid"])
    # every machine process (and docker containers inside) lives in our per-machine cgroups
    members = lab_cgroup_members()
    for h in machines:
        if pid_alive(h.get("pid")):
            members.setdefault(h["name"], set()).add(h["pid"])
    # a machine whose nspawn died (e.g. SIGKILLed) keeps running, reparented to PID 1, and
    # nobody can power it off cleanly any more: kill it right away
    orphans = {p for name, ps in members.items() if name not in nspawn for p in ps}
    kill_all(orphans, signal.SIGKILL)
    if orphans:
        log(f"killed {len(orphans)} process(es) of machines without nspawn")
    if nspawn:
        log(f"stopping {len(nspawn)} machine(s)")
    kill_all(set(nspawn.values()), signal.SIGTERM)  # nspawn: orderly container poweroff
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and (any(pid_alive(p) for p in nspawn.values())
                                           or lab_cgroup_members()):
        time.sleep(0.2)
    for _ in range(3):
        leftovers = {p for p in nspawn.values() if pid_alive(p)} | set(lab_nspawn_pids()) \
            | {p for ps in lab_cgroup_members().values() for p in ps}
        if not leftovers:
            break
        log(f"killing leftovers: {sorted(leftovers)}")
        kill_all(leftovers, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(p) for p in leftovers):
            time.sleep(0.1)
    for pid in list(CHILDREN):
        with contextlib.suppress(Exception):
            CHILDREN[pid].wait(timeout=1)
        CHILDREN.pop(pid, None)
    still = sorted({p for ps in lab_cgroup_members().values() for p in ps} | set(lab_nspawn_pids()))
    if still:
        raise LabError(f"processes refuse to die: {still}")
    for root in cgroup_roots():
        for cg in root.glob(CGROUP_PREFIX + "*"):
            remove_cgroup_tree(cg)
