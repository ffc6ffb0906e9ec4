"""The preflight checks what the host scripts run: every command any script runs on a host (for
every artifact source and option the script tests render) is on that host's preflight list, and
README's "Host requirements" is that list."""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from components.kube_node import uses_api_proxy
from components.layout import LIB_DIR
from components.preflight import HOST_NEEDS, NOT_CHECKED, PACKAGE_MANAGER_TOOLS, UDP_NEEDS, needs_of, requirements
from components.spec import parse_spec
from engine.mocks import RecordingMocks, Registration
from engine.runtime import REPO, run_program
from tests.unit.shell_commands import commands
from tests.unit.test_scripts import SCRIPT_INPUTS, stacks


def _scripts(reg_inputs: dict) -> dict[str, str]:
    found = {k: reg_inputs[k] for k in SCRIPT_INPUTS if isinstance(reg_inputs.get(k), str)}
    stdin = reg_inputs.get("stdin")
    if isinstance(stdin, str) and "one base64 line per file" in str(reg_inputs.get("create")):
        for i, line in enumerate(stdin.splitlines()):
            content = base64.b64decode(line).decode()
            if content.startswith("#!/bin/sh"):     # a helper the host runs later
                found[f"stdin[{i}]"] = content
    return found


def _installed_by_the_program(command: str) -> bool:
    return command.startswith(f"{LIB_DIR}/") or (command.startswith("/") and command.rsplit("/", 1)[1] in NOT_CHECKED)


def variants(tmp_path: Path) -> dict[str, dict]:
    """The script tests' stacks, and one where no host has two roles."""
    found = stacks(tmp_path)
    dev = found["download"]
    roles = {"node1": ["etcd"], "node2": ["master"], "node3": ["node"]}
    found["one-role-each"] = {**dev, "hosts": [{**h, "roles": roles[h["name"]]} for h in dev["hosts"]]}
    return found


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, list[Registration]]]:
    """Each variant's config and the remote commands its program registers (both tests read them)."""
    found = {}
    for variant, config in variants(tmp_path_factory.mktemp("variants")).items():
        mocks = RecordingMocks()
        run_program(config, mocks, stack="dev")
        found[variant] = (config, mocks.of_type("command:remote:Command"))
    # parsed once each, shfmt processes side by side (`commands` keeps what it parsed)
    texts = {text for _, regs in found.values() for reg in regs for text in _scripts(reg.inputs).values()}
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(commands, texts))
    return found


def test_every_command_a_host_script_runs_is_in_that_hosts_preflight(deployed: dict[str, tuple[dict, list[Registration]]]) -> None:
    unchecked: dict[str, set[str]] = {}
    for variant, (config, registrations) in deployed.items():
        spec = parse_spec(config)
        proxied = uses_api_proxy(spec.kubernetes, tuple(m.address for m in spec.masters))
        by_address = {h.address: h for h in spec.hosts}
        for reg in registrations:
            host = by_address[reg.inputs["connection"]["host"]]
            needs, one_of = needs_of(host, spec, proxied)
            checked = {n.command for n in needs} | set(NOT_CHECKED)
            for group in one_of:
                checked |= {*group, *(PACKAGE_MANAGER_TOOLS.get(c, c) for c in group)}
            for key, script in _scripts(reg.inputs).items():
                for command in commands(script) - checked:
                    if not _installed_by_the_program(command):
                        unchecked.setdefault(f"{command} (on {host.name}: {host.roles})", set()).add(
                            f"{variant}: {reg.name}.{key}")
    assert not unchecked, "host scripts run commands their host's preflight does not check:\n" + "\n".join(
        f"  {c}: {sorted(where)[:3]}" for c, where in sorted(unchecked.items()))


def test_every_checked_command_is_one_a_host_script_runs(deployed: dict[str, tuple[dict, list[Registration]]]) -> None:
    """No requirement without a reason: each listed command appears in some host script."""
    used: set[str] = set()
    for _, registrations in deployed.values():
        for reg in registrations:
            for script in _scripts(reg.inputs).values():
                used |= commands(script)
    listed = {n.command for n in (*HOST_NEEDS, *UDP_NEEDS)}
    assert listed - used <= {"gzip"}, listed - used   # gzip: what `tar -xzf` runs, unseen in the script


def test_readme_lists_what_the_preflight_checks() -> None:
    readme = (REPO / "README.md").read_text()
    assert requirements() in readme, "README's host requirements differ from the preflight's; paste:\n" + requirements()
