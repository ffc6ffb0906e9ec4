"""The machines' root file system: a debootstrapped Debian image, customized once, cached by the
hash of its recipe, shared read-only by every machine (each boots from an overlay on it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from lab.common import LabError, locked, log, sh, tail

CACHE_DIR = Path("/var/cache/kube-hardway-lab")
SUITE = "bookworm"
MIRROR = os.environ.get("KH_LAB_MIRROR", "http://deb.debian.org/debian")
PACKAGES = sorted([
    "systemd", "systemd-sysv", "dbus", "openssh-server", "etcd-server", "etcd-client",
    "docker.io", "iptables", "iproute2", "ca-certificates", "curl", "procps", "tar",
    "gzip", "sudo", "iputils-ping", "docker-registry",
])
LAB_RUNC = "/usr/local/bin/kh-lab-runc"
LAB_RUNC_SCRIPT = """#!/bin/sh
# kube-hardway lab only: runc with negative oomScoreAdj values raised to 0 (no CAP_SYS_RESOURCE here)
bundle=
prev=
for arg in "$@"; do
  case "$prev" in --bundle|-b) bundle=$arg ;; esac
  case "$arg" in --bundle=*) bundle=${arg#--bundle=} ;; esac
  prev=$arg
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  sed -i 's/"oomScoreAdj":-[0-9]*/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec /usr/sbin/runc "$@"
"""
# Bump when customize_rootfs() changes so old cache entries are not reused.
RECIPE_REVISION = "4"


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
    with locked(CACHE_DIR / ".lock"):
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
                               + tail(logfile, 30))
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

    # The VM lacks CAP_SYS_RESOURCE, so nothing in a machine can lower oom_score_adj, and runc
    # fails on every container given a negative one (cri-dockerd gives pod sandboxes -998). The
    # lab's stack registers this wrapper as Docker's default runtime (docker.extraConfig).
    wrapper = root / LAB_RUNC.lstrip("/")
    wrapper.write_text(LAB_RUNC_SCRIPT)
    wrapper.chmod(0o755)

    # Debian's docker-registry (enabled, :5000) is every machine's "registry on the lab bridge": the
    # lab stack's pull-through cache uses the last machine's as its upstream (never the internet).
    # Debian ships it with a login nobody has; the lab's serves without one.
    registry_config = root / "etc/docker/registry/config.yml"
    if registry_config.exists():
        text = registry_config.read_text()
        registry_config.write_text(text[:text.index("auth:")] + text[text.index("health:"):])

    # A kubelet needs /dev/kmsg (its OOM watcher), which nspawn does not give a machine: point it
    # at the console, as kind does. journald must then not read it as the kernel log, or it spins.
    (root / "etc/tmpfiles.d/kh-lab-kmsg.conf").write_text("L /dev/kmsg - - - - /dev/console\n")
    (root / "etc/systemd/journald.conf.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/journald.conf.d/kh-lab.conf").write_text("[Journal]\nReadKMsg=no\n")

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
