"""What every part of the lab shares: paths, addresses, logging, running commands, the lock, the
lab's SSH key and state file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

# Labs side by side (the lab tests run two at once): KH_LAB_INSTANCE=N (1-9, default 1) gives lab N
# its own state dir, bridge, subnet, nspawn machine names and cgroups. Its machines' host names are
# kh-lab-1.. in every lab, so a stack and its tests read the same in each; its stack is `lab<N>`
# (`lab` for lab 1), in Pulumi.lab<N>.yaml.
INSTANCE = int(os.environ.get("KH_LAB_INSTANCE") or "1")
if not 1 <= INSTANCE <= 9:
    raise SystemExit(f"KH_LAB_INSTANCE={INSTANCE}: a lab instance is 1-9")
_SUFFIX = "" if INSTANCE == 1 else str(INSTANCE)
STACK = f"lab{_SUFFIX}"
# lab 1's: the release files every lab deploys from (built once, under a lock of their own)
SHARED_STATE_DIR = Path("/var/lib/kube-hardway-lab")
STATE_DIR = Path(f"/var/lib/kube-hardway-lab{_SUFFIX}")
STATE_FILE = STATE_DIR / "state.json"
MACHINES_DIR = STATE_DIR / "machines"
KEY_FILE = STATE_DIR / "id_ed25519"
KNOWN_HOSTS = STATE_DIR / "known_hosts"
LOCK_FILE = STATE_DIR / ".lock"
REPO_ROOT = Path(__file__).resolve().parent.parent
PULUMI_CONFIG = REPO_ROOT / f"Pulumi.{STACK}.yaml"


BRIDGE = f"khlab{INSTANCE - 1}"
NET_PREFIX = f"10.88.{INSTANCE - 1}."
HOST_IP = NET_PREFIX + "1"
NAME_PREFIX = "kh-lab-"                         # the machines' host names, in every lab
MACHINE_PREFIX = f"kh-lab{_SUFFIX}-"            # their nspawn machine names (and veths vb-<name>): this lab's
CGROUP_PREFIX = f"kube-hardway-lab{_SUFFIX}."
MAX_HOSTS = 40
BOOT_TIMEOUT = float(os.environ.get("KH_LAB_BOOT_TIMEOUT", "240"))
STOP_TIMEOUT = float(os.environ.get("KH_LAB_STOP_TIMEOUT", "20"))
# Each machine's writable layer, Docker and containerd dirs: a tmpfs of their own (the default) or
# the host's disk (`KH_LAB_DISK=1`). Real hosts each have a disk; lab machines on one shared disk
# queue every fsync behind the others' writes (etcd saw 2-8 s fsyncs while the release copies to all
# machines were being written back), a bottleneck no real cluster has. See README, Measured.
MACHINE_DISK = os.environ.get("KH_LAB_DISK", "") not in ("", "0")
MACHINE_TMPFS_SIZE = os.environ.get("KH_LAB_TMPFS_SIZE", "12g")   # a cap, not a reservation: a machine holds ~1-2 GB


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


class LabError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[lab {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def sh(*argv, check=True, capture=True, timeout=None, input=None, **kw) -> subprocess.CompletedProcess:
    args = [str(a) for a in argv]
    p = subprocess.run(args, capture_output=capture, text=True, timeout=timeout, input=input, **kw)
    if check and p.returncode != 0:
        raise LabError(f"command failed ({p.returncode}): {' '.join(argv)}\n{(p.stderr or '').strip()}")
    return p


def check_prereqs(for_up: bool = True) -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (e.g. `sudo python3 -m lab ...`)")
    needed = PREREQS if for_up else [p for p in PREREQS if p[0] in ("ip", "umount")]
    missing: dict[str, list[str]] = {}
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
def locked(path: Path):
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
    with locked(LOCK_FILE):
        _lab_lock_depth.n = 1
        try:
            yield
        finally:
            _lab_lock_depth.n = 0


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def tail(path: Path, n: int = 40) -> str:
    try:
        data = Path(path).read_bytes()[-64 * 1024:].decode("utf-8", "replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    data = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", data).replace("\r", "")
    return "\n".join(data.splitlines()[-n:])


def host_name(i: int) -> str:
    return f"{NAME_PREFIX}{i}"


def machine_name(host: str) -> str:
    """The nspawn machine of host `host` in this lab."""
    return MACHINE_PREFIX + host.removeprefix(NAME_PREFIX)


def host_of_machine(machine: str) -> str:
    return NAME_PREFIX + machine.removeprefix(MACHINE_PREFIX)


def host_address(i: int) -> str:
    return f"{NET_PREFIX}{10 + i}"


def ensure_lab_key() -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE_DIR, 0o755)
    if not KEY_FILE.exists():
        log(f"generating lab ssh key {KEY_FILE}")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kube-hardway-lab", "-f", KEY_FILE)
    os.chmod(KEY_FILE, 0o600)


def pub_line(path: Path) -> str:
    """'type base64' without comment."""
    return " ".join(Path(path).read_text().split()[:2])


def ssh_base_args() -> list[str]:
    return ["ssh", "-i", str(KEY_FILE), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={KNOWN_HOSTS}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]


def keyscan(address: str, timeout: int = 2) -> str | None:
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


def load_state() -> dict | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def public_state(state: dict) -> dict:
    return json.loads(json.dumps(state))
