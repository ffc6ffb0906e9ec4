"""Every flag the program renders for a Kubernetes component exists in that component's reference
for the version it is rendered for (tests/data/flags/<minor>/<component>.txt: from the binaries'
`--help` for 1.24, which the lab runs). The classic guides' removed flags are not in them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.mocks import RecordingMocks
from tests.support.runtime import run_program, stack_config
from tests.unit.test_network import written

FLAGS = Path(__file__).resolve().parents[1] / "data" / "flags"
UNITS = {"control-plane-apiserver-node1": "kube-apiserver", "control-plane-controller-manager-node1": "kube-controller-manager",
         "control-plane-scheduler-node1": "kube-scheduler"}


def reference(minor: str, component: str) -> set[str]:
    return set((FLAGS / minor / f"{component}.txt").read_text().split())


def rendered_flags(cfg: dict[str, Any]) -> dict[str, list[str]]:
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    found = {}
    for name, component in UNITS.items():
        unit = written(mocks.named(name), f"/etc/systemd/system/{component}.service")
        found[component] = re.findall(r"^\s+--([a-z0-9-]+)=", unit, re.M)
    return found


@pytest.mark.parametrize("version", ["1.24.0-alpha.1"])
def test_every_rendered_flag_exists_in_the_version_it_is_rendered_for(version: str) -> None:
    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": version}
    minor = ".".join(version.split(".")[:2])
    for component, flags in rendered_flags(cfg).items():
        assert flags, component
        unknown = sorted(set(flags) - reference(minor, component))
        assert unknown == [], f"{component} {version} has no flag(s) {unknown}"


def test_the_classic_guides_removed_flags_would_fail() -> None:
    assert "insecure-bind-address" not in reference("1.24", "kube-apiserver")
    for flag in ("require-kubeconfig", "experimental-bootstrap-kubeconfig", "allow-privileged"):
        assert flag not in reference("1.24", "kubelet"), flag


def test_an_unsupported_kubernetes_version_names_the_key() -> None:
    from components.spec import ConfigError, parse_spec

    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": "1.23.17"}
    with pytest.raises(ConfigError) as failed:
        parse_spec(cfg)
    assert any(p.startswith("kube-hardway:versions.kubernetes: 1.23.17 is older") for p in failed.value.problems)
