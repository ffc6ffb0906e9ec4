"""`ssh`: how kube-hardway logs in to every host (per-host overrides live in `hosts`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.spec.problems import USER, Problems, integer, string

KEY = "ssh"
KNOWN = ("user", "port", "privateKeyFile", "privateKey")


@dataclass(frozen=True)
class SshSpec:
    user: str = "root"
    port: int = 22
    private_key_file: str | None = None
    private_key: str | None = field(default=None, repr=False)  # secret: never printed
    # what every connection waits for (components.remote.Barrier: the preflight), set by the program
    after: Any = field(default=None, repr=False, compare=False)


def parse(ssh: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> SshSpec:
    d = SshSpec()
    key_file = string(ssh.get("privateKeyFile"), "ssh.privateKeyFile", p)
    key = ssh.get("privateKey")
    if key is not None and (not isinstance(key, str) or "PRIVATE KEY" not in key):
        p.add("ssh.privateKey", "must be a PEM/OpenSSH private key; set it with "
              "`pulumi config set --secret --path ssh.privateKey < ~/.ssh/id_ed25519`")
        key = None
    if key_file and key:
        p.add("ssh", "set privateKeyFile or privateKey, not both")
    if key_file:
        resolved = (parsed["base_dir"] / os.path.expanduser(key_file)).resolve()
        if not resolved.is_file():
            p.add("ssh.privateKeyFile", f"file {resolved} does not exist; point it at the SSH "
                  "private key that can log in to every host, or remove it to use ssh-agent")
        key_file = str(resolved)
    user = string(ssh.get("user"), "ssh.user", p, d.user) or d.user
    if not USER.match(user):
        p.add("ssh.user", f"{user!r} is not a valid Unix user name")
    return SshSpec(user=user, port=integer(ssh.get("port"), "ssh.port", p, d.port, 1, 65535),
                   private_key_file=key_file, private_key=key)
