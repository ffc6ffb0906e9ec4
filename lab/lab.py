"""kube-hardway local test lab (Python 3.11 stdlib only, runs as root).

Creates N Debian bookworm machines with systemd-nspawn on a private bridge so the
Pulumi program can deploy etcd/Kubernetes onto them over SSH.

CLI:  python3 -m lab up [--hosts N] | down | status
API:  from lab import lab; lab.up(hosts=3) / lab.down() / lab.status() / lab.run(name, cmd)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# --------------------------------------------------------------------------- constants

STATE_DIR = Path("/var/lib/kube-hardway-lab")
CACHE_DIR = Path("/var/cache/kube-hardway-lab")
STATE_FILE = STATE_DIR / "state.json"
MACHINES_DIR = STATE_DIR / "machines"
ARTIFACTS_DIR = STATE_DIR / "artifacts"
ARTIFACTS_STAMP = STATE_DIR / "artifacts.stamp"
# Release files the registries lack (flannel, cri-dockerd, Kubernetes 1.24, images, a newer etcd),
# built from upstream sources; a user's clone has none (see ../shared/lab-artifacts/README.md).
SHARED_ARTIFACTS = Path(os.environ.get("KH_LAB_SHARED_ARTIFACTS",
                                       Path(__file__).resolve().parent.parent.parent / "shared" / "lab-artifacts"))
SHARED_UNPACKED = STATE_DIR / "shared-artifacts"
KEY_FILE = STATE_DIR / "id_ed25519"
KNOWN_HOSTS = STATE_DIR / "known_hosts"
LOCK_FILE = STATE_DIR / ".lock"
REPO_ROOT = Path(__file__).resolve().parent.parent
PULUMI_CONFIG = REPO_ROOT / "Pulumi.lab.yaml"

SUITE = "bookworm"
MIRROR = os.environ.get("KH_LAB_MIRROR", "http://deb.debian.org/debian")
PACKAGES = sorted([
    "systemd", "systemd-sysv", "dbus", "openssh-server", "etcd-server", "etcd-client",
    "docker.io", "iptables", "iproute2", "ca-certificates", "curl", "procps", "tar",
    "gzip", "sudo", "iputils-ping",
])
# Bump when customize_rootfs() changes so old cache entries are not reused.
RECIPE_REVISION = "1"

BRIDGE = "khlab0"
NET_PREFIX = "10.88.0."
HOST_IP = NET_PREFIX + "1"
NAME_PREFIX = "kh-lab-"
CGROUP_PREFIX = "kube-hardway-lab."
MAX_HOSTS = 40
BOOT_TIMEOUT = float(os.environ.get("KH_LAB_BOOT_TIMEOUT", "240"))
STOP_TIMEOUT = float(os.environ.get("KH_LAB_STOP_TIMEOUT", "20"))
# extra systemd-nspawn options: let runc/dockerd use keyrings and bpf (device cgroup / seccomp)
NSPAWN_EXTRA: list[str] = ["--system-call-filter=@keyring bpf"]

PREREQS = [  # (binary, how to get it)
    ("systemd-nspawn", "apt-get install systemd-container"),
    ("debootstrap", "apt-get install debootstrap"),
    ("ip", "apt-get install iproute2"),
    ("nsenter", "apt-get install util-linux"),
    ("mount", "apt-get install mount"),
    ("umount", "apt-get install mount"),
    ("ssh-keygen", "apt-get install openssh-client"),
    ("ssh-keyscan", "apt-get install openssh-client"),
    ("ssh", "apt-get install openssh-client"),
    ("systemctl", "apt-get install systemd"),
]

_T0 = time.monotonic()
_CHILDREN: dict[int, subprocess.Popen] = {}  # nspawn processes started by this Python process


class LabError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[lab {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def sh(*argv, check=True, capture=True, timeout=None, input=None, **kw) -> subprocess.CompletedProcess:
    argv = [str(a) for a in argv]
    p = subprocess.run(argv, capture_output=capture, text=True, timeout=timeout, input=input, **kw)
    if check and p.returncode != 0:
        raise LabError(f"command failed ({p.returncode}): {' '.join(argv)}\n{(p.stderr or '').strip()}")
    return p


# --------------------------------------------------------------------------- prerequisites

def check_prereqs(for_up: bool = True) -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (e.g. `sudo python3 -m lab ...`)")
    needed = PREREQS if for_up else [p for p in PREREQS if p[0] in ("ip", "umount")]
    missing = {}
    for binary, fix in needed:
        if shutil.which(binary) is None:
            missing.setdefault(fix, []).append(binary)
    for fix, bins in missing.items():
        problems.append(f"missing {', '.join(bins)}: install with `{fix}`")
    if for_up and "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("kernel lacks overlayfs: try `modprobe overlay`")
    if problems:
        hint = ("\n(all at once: apt-get install systemd-container debootstrap iproute2 util-linux "
                "mount openssh-client)") if missing else ""
        raise LabError("prerequisites not met:\n  - " + "\n  - ".join(problems) + hint)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_lab_lock_depth = threading.local()


@contextlib.contextmanager
def lab_lock():
    """Process-wide exclusive lock (re-entrant within a thread)."""
    depth = getattr(_lab_lock_depth, "n", 0)
    if depth:
        _lab_lock_depth.n += 1
        try:
            yield
        finally:
            _lab_lock_depth.n -= 1
        return
    with _locked(LOCK_FILE):
        _lab_lock_depth.n = 1
        try:
            yield
        finally:
            _lab_lock_depth.n = 0


# --------------------------------------------------------------------------- rootfs cache

def rootfs_key() -> str:
    material = "\n".join([SUITE, MIRROR, *PACKAGES, "recipe=" + RECIPE_REVISION])
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def rootfs_path() -> Path:
    return CACHE_DIR / f"rootfs-{rootfs_key()}"


def ensure_rootfs() -> Path:
    final = rootfs_path()
    if (final / ".kh-lab-rootfs").exists():
        return final
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE_DIR / ".lock"):
        if (final / ".kh-lab-rootfs").exists():
            return final
        # remove leftovers of interrupted builds (we hold the cache lock, so nobody is building)
        for stale in CACHE_DIR.glob(".tmp-rootfs-*"):
            log(f"removing interrupted build {stale}")
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-rootfs-{rootfs_key()}-", dir=CACHE_DIR))
        os.chmod(tmp, 0o755)
        logfile = tmp.with_name(tmp.name + ".log")
        log(f"building rootfs with debootstrap into {tmp} (takes ~1 min; log: {logfile})")
        try:
            with open(logfile, "w") as lf:
                rc = subprocess.run(
                    ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                     SUITE, str(tmp), MIRROR],
                    stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            if rc != 0:
                raise LabError(f"debootstrap failed (exit {rc}); last lines of {logfile}:\n"
                               + _tail(logfile, 30))
            customize_rootfs(tmp)
            if final.exists():  # incomplete dir without marker: never reuse it
                shutil.rmtree(final)
            os.rename(tmp, final)  # atomic: a rootfs-<key> dir is always complete
            logfile.unlink(missing_ok=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"rootfs ready: {final}")
        return final


def customize_rootfs(root: Path) -> None:
    def unit_exists(unit):
        return any((root / d / unit).exists() for d in ("lib/systemd/system", "etc/systemd/system",
                                                         "usr/lib/systemd/system"))

    # our Pulumi program installs its own etcd unit; do not mask (a mask symlink
    # /etc/systemd/system/etcd.service -> /dev/null would swallow a unit written there)
    for unit in ["etcd.service", "apt-daily.timer", "apt-daily-upgrade.timer", "fstrim.timer",
                 "e2scrub_all.timer", "e2scrub_reap.service"]:
        if unit_exists(unit):
            sh("systemctl", f"--root={root}", "--quiet", "disable", unit)
    for unit in ["containerd.service", "docker.service", "docker.socket", "ssh.service"]:
        if unit_exists(unit):
            sh("systemctl", f"--root={root}", "--quiet", "enable", unit)

    (root / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config.d/kh-lab.conf").write_text(
        "# kube-hardway lab\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "UseDNS no\n")
    for k in (root / "etc/ssh").glob("ssh_host_*"):
        k.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (root / "etc/hostname").write_text("kh-lab\n")
    resolv = root / "etc/resolv.conf"
    if resolv.exists() or resolv.is_symlink():
        resolv.unlink()
    resolv.write_text("# kube-hardway lab: no DNS (isolated bridge)\n")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    (root / ".kh-lab-rootfs").write_text(json.dumps({
        "key": rootfs_key(), "suite": SUITE, "mirror": MIRROR, "packages": PACKAGES,
        "recipe": RECIPE_REVISION, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1) + "\n")


def debian_version(root: Path, package: str) -> str:
    status = (root / "var/lib/dpkg/status").read_text()
    for para in status.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", para, re.M):
            m = re.search(r"^Version: (\S+)$", para, re.M)
            if m:
                return m.group(1)
    raise LabError(f"package {package} not found in {root}/var/lib/dpkg/status")


def upstream_version(debver: str) -> str:
    v = debver.split(":", 1)[-1]          # epoch
    if "-" in v:
        v = v.rsplit("-", 1)[0]           # debian revision
    return re.split(r"[+~]", v, maxsplit=1)[0]  # +dfsg, ~rc repack suffixes


# --------------------------------------------------------------------------- artifacts

def ensure_artifacts(root: Path) -> str:
    ver = upstream_version(debian_version(root, "etcd-server"))
    name = f"etcd-v{ver}-linux-amd64"
    tarball = ARTIFACTS_DIR / f"{name}.tar.gz"
    sums = ARTIFACTS_DIR / "SHA256SUMS"
    stamp = f"{rootfs_key()} {ver}\n"
    if (tarball.exists() and sums.exists() and ARTIFACTS_STAMP.exists()
            and ARTIFACTS_STAMP.read_text() == stamp):
        return ver
    log(f"building artifact bundle {tarball}")
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS_DIR / f"etcd-v{ver}-linux-amd64.tar.gz").unlink(missing_ok=True)
    tmp = ARTIFACTS_DIR / f".{name}.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tf:
        d = tarfile.TarInfo(name)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tf.addfile(d)
        for binary in ("etcd", "etcdctl"):
            src = root / "usr/bin" / binary
            if not src.is_file():
                raise LabError(f"{src} missing in rootfs")
            ti = tf.gettarinfo(str(src), arcname=f"{name}/{binary}")
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mode = 0o755
            with open(src, "rb") as f:
                tf.addfile(ti, f)
    os.replace(tmp, tarball)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    _atomic_write(sums, f"{digest}  {tarball.name}\n")
    _atomic_write(ARTIFACTS_STAMP, stamp)
    return ver


def ensure_shared_artifacts() -> list[str]:
    """Unpack the shared lab bundle (its own unpack.sh: idempotent, verifies every sum) and link its
    files beside the etcd bundle, merging their sums into the one SHA256SUMS that
    `artifacts.source: local` reads. Returns the file names; none when there is no bundle."""
    unpack = SHARED_ARTIFACTS / "unpack.sh"
    if not unpack.is_file():
        log(f"no shared lab artifacts at {SHARED_ARTIFACTS} (set KH_LAB_SHARED_ARTIFACTS): "
            "the lab has only its own etcd bundle")
        return []
    sh("sh", str(unpack), str(SHARED_UNPACKED), timeout=600)
    shared = dict(line.split()[::-1] for line in (SHARED_UNPACKED / "SHA256SUMS").read_text().splitlines() if line.strip())
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    for name in shared:
        src, dst = SHARED_UNPACKED / name, ARTIFACTS_DIR / name
        if dst.exists() and os.path.samefile(src, dst):
            continue
        tmp = ARTIFACTS_DIR / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # another file system
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    sums = ARTIFACTS_DIR / "SHA256SUMS"
    own = [line for line in (sums.read_text().splitlines() if sums.exists() else [])
           if line.strip() and line.split()[-1] not in shared]
    merged = own + [f"{digest}  {name}" for name, digest in sorted(shared.items())]
    if not sums.exists() or sums.read_text() != "\n".join(merged) + "\n":
        _atomic_write(sums, "\n".join(merged) + "\n")
    return sorted(shared)


# --------------------------------------------------------------------------- helpers

def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _tail(path: Path, n: int = 40) -> str:
    try:
        data = Path(path).read_bytes()[-64 * 1024:].decode("utf-8", "replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    data = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", data).replace("\r", "")
    return "\n".join(data.splitlines()[-n:])


def host_name(i: int) -> str:
    return f"{NAME_PREFIX}{i}"


def host_address(i: int) -> str:
    return f"{NET_PREFIX}{10 + i}"


def ensure_lab_key() -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE_DIR, 0o755)
    if not KEY_FILE.exists():
        log(f"generating lab ssh key {KEY_FILE}")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kube-hardway-lab", "-f", KEY_FILE)
    os.chmod(KEY_FILE, 0o600)


def _pub_line(path: Path) -> str:
    """'type base64' without comment."""
    return " ".join(Path(path).read_text().split()[:2])


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    p = _CHILDREN.get(pid)
    if p is not None and p.poll() is not None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return out


def _ns(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _lab_nspawn_pids() -> list[int]:
    pids = []
    for pid in _all_pids():
        cl = _cmdline(pid)
        if cl and cl[0].endswith("systemd-nspawn") and any(a.startswith("--machine=" + NAME_PREFIX) for a in cl):
            if _pid_alive(pid):
                pids.append(pid)
    return pids


def _lab_mounts() -> list[str]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mp = line.split()[1]
        mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp)
        if mp == str(STATE_DIR) or mp.startswith(str(STATE_DIR) + "/"):
            out.append(mp)
    return out


def _links() -> list[str]:
    p = sh("ip", "-o", "link", "show", check=False)
    names = []
    for line in p.stdout.splitlines():
        m = re.match(r"\d+:\s+([^:@\s]+)", line)
        if m:
            names.append(m.group(1))
    return names


def ssh_base_args() -> list[str]:
    return ["ssh", "-i", str(KEY_FILE), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={KNOWN_HOSTS}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]


def _keyscan(address: str, timeout: int = 2) -> str | None:
    try:
        p = sh("ssh-keyscan", "-T", str(timeout), "-t", "ed25519", address, check=False,
               timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return None
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == address and parts[1] == "ssh-ed25519":
            return f"{parts[1]} {parts[2]}"
    return None


# --------------------------------------------------------------------------- state

def _load_state() -> dict | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def _public_state(state: dict) -> dict:
    return json.loads(json.dumps(state))


def _healthy(state: dict | None) -> bool:
    if not state or not state.get("hosts"):
        return False
    if state.get("rootfsKey") != rootfs_key():
        return False
    if BRIDGE not in _links():
        return False
    for h in state["hosts"]:
        if not _pid_alive(h.get("nspawnPid")) or not _pid_alive(h.get("pid")):
            return False
        if _keyscan(h["address"]) != h["hostKey"]:
            return False
    return True


# --------------------------------------------------------------------------- up

def up(hosts: int = 3) -> dict:
    """Bring up `hosts` machines (no-op if an identical healthy lab is up). Returns state dict."""
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}")
    check_prereqs(for_up=True)
    with lab_lock():
        state = _load_state()
        if state and len(state.get("hosts", [])) == hosts and _healthy(state):
            log(f"lab with {hosts} host(s) already up and healthy")
            ensure_shared_artifacts()
            write_pulumi_config(state)
            return _public_state(state)
        if state or _lab_nspawn_pids() or BRIDGE in _links() or _lab_mounts() or MACHINES_DIR.exists():
            log("tearing down existing/stale lab first")
            down()
        root = ensure_rootfs()
        etcd_version = ensure_artifacts(root)
        shared_files = ensure_shared_artifacts()
        ensure_lab_key()
        _create_bridge()
        machines = [_prepare_machine(root, i, hosts) for i in range(1, hosts + 1)]
        _write_known_hosts(machines)
        for m in machines:
            _start_machine(m)
        try:
            _wait_all(machines)
        except LabError as e:
            raise LabError(f"{e}\n(lab left running for inspection; `python3 -m lab down` cleans up)") from None
        state = {
            "hosts": [{"name": m["name"], "address": m["address"], "hostKey": m["hostKey"],
                       "pid": m["pid"], "nspawnPid": m["nspawnPid"], "machineId": m["machineId"],
                       "consoleLog": str(m["dir"] / "console.log")} for m in machines],
            "privateKeyFile": str(KEY_FILE),
            "knownHostsFile": str(KNOWN_HOSTS),
            "artifactsDir": str(ARTIFACTS_DIR),
            "etcdVersion": etcd_version,
            "sharedArtifacts": shared_files,
            "bridge": BRIDGE,
            "gateway": HOST_IP,
            "rootfs": str(root),
            "rootfsKey": rootfs_key(),
            "pulumiConfig": str(PULUMI_CONFIG),
        }
        _atomic_write(STATE_FILE, json.dumps(state, indent=2) + "\n")
        write_pulumi_config(state)
        log(f"lab up: {', '.join(h['name'] + '=' + h['address'] for h in state['hosts'])}")
        return _public_state(state)


def _create_bridge() -> None:
    links = _links()
    if BRIDGE not in links:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "flush", "dev", BRIDGE)
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def _prepare_machine(root: Path, i: int, n: int) -> dict:
    name, address = host_name(i), host_address(i)
    d = MACHINES_DIR / name
    if d.exists():
        shutil.rmtree(d)
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
    return {"name": name, "address": address, "dir": d, "root": merged, "machineId": machine_id,
            "hostKey": _pub_line(Path(str(hk) + ".pub")), "index": i}


def _write_known_hosts(machines: list[dict]) -> None:
    _atomic_write(KNOWN_HOSTS, "".join(f"{m['name']},{m['address']} {m['hostKey']}\n" for m in machines))


def _nspawn_argv(m: dict) -> list[str]:
    argv = ["systemd-nspawn", "-b", "--keep-unit", "--register=no", "--capability=all",
            f"--network-bridge={BRIDGE}", f"--machine={m['name']}", f"--hostname={m['name']}",
            f"--uuid={m['machineId']}", f"--directory={m['root']}",
            "--console=read-only", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
            # docker's overlay2 cannot sit on the machine's overlayfs root: give it real dirs
            f"--bind={m['dir'] / 'docker'}:/var/lib/docker",
            f"--bind={m['dir'] / 'containerd'}:/var/lib/containerd",
            ]
    argv += NSPAWN_EXTRA
    if Path("/dev/net/tun").exists():
        argv.append("--bind=/dev/net/tun")  # for flannel & co later
    return argv


def _cgroup_roots() -> list[Path]:
    """Our current cgroup dir in every mounted hierarchy (v1 controllers, name=systemd, v2)."""
    mounts = {}
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mp, fstype, opts = line.split()[:4]
        if fstype == "cgroup2":
            mounts.setdefault("", mp)
        elif fstype == "cgroup":
            known = {o for o in opts.split(",") if o not in ("rw", "ro", "nosuid", "nodev", "noexec",
                                                              "relatime", "noatime", "clone_children",
                                                              "xattr", "noprefix")}
            mounts.setdefault(",".join(sorted(known)), mp)
    out = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _hid, ctrls, path = line.split(":", 2)
        key = ",".join(sorted(ctrls.split(","))) if ctrls else ""
        if key in mounts:
            out.append(Path(mounts[key] + path.rstrip("/")))
    return out


def _machine_cgroups(name: str) -> list[Path]:
    return [r / f"{CGROUP_PREFIX}{name}" for r in _cgroup_roots()]


def _lab_cgroup_members() -> dict[str, set[int]]:
    """machine name -> live pids found in its cgroup trees (all hierarchies)."""
    out: dict[str, set[int]] = {}
    for root in _cgroup_roots():
        for top in root.glob(CGROUP_PREFIX + "*"):
            name = top.name[len(CGROUP_PREFIX):]
            for d, _subdirs, files in os.walk(top):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError, ValueError):
                        for p in Path(d, "cgroup.procs").read_text().split():
                            if _pid_alive(int(p)):
                                out.setdefault(name, set()).add(int(p))
    return out


def _kill(pids, sig) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def _remove_cgroup_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for d, _subdirs, _files in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _start_machine(m: dict) -> None:
    # Without systemd on the host, --keep-unit/--register=no leaves every nspawn in the
    # same cgroup and all container systemds fight over one "payload" subtree
    # (random 219/CGROUP unit failures). Give each machine its own cgroup.
    cgroups = _machine_cgroups(m["name"])
    for cg in cgroups:
        _remove_cgroup_tree(cg)
        cg.mkdir(exist_ok=True)
        for f in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset children start empty
            if (cg / f).exists() and not (cg / f).read_text().strip():
                (cg / f).write_text((cg.parent / f).read_text())

    def enter_cgroups():
        for cg in cgroups:
            with open(cg / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    logf = open(m["dir"] / "console.log", "ab")
    p = subprocess.Popen(_nspawn_argv(m), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True, preexec_fn=enter_cgroups)
    logf.close()
    _CHILDREN[p.pid] = p
    m["nspawnPid"] = p.pid
    m["pid"] = None
    log(f"started {m['name']} (nspawn pid {p.pid})")


def _boot_failure(m: dict, why: str) -> LabError:
    return LabError(f"machine {m['name']} ({m['address']}) failed to boot: {why}\n"
                    f"--- last lines of {m['dir'] / 'console.log'} ---\n{_tail(m['dir'] / 'console.log')}")


def _wait_one(m: dict, deadline: float) -> None:
    my_pidns = _ns("self", "pid")
    # 1. container init = child of nspawn living in a new pid namespace
    while True:
        if not _pid_alive(m["nspawnPid"]):
            raise _boot_failure(m, "systemd-nspawn exited")
        for c in _children(m["nspawnPid"]):
            ns = _ns(c, "pid")
            if ns and ns != my_pidns:
                m["pid"] = c
        if m["pid"]:
            break
        if time.monotonic() > deadline:
            raise _boot_failure(m, "no container init process appeared")
        time.sleep(0.05)
    # 2. network: wait for host0 then configure it from outside
    pid = str(m["pid"])
    while sh("nsenter", "-t", pid, "-n", "ip", "link", "show", "host0", check=False).returncode != 0:
        if not _pid_alive(m["nspawnPid"]):
            raise _boot_failure(m, "systemd-nspawn exited")
        if time.monotonic() > deadline:
            raise _boot_failure(m, "interface host0 never appeared")
        time.sleep(0.05)
    sh("nsenter", "-t", pid, "-n", "ip", "addr", "replace", f"{m['address']}/24", "dev", "host0")
    sh("nsenter", "-t", pid, "-n", "ip", "link", "set", "host0", "up")
    sh("nsenter", "-t", pid, "-n", "ip", "route", "replace", "default", "via", HOST_IP)
    # 3. sshd answers with the host key we generated
    while True:
        if not _pid_alive(m["nspawnPid"]):
            raise _boot_failure(m, "systemd-nspawn exited")
        key = _keyscan(m["address"], timeout=1)
        if key == m["hostKey"]:
            break
        if key is not None:
            raise LabError(f"{m['address']} presents host key {key}, expected {m['hostKey']} "
                           "(address clash with something else on the bridge?)")
        if time.monotonic() > deadline:
            raise _boot_failure(m, "sshd did not answer")
        time.sleep(0.2)
    _make_cgroups_writable(m)
    # 4. systemd finished booting
    left = max(5, int(deadline - time.monotonic()))
    try:
        p = subprocess.run(ssh_base_args() + [f"root@{m['address']}",
                                              f"timeout {left} systemctl is-system-running --wait"],
                           capture_output=True, text=True, timeout=left + 10)
    except subprocess.TimeoutExpired:
        raise _boot_failure(m, "systemctl is-system-running --wait timed out") from None
    st = p.stdout.strip()
    if st == "degraded":
        failed = run(m["address"], "systemctl --failed --no-legend --plain | awk '{print $1}'").stdout.split()
        log(f"{m['name']}: system degraded, failed units: {' '.join(failed) or '?'}")
    elif st != "running":
        raise _boot_failure(m, f"systemctl is-system-running says {st!r} {p.stderr.strip()}")
    log(f"{m['name']} ready ({st}) at {m['address']}")


def _make_cgroups_writable(m: dict) -> None:
    """nspawn mounts the cgroup v1 controller hierarchies read-only, so docker/runc cannot
    create container cgroups ("mkdir /sys/fs/cgroup/cpuset/docker: read-only file system").
    The machine runs in its own cgroup in every hierarchy and in a cgroup namespace, so its
    view is its own subtree: remount those rw from inside its mount namespace."""
    pid = str(m["pid"])
    ro = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        if right.split()[0] == "cgroup" and f[4].startswith("/sys/fs/cgroup/") \
                and "ro" in f[5].split(","):
            ro.append(f[4])
    for mp in ro:
        sh("nsenter", "-t", pid, "-m", "mount", "-o", "remount,bind,rw", mp)


def _wait_all(machines: list[dict]) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    with ThreadPoolExecutor(max_workers=len(machines)) as ex:
        futs = [ex.submit(_wait_one, m, deadline) for m in machines]
        errors = []
        for f in futs:
            try:
                f.result()
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
    if errors:
        raise LabError("\n\n".join(errors))


# --------------------------------------------------------------------------- Pulumi config

def _yaml_scalar(v: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./@+=-][A-Za-z0-9_./@+= -]*", v) and not re.fullmatch(
            r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|true|false|yes|no|on|off|null|~", v, re.I) \
            and not v.endswith(" "):
        return v
    return json.dumps(v)


def etcd_count(n: int) -> int:
    return n if n % 2 else n - 1


def write_pulumi_config(state: dict) -> None:
    hosts = state["hosts"]
    n_etcd = etcd_count(len(hosts))
    lines = [
        "# generated by `python3 -m lab up` — rewritten on every `up`; edit lab/lab.py, not this file",
        "config:",
        "  kube-hardway:ssh:",
        "    user: root",
        f"    privateKeyFile: {_yaml_scalar(state['privateKeyFile'])}",
        "  kube-hardway:hosts:",
    ]
    for i, h in enumerate(hosts):
        roles = (["etcd"] if i < n_etcd else []) + (["master"] if i == 0 else []) + ["node"]
        lines += [
            f"    - name: {_yaml_scalar(h['name'])}",
            f"      address: {_yaml_scalar(h['address'])}",
            f"      roles: [{', '.join(roles)}]",
            f"      hostKey: {_yaml_scalar(h['hostKey'])}",
        ]
    lines += [
        "  kube-hardway:versions:",
        f"    etcd: {_yaml_scalar(state['etcdVersion'])}",
        "  kube-hardway:artifacts:",
        "    source: local",
        f"    dir: {_yaml_scalar(state['artifactsDir'])}",
    ]
    # keep the passphrase salt `pulumi stack init` added, or the real CLI could not read the stack
    if PULUMI_CONFIG.exists():
        salt = [ln for ln in PULUMI_CONFIG.read_text().splitlines() if ln.startswith("encryptionsalt:")]
        lines[1:1] = salt
    _atomic_write(PULUMI_CONFIG, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- down

def down() -> None:
    """Stop all lab machines and remove everything except the rootfs cache, lab key and artifacts."""
    check_prereqs(for_up=False)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with lab_lock():
        state = _load_state() or {}
        # machine name -> live nspawn pid (by command line, plus what state.json recorded)
        nspawn = {}
        for p in _lab_nspawn_pids():
            for a in _cmdline(p):
                if a.startswith("--machine="):
                    nspawn[a.split("=", 1)[1]] = p
        for h in state.get("hosts", []):
            if _pid_alive(h.get("nspawnPid")):
                nspawn.setdefault(h["name"], h["nspawnPid"])
        # every machine process (and docker containers inside) lives in our per-machine cgroups
        members = _lab_cgroup_members()
        for h in state.get("hosts", []):
            if _pid_alive(h.get("pid")):
                members.setdefault(h["name"], set()).add(h["pid"])
        # a machine whose nspawn died (e.g. SIGKILLed) keeps running, reparented to PID 1, and
        # nobody can power it off cleanly any more: kill it right away
        orphans = {p for name, ps in members.items() if name not in nspawn for p in ps}
        _kill(orphans, signal.SIGKILL)
        if orphans:
            log(f"killed {len(orphans)} process(es) of machines without nspawn")
        if nspawn:
            log(f"stopping {len(nspawn)} machine(s)")
        _kill(set(nspawn.values()), signal.SIGTERM)  # nspawn: orderly container poweroff
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and (any(_pid_alive(p) for p in nspawn.values())
                                               or _lab_cgroup_members()):
            time.sleep(0.2)
        for _ in range(3):
            leftovers = {p for p in nspawn.values() if _pid_alive(p)} | set(_lab_nspawn_pids()) \
                | {p for ps in _lab_cgroup_members().values() for p in ps}
            if not leftovers:
                break
            log(f"killing leftovers: {sorted(leftovers)}")
            _kill(leftovers, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_pid_alive(p) for p in leftovers):
                time.sleep(0.1)
        for pid in list(_CHILDREN):
            with contextlib.suppress(Exception):
                _CHILDREN[pid].wait(timeout=1)
            _CHILDREN.pop(pid, None)
        still = sorted({p for ps in _lab_cgroup_members().values() for p in ps} | set(_lab_nspawn_pids()))
        if still:
            raise LabError(f"processes refuse to die: {still}")
        for root in _cgroup_roots():
            for cg in root.glob(CGROUP_PREFIX + "*"):
                _remove_cgroup_tree(cg)
        # mounts (deepest first)
        for mp in sorted(_lab_mounts(), key=lambda s: s.count("/"), reverse=True):
            if sh("umount", mp, check=False).returncode != 0:
                sh("umount", "-l", mp, check=False)
        if _lab_mounts():
            raise LabError(f"still mounted, not deleting machine dirs: {_lab_mounts()}")
        # network
        for link in _links():
            if link.startswith("vb-" + NAME_PREFIX) or link == BRIDGE:
                sh("ip", "link", "del", link, check=False)
        # files
        if MACHINES_DIR.exists():
            shutil.rmtree(MACHINES_DIR)
        for f in (STATE_FILE, KNOWN_HOSTS):
            f.unlink(missing_ok=True)
        log("lab is down")


# --------------------------------------------------------------------------- status / run

def status() -> dict:
    state = _load_state()
    links = _links() if shutil.which("ip") else []
    result = {"up": False, "hosts": [], "bridge": BRIDGE if BRIDGE in links else None,
              "rootfsCache": str(rootfs_path()), "rootfsCached": (rootfs_path() / ".kh-lab-rootfs").exists(),
              "stateFile": str(STATE_FILE) if state else None}
    if not state:
        stray = _lab_nspawn_pids()
        if stray:
            result["strayNspawnPids"] = stray
        leftovers = ([f"bridge {BRIDGE}"] if BRIDGE in links else []) + _lab_mounts() \
            + ([str(MACHINES_DIR)] if MACHINES_DIR.exists() else [])
        if leftovers:
            result["leftovers"] = leftovers
        return result
    ok = True
    for h in state.get("hosts", []):
        running = _pid_alive(h.get("nspawnPid")) and _pid_alive(h.get("pid"))
        key = _keyscan(h["address"]) if running else None
        ssh_ok = key == h["hostKey"]
        ok = ok and running and ssh_ok
        result["hosts"].append({**h, "running": running, "ssh": ssh_ok})
    result["up"] = ok and bool(result["hosts"])
    for k in ("privateKeyFile", "knownHostsFile", "artifactsDir", "etcdVersion", "rootfs"):
        result[k] = state.get(k)
    return result


def _resolve(host: str) -> str:
    state = _load_state() or {}
    for h in state.get("hosts", []):
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


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lab", description="kube-hardway local nspawn lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="create/boot the lab machines (no-op if already up)")
    p_up.add_argument("--hosts", type=int, default=3)
    sub.add_parser("down", help="stop machines, remove per-machine state, bridge and mounts")
    p_st = sub.add_parser("status", help="show machines and whether ssh answers")
    p_st.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            t = time.monotonic()
            info = up(hosts=args.hosts)
            for h in info["hosts"]:
                print(f"{h['name']:<10} {h['address']:<12} pid {h['pid']}")
            print(f"ssh: ssh -i {info['privateKeyFile']} -o UserKnownHostsFile={info['knownHostsFile']} "
                  f"root@{info['hosts'][0]['address']}")
            print(f"pulumi config: {info['pulumiConfig']}   (up took {time.monotonic() - t:.1f}s)")
        elif args.cmd == "down":
            down()
        elif args.cmd == "status":
            st = status()
            if args.json:
                print(json.dumps(st, indent=2))
            elif not st["hosts"]:
                print("lab is down" + (f" (stray nspawn pids: {st['strayNspawnPids']})"
                                       if st.get("strayNspawnPids") else ""))
                if st.get("leftovers"):
                    print(f"leftovers (run `python3 -m lab down`): {', '.join(st['leftovers'])}")
                print(f"rootfs cache: {st['rootfsCache']} ({'present' if st['rootfsCached'] else 'not built'})")
            else:
                print(f"lab is {'UP' if st['up'] else 'DEGRADED'}  bridge={st['bridge']}  etcd={st.get('etcdVersion')}")
                for h in st["hosts"]:
                    print(f"  {h['name']:<10} {h['address']:<12} pid {h['pid']!s:<8} "
                          f"{'running' if h['running'] else 'STOPPED':<8} ssh {'ok' if h['ssh'] else 'NO'}")
            return 0 if st["up"] or not st["hosts"] else 1
    except LabError as e:
        print(f"lab: error: {e}", file=sys.stderr)
        return 1
    return 0
