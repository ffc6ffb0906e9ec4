"""`python3 -m lab up|down|status`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from lab import LabError, down, status, up
from lab.common import HOST_IP
from lab.dns import start_daemon


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m lab", description="kube-hardway local nspawn lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="create/boot the lab machines (no-op if already up)")
    p_up.add_argument("--hosts", type=int, default=3)
    p_up.add_argument("--spares", type=int, default=0, help="machines booted outside the stack file")
    sub.add_parser("down", help="stop machines, remove per-machine state, bridge and mounts")
    p_st = sub.add_parser("status", help="show machines and whether ssh answers")
    p_st.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            t = time.monotonic()
            info = up(hosts=args.hosts, spares=args.spares)
            for h in [*info["hosts"], *info.get("spares", [])]:
                print(f"{h['name']:<10} {h['address']:<12} pid {h['pid']}")
            print(f"ssh: ssh -i {info['privateKeyFile']} -o UserKnownHostsFile={info['knownHostsFile']} "
                  f"root@{info['hosts'][0]['address']}")
            print(f"pulumi config: {info['pulumiConfig']}   (up took {time.monotonic() - t:.1f}s)")
            print(f"resolver: {HOST_IP}:53 (pid {start_daemon()}), where the cluster's DNS forwards other names")
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
