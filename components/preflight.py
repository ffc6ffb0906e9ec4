"""Preflight: every host checked in one SSH session before anything is installed on any host.

Each host's check (`preflight-<host>`) looks at what the program's host scripts need there: the
commands in `HOST_NEEDS` for the host's roles, a package manager where a component comes from the
distribution, systemd as init, the architecture its `arch` says, and free space where release
files land and binaries and data go. A host that misses anything fails with one message naming
the host, each missing thing and how to provide it; a host that passes gets the root-only
directory its release files are copied to (`STAGING_DIR`), which goes when the preflight does,
last of all. README's "Host requirements" is this list (a
unit test holds README, this list and every host script together).

The barrier: `Preflight.ssh` is the stack's SSH settings with `after` set to a command that waits
for every host's check; every connection made from it waits for that command, so no copy, step or
service starts on any host until every host passed. A check re-runs when what it checks changes
(a new host, a role, a source), not on every `up`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.layout import STAGING_DIR, STATE_DIR
from components.remote import Barrier, HostCommand, connection
from components.spec import ClusterSpec, HostSpec, SshSpec
from components.templates import render

EVERY_HOST = ("etcd", "master", "node", "registry")
WORKER = ("master", "node")


@dataclass(frozen=True)
class Need:
    """A command the host scripts run, on hosts with one of `roles`, and the package that has it."""

    command: str
    roles: tuple[str, ...]
    debian: str                   # Debian/Ubuntu package
    rhel: str                     # RHEL/Fedora package
    unless: str = ""              # a shell test that makes the command unnecessary where it passes
    unless_says: str = ""         # that test, for README

    @property
    def provide(self) -> str:
        same = self.debian == self.rhel
        return f"package {self.debian}" if same else f"package {self.debian} (Debian, Ubuntu) or {self.rhel} (RHEL, Fedora)"


def _needs(debian: str, rhel: str, roles: tuple[str, ...], *commands: str) -> tuple[Need, ...]:
    return tuple(Need(c, roles, debian, rhel) for c in commands)


HOST_NEEDS: tuple[Need, ...] = (
    *_needs("coreutils", "coreutils", EVERY_HOST, "base64", "cat", "chmod", "chown", "cp", "cut", "date", "df",
            "head", "install", "ln", "ls", "mkdir", "mktemp", "mv", "rm", "rmdir", "sha256sum", "sleep", "sort",
            "stat", "tail", "timeout", "touch", "tr", "uname", "wc"),
    *_needs("coreutils", "coreutils", WORKER, "comm"),
    *_needs("grep", "grep", EVERY_HOST, "grep"),
    *_needs("sed", "sed", EVERY_HOST, "sed"),
    *_needs("mawk", "gawk", EVERY_HOST, "awk"),
    *_needs("findutils", "findutils", EVERY_HOST, "find"),
    *_needs("findutils", "findutils", WORKER, "xargs"),
    *_needs("tar", "tar", EVERY_HOST, "tar"),
    *_needs("gzip", "gzip", EVERY_HOST, "gzip"),      # what `tar -xzf` unpacks release files with
    *_needs("curl", "curl", EVERY_HOST, "curl"),
    *_needs("systemd", "systemd", EVERY_HOST, "systemctl", "journalctl"),
    *_needs("passwd", "shadow-utils", EVERY_HOST, "useradd", "userdel", "groupadd", "groupdel"),
    *_needs("libc-bin", "glibc-common", EVERY_HOST, "getent"),
    *_needs("bsdutils", "util-linux", EVERY_HOST, "logger"),
    *_needs("mount", "util-linux", WORKER, "umount"),
    # Docker's prepare step loads the modules it needs only when they are not loaded yet
    Need("modprobe", WORKER, "kmod", "kmod", unless="grep -qw overlay /proc/filesystems && [ -d /proc/sys/net/bridge ]",
         unless_says="overlay and br_netfilter are loaded"),
    *_needs("iptables", "iptables", WORKER, "iptables", "iptables-save"),
    *_needs("iproute2", "iproute", WORKER, "ip"),
)
# Only with `network.backend: udp`: its health check asks each peer through the tunnel.
UDP_NEEDS = _needs("iputils-ping", "iputils", WORKER, "ping")

# Run by host scripts, not checked: what the program installs before it runs it, and what a
# non-root login runs every script through (a host without sudo fails its preflight in sudo's words).
NOT_CHECKED = {
    "docker": "installed with Docker before anything runs it",
    "etcdctl": "installed with etcd",
    "etcdutl": "installed with etcd from 3.5 (the snapshot check uses etcdctl where it is missing)",
    "kubectl": "installed with the control plane",
    "openssl": "hashes release files where the host has it (several times faster), sha256sum where not",
    "kube-proxy": "installed with the node",
    "sudo": "what every script runs through when ssh.user is not root",
    "sh": "the shell every script (the preflight too) runs in",
}
# What comes with each package manager (it answers what is installed).
PACKAGE_MANAGER_TOOLS = {"apt-get": "dpkg-query", "dnf": "rpm", "yum": "rpm"}

# One of them: what installs a component from the distribution (`artifacts.source(s)`: `package`
# from the hosts' repository; the API server proxy's `local` package files: apt-get for .deb,
# dnf or yum for .rpm).
PACKAGE_MANAGERS = ("apt-get", "dnf", "yum")

# Free space floors (MiB), set with room above what the lab's hosts use: /usr/local the installed
# binaries (220 MiB on a lab master and node with the lab's 1.24 bundle); /var/lib Docker's images
# and etcd's data (108 + 124 MiB there after a deploy, growing with use) and the staging directory,
# where every release file copied to a host waits until it is installed (1 GiB of the floor).
FREE_MIB = {"/usr/local": 1024, "/var/lib": 3072}

MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}


def needs_of(host: HostSpec, spec: ClusterSpec, uses_api_proxy: bool) -> tuple[list[Need], list[tuple[str, ...]]]:
    """The commands `host` must have, and the groups of which it needs one (package managers)."""
    roles = set(host.roles) | ({"registry"} if spec.registry.enabled and host.name in spec.registry.hosts else set())
    needs = [n for n in (*HOST_NEEDS, *(UDP_NEEDS if spec.network.backend == "udp" else ()))
             if roles & set(n.roles)]
    worker = bool(roles & set(WORKER))
    installs = {"etcd": "etcd" in roles, "docker": worker, "registry": "registry" in roles}
    from_distribution = any(on and spec.artifacts.source_of(c) == "package" for c, on in installs.items())
    return needs, [PACKAGE_MANAGERS] if from_distribution or (uses_api_proxy and worker) else []


@dataclass(frozen=True)
class PreflightArgs:
    spec: ClusterSpec
    uses_api_proxy: bool                  # workers install haproxy
    # host name → the components' own checks (etcd membership, Kubernetes version skew, CA rotation)
    checks: Mapping[str, pulumi.Input[str]] = dataclasses.field(default_factory=dict)


class Preflight(pulumi.ComponentResource):
    ssh: SshSpec                          # the stack's, with every connection waiting for every check

    def __init__(self, name: str, args: PreflightArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:preflight:Preflight", name, None, opts)
        spec = args.spec
        checks = []
        for host in spec.hosts:
            needs, one_of = needs_of(host, spec, args.uses_api_proxy)
            values = {"host": host.name, "needs": needs, "one_of": one_of, "arch": host.arch, "machine": MACHINE[host.arch],
                      "space": sorted(FREE_MIB.items()), "user": host.user, "staging": STAGING_DIR}
            script = pulumi.Output.from_input(args.checks.get(host.name, "")).apply(
                functools.partial(_script, values))
            delete = render("remote/preflight-delete.sh.j2", host=host.name, staging=STAGING_DIR, state_dir=STATE_DIR)
            checks.append(HostCommand(f"{name}-{host.name}", host, spec.ssh, create=script, delete=delete,
                                      opts=pulumi.ResourceOptions(parent=self)))
        # no create, update or delete: it only waits for every check, and every connection waits for it
        passed = remote.Command(f"{name}-passed", connection=connection(spec.hosts[0], spec.ssh),
                                add_previous_output_in_env=False,
                                opts=pulumi.ResourceOptions(parent=self, depends_on=checks))
        self.ssh = dataclasses.replace(spec.ssh, after=Barrier(passed.urn))
        self.register_outputs({})


def _script(values: dict, check: str) -> str:
    return render("remote/preflight.sh.j2", check=check, **values)


def requirements() -> str:
    """README's "Host requirements": what every preflight checks, as a table (a unit test compares)."""
    where = {EVERY_HOST: "every host", WORKER: "workers (master, node)"}
    rows: dict[tuple[str, str, str], list[str]] = {}
    for n in HOST_NEEDS:
        rows.setdefault((where[n.roles], n.debian, n.rhel), []).append(
            f"`{n.command}` (unless {n.unless_says})" if n.unless else f"`{n.command}`")
    for n in UDP_NEEDS:
        rows.setdefault((f"{where[n.roles]}, with `network.backend: udp`", n.debian, n.rhel), []).append(f"`{n.command}`")
    lines = ["| on | commands | Debian, Ubuntu package | RHEL, Fedora package |", "|---|---|---|---|"]
    lines += [f"| {on} | {' '.join(cmds)} | {debian} | {rhel} |"
              for (on, debian, rhel), cmds in sorted(rows.items(), key=lambda row: row[0][0] != "every host")]
    lines.append(f"| hosts that install from the distribution (`artifacts.source(s)`: `package`; workers, "
                 f"for the API server proxy) | one of {', '.join(f'`{c}`' for c in PACKAGE_MANAGERS)} | apt | dnf |")
    space = ", ".join(f"{mib} MiB in `{path}`" for path, mib in sorted(FREE_MIB.items()))
    lines += ["", f"and systemd as init, the architecture `hosts[].arch` names, and free space: {space}."]
    return "\n".join(lines) + "\n"
