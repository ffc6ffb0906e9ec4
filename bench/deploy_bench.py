"""Time a fresh deployment of the lab stack (the whole cluster: etcd, flannel, Docker, control plane,
nodes, CoreDNS) on lab machines, from bare machines until every node is Ready and DNS answers.

    python bench/deploy_bench.py [--sizes 3] [--runs 3] [--keep-lab]

Each run: fresh harness state, `up` on bare machines (timed, as the engine would run it: parallel
steps over real SSH), then `destroy` (which gives the machines back as they were). Prints the
median, min and max of `up`, the remote commands per machine, and the median run's critical
path (each step's time, the part its health gate waited, and the time it sat ready before it began). Needs root and the lab's
prerequisites (see lab/README.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lab  # noqa: E402
from engine.harness import Engine  # noqa: E402
from engine.runtime import stack_config  # noqa: E402
from lab.dns import Resolver, stop_daemon  # noqa: E402


def proxy_after_kubelet(result) -> str:   # noqa: ANN001 — a harness Result
    """Each node's kube-proxy end minus its kubelet's (the node Ready), from the run's timeline."""
    ended = {op.name: op.ended for op in result.ops}
    nodes = sorted(name.removesuffix("-kubelet") for name in ended if name.startswith("node-") and name.endswith("-kubelet"))
    return " ".join(f"{n.removeprefix('node-')} {ended[f'{n}-kube-proxy'] - ended[f'{n}-kubelet']:+.1f}"
                    for n in nodes if f"{n}-kube-proxy" in ended)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[3])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        lab.up(hosts=n)
        stop_daemon()               # `python3 -m lab up`'s, if any: this run has its own
        resolver = Resolver()       # on the lab bridge: CoreDNS forwards to it, as in the lab tests
        resolver.start()
        config = stack_config(lab.STACK)
        times, per_host, results = [], {}, []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                engine = Engine(Path(tmp) / "state.json", stack=lab.STACK)
                result = engine.up(config)
                times.append(result.seconds)
                results.append(result)
                per_host = result.connections_per_host()
                engine.destroy()
        resolver.stop()
        median_run = sorted(results, key=lambda r: r.seconds)[len(results) // 2]
        print(f"{n} machines, the median run ({median_run.seconds:.1f}s): the steps that set it")
        print("\n".join(median_run.critical_path_report()))
        print("kube-proxy healthy after its node's kubelet gate passed, per run (s): "
              + "; ".join(proxy_after_kubelet(r) for r in results))
        rows.append((n, statistics.median(times), min(times), max(times), sorted(set(per_host.values()))))
    if not args.keep_lab:
        lab.down()
    print(f"{'machines':>8} {'median s':>9} {'min':>6} {'max':>6}  remote commands per machine")
    for n, med, lo, hi, conns in rows:
        print(f"{n:>8} {med:>9.1f} {lo:>6.1f} {hi:>6.1f}  {conns}")


if __name__ == "__main__":
    main()
