"""The lab's private bridge: the machines' veths join it; no NAT, no forwarding, so the machines
reach only each other and the host."""

from __future__ import annotations

import re

from lab.common import BRIDGE, HOST_IP, MACHINE_PREFIX, sh


def links() -> list[str]:
    p = sh("ip", "-o", "link", "show", check=False)
    names = []
    for line in p.stdout.splitlines():
        m = re.match(r"\d+:\s+([^:@\s]+)", line)
        if m:
            names.append(m.group(1))
    return names


def create_bridge() -> None:
    if BRIDGE not in links():
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "flush", "dev", BRIDGE)
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def remove_network() -> None:
    for link in links():
        if link.startswith("vb-" + MACHINE_PREFIX) or link == BRIDGE:
            sh("ip", "link", "del", link, check=False)
