"""Finding the lab's processes, namespaces, mounts and cgroups from /proc, so `down` can stop
machines whose nspawn is gone and leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

from lab.common import CGROUP_PREFIX, MACHINE_PREFIX, STATE_DIR

CHILDREN: dict[int, subprocess.Popen] = {}  # nspawn processes started by this Python process


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    p = CHILDREN.get(pid)
    if p is not None and p.poll() is not None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return out


def namespace(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def lab_nspawn_pids() -> list[int]:
    pids = []
    for pid in all_pids():
        cl = cmdline(pid)
        if cl and cl[0].endswith("systemd-nspawn") and any(a.startswith("--machine=" + MACHINE_PREFIX) for a in cl):
            if pid_alive(pid):
                pids.append(pid)
    return pids


def lab_mounts() -> list[str]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mp = line.split()[1]
        mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp)
        if mp == str(STATE_DIR) or mp.startswith(str(STATE_DIR) + "/"):
            out.append(mp)
    return out


def cgroup_roots() -> list[Path]:
    """Our current cgroup dir in every mounted hierarchy (v1 controllers, name=systemd, v2)."""
    mounts: dict[str, str] = {}
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


def machine_cgroups(name: str) -> list[Path]:
    return [r / f"{CGROUP_PREFIX}{name}" for r in cgroup_roots()]


def lab_cgroup_members() -> dict[str, set[int]]:
    """machine name -> live pids found in its cgroup trees (all hierarchies)."""
    out: dict[str, set[int]] = {}
    for root in cgroup_roots():
        for top in root.glob(CGROUP_PREFIX + "*"):
            name = top.name[len(CGROUP_PREFIX):]
            for d, _subdirs, files in os.walk(top):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError, ValueError):
                        for p in Path(d, "cgroup.procs").read_text().split():
                            if pid_alive(int(p)):
                                out.setdefault(name, set()).add(int(p))
    return out


def kill_all(pids, sig) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def remove_cgroup_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for d, _subdirs, _files in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(d)
