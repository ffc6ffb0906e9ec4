"""`hosts`: the machines, what each one is (roles) and how to reach it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.releases import ARCHES
from components.spec.problems import LABEL, USER, Problems, host_key, integer, ipv4, string, valid_values
from components.spec.ssh import SshSpec

KEY = "hosts"
KNOWN = None  # a list, not a map: each entry is checked against HOST_KEYS
HOST_KEYS = ("name", "address", "internalAddress", "roles", "hostKey", "iface", "user", "port", "arch")
ROLES = ("etcd", "master", "node")
_IFACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_EXAMPLE = "[{name: node1, address: 192.168.1.200, roles: [etcd, master, node]}]"


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    internal_address: str
    roles: tuple[str, ...]
    user: str
    port: int
    host_key: str | None = None
    iface: str | None = None
    arch: str = "amd64"

    def has(self, role: str) -> bool:
        return role in self.roles


def parse(hosts: Any, p: Problems, parsed: Mapping[str, Any]) -> tuple[HostSpec, ...]:
    if not isinstance(hosts, list) or not hosts:
        p.add("hosts", f"is required: a non-empty list of hosts like {_EXAMPLE}")
        return ()
    seen: dict[str, dict[str, str]] = {"name": {}, "address": {}, "internalAddress": {}}
    result = [h for i, entry in enumerate(hosts) if (h := _host(i, entry, p, parsed["ssh"], seen)) is not None]
    if len(result) == len(hosts):
        for role in ROLES:
            if not any(h.has(role) for h in result):
                p.add("hosts", f"no host has role {role!r}; add it to at least one host's roles")
    return tuple(result)


def _host(i: int, h: Any, p: Problems, ssh: SshSpec, seen: dict[str, dict[str, str]]) -> HostSpec | None:
    at = f"hosts[{i}]"
    if not isinstance(h, Mapping):
        p.add(at, f"must be a map like {_EXAMPLE[1:-1]}")
        return None
    p.unknown_keys(at, h, HOST_KEYS)
    name = string(h.get("name"), f"{at}.name", p)
    if name is None and "name" not in h:
        p.add(f"{at}.name", "is required (a lowercase RFC 1123 label like node1)")
    elif name is not None and not LABEL.match(name):
        p.add(f"{at}.name", f"{name!r} is not a lowercase RFC 1123 label (a-z, 0-9, '-', ≤63 chars)")
        name = None
    address = ipv4(h.get("address"), f"{at}.address", p) if "address" in h else None
    if "address" not in h:
        p.add(f"{at}.address", "is required: the IPv4 address SSH connects to")
    internal = ipv4(h["internalAddress"], f"{at}.internalAddress", p) if h.get("internalAddress") else address
    for key, value in (("name", name), ("address", address), ("internalAddress", internal)):
        if value is None or (key == "internalAddress" and not h.get("internalAddress")):
            continue
        first = seen[key].get(str(value))
        if first is not None:
            p.add(f"{at}.{key}", f"{value} is already used by {first}; every host needs its own")
        else:
            seen[key][str(value)] = at
    roles = h.get("roles")
    role_list: list[str] = []
    if not isinstance(roles, list) or not roles:
        p.add(f"{at}.roles", f"must be a non-empty list, a subset of {list(ROLES)}")
    else:
        for role in roles:
            if role not in ROLES:
                p.add(f"{at}.roles", f"unknown role {role!r}; {valid_values(role, ROLES, 'roles')}")
            elif role in role_list:
                p.add(f"{at}.roles", f"role {role!r} is listed twice")
            else:
                role_list.append(role)
    iface = string(h.get("iface"), f"{at}.iface", p)
    if iface is not None and not _IFACE.match(iface):
        p.add(f"{at}.iface", f"{iface!r} is not a network interface name (like eth0)")
    user = string(h.get("user"), f"{at}.user", p, ssh.user) or ssh.user
    if not USER.match(user):
        p.add(f"{at}.user", f"{user!r} is not a valid Unix user name")
    port = integer(h.get("port"), f"{at}.port", p, ssh.port, 1, 65535)
    pinned_key = host_key(h.get("hostKey"), f"{at}.hostKey", p) if h.get("hostKey") is not None else None
    arch = h.get("arch", HostSpec.arch)
    if arch not in ARCHES:
        p.add(f"{at}.arch", f"unknown architecture {arch!r}; {valid_values(arch, ARCHES, 'architectures')}")
        arch = HostSpec.arch
    if not (name and address and internal and role_list):
        return None
    return HostSpec(name=name, address=str(address), internal_address=str(internal),
                    roles=tuple(r for r in ROLES if r in role_list), user=user,
                    port=port, host_key=pinned_key, iface=iface, arch=arch)
