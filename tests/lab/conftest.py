"""Real-machine fixtures: the nspawn lab (lab/), the executing harness, and etcd clients.

These tests run for real in CI (`make test` installs systemd-container and debootstrap; CI runs
as root). They are never skipped: a machine that cannot host the lab fails them, with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.harness import Engine
from engine.runtime import stack_config

# Under pytest-xdist (`make test` runs the lab modules on two workers), each worker has a lab of its
# own: its bridge, addresses and machines (lab/common.py), set before anything imports `lab`.
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    os.environ.setdefault("KH_LAB_INSTANCE", str(int(os.environ["PYTEST_XDIST_WORKER"][2:]) + 1))


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the nspawn lab needs root (run `make test` as root, as CI does)"
    for tool in ("systemd-nspawn", "debootstrap", "etcdctl"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run `make deps` (apt-get install systemd-container debootstrap etcd-client)"
    return None


@dataclass
class Lab:
    info: dict[str, Any]
    config: dict[str, Any]
    engine: Engine
    workdir: Path
    resolver: Any = None        # the lab's DNS resolver on the bridge (lab/dns.py), while tests run

    @property
    def hosts(self) -> list[dict[str, Any]]:
        return self.info["hosts"]

    @property
    def spares(self) -> list[dict[str, Any]]:
        return self.info.get("spares", [])

    @property
    def etcd_hosts(self) -> list[dict[str, Any]]:
        names = {h["name"] for h in self.config["hosts"] if "etcd" in h["roles"]}
        return [h for h in [*self.hosts, *self.spares] if h["name"] in names]

    def run(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        import lab

        result = lab.run(host, command)
        if check and result.returncode != 0:
            raise AssertionError(f"{host}: `{command}` failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def endpoints(self) -> str:
        return ",".join(f"https://{h['address']}:2379" for h in self.etcd_hosts)

    def state_output(self, name: str, key: str) -> str:
        state = json.loads(self.engine.state_path.read_text())
        found = [r for r in state["resources"].values() if r["name"] == name]
        assert found, f"{name} not in the harness state"
        return found[0]["outputs"][key]

    def pem_file(self, resource: str, key: str, filename: str) -> str:
        """The PEM as a 0600 file, rewritten when the deployment's PKI changed (a destroy and a new
        deploy make new keys); clients in several threads read it."""
        return self._pem(filename, self.state_output(resource, key))

    def _pem(self, filename: str, pem: str) -> str:
        """`pem` in a 0600 file of the lab's workdir, written (atomically: clients in several threads
        read it) only when it changed."""
        path = self.workdir / filename
        if not path.exists() or path.read_text() != pem:
            tmp = path.with_suffix(f".{threading.get_ident()}")
            tmp.write_text(pem)
            tmp.chmod(0o600)
            tmp.replace(path)
        return str(path)

    def ca_bundle(self, kind: str) -> str:
        """Every CA of `kind` (kubernetes, etcd) the deployment has, as one PEM file: two while one is
        rotated (pki.cas), whatever their names."""
        state = json.loads(self.engine.state_path.read_text())
        pems = [r["outputs"]["certPem"] for r in state["resources"].values()
                if r["typ"] == "tls:index/selfSignedCert:SelfSignedCert" and r["name"].startswith(f"pki-{kind}-ca")]
        assert pems, f"no {kind} CA in the harness state"
        return self._pem(f"{kind}-ca-bundle.crt", "".join(pems))

    # etcdctl's client certs, by the etcd user they log in as (ClusterPKI's resource names)
    ETCD_CERTS = {"root": "pki-etcd-root-client", "healthcheck": "pki-etcd-healthcheck-client",
                  "flanneld": "pki-flanneld-etcd-client", "gateway": "pki-etcd-gateway-client",
                  "lock": "pki-etcd-lock-client", "kubernetes-admin": "pki-admin"}

    def etcdctl(self, *args: str, cert: str = "root", endpoints: str | None = None,
                timeout: str = "5s") -> subprocess.CompletedProcess[str]:
        """etcdctl on the test machine, as a client from outside the cluster: as etcd user root
        unless `cert` names another client cert (ETCD_CERTS), or "none"."""
        tls: list[str] = ["--cacert", self.ca_bundle("etcd")]
        if cert != "none":
            resource = self.ETCD_CERTS[cert]
            tls += ["--cert", self.pem_file(f"{resource}-cert", "certPem", f"{cert}.crt"),
                    "--key", self.pem_file(f"{resource}-key", "privateKeyPem", f"{cert}.key")]
        return subprocess.run(
            ["etcdctl", f"--endpoints={endpoints or self.endpoints()}", f"--command-timeout={timeout}",
             "--dial-timeout=3s", *tls, *args],
            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=60)


def start_lab(hosts: int, workdir: Path, spares: int = 0) -> Lab:
    import lab

    info = lab.up(hosts=hosts, spares=spares)
    config = stack_config(lab.STACK)
    return Lab(info=info, config=config, engine=Engine(workdir / "state.json", stack=lab.STACK), workdir=workdir)


@pytest.fixture(scope="session")
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _lab_unavailable()
    if reason:
        pytest.fail(f"the lab tests cannot run here: {reason}", pytrace=False)
    # and a spare machine, outside the stack file: the etcd member the membership tests add
    the_lab = start_lab(3, tmp_path_factory.mktemp("lab3"), spares=1)
    from lab.dns import Resolver, stop_daemon

    stop_daemon()                   # `make lab`'s, if one runs: the tests' own records what it is asked
    the_lab.resolver = Resolver()
    the_lab.resolver.start()
    yield the_lab
    the_lab.resolver.stop()
    import lab

    if the_lab.engine.state_path.exists():
        try:
            the_lab.engine.destroy()
        except Exception as err:  # noqa: BLE001 — tearing down anyway
            print(f"destroy after the lab tests failed: {err}")
    lab.down()
