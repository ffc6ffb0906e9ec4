"""A lab module's deployment, which its tests share, and the helpers several lab modules use.

A lab module is one deployment's life on the same machines: the first `up` (a module-scoped
fixture of the module, made with `deploy`), then steps that read it or change it, then destroy.
What the steps share is a `Deployment`, handed to each test by the fixture, never a module-level
dict: a test asks for what it needs, so one test run alone still gets its deployment first.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.spec import ClusterSpec, parse_spec
from engine.harness import Result
from engine.runtime import stack_config
from tests.lab.conftest import Lab


@dataclass
class Deployment:
    lab: Lab
    config: dict[str, Any]                  # the stack config as last deployed (a step that changes it says so)
    first_up: Result                        # the first `up`, on bare machines
    kubeconfig: str                         # the exported admin kubeconfig, a 0600 file
    before: dict[str, dict[str, str]] = field(default_factory=dict)   # each machine before the deploy

    @property
    def spec(self) -> ClusterSpec:
        return parse_spec(self.config)

    def up(self, config: dict[str, Any] | None = None, **options: Any) -> Result:
        """`up` with `config` (the current one by default); the current config stays what it was."""
        return self.lab.engine.up(self.config if config is None else config, **options)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The lab bundle's kubectl on this machine, with nothing but the exported kubeconfig."""
        done = subprocess.run([str(Path(self.lab.info["artifactsDir"]) / "kubectl"), "--kubeconfig", self.kubeconfig,
                               "--request-timeout=20s", *args], input=stdin, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done


def deploy(lab: Lab, workdir: Path, trace: Callable[[Lab, str], dict[str, str]] | None = None) -> Deployment:
    """The lab stack on the lab machines, each traced first when `trace` is given (destroy must
    give it back)."""
    config = stack_config(lab.engine.stack)
    before = {h["name"]: trace(lab, h["name"]) for h in lab.hosts} if trace else {}
    result = lab.engine.up(config)
    path = workdir / "admin.kubeconfig"
    path.write_text(result.outputs["kubeconfig"])
    path.chmod(0o600)
    return Deployment(lab, config, result, str(path), before)


def bootstrap_token(deployment: Deployment) -> dict[str, str]:
    """The one bootstrap token Secret's data, decoded."""
    secrets = deployment.kubectl("-n", "kube-system", "get", "secret", "--field-selector",
                                 "type=bootstrap.kubernetes.io/token", "-o", "json")
    [token] = json.loads(secrets.stdout)["items"]
    return {k: base64.b64decode(v).decode() for k, v in token["data"].items()}


def restart_spans(lab: Lab, host: str, unit: str, since: float) -> list[tuple[int, int]]:
    """Each rolling restart of `unit` on `host` since `since`, as the restart helper logged it:
    (begin, healthy) in microseconds."""
    out = lab.run(host, f"journalctl -t kube-hardway --since @{int(since)} -o json --no-pager").stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    mine = [e for e in events if e["MESSAGE"].startswith(f"{unit} restart on {host}")]
    begins = [int(e["__REALTIME_TIMESTAMP"]) for e in mine if e["MESSAGE"].endswith(": begin")]
    ends = [int(e["__REALTIME_TIMESTAMP"]) for e in mine if e["MESSAGE"].endswith(": healthy")]
    assert len(begins) == len(ends), f"{host}: a {unit} restart never became healthy: {out}"
    return list(zip(begins, ends, strict=True))
