"""`make lab` / `make preview`: deploy the program onto a stack's hosts — with the real Pulumi CLI
when it is installed, otherwise with the executing harness (engine/harness.py), which does
the same work over SSH under the SDK's mock runtime.

    python -m lab.deploy up|destroy|preview --stack lab [--harness] [--forced]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from engine.harness import DeploymentError, Engine
from engine.mocks import RecordingMocks
from engine.runtime import REPO, run_program, stack_config
from lab.common import STACK, STATE_DIR

HARNESS_STATE = Path(os.environ.get("KUBE_HARDWAY_HARNESS_STATE", str(STATE_DIR / "harness")))
BACKEND = REPO / ".kube-hardway" / "backend"
KUBECONFIG = REPO / ".kube-hardway" / "admin.kubeconfig"


INSTALL_HINT = """The Pulumi CLI is not installed, so this runs the executing harness instead.
To use the real CLI, install it (https://www.pulumi.com/docs/install/), e.g.
    curl -fsSL https://get.pulumi.com | sh      # then: export PATH=$HOME/.pulumi/bin:$PATH
and run `make lab` again (state: .kube-hardway/backend, passphrase: $PULUMI_CONFIG_PASSPHRASE)."""


def pulumi_cli() -> str | None:
    found = shutil.which("pulumi") or shutil.which(str(Path.home() / ".pulumi" / "bin" / "pulumi"))
    if not found:
        print(INSTALL_HINT, flush=True)
    return found


def with_cli(cli: str, action: str, stack: str) -> int:
    BACKEND.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PULUMI_BACKEND_URL": f"file://{BACKEND}"}
    env.setdefault("PULUMI_CONFIG_PASSPHRASE", "kube-hardway-lab")
    subprocess.run([cli, "stack", "select", "--create", stack], cwd=REPO, env=env, check=True)
    verb = {"up": ["up", "--yes"], "destroy": ["destroy", "--yes"], "preview": ["preview"]}[action]
    return subprocess.run([cli, *verb, "--stack", stack], cwd=REPO, env=env).returncode


def with_harness(action: str, stack: str, forced: bool) -> int:
    config = stack_config(stack)
    if action == "preview":
        mocks = RecordingMocks(preview=True)
        run_program(config, mocks, preview=True, stack=stack)
        counts = Counter(r.typ for r in mocks.registrations)
        print(f"Previewing {stack} (mock runtime): {len(mocks.registrations)} resources to create")
        for typ, n in sorted(counts.items()):
            print(f"  + {n:4d} {typ}")
        return 0
    engine = Engine(HARNESS_STATE / f"{stack}.json", stack=stack)
    try:
        result = engine.up(config, forced=forced) if action == "up" else engine.destroy()
    except DeploymentError as err:
        print(err, file=sys.stderr)
        return 1
    for op in result.ops:   # as they ended, each with when it began
        print(f"  {op.began:5.1f}s  {op.action:7s} {op.name:40s} {op.host:15s} {op.seconds:6.1f}s")
    print(f"{action}: {len(result.ops)} remote operations in {result.seconds:.1f}s")
    if action == "up" and result.ops:
        print("the steps that set that time (each one's time, of it waiting for health, and how long it sat "
              "ready before it began):")
        print("\n".join(result.critical_path_report()))
    for key, value in result.outputs.items():
        # as the CLI does: a secret output is never printed (`pulumi stack output --show-secrets`)
        print(f"  {key}: {'[secret]' if key in result.secret_outputs else value}")
    if "kubeconfig" in result.outputs:
        KUBECONFIG.parent.mkdir(parents=True, exist_ok=True)
        KUBECONFIG.touch(mode=0o600)
        KUBECONFIG.chmod(0o600)
        KUBECONFIG.write_text(result.outputs["kubeconfig"])
        print(f"admin kubeconfig (mode 0600): {KUBECONFIG}\n  kubectl --kubeconfig {KUBECONFIG} get nodes")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["up", "destroy", "preview"])
    parser.add_argument("--stack", default=STACK)
    parser.add_argument("--harness", action="store_true", help="skip the Pulumi CLI")
    parser.add_argument("--forced", action="store_true", help="harness: re-run every create")
    args = parser.parse_args()
    cli = None if args.harness or args.forced else pulumi_cli()
    if cli:
        return with_cli(cli, args.action, args.stack)
    return with_harness(args.action, args.stack, args.forced)


if __name__ == "__main__":
    sys.exit(main())
