"""Kubernetes upgrades: a version change drains each node from the first master, one node at a time
(the drain, the node's restart and its uncordon under one lock), a settings change does not, and
the preflight refuses the version skews Kubernetes does not support. The scripts run here for
real, against a fake kubectl and a fake lock helper."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.spec import HostSpec
from components.spec.versions import KubernetesVersion
from components.templates import render
from engine.mocks import RecordingMocks
from engine.runtime import run_program, stack_config


def program(version: str = "1.36.1", **kubernetes: object) -> RecordingMocks:
    cfg = stack_config("dev")
    cfg["versions"] = {"kubernetes": version}
    cfg["kubernetes"] = kubernetes
    mocks = RecordingMocks()
    run_program(cfg, mocks, stack="dev")
    return mocks


def test_only_a_version_change_reaches_the_drain_and_the_uncordon() -> None:
    before = program()
    drain, uncordon = before.named("node-node2-drain"), before.named("node-node2-uncordon")
    # nothing runs when they are created (a new node has nothing to drain), nor on destroy
    assert not drain.inputs.get("create") and not drain.inputs.get("delete")
    assert "# after: no drain" in uncordon.inputs["update"]    # it carries what its drain printed (nothing yet)
    assert drain.inputs["connection"]["host"] == before.named("control-plane-apiserver-node1").inputs["connection"]["host"]
    assert "drain node2 --ignore-daemonsets --delete-emptydir-data --timeout=300s" in drain.inputs["update"]
    assert "--grace-period" not in drain.inputs["update"]
    # the node changes after its drain; its uncordon and the node set's record after the node
    for part in ("kubelet", "kube-proxy"):
        assert drain.urn in before.named(f"node-node2-{part}").dependencies
        assert before.named(f"node-node2-{part}").urn in uncordon.dependencies
    assert before.named("node-node2-kubelet").urn in before.named("node-set-record").dependencies
    assert before.named("control-plane-apiserver-node1").urn not in drain.dependencies   # (through the objects)
    settings = program(kubelet={"maxPods": 100, "healthTimeoutSeconds": 20})
    assert settings.named("node-node2-drain").inputs == drain.inputs
    assert settings.named("node-node2-uncordon").inputs == uncordon.inputs
    assert settings.named("node-node2-kubelet").inputs != before.named("node-node2-kubelet").inputs
    newer = program("1.37.0")
    assert newer.named("node-node2-drain").inputs["update"] != drain.inputs["update"]
    assert newer.named("node-node2-uncordon").inputs["update"] != uncordon.inputs["update"]
    tuned = program(drain={"timeoutSeconds": 60, "gracePeriodSeconds": 5})
    assert "--timeout=60s --grace-period=5" in tuned.named("node-node2-drain").inputs["update"]


@pytest.mark.parametrize(("drain", "key"), [
    ({"timeoutSeconds": 0}, "kubernetes.drain.timeoutSeconds"),
    ({"gracePeriodSeconds": "soon"}, "kubernetes.drain.gracePeriodSeconds"),
    ({"timeout": 60}, "kubernetes.drain.timeout"),
])
def test_a_bad_drain_setting_names_the_key(drain: dict, key: str) -> None:
    from components.spec import ConfigError, parse_spec
    cfg = stack_config("dev")
    cfg["kubernetes"] = {"drain": drain}
    with pytest.raises(ConfigError) as bad:
        parse_spec(cfg)
    assert key in str(bad.value)


def fakes(tmp_path: Path, cordoned: str = "", node_known: bool = True, drain_fails: bool = False,
          annotated: bool = False, other_fails: bool = False) -> tuple[Path, Path, Path]:
    log = tmp_path / "log"
    kubectl, rolling = tmp_path / "kubectl", tmp_path / "rolling-restart"
    get = f"echo '{cordoned}'" if node_known else 'echo "Error from server (NotFound): nodes n1 not found" >&2; exit 1'
    annotations = '{"metadata": {"annotations": {"kube-hardway/drained-for": "1.24.1"}}}' if annotated else "{}"
    drain = "echo 'error when evicting pods/web-1: Cannot evict pod as it would violate the pod disruption budget.'; exit 1" \
        if drain_fails else "true"
    kubectl.write_text(f"""#!/bin/sh
shift 2
echo "kubectl $*" >> {log}
case "$*" in
  "get node n1 -o jsonpath="*) {get} ;;
  "get node n1 -o json") echo '{annotations}' ;;
  drain*) {drain} ;;
esac
""")
    # another node's drain failing while this one waits its turn for the lock
    other = f"echo 'the drain of n0 failed' > {tmp_path / 'drain-failed'}\n" if other_fails else ""
    rolling.write_text(f"#!/bin/sh\necho \"lock $*\" >> {log}\n" + (f'[ "$1" = hold ] && {other}' if other else ""))
    stub = tmp_path / "stub"
    stub.mkdir(exist_ok=True)
    (stub / "logger").write_text("#!/bin/sh\n")
    for f in (kubectl, rolling, stub / "logger"):
        f.chmod(0o755)
    return log, kubectl, rolling


def run(template: str, tmp_path: Path, kubectl: Path, rolling: Path, recorded: str = "") -> subprocess.CompletedProcess[str]:
    nodes = tmp_path / "nodes"
    nodes.write_text(recorded)
    script = render(template, node="n1", version="1.24.1", kubectl=str(kubectl), kubeconfig="/admin.kubeconfig",
                    rolling=str(rolling), nodes_file=str(nodes), failed=str(tmp_path / "drain-failed"), timeout=60,
                    grace=None, wait=900, drained="")
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                          env={"PATH": f"{tmp_path / 'stub'}:/usr/bin:/bin"})


def test_a_drain_takes_the_lock_cordons_drains_and_the_uncordon_gives_both_back(tmp_path: Path) -> None:
    log, kubectl, rolling = fakes(tmp_path)
    done = run("kubernetes/node-drain.sh.j2", tmp_path, kubectl, rolling, "n1 node 1.24.0\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("drained n1 for 1.24.1 at "), done.stdout    # what the uncordon carries
    assert log.read_text().splitlines() == [
        "kubectl get node n1 -o jsonpath={.spec.unschedulable}",
        "lock hold kubelet.service n1 900",
        "kubectl annotate node n1 kube-hardway/drained-for=1.24.1 --overwrite",
        "kubectl cordon n1",
        "kubectl drain n1 --ignore-daemonsets --delete-emptydir-data --timeout=60s"]
    log.unlink()
    log, kubectl, rolling = fakes(tmp_path, "true", annotated=True)
    done = run("kubernetes/node-uncordon.sh.j2", tmp_path, kubectl, rolling)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "kubectl get node n1 -o json", "kubectl uncordon n1", "kubectl annotate node n1 kube-hardway/drained-for-",
        "lock release kubelet.service n1"]


def test_a_node_an_operator_cordoned_is_drained_and_stays_cordoned(tmp_path: Path) -> None:
    log, kubectl, rolling = fakes(tmp_path, "true")
    assert run("kubernetes/node-drain.sh.j2", tmp_path, kubectl, rolling).returncode == 0
    assert not [line for line in log.read_text().splitlines() if "cordon" in line or "annotate" in line]
    log.unlink()
    assert run("kubernetes/node-uncordon.sh.j2", tmp_path, kubectl, rolling).returncode == 0
    assert log.read_text().splitlines() == ["kubectl get node n1 -o json", "lock release kubelet.service n1"]


def test_nothing_is_drained_for_a_node_on_that_version_already_or_one_not_registered(tmp_path: Path) -> None:
    log, kubectl, rolling = fakes(tmp_path)
    assert run("kubernetes/node-drain.sh.j2", tmp_path, kubectl, rolling, "n0 node 1.24.0\nn1 node 1.24.1\n").returncode == 0
    assert not log.exists()
    log, kubectl, rolling = fakes(tmp_path, node_known=False)
    assert run("kubernetes/node-drain.sh.j2", tmp_path, kubectl, rolling).returncode == 0
    assert log.read_text().splitlines() == ["kubectl get node n1 -o jsonpath={.spec.unschedulable}"]


def test_a_drain_that_does_not_finish_gives_the_node_back_and_names_the_key(tmp_path: Path) -> None:
    log, kubectl, rolling = fakes(tmp_path, drain_fails=True)
    done = run("kubernetes/node-drain.sh.j2", tmp_path, kubectl, rolling)
    assert done.returncode == 1
    assert "n1: not upgraded to 1.24.1" in done.stderr and "kubernetes.drain.timeoutSeconds" in done.stderr
    assert "violate the pod disruption budget" in done.stderr
    assert log.read_text().splitlines()[-3:] == [
        "kubectl uncordon n1", "kubectl annotate node n1 kube-hardway/drained-for-", "lock release kubelet.service n1"]


def skew(tmp_path: Path, target: str, running: dict[str, str], master: bool = True) -> subprocess.CompletedProcess[str]:
    from components.kube_node import version_check
    units = tmp_path / "units"
    units.mkdir(exist_ok=True)
    for unit, version in running.items():
        (units / f"{unit}.service").write_text(f"# generated by kube-hardway — do not edit: {unit} {version} on h1\n[Unit]\n")
    host = HostSpec("h1", "10.0.0.1", "10.0.0.1", ("master", "node"), "root", 22)
    script = version_check(host, KubernetesVersion.parse(target), master).replace("/etc/systemd/system", str(units))
    return subprocess.run(["sh", "-c", script + "\necho passed"], capture_output=True, text=True)


@pytest.mark.parametrize(("target", "running", "refused"), [
    ("1.25.3", {"kube-apiserver": "1.24.0-alpha.1", "kubelet": "1.24.0-alpha.1"}, ""),
    ("1.24.0-alpha.0", {"kube-apiserver": "1.24.0-alpha.1", "kubelet": "1.24.0-alpha.1"}, ""),  # within a minor
    ("1.26.0", {"kube-apiserver": "1.24.9", "kubelet": "1.24.9"}, "skips a minor version (kube-apiserver runs 1.24.9"),
    ("1.26.0", {"kubelet": "1.24.9"}, "skips a minor version (kubelet runs 1.24.9"),
    ("1.24.9", {"kube-apiserver": "1.25.0", "kubelet": "1.25.0"}, "is a minor version older than the kube-apiserver"),
    ("1.24.9", {"kubelet": "1.25.0"}, "is a minor version older than the kubelet that runs here (1.25.0)"),
    ("1.30.0", {}, ""),                                                   # a new host
])
def test_the_preflight_refuses_a_version_skew_kubernetes_does_not_support(
        tmp_path: Path, target: str, running: dict[str, str], refused: str) -> None:
    done = skew(tmp_path, target, running)
    if not refused:
        assert done.returncode == 0 and done.stdout.strip() == "passed", done.stderr
        return
    assert done.returncode == 1 and refused in done.stderr, done.stderr
    assert "preflight of h1: nothing was changed on any host; versions.kubernetes:" in done.stderr


def test_a_node_that_is_no_master_checks_its_kubelet_only() -> None:
    from components.kube_node import version_check
    host = HostSpec("h2", "10.0.0.2", "10.0.0.2", ("node",), "root", 22)
    check = version_check(host, KubernetesVersion.parse("1.25.0"), master=False)
    assert "kube_skew kubelet" in check and "kube_skew kube-apiserver" not in check


def test_a_drain_that_waited_while_another_failed_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "drain-failed").write_text("the drain of n9 failed\n")      # an earlier run's: no matter
    old = 1_000_000_000
    import os
    os.utime(tmp_path / "drain-failed", (old, old))
    log, kubectl, rolling = fakes(tmp_path)
    assert run("kubernetes/node-drain.sh.j2", tmp_path, kubectl, rolling).returncode == 0
    log.unlink()
    log, kubectl, rolling = fakes(tmp_path, other_fails=True)
    done = run("kubernetes/node-drain.sh.j2", tmp_path, kubectl, rolling)
    assert done.returncode == 1 and done.stdout == ""
    assert "n1: not drained for 1.24.1: the drain of n0 failed while it waited its turn" in done.stderr, done.stderr
    assert log.read_text().splitlines() == [
        "kubectl get node n1 -o jsonpath={.spec.unschedulable}", "lock hold kubelet.service n1 900",
        "lock release kubelet.service n1"]


def test_the_uncordon_runs_after_every_drain_that_drained() -> None:
    """Its script carries the drain's output: a run whose drain drained (even one only a drain
    setting started, on a node a failed run had upgraded) is followed by its uncordon."""
    from components.templates import render as r
    values = {"node": "n1", "version": "1.24.1", "kubectl": "k", "kubeconfig": "c", "rolling": "l"}
    assert r("kubernetes/node-uncordon.sh.j2", drained="drained n1 for 1.24.1 at 1", **values) != \
        r("kubernetes/node-uncordon.sh.j2", drained="drained n1 for 1.24.1 at 2", **values)
