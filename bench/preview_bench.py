"""How long a preview (and a mock `up`) of a big cluster takes, and how much memory it needs.

    python bench/preview_bench.py [--sizes 100 500] [--mode preview|up|floor]

Each size runs in its own process so peak RSS is that run's alone. Hosts: 3 etcd (+master) and
N-3 plain nodes, the shape of a real large cluster. Under `up`, pulumi-tls mocks generate real
ECDSA keys and certificates for every node, so it measures the program plus real crypto. `floor`
previews a program of as many bare `remote.Command`s as the real one registers at that size: what
the SDK alone costs per resource, which no program can go below.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def config(n: int) -> dict:
    hosts = [{"name": f"node{i}", "address": f"10.{i // 250}.{i % 250}.{10}",
              "roles": ["etcd", "master", "node"] if i < 3 else ["node"]} for i in range(n)]
    # the default artifact source: the preview plans one fetch per release file and no host copies wait on I/O
    return {"hosts": hosts, "network": {"podCidr": "172.16.0.0/12"}}


def one(n: int, mode: str) -> dict:
    sys.path.insert(0, str(REPO))
    from engine.mocks import RecordingMocks
    from engine.runtime import run_program

    program = None
    if mode == "floor":
        program = functools.partial(_bare_commands, FLOOR_RESOURCES_PER_HOST * n)
    mocks = RecordingMocks(preview=mode != "up")
    started = time.perf_counter()
    run_program(config(n), mocks, preview=mode != "up", program=program)
    seconds = time.perf_counter() - started
    return {"hosts": n, "mode": mode, "resources": len(mocks.registrations), "seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


# what the real program registers per host: 7145 at 500 hosts (2026-12-08); 8143 with a component per
# worker, 10141 with a copy per release
FLOOR_RESOURCES_PER_HOST = 14


def _bare_commands(count: int) -> None:
    import pulumi
    from pulumi_command import remote

    conn = remote.ConnectionArgs(host="10.0.0.1", user="root", private_key=pulumi.Output.secret("key"))
    for i in range(count):
        remote.Command(f"c{i}", connection=conn, create=f"echo {i}", delete="true", add_previous_output_in_env=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 500])
    parser.add_argument("--mode", choices=["preview", "up", "floor"], default="preview")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.mode)))
        return
    print(f"{'hosts':>6} {'mode':>8} {'resources':>10} {'seconds':>8} {'peak RSS MB':>12}")
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--mode", args.mode],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{r['hosts']:>6} {r['mode']:>8} {r['resources']:>10} {r['seconds']:>8} {r['peak_rss_mb']:>12}")


if __name__ == "__main__":
    main()
