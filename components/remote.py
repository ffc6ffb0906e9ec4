"""The remote primitives every component composes; no component builds these commands by hand.

* `connection(host, ssh)`  — SSH connection args from a host spec, pinning `hostKey` when given.
* `HostService`            — one service on one host in ONE command (one SSH session): its steps
                             (install the binaries, create a user, ...), its files (content on
                             stdin, one base64 line per file, never on a command line; written
                             atomically), its unit (enabled, started; restarted — through an
                             optional rolling hook — when the unit or what it reads changed), its
                             gate. Hosts have several services and a 500-host stack many hosts:
                             every resource costs the SDK 2–3 ms of preview, every command an SSH
                             session.
* `HealthGate`             — poll a check on a host until it passes or fail with its last words.
* `HostCommand`            — any other idempotent script with its undo.
* `Retired`                — a command an earlier release made, kept as a no-op so that its old
                             delete never runs.
* `rolling_restart`        — a `HostService`'s `restart` that goes one host at a time, cluster-wide,
                             under a lock in etcd, until the service's check passes again; the helper
                             (`rolling-restart.sh.j2`) is installed on every worker with Docker's files.

Two provider facts shape these (pulumi-command 1.2):

* `environment` is sent with SSH setenv, which a stock sshd refuses, so nothing here uses it;
  values go inline into the script or on stdin.
* `triggers` replace the resource, and a replacement runs the new `create` *before* the old
  `delete` unless `deleteBeforeReplace` is set: a `HostService` sets it, so an old `delete` never
  stops the service its successor just configured.
* a resource removed from the program is deleted with the `delete` it was created with, not with
  today's: hence `Retired`.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pulumi
from pulumi_command import remote

from components.layout import ROLLING_RESTART, STATE_DIR, UNIT_DIR
from components.spec import HostSpec, SshSpec
from components.templates import render


@cache
def _read_key(path: str) -> str:
    return Path(path).read_text()


class Barrier:
    """What every connection waits for (the preflight's end): one output per host address, known in
    a preview, shared by every resource on that host — a preview of 500 hosts applies it 500 times,
    not once per resource."""

    def __init__(self, passed: pulumi.Output[str]):
        self.passed = passed
        self._addresses: dict[str, pulumi.Output[str]] = {}

    def address(self, address: str) -> pulumi.Output[str]:
        if address not in self._addresses:
            self._addresses[address] = self.passed.apply(lambda _: address)
        return self._addresses[address]


def connection(host: HostSpec, ssh: SshSpec) -> remote.ConnectionArgs:
    """SSH to `host`; the key (if any) is a secret, an unset key means ssh-agent. With `ssh.after`
    (the preflight's barrier) set, what connects waits for it: its value is known in a preview."""
    key: pulumi.Output[str] | None = None
    if ssh.private_key:
        key = pulumi.Output.secret(ssh.private_key)
    elif ssh.private_key_file:
        key = pulumi.Output.secret(_read_key(ssh.private_key_file))
    return remote.ConnectionArgs(
        host=ssh.after.address(host.address) if ssh.after is not None else host.address,
        port=host.port,
        user=host.user,
        private_key=key,
        host_key=host.host_key,
        dial_error_limit=10,
        per_dial_timeout=15,
    )


def as_root(host: HostSpec, script: pulumi.Input[str]) -> pulumi.Output[str]:
    """Run `script` as root: directly for root, through `sudo -n` (stdin passes through) otherwise."""
    if host.user == "root":
        return pulumi.Output.from_input(script)
    return pulumi.Output.from_input(script).apply(lambda s: f"sudo -n sh -c {shlex.quote(s)}")


def digest(*parts: pulumi.Input[str]) -> pulumi.Output[str]:
    """A short sha256 over `parts`. Unsecreted on purpose: a hash of a private key reveals nothing,
    and a secret digest would hide every command that carries it from previews and logs."""
    joined = pulumi.Output.all(*parts).apply(
        lambda values: hashlib.sha256("\0".join(values).encode()).hexdigest()[:16])
    return pulumi.Output.unsecret(joined)


@dataclass(frozen=True)
class HostFile:
    path: str
    content: pulumi.Input[str]
    mode: str = "0644"
    owner: str = "root:root"


class HostCommand(remote.Command):
    """An idempotent script and its undo on one host (root via sudo when needed); with `update` (and
    no `create`), a script that runs only when the command's inputs change, never on its creation."""

    def __init__(self, name: str, host: HostSpec, ssh: SshSpec, create: pulumi.Input[str] | None,
                 delete: pulumi.Input[str] | None = None, stdin: pulumi.Input[str] | None = None,
                 triggers: Sequence[pulumi.Input[object]] | None = None,
                 logging: remote.Logging = remote.Logging.STDOUT_AND_STDERR,
                 update: pulumi.Input[str] | None = None,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            name,
            connection=connection(host, ssh),
            create=as_root(host, create) if create is not None else None,
            update=as_root(host, update) if update is not None else None,
            delete=as_root(host, delete) if delete is not None else None,
            stdin=stdin,
            triggers=list(triggers) if triggers else None,
            logging=logging,
            # PULUMI_COMMAND_STDOUT would go through SSH setenv, which stock sshd refuses.
            add_previous_output_in_env=False,
            opts=opts,
        )


def _b64_line(content: str) -> str:
    return base64.b64encode(content.encode()).decode() + "\n"


class HealthGate(HostCommand):
    """Waits until `check` (a shell snippet that prints why it fails) succeeds on `host`.

    Re-runs whenever `triggers` change, so it gates every change, not only the first deploy.
    """

    def __init__(self, name: str, host: HostSpec, ssh: SshSpec, what: str, check: str,
                 triggers: Sequence[pulumi.Input[object]], timeout: int = 120, interval: float = 0.5,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            name, host, ssh,
            create=render("remote/health-gate-create.sh.j2", what=what, check=check, timeout=timeout,
                          interval=interval),
            triggers=triggers,
            opts=opts,
        )


class Retired(remote.Command):
    """A command an earlier release made, kept under its name with nothing to run: no `create`,
    `update` or `delete`, so it opens no SSH session, ever. A resource that leaves the program is
    deleted by running the delete it was created with, so one whose delete undoes what another
    resource now owns must stay until every stack has run `up` once with this release (which
    replaces its delete with nothing); a later release can then drop it."""

    def __init__(self, name: str, host: HostSpec, ssh: SshSpec, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, connection=connection(host, ssh), add_previous_output_in_env=False, opts=opts)


@dataclass(frozen=True)
class HostStep:
    """A script and its undo that run inside a `HostService`'s session, before its files are
    written (and undone after its unit is gone). Steps get no stdin: the files' content is on it."""

    create: pulumi.Input[str]
    delete: str = ""


def rolling_restart(unit: str, timeout: int, check: str) -> str:
    """`unit`'s restart, one worker at a time under the cluster-wide lock, until `check` (a command
    line on the host) passes; a check that fails puts the service's previous files back."""
    return f"{ROLLING_RESTART} {unit} {timeout} {shlex.quote(check)}"


def first_restart(unit: str, restart: str | None) -> str:
    """How a running `unit` this program never configured (a distribution's, taken over) restarts:
    a rolling restart waits its turn among the hosts the service serves, and this one serves
    nothing of the cluster yet; any other hook (etcd's, which keeps quorum) runs as always."""
    return f"systemctl restart {unit}" if restart is None or restart.startswith(ROLLING_RESTART) else restart


@dataclass(frozen=True)
class Gate:
    """What a `HostService` waits for after (re)starting: `check` prints why it fails."""

    what: str
    check: str
    timeout: int = 120
    interval: float = 0.5


class HostService(HostCommand):
    """One service on one host in one command: `steps` in order → `files` (atomically, content on
    stdin) → the unit, installed, enabled and running → `gate`, polled until it passes.

    The unit restarts — through `restart` when given (a rolling, lock-holding restart) — when the
    unit or one of `reads` (what the service runs with: binaries' sums, config, certs) changed
    since it was last configured; the digest of those is in the script, so any change re-runs the
    command (an update), and a file only a helper reads (a health script) is rewritten without a
    restart. A failed rolling restart puts back the files and binaries the run replaced (the
    engine keeps the old state after a failed update, so the host must too: reverting the config
    is then a no-op that is true). Delete stops and removes the unit, then the files, then undoes the steps in reverse.
    A forced replacement deletes first: a new instance must not be undone by its predecessor.
    """

    def __init__(self, name: str, host: HostSpec, ssh: SshSpec, unit: str, unit_file: pulumi.Input[str],
                 files: Sequence[HostFile] = (), steps: Sequence[HostStep] = (),
                 reads: Sequence[pulumi.Input[str]] = (), restart: str | None = None,
                 no_block: bool = False, gate: Gate | None = None,
                 opts: pulumi.ResourceOptions | None = None):
        files = [*files, HostFile(f"{UNIT_DIR}/{unit}", unit_file)]
        self.digest = digest(unit_file, *reads)
        values = {"name": name, "unit": unit, "files": files, "paths": " ".join(f.path for f in files),
                  "units": [f.path.removeprefix(f"{UNIT_DIR}/") for f in files if f.path.startswith(f"{UNIT_DIR}/")],
                  "unit_dir": UNIT_DIR,
                  "state_dir": STATE_DIR, "no_block": no_block,
                  "restart": restart or f"systemctl restart {unit}",
                  "first_restart": first_restart(unit, restart),
                  "gate": gate, **(gate.__dict__ if gate else {})}
        create = pulumi.Output.all(self.digest, *[s.create for s in steps]).apply(
            lambda v: render("remote/service-create.sh.j2", digest=v[0], steps=v[1:], **values))
        delete = render("remote/service-delete.sh.j2", steps=[s.delete for s in reversed(steps) if s.delete],
                        **values)
        stdin = pulumi.Output.all(*[f.content for f in files]).apply(
            lambda contents: "".join(_b64_line(c) for c in contents))
        # stdin carries keys: nothing the script prints is logged but its errors
        super().__init__(name, host, ssh, create=create, delete=delete, stdin=stdin, logging=remote.Logging.STDERR,
                         opts=pulumi.ResourceOptions.merge(pulumi.ResourceOptions(delete_before_replace=True), opts))
