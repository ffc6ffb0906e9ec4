"""What least privilege costs: the lab stack deployed with etcd auth and Secrets encrypted at rest
(the defaults) and with both off, interleaved in one run, on the lab machines.

    python bench/security_bench.py [--runs 2] [--writes 1000] [--keep-lab]

Each run: fresh harness state, `up` on bare machines (timed), then `--writes` Secrets created one
after another through the API server over one kept-alive TLS connection with the admin cert (each
write timed: API server → etcd, encrypted or not, authorised by etcd or not), then `destroy`.
Prints, per setting, the median deploy time and the write latency (median and p95 over every write
of every run). Needs root and the lab's prerequisites (see lab/README.md).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lab  # noqa: E402
from engine.harness import Engine  # noqa: E402
from engine.runtime import stack_config  # noqa: E402
from lab.dns import Resolver, stop_daemon  # noqa: E402

SETTINGS = {
    "auth + encryption (default)": {},
    "both off": {"etcd": {"auth": False}, "kubernetes": {"encryption": {"provider": "none"}}},
}


def with_setting(config: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(config)
    for key, value in changes.items():
        merged[key] = {**merged.get(key, {}), **value}
    return merged


def write_secrets(kubeconfig: str, count: int, workdir: Path) -> list[float]:
    """Seconds per Secret create, one after another on one connection."""
    config = yaml.safe_load(kubeconfig)
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    files = {}
    for name, data in (("ca", cluster["certificate-authority-data"]), ("cert", user["client-certificate-data"]),
                       ("key", user["client-key-data"])):
        files[name] = workdir / f"{name}.pem"
        files[name].write_bytes(base64.b64decode(data))
        files[name].chmod(0o600)
    context = ssl.create_default_context(cafile=str(files["ca"]))
    context.load_cert_chain(str(files["cert"]), str(files["key"]))
    host, port = cluster["server"].removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    took = []
    for i in range(count):
        body = json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"bench-{i}"},
                           "data": {"v": base64.b64encode(os.urandom(32)).decode()}})
        started = time.perf_counter()
        conn.request("POST", "/api/v1/namespaces/default/secrets", body, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        took.append(time.perf_counter() - started)
        if answer.status != 201:
            raise SystemExit(f"Secret {i}: HTTP {answer.status}")
    conn.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    lab.up(hosts=3)
    stop_daemon()               # `python3 -m lab up`'s, if any: this run has its own
    resolver = Resolver()
    resolver.start()
    base = stack_config(lab.STACK)
    deploys: dict[str, list[float]] = {name: [] for name in SETTINGS}
    writes: dict[str, list[float]] = {name: [] for name in SETTINGS}
    try:
        for run in range(args.runs):
            for name, changes in SETTINGS.items():    # interleaved: the machine's drift hits both alike
                with tempfile.TemporaryDirectory() as tmp:
                    engine = Engine(Path(tmp) / "state.json", stack=lab.STACK)
                    result = engine.up(with_setting(base, changes))
                    deploys[name].append(result.seconds)
                    took = write_secrets(result.outputs["kubeconfig"], args.writes, Path(tmp))
                    writes[name] += took
                    print(f"run {run + 1}, {name}: deploy {result.seconds:.1f}s, {args.writes} writes in "
                          f"{sum(took):.1f}s (median {statistics.median(took) * 1000:.1f} ms)", flush=True)
                    engine.destroy()
    finally:
        resolver.stop()
        if not args.keep_lab:
            lab.down()
    print(f"{'setting':30} {'deploy median s':>16} {'write median ms':>16} {'write p95 ms':>13}")
    for name in SETTINGS:
        ordered = sorted(writes[name])
        print(f"{name:30} {statistics.median(deploys[name]):>16.1f} {statistics.median(ordered) * 1000:>16.2f} "
              f"{ordered[int(len(ordered) * 0.95)] * 1000:>13.2f}")


if __name__ == "__main__":
    main()
