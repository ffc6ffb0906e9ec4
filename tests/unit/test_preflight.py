"""The preflight script itself, run here: a host that lacks a command is told which and how."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

from components.preflight import HOST_NEEDS, MACHINE
from components.templates import render


def run_preflight(tmp_path: Path, lacking: set[str], staging: str = "/nonexistent/staging",
                  as_on_a_host: bool = False) -> subprocess.CompletedProcess[str]:
    """The preflight of every need, run with a PATH that has every command it checks but `lacking`
    (`as_on_a_host`: what this test machine itself lacks — systemd as init, a few tools — unchecked)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in {n.command for n in HOST_NEEDS} | {"sh", "uname", "df"}:
        found = shutil.which(command)
        if found and command not in lacking:
            (bin_dir / command).symlink_to(found)
    machine = os.uname().machine
    arch = next(a for a, m in MACHINE.items() if m == machine)
    script = render("remote/preflight.sh.j2", host="n1", needs=HOST_NEEDS, one_of=[], arch=arch,
                    machine=machine, space=[("/tmp", 1)], user=getpass.getuser(), staging=staging)
    if as_on_a_host:
        script = script.replace("[ -d /run/systemd/system ]", "true")
        absent_here = {n.command for n in HOST_NEEDS if not shutil.which(n.command)} - lacking
        script = "\n".join(line for line in script.splitlines()
                           if not any(f"command -v {c} " in line for c in absent_here))
    return subprocess.run([str(bin_dir / "sh"), "-c", script], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)}, timeout=30)


def test_a_missing_command_fails_naming_the_host_the_command_and_its_package(tmp_path: Path) -> None:
    done = run_preflight(tmp_path, {"curl", "iptables"})
    assert done.returncode == 1, done
    assert done.stderr.startswith("preflight of n1: nothing was installed on any host; this host lacks:\n"), done.stderr
    assert "\n  - curl: install package curl\n" in done.stderr
    assert "\n  - iptables: install package iptables\n" in done.stderr
    assert "  - sed:" not in done.stderr and "  - grep:" not in done.stderr   # those are there


def test_free_space_below_the_floor_is_named(tmp_path: Path) -> None:
    script = render("remote/preflight.sh.j2", host="n1", needs=(), one_of=[("no-such-pm", "nor-this")],
                    arch="amd64", machine=os.uname().machine, space=[("/tmp", 1 << 40)], user="root",
                    staging="/nonexistent/staging")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"  - {1 << 40} MiB free in /tmp: " in done.stderr, done.stderr
    assert "  - one of no-such-pm, nor-this: installing from the distribution's packages needs" in done.stderr


def test_a_host_that_passes_gets_a_staging_directory_only_the_ssh_user_may_write(tmp_path: Path) -> None:
    staging = tmp_path / "state" / "staging"
    done = run_preflight(tmp_path, set(), staging=str(staging), as_on_a_host=True)
    assert done.returncode == 0, done
    info = staging.stat()
    assert (info.st_mode & 0o777, info.st_uid) == (0o700, os.getuid())
    lacking = tmp_path / "lacking"
    lacking.mkdir()
    assert run_preflight(lacking, {"curl"}, staging=str(lacking / "staging"), as_on_a_host=True).returncode == 1
    assert not (lacking / "staging").exists()      # a host that fails gets nothing
