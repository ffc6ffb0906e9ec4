"""The lab's DNS resolver on the bridge: CoreDNS in the machines forwards names outside the cluster
here (never to the internet). It answers A queries for the names it is given and NXDOMAIN for the
rest. The lab tests start it (`Resolver(...).start()`) for as long as they run; `python3 -m lab up`
starts it as a background process (`start_daemon`) for the cluster `make lab` deploys, and
`lab down` (or a test session, which runs its own) stops it."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading

from lab.common import HOST_IP, REPO_ROOT, STATE_DIR, LabError

PIDFILE = STATE_DIR / "dns.pid"
READY = "lab resolver on"
LOGFILE = STATE_DIR / "dns.log"

# a name no cluster knows, which only this resolver can answer: proof that CoreDNS forwarded it
OUTSIDE_NAME = "outside.kh-lab.test"


def _question(packet: bytes) -> tuple[str, int, int]:
    """The first question's name, its end offset, and qtype."""
    labels, i = [], 12
    while packet[i]:
        labels.append(packet[i + 1:i + 1 + packet[i]].decode("ascii", "replace"))
        i += packet[i] + 1
    qtype = struct.unpack(">H", packet[i + 1:i + 3])[0]
    return ".".join(labels).lower(), i + 5, qtype


def answer(packet: bytes, names: dict[str, str]) -> bytes:
    name, end, qtype = _question(packet)
    address = names.get(name.rstrip("."))
    flags = 0x8180 if address else 0x8183            # response, recursion desired+available; NXDOMAIN
    count = 1 if address and qtype == 1 else 0
    header = packet[:2] + struct.pack(">HHHHH", flags, 1, count, 0, 0)
    body = packet[12:end]
    if address and count:
        body += struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    return header + body


class Resolver(threading.Thread):
    def __init__(self, names: dict[str, str] | None = None, address: str = HOST_IP, port: int = 53):
        super().__init__(daemon=True, name="kh-lab-dns")
        self.names = names or {OUTSIDE_NAME: HOST_IP}
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))

    def run(self) -> None:
        while True:
            try:
                packet, peer = self.sock.recvfrom(512)
            except OSError:
                return
            try:
                self.queries.append(_question(packet)[0])
                self.sock.sendto(answer(packet, self.names), peer)
            except (IndexError, struct.error):
                continue

    def stop(self) -> None:
        self.sock.close()


def _daemon_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_daemon() -> int:
    """The resolver as a process of its own, detached from the caller, until `stop_daemon`."""
    pid = _daemon_pid()
    if pid:
        return pid
    start = LOGFILE.stat().st_size if LOGFILE.exists() else 0
    with LOGFILE.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lab.dns"], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    PIDFILE.write_text(f"{proc.pid}\n")
    for _ in range(100):            # answering once it says so (it binds first)
        with LOGFILE.open("rb") as log:
            log.seek(start)
            said = log.read().decode(errors="replace")
        if READY in said:
            return proc.pid
        if proc.poll() is not None:
            break
        threading.Event().wait(0.1)
    raise LabError(f"the lab resolver did not start: {said.strip() or 'no output'} (see {LOGFILE})")


def stop_daemon() -> None:
    pid = _daemon_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if _daemon_pid() is None:
                break
            threading.Event().wait(0.1)
    PIDFILE.unlink(missing_ok=True)


if __name__ == "__main__":
    resolver = Resolver()
    print(f"{READY} {HOST_IP}:53, answering {resolver.names}", flush=True)
    resolver.run()
