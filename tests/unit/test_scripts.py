"""Every shell script the program runs or writes — on hosts and on the admin machine — passes
`shellcheck` as POSIX sh (the remote login shell may be dash), for every artifact source."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from components.spec.versions import KubernetesVersion
from engine.mocks import RecordingMocks
from engine.runtime import run_program, stack_config
from tests.unit.test_artifacts import make_release

SCRIPT_INPUTS = ("create", "update", "delete")


def scripts_of(config: dict) -> dict[str, str]:
    """name -> script text: each command's scripts, and every file written to a host that is one."""
    mocks = RecordingMocks()
    run_program(config, mocks, stack="dev")
    found: dict[str, str] = {}
    for reg in mocks.registrations:
        if not reg.typ.startswith("command:") or reg.typ.endswith("CopyToRemote"):
            continue
        for key in SCRIPT_INPUTS:
            if isinstance(reg.inputs.get(key), str):
                found[f"{reg.name}.{key}"] = reg.inputs[key]
        stdin = reg.inputs.get("stdin")
        if isinstance(stdin, str) and "one base64 line per file" in str(reg.inputs.get("create")):
            for i, line in enumerate(stdin.splitlines()):
                content = base64.b64decode(line).decode()
                if content.startswith("#!/bin/sh"):
                    found[f"{reg.name}.stdin[{i}]"] = content
    return found


def stacks(tmp_path: Path) -> dict[str, dict]:
    make_release(tmp_path / "bundle")
    (tmp_path / "bundle" / "busybox.tar").write_bytes(b"image")
    dev = stack_config("dev")
    variants = {"download": dev}
    # flannel and Docker publish no package everywhere / the local bundle has no flannel: download them
    workers = {"sources": {"flannel": "download", "docker": "download", "kubernetes": "download",
                           "criDockerd": "download"}}
    for source, extra in (("local", {"dir": str(tmp_path / "bundle"), **workers}), ("package", workers)):
        variants[source] = {**dev, "artifacts": {"source": source, **extra},
                            "versions": {"etcd": "3.6.99"} if source == "local" else {}}
    variants["local"]["docker"] = {"preloadImages": ["busybox.tar"]}
    variants["local"]["registry"] = {"hosts": ["master"], "seedImages": ["busybox.tar"]}
    variants["local"]["artifacts"]["sources"] = {**workers["sources"], "registry": "download"}
    variants["package"]["registry"] = {"hosts": ["node2", "node3"], "keepStorage": False}
    variants["sudo"] = {**dev, "ssh": {"user": "deploy"}}
    variants["unpinned"] = {**dev, "versions": {"etcd": "3.6.99"}}  # the fetch step reads upstream's sums
    variants["flannel-etcd-v2"] = {**dev, "versions": {"flannel": "0.17.0", "etcd": "3.5.30"},
                                   "network": {"backend": "host-gw"}}
    hosts = [{**h, "iface": "eth1"} for h in dev["hosts"]]
    masters = [{**h, "roles": [*h["roles"], "master"]} if h["name"] == "node2" else h for h in dev["hosts"]]
    variants["two-masters"] = {**dev, "hosts": masters, "kubernetes": {"kubeProxy": {"mode": "ipvs"}}}
    # the API server proxy from package files, .deb and .rpm
    for kind, names in (("deb", ("haproxy_2.6.12-1_amd64.deb", "liblua5.3-0_5.3.6-2_amd64.deb")),
                        ("rpm", ("haproxy-2.8.14-1.el10.x86_64.rpm",))):
        files = tmp_path / kind / "apiServerProxy" / "amd64"
        files.mkdir(parents=True)
        for name in names:
            (files / name).write_bytes(name.encode())
        variants[f"proxy-{kind}-files"] = {**dev, "hosts": masters, "artifacts": {
            "dir": str(tmp_path / kind), "sources": {"apiServerProxy": "local"}}}
    variants["iface"] = {**dev, "hosts": hosts, "network": {"backend": "udp", "subnetMin": "172.30.8.0"}}
    return variants


def test_every_rendered_script_passes_shellcheck(tmp_path: Path) -> None:
    assert shutil.which("shellcheck"), "shellcheck is missing: `make deps` installs it (apt-get install shellcheck)"
    scripts: dict[str, str] = {}
    for variant, config in stacks(tmp_path).items():
        scripts.update({f"{variant}:{name}": text for name, text in scripts_of(config).items()})
    assert len(scripts) > 30
    # every branch of the admin-side fetch step is among them: download, upstream sums, local check
    for branch in ('part="$src.part.$$"', "sums=$(curl", 'got=$(sum "$src")'):
        assert any(branch in text for text in scripts.values()), branch
    unique = {text: name for name, text in scripts.items()}

    def check(text: str) -> str:
        done = subprocess.run(["shellcheck", "--shell=sh", "--severity=style", "-"], input=text,
                              capture_output=True, text=True)
        return f"--- {unique[text]}\n{done.stdout}" if done.returncode != 0 else ""
    with ThreadPoolExecutor(os.cpu_count()) as pool:   # shellcheck processes side by side
        problems = [p for p in pool.map(check, unique) if p]
    assert not problems, "\n".join(problems)


def test_a_node_removed_from_the_stack_is_drained_then_deleted_and_a_blocked_drain_stops_the_run(tmp_path: Path) -> None:
    """The node-set command on the first master, run for real with a kubectl that logs what it
    changes: nodes that leave are drained and deleted, nodes that become or stop being masters get
    or lose the control-plane taint and label."""
    from components.layout import CONTROL_PLANE_ROLE as ROLE
    from components.templates import render

    log, state = tmp_path / "kubectl.log", tmp_path / "state"
    kubectl = tmp_path / "kubectl"
    # `get node` knows every node but "gone"; `drain` of "stuck" fails, as with a PodDisruptionBudget;
    # "c" carries the control-plane taint (it was a master)
    kubectl.write_text(f"""#!/bin/sh
shift 2
case "$*" in get*) ;; *) echo "$*" >> {log} ;; esac
case "$*" in "get node gone") exit 1 ;; "drain stuck"*) echo "cannot evict pod" >&2; exit 1 ;;
  "get node c -o"*) echo "other {ROLE}" ;; esac
""")
    kubectl.chmod(0o755)

    def run(nodes: list[str], masters: tuple[str, ...] = ("a",)) -> list[str]:
        log.unlink(missing_ok=True)
        script = render("kubernetes/nodes-create.sh.j2", nodes=nodes, masters=masters, taint=ROLE, state_dir=str(state),
                        list=str(state / "nodes"), version="1.24.0", timeout=30, host="m", kubectl=str(kubectl),
                        kubeconfig="/admin.kubeconfig")
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return log.read_text().splitlines() if log.exists() else []

    def recorded() -> list[str]:
        return (state / "nodes").read_text().splitlines()

    # the first run (or one after an older kube-hardway, which recorded no roles) sets every role
    assert run(["a", "b", "c", "gone", "stuck"]) == [
        f"taint node a {ROLE}:NoSchedule --overwrite", f"label node a {ROLE}= --overwrite",
        f"taint node c {ROLE}:NoSchedule-", f"label node c {ROLE}-"]
    assert recorded() == ["a master 1.24.0", "b node 1.24.0", "c node 1.24.0", "gone node 1.24.0", "stuck node 1.24.0"]
    # b left; "gone" left and is unknown; nothing else changed role
    assert run(["a", "c", "stuck"]) == [
        "drain b --ignore-daemonsets --delete-emptydir-data --force --timeout=30s", "delete node b"]
    assert recorded() == ["a master 1.24.0", "c node 1.24.0", "stuck node 1.24.0"]
    assert run(["a", "c", "stuck"], ("a", "c")) == [
        f"taint node c {ROLE}:NoSchedule --overwrite", f"label node c {ROLE}= --overwrite"]
    assert run(["a", "c", "stuck"]) == [f"taint node c {ROLE}:NoSchedule-", f"label node c {ROLE}-"]
    assert run(["a", "c", "stuck"]) == []                                # a re-run changes nothing
    script = render("kubernetes/nodes-create.sh.j2", nodes=["a", "c"], masters=["a"], taint=ROLE, state_dir=str(state),
                    list=str(state / "nodes"), version="1.24.0", timeout=30, host="m", kubectl=str(kubectl),
                    kubeconfig="/admin.kubeconfig")
    blocked = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert blocked.returncode == 1 and "cannot drain node stuck" in blocked.stderr and "cannot evict pod" in blocked.stderr
    assert recorded() == ["a master 1.24.0", "c node 1.24.0", "stuck node 1.24.0"]            # not forgotten: the next run tries again
    assert "delete node stuck" not in log.read_text()


def test_a_release_run_by_a_service_is_kept_aside_and_put_back_by_a_failed_restart(tmp_path: Path) -> None:
    """The install step and the rollback helper, run for real in a temp dir: a new binary goes in
    by rename with the old one kept aside; putting it back restores binary and marker, so the
    install step then sees the old release as installed."""
    import hashlib

    from components.releases import Asset, Release
    from components.templates import render

    bin_dir, state, remote = tmp_path / "bin", tmp_path / "state", tmp_path / "upload"
    asset = Asset("tool", "tool", None, {"tool": "tool"}, archive=False)
    rel = Release("tool", "1", "amd64", "", (asset,))
    stub = tmp_path / "stubs"
    stub.mkdir()
    (stub / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    (stub / "systemctl").chmod(0o755)
    env = {"PATH": f"{stub}:/usr/bin:/bin", "KUBE_HARDWAY_ROLLBACK": str(tmp_path / "rollback.list")}

    def install(content: str, in_service: bool = True) -> subprocess.CompletedProcess[str]:
        remote.write_text(content)
        sha = hashlib.sha256(content.encode()).hexdigest()
        script = render("artifacts/release-create.sh.j2", release=rel, state_dir=str(state), bin_dir=str(bin_dir),
                        staging_dir=str(tmp_path), bundle_dir="",
                        assets=[{"asset": asset, "sha256": sha, "remote": str(remote), "copy_resource": "n1-tool-copy"}], host="n1")
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                              env=env if in_service else {"PATH": env["PATH"]})

    assert install("v1", in_service=False).returncode == 0
    assert (bin_dir / "tool").read_text() == "v1" and not (tmp_path / "rollback.list").exists()
    assert install("v2").returncode == 0
    assert (bin_dir / "tool").read_text() == "v2" and (bin_dir / "tool.kube-hardway-prev").read_text() == "v1"
    assert (tmp_path / "rollback.list").read_text().split() == [str(bin_dir / "tool"), str(state / "releases/tool")]
    restore = render("remote/restore-previous.sh.j2") + "restore_previous\n"
    assert subprocess.run(["sh", "-c", restore], env=env).returncode == 0
    assert (bin_dir / "tool").read_text() == "v1" and not list(bin_dir.glob("*.kube-hardway-prev"))
    assert not (tmp_path / "rollback.list").exists()
    # the old release is what the marker says again: installing it is the no-op shortcut
    assert install("v1").returncode == 0 and not (tmp_path / "rollback.list").exists()
    assert not remote.exists()
    # and nothing to put back is "false" (the restart then keeps the lock without restarting again)
    assert subprocess.run(["sh", "-c", restore], env=env).returncode == 1
    # the binaries removed (a `--replace` of the service deletes first) and the copy long gone: the
    # step names the copy to replace with it
    (bin_dir / "tool").unlink()
    script = render("artifacts/release-create.sh.j2", release=rel, state_dir=str(state), bin_dir=str(bin_dir),
                        staging_dir=str(tmp_path), host="n1", bundle_dir="",
                    assets=[{"asset": asset, "sha256": "0" * 64, "remote": str(remote), "copy_resource": "n1-tool-copy"}])
    gone = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)
    assert gone.returncode == 1 and "n1: tool 1 is not installed" in gone.stderr, gone.stderr
    assert "--replace <URN of n1-tool-copy>" in gone.stderr


def test_a_hosts_one_copy_of_several_releases_leaves_nothing_once_each_is_installed(tmp_path: Path) -> None:
    """Several releases in one copy (HostReleases): a change to one copies them all again; the
    install step of the one that changed removes, beside its own file, every other file whose
    release is installed already, and the directory with the last of them. A file whose release is
    not installed yet stays for its own step."""
    import hashlib

    from components.releases import Asset, Release
    from components.templates import render

    bin_dir, state, bundle = tmp_path / "bin", tmp_path / "state", tmp_path / "node-releases"
    tools = {name: Release(name, "1", "amd64", "", (Asset(name, name, None, {name: name}, archive=False),))
             for name in ("a", "b", "c")}

    def copy(contents: dict[str, str]) -> dict[str, str]:   # what the copy brings, and the sums
        bundle.mkdir(exist_ok=True)
        sums = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in contents.items()}
        for name, text in contents.items():
            (bundle / name).write_text(text)
        (bundle / "SHA256SUMS").write_text("".join(f"{sums[n]}  {n}\n" for n in contents))
        return sums

    def install(name: str, sha: str) -> None:
        rel = tools[name]
        script = render("artifacts/release-create.sh.j2", release=rel, state_dir=str(state), bin_dir=str(bin_dir),
                        staging_dir=str(tmp_path), bundle_dir=str(bundle), host="n1",
                        assets=[{"asset": rel.assets[0], "sha256": sha, "remote": str(bundle / name), "copy_resource": "c"}])
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr

    sums = copy({"a": "a1", "b": "b1", "c": "c1"})
    install("a", sums["a"])
    install("b", sums["b"])
    # c is not installed yet: its file (and so the directory) stays
    assert sorted(p.name for p in bundle.iterdir()) == ["SHA256SUMS", "c"]
    install("c", sums["c"])
    assert not bundle.exists()
    # a's new version: the copy brings b and c again, installed already; a's step takes all three
    sums = copy({"a": "a2", "b": "b1", "c": "c1"})
    install("a", sums["a"])
    assert not bundle.exists() and (bin_dir / "a").read_text() == "a2"
    assert (bin_dir / "b").read_text() == "b1" and (bin_dir / "c").read_text() == "c1"


def test_a_service_run_leaves_the_shared_rollback_directory_to_the_hosts_other_services(tmp_path: Path) -> None:
    """A host's services run at the same time and share the rollback directory: one that finished
    must not remove it while another has just made it and is about to start its list (CI saw
    "rollback/flanneld.service.list: No such file or directory" when etcd's run removed it)."""
    from components.remote import HostFile, _b64_line
    from components.templates import render

    state, etc, stub = tmp_path / "state", tmp_path / "etc", tmp_path / "stubs"
    stub.mkdir()
    (stub / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    (stub / "systemctl").chmod(0o755)
    (state / "rollback").mkdir(parents=True)          # another service's run has just made it
    def create(conf: str) -> subprocess.CompletedProcess[str]:
        contents = {str(etc / "a.conf"): conf, str(etc / "a.service"): "[Unit]\n"}
        files = [HostFile(path, content) for path, content in contents.items()]
        script = render("remote/service-create.sh.j2", digest=conf, steps=[], name="a", unit="a.service",
                        files=files, paths=" ".join(f.path for f in files), state_dir=str(state), no_block=False,
                        units=["a.service"], unit_dir=str(etc),
                        restart="systemctl restart a.service", first_restart="systemctl restart a.service", gate=None)
        return subprocess.run(["sh", "-c", script], input="".join(_b64_line(c) for c in contents.values()),
                              capture_output=True, text=True, env={"PATH": f"{stub}:/usr/bin:/bin"})

    for conf in ("one", "two"):                        # installed, then replaced (a previous version kept, then dropped)
        done = create(conf)
        assert done.returncode == 0, done.stderr
        assert (etc / "a.conf").read_text() == conf and not list(etc.glob("*.kube-hardway-prev"))
        assert (state / "rollback").is_dir() and not list((state / "rollback").iterdir())


def test_a_service_whose_restart_fails_fails_puts_its_files_back_and_records_nothing(tmp_path: Path) -> None:
    """A refused or failed (rolling) restart must fail the service's command — the engine then keeps
    the old state — with the files it replaced put back and the new digest not recorded, so the next
    run restarts again."""
    from components.remote import HostFile, _b64_line
    from components.templates import render

    state, etc, stub = tmp_path / "state", tmp_path / "etc", tmp_path / "stubs"
    stub.mkdir()
    (stub / "systemctl").write_text("#!/bin/sh\nexit 0\n")     # enabled and active
    (stub / "systemctl").chmod(0o755)
    (stub / "restart").write_text("#!/bin/sh\necho 'refusing to restart' >&2\nexit 1\n")
    (stub / "restart").chmod(0o755)

    def create(conf: str, restart: str) -> subprocess.CompletedProcess[str]:
        contents = {str(etc / "a.conf"): conf, str(etc / "a.service"): "[Unit]\n"}
        files = [HostFile(path, content) for path, content in contents.items()]
        script = render("remote/service-create.sh.j2", digest=conf, steps=[], name="a", unit="a.service",
                        files=files, paths=" ".join(f.path for f in files), state_dir=str(state), no_block=False,
                        units=["a.service"], unit_dir=str(etc),
                        restart=restart, first_restart=restart, gate=None)
        return subprocess.run(["sh", "-c", script], input="".join(_b64_line(c) for c in contents.values()),
                              capture_output=True, text=True, env={"PATH": f"{stub}:/usr/bin:/bin"})

    assert create("one", "true").returncode == 0
    refused = create("two", "restart")
    assert refused.returncode != 0 and "refusing to restart" in refused.stderr
    assert (etc / "a.conf").read_text() == "one" and not list(etc.glob("*.kube-hardway-prev"))
    assert (state / "units" / "a.service").read_text().strip() == "one"
    assert create("two", "true").returncode == 0 and (state / "units" / "a.service").read_text().strip() == "two"


def run_kubelet_step(tmp_path: Path, env: dict[str, str], server: str = "https://10.0.0.11:6443",
                     trust: str = "") -> subprocess.CompletedProcess[str]:
    """The kubelet's step (kubelet-create.sh.j2) on files under `tmp_path`: kubelet.kubeconfig, ca.crt,
    kubelet/pki/kubelet-client-current.pem; `trust`: the CAs' digest it is rendered with (ca.crt's by default)."""
    import hashlib

    from components.templates import render

    ca = tmp_path / "ca.crt"
    if not trust:
        trust = hashlib.sha256(ca.read_bytes()).hexdigest()[:16] if ca.exists() else "0" * 16
    (tmp_path / "images.before").touch()
    script = render("kubernetes/kubelet-create.sh.j2", refuses_cgroup_v1=False, server=server, host="n1",
                    kubelet_kubeconfig=str(tmp_path / "kubelet.kubeconfig"), kubelet_dir=str(tmp_path / "kubelet"),
                    version="1.24.0", state_dir=str(tmp_path / "state"), images_before=str(tmp_path / "images.before"),
                    ca=str(ca), trust=trust, client=str(tmp_path / "kubelet/pki/kubelet-client-current.pem"))
    return subprocess.run(["sh", "-c", "set -eu\n" + script], capture_output=True, text=True, env=env)


def test_a_kubelet_bootstraps_again_when_the_clusters_cas_change(tmp_path: Path) -> None:
    """Each run of a CA rotation changes the CAs a node trusts (ca.crt): the kubelet's step moves
    its bootstrapped kubeconfig and client cert aside (listed for a failed restart to put back), so
    the restarted kubelet bootstraps again, under the new CAs and from the one that signs; the same
    CAs, or a kubelet that never bootstrapped, leave everything alone."""
    import hashlib

    env = {"PATH": "/usr/bin:/bin", "KUBE_HARDWAY_ROLLBACK": str(tmp_path / "rollback.list")}
    kubeconfig, client = tmp_path / "kubelet.kubeconfig", tmp_path / "kubelet/pki/kubelet-client-current.pem"
    (tmp_path / "ca.crt").write_text("CA-1\n")
    client.parent.mkdir(parents=True)
    kubeconfig.write_text("server: https://10.0.0.11:6443\n")
    client.symlink_to("kubelet-client-2026.pem")
    (client.parent / "kubelet-client-2026.pem").write_text("cert")
    same = run_kubelet_step(tmp_path, env)
    assert same.returncode == 0 and kubeconfig.exists() and client.exists(), same.stderr
    assert not (tmp_path / "rollback.list").exists()
    new = hashlib.sha256(b"CA-1\nCA-2\n").hexdigest()[:16]
    changed = run_kubelet_step(tmp_path, env, trust=new)
    assert changed.returncode == 0, changed.stderr
    assert "the kubelet bootstraps again" in changed.stderr
    assert not kubeconfig.exists() and not client.is_symlink(), "the kubelet would keep its old client cert"
    assert (tmp_path / "kubelet.kubeconfig.kube-hardway-prev").exists()
    assert Path(str(client) + ".kube-hardway-prev").is_symlink()
    assert (tmp_path / "rollback.list").read_text().split() == [str(kubeconfig), str(client)]
    (tmp_path / "rollback.list").unlink()
    again = run_kubelet_step(tmp_path, env, trust=new)    # bootstrapping, no kubeconfig yet: nothing to move
    assert again.returncode == 0 and "bootstraps again" not in again.stderr, again.stderr


def test_a_bootstrapped_kubelet_follows_a_new_api_server_address(tmp_path: Path) -> None:
    """The kubelet writes its own kubeconfig at TLS bootstrap, with the address it bootstrapped
    through: going from one master to two (the local proxy) or back, or to an apiEndpoint, the
    kubelet step points it at the new address, keeping the old one aside for a failed restart."""
    kubeconfig = tmp_path / "kubelet.kubeconfig"
    old = ("clusters:\n- cluster:\n    certificate-authority: /etc/kubernetes/pki/ca.crt\n"
           "    server: https://127.0.0.1:16443\n  name: default-cluster\n")
    kubeconfig.write_text(old)
    env = {"PATH": "/usr/bin:/bin", "KUBE_HARDWAY_ROLLBACK": str(tmp_path / "rollback.list")}

    def run(server: str) -> None:
        done = run_kubelet_step(tmp_path, server=server, env=env)
        assert done.returncode == 0, done.stderr

    run("https://10.0.0.11:6443")
    assert kubeconfig.read_text() == old.replace("https://127.0.0.1:16443", "https://10.0.0.11:6443")
    assert (tmp_path / "kubelet.kubeconfig.kube-hardway-prev").read_text() == old
    assert (tmp_path / "rollback.list").read_text().split() == [str(kubeconfig)]
    (tmp_path / "rollback.list").unlink()
    run("https://10.0.0.11:6443")                                        # the same address: untouched
    assert not (tmp_path / "rollback.list").exists()


def test_a_refused_bootstrap_token_is_named_with_the_setting_that_renews_it(tmp_path: Path) -> None:
    """The node gate, run with stand-ins for systemctl, curl, journalctl and sleep: a kubelet with
    no client certificate whose bootstrap token the API server refuses (401) twice, 5 s apart,
    fails at once (exit 3) naming kubernetes.bootstrapTokenTtlHours; a token refused once, then
    accepted (applied a moment ago), or accepted, is waited for. The token reaches curl on stdin."""
    token = "abcdef.0123456789abcdef"
    boot = tmp_path / "bootstrap.kubeconfig"
    boot.write_text(f"users:\n- name: kubelet-bootstrap\n  user:\n    token: {token}\n")
    answers, seen = tmp_path / "answers", tmp_path / "curl.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # curl -K - (the token probe): the next of the answers; any other curl: the kubelet's healthz
    curl = f"""echo "$*" >> {seen}
case "$*" in *"-K -"*) cat >> {seen}; head -n 1 {answers}; sed -i 1d {answers} ;; *) echo ok ;; esac"""
    script = node_gate(tmp_path, tmp_path / "kubelet-client-current.pem", bin_dir, {
        "systemctl": "exit 0", "curl": curl, "sleep": "exit 0",
        "journalctl": 'echo "E1130 certificate_manager.go:471] Failed ...: Unauthorized"'}, bootstrap=boot)

    def gate(*codes: str) -> subprocess.CompletedProcess[str]:
        answers.write_text("".join(f"{c}\n" for c in codes))
        seen.write_text("")
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})

    refused = gate("401", "401")
    assert refused.returncode == 3
    assert "n1: the API server refuses the kubelet's bootstrap token (401)" in refused.stdout
    assert "kubernetes.bootstrapTokenTtlHours" in refused.stdout and "Unauthorized" in refused.stdout
    calls = seen.read_text()
    assert f'header = "Authorization: Bearer {token}"' in calls             # on curl's stdin
    assert not [line for line in calls.splitlines() if token in line and "header =" not in line]
    for codes in (("401", "200"), ("200",)):                                  # a moment's refusal; accepted
        waiting = gate(*codes)
        assert waiting.returncode == 1 and "has not been approved" in waiting.stdout, codes
        assert "bootstrapTokenTtlHours" not in waiting.stdout


def test_a_gate_stops_waiting_when_its_check_says_waiting_will_not_help(tmp_path: Path) -> None:
    """Exit 1 from a check: not yet, poll until the timeout. Exit 3: fail now, with its words."""
    import time

    from components.templates import render

    def run(check: str, timeout: int) -> tuple[subprocess.CompletedProcess[str], float]:
        script = render("remote/health-gate-create.sh.j2", what="thing on n1", check=check, timeout=timeout, interval=1)
        started = time.monotonic()
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True), time.monotonic() - started

    final, took = run('echo "refused for good"; exit 3', 60)
    assert final.returncode == 1 and took < 5
    assert "thing on n1 is not healthy, and will not become so by waiting:\nrefused for good" in final.stderr
    pending, took = run('echo "not yet"; exit 1', 2)
    # (the gate's clock is `date +%s`: a gate started late in a second waits a little over 1 s of its 2;
    # make check saw 1.007 s on a loaded machine)
    assert pending.returncode == 1 and took >= 1 and "thing on n1 is not healthy after 2s:\nnot yet" in pending.stderr
    done, took = run(f'[ -e {tmp_path}/flag ] || {{ touch {tmp_path}/flag; exit 1; }}; echo ok', 10)
    assert done.returncode == 0 and done.stdout == "ok\n"
    # it says how long it waited (one poll, interval 1 s), which the harness's critical path reads
    waited = re.fullmatch(r"waited ([0-9.]+)s for: thing on n1\n", done.stderr)
    assert waited and 0.9 <= float(waited.group(1)) <= took, done.stderr


def node_gate(tmp_path: Path, cert: Path, bin_dir: Path, stubs: dict[str, str], version: str = "1.24.0",
              bootstrap: Path | None = None) -> str:
    """The node gate's script for node n1 (its bootstrap kubeconfig `bootstrap`, or gone), with `stubs`
    (name: shell body) written as commands into `bin_dir`, to run with that first on PATH."""
    from components.templates import render

    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return render("kubernetes/node-health.sh.j2", host="n1", server="https://10.0.0.11:6443", ca="/ca.crt",
                  cert=str(cert), bootstrap_kubeconfig=str(bootstrap or tmp_path / "absent"), healthz_port=10248,
                  run_dir=str(tmp_path), version=KubernetesVersion.parse(version))


def test_the_node_gate_passes_only_a_fresh_ready_status_without_the_lifecycle_controllers_taints(tmp_path: Path) -> None:
    """The node gate, with stand-ins for systemctl and curl answering a Node as the API server does
    (pretty-printed for curl): Ready from this kubelet and only the control-plane taint passes;
    the node lifecycle controller's not-ready/unreachable taints (whatever their effect) keep it
    waiting, naming them; so does a Ready posted before the kubelet's last start."""
    import json


    cert = tmp_path / "kubelet-client-current.pem"
    cert.write_text("pem")
    node_file, bin_dir = tmp_path / "node.json", tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {"systemctl": 'case "$*" in *ActiveEnterTimestamp*) echo "Wed 2026-12-02 05:30:00 UTC" ;; esac',
             "curl": f'case "$*" in *healthz*) echo ok ;; *) cat {node_file} ;; esac', "journalctl": "exit 0"}
    script = node_gate(tmp_path, cert, bin_dir, stubs)

    def gate(status: str, heartbeat: str, *taints: dict[str, str]) -> subprocess.CompletedProcess[str]:
        condition = {"type": "Ready", "status": status, "lastHeartbeatTime": heartbeat,
                     "lastTransitionTime": "2026-12-02T05:29:00Z", "reason": "KubeletReady",
                     "message": "kubelet is posting ready status. AppArmor enabled"}
        spec = {"podCIDR": "10.244.1.0/24", **({"taints": list(taints)} if taints else {})}
        node_file.write_text(json.dumps({"kind": "Node", "metadata": {"name": "n1"}, "spec": spec, "status": {
            "conditions": [{"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": heartbeat}, condition]}},
            indent=2))
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})

    master = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    fresh = "2026-12-02T05:30:04Z"
    for taints in [(), (master,)]:
        passed = gate("True", fresh, *taints)
        assert (passed.returncode, passed.stdout) == (0, "n1: node Ready\n"), passed
    assert gate("True", "2026-12-02T05:30:00Z").returncode == 0          # posted within the second it started
    not_ready = {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "timeAdded": "2026-12-02T05:30:01Z"}
    unreachable = {"key": "node.kubernetes.io/unreachable", "value": "", "effect": "NoSchedule"}
    for taints, named in (((master, not_ready), "node.kubernetes.io/not-ready:NoExecute"),
                          ((unreachable,), "node.kubernetes.io/unreachable:NoSchedule"),
                          ((not_ready, {**not_ready, "effect": "NoSchedule"}),
                           "node.kubernetes.io/not-ready:NoExecute node.kubernetes.io/not-ready:NoSchedule")):
        waiting = gate("True", fresh, *taints)
        assert waiting.returncode == 1, waiting
        assert f"n1: node n1 is Ready but still tainted {named} by the node lifecycle controller" in waiting.stdout
    stale = gate("True", "2026-12-02T05:29:58Z")
    assert stale.returncode == 1 and "shows the status of the kubelet before its restart" in stale.stdout, stale
    not_yet = gate("False", fresh)
    assert not_yet.returncode == 1 and "node n1 is not Ready (Ready=False)" in not_yet.stdout, not_yet


def test_a_running_service_never_configured_here_restarts_at_once_and_then_only_in_its_turn(tmp_path: Path) -> None:
    """A distribution's Docker running when the stack first reaches the host serves nothing of the
    cluster yet: taking it over restarts it directly (three workers' Docker took their turns under
    the rolling lock one after another, 24-34 s of a fresh deploy). Once this program configured
    it, a change goes through the rolling hook."""
    from components.templates import render

    state, etc, stub = tmp_path / "state", tmp_path / "etc", tmp_path / "stubs"
    stub.mkdir()
    calls = tmp_path / "calls"
    (stub / "systemctl").write_text(f"#!/bin/sh\necho \"systemctl $*\" >> {calls}\nexit 0\n")   # active
    (stub / "systemctl").chmod(0o755)
    (stub / "rolling").write_text(f"#!/bin/sh\necho \"rolling $*\" >> {calls}\n")
    (stub / "rolling").chmod(0o755)
    from components.remote import first_restart, rolling_restart

    # what HostService renders: a rolling hook is skipped the first time, any other restart is not
    assert first_restart("a.service", rolling_restart("a.service", 60, "true")) == "systemctl restart a.service"
    assert first_restart("a.service", None) == "systemctl restart a.service"
    assert first_restart("etcd.service", "/usr/local/lib/kube-hardway/etcd-restart 60") == \
        "/usr/local/lib/kube-hardway/etcd-restart 60"

    def create(conf: str) -> list[str]:
        from components.remote import HostFile, _b64_line
        contents = {str(etc / "a.conf"): conf, str(etc / "a.service"): "[Unit]\n"}
        files = [HostFile(path, content) for path, content in contents.items()]
        script = render("remote/service-create.sh.j2", digest=conf, steps=[], name="a", unit="a.service",
                        files=files, paths=" ".join(f.path for f in files), state_dir=str(state), no_block=False,
                        units=["a.service"], unit_dir=str(etc),
                        restart="rolling a.service", first_restart="systemctl restart a.service", gate=None)
        calls.write_text("")
        done = subprocess.run(["sh", "-c", script], input="".join(_b64_line(c) for c in contents.values()),
                              capture_output=True, text=True, env={"PATH": f"{stub}:/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        return [c for c in calls.read_text().splitlines() if "restart" in c or c.startswith("rolling")]

    assert create("one") == ["systemctl restart a.service"]
    assert create("two") == ["rolling a.service"]
    assert create("two") == []


FAKE_SYSTEMD = """#!/bin/sh
# systemctl as a host's systemd answers it: a unit's state from $STUBS/show.<unit> (default: what it
# loaded from our file, current), every other call recorded; is-enabled says no, is-active not running
case "$1" in
  is-enabled|is-active) exit 1 ;;
  show) u=$(for a; do :; done; echo "$a")
        if [ -f "$STUBS/show.$u" ]; then cat "$STUBS/show.$u"
        else printf 'NeedDaemonReload=no\\nLoadState=loaded\\nFragmentPath=%s/%s\\n' "$UNIT_DIR" "$u"; fi ;;
  *) echo "systemctl $*" >> "$STUBS/calls" ;;
esac
"""


def test_systemd_is_reloaded_only_when_it_holds_an_old_or_another_file_of_a_unit_the_service_writes(tmp_path: Path) -> None:
    """A reload re-reads every unit on the host (a tenth of a second of systemd's CPU, ~15 a host in
    a fresh deploy): a new unit is enabled without one (systemd loads it when it is started), and a
    reload comes only where systemd holds a unit file the run changed, or the distribution's file
    this one overrides, for any unit file the service writes (Docker's socket beside its service)."""
    from components.remote import HostFile, _b64_line
    from components.templates import render

    state, etc, stubs = tmp_path / "state", tmp_path / "etc", tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "systemctl").write_text(FAKE_SYSTEMD)
    (stubs / "systemctl").chmod(0o755)

    def calls(show: dict[str, str]) -> list[str]:
        for f in stubs.glob("show.*"):
            f.unlink()
        for unit, answer in show.items():
            (stubs / f"show.{unit}").write_text(answer)
        (stubs / "calls").write_text("")
        contents = {str(etc / "a.socket"): "[Socket]\n", str(etc / "a.service"): "[Unit]\n"}
        files = [HostFile(path, content) for path, content in contents.items()]
        script = render("remote/service-create.sh.j2", digest="one", steps=[], name="a", unit="a.service",
                        files=files, paths=" ".join(f.path for f in files), state_dir=str(state), no_block=False,
                        units=["a.socket", "a.service"], unit_dir=str(etc),
                        restart="systemctl restart a.service", first_restart="systemctl restart a.service", gate=None)
        done = subprocess.run(["sh", "-c", script], input="".join(_b64_line(c) for c in contents.values()),
                              capture_output=True, text=True,
                              env={"PATH": f"{stubs}:/usr/bin:/bin", "STUBS": str(stubs), "UNIT_DIR": str(etc)})
        assert done.returncode == 0, done.stderr
        return (stubs / "calls").read_text().splitlines()

    fresh = ["systemctl enable --quiet --no-reload a.service", "systemctl start a.service"]
    assert calls({}) == fresh
    reloaded = [fresh[0], "systemctl daemon-reload", fresh[1]]
    changed = f"NeedDaemonReload=yes\nLoadState=loaded\nFragmentPath={etc}/a.service\n"
    assert calls({"a.service": changed}) == reloaded
    distribution = "NeedDaemonReload=no\nLoadState=loaded\nFragmentPath=/lib/systemd/system/a.socket\n"
    assert calls({"a.socket": distribution}) == reloaded
    assert calls({"a.service": "NeedDaemonReload=no\nLoadState=not-found\nFragmentPath=\n"}) == reloaded


def test_a_kubelet_started_before_its_bootstrap_got_the_cert_is_restarted_at_once_once_per_cert(tmp_path: Path) -> None:
    """A kubelet (< 1.27) that opened its API connections before its client cert existed is refused
    (Unauthorized) until its transport's 10 s check: the node gate restarts it as soon as the cert
    is there, once for that cert; never one that started after the cert."""
    import os
    import time

    cert, calls, bin_dir = tmp_path / "kubelet-client-current.pem", tmp_path / "calls", tmp_path / "bin"
    cert.write_text("pem")
    bin_dir.mkdir()
    started = tmp_path / "started"
    stubs = {"systemctl": f'echo "systemctl $*" >> {calls}; case "$*" in *ActiveEnterTimestamp*) cat {started} ;; esac',
             "curl": 'case "$*" in *healthz*) echo ok ;; '
                     '*) echo \'{"kind":"Status","reason":"NotFound","code":404}\' ;; esac',
             "journalctl": "true"}
    script = node_gate(tmp_path, cert, bin_dir, stubs)
    issued = int(time.time()) - 5
    os.utime(cert, (issued, issued))                  # one cert, 5 s old

    def gate(kubelet_started: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        started.write_text(time.strftime("%a %Y-%m-%d %H:%M:%S UTC", time.gmtime(kubelet_started)) + "\n")
        calls.write_text("")
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                              env={"PATH": f"{bin_dir}:/usr/bin:/bin", "TZ": "UTC0"})
        return done, [c for c in calls.read_text().splitlines() if "restart" in c]

    done, restarts = gate(issued + 2)                 # started with the cert there: registering, not refused
    assert done.returncode == 1 and "is not registered" in done.stdout and restarts == [], (done, restarts)
    done, restarts = gate(issued - 2)                 # started before it: restarted at once
    assert done.returncode == 1 and "started before its client cert" in done.stdout, done
    assert restarts == ["systemctl restart kubelet"]
    done, restarts = gate(issued - 2)                 # the same cert: once only
    assert done.returncode == 1 and restarts == [], (done, restarts)
    # from 1.27 the kubelet looks for its first cert every second: nothing to repair
    newer = node_gate(tmp_path, cert, bin_dir, stubs, version="1.27.0")
    assert "systemctl restart kubelet" in script and "systemctl restart kubelet" not in newer


JOIN_PEERS = {"https://10.0.0.2:2380": "m2", "https://10.0.0.3:2380": "m3"}


def run_etcd_join(tmp_path: Path, answers: dict[str, str]) -> tuple[str, str]:
    """etcd-join for member m1 of m1..m3, with a `curl` answering each peer's /version with
    `answers[peer]` ("refused", or the JSON) and an etcdctl whose member list holds m2 and m3.
    Returns the env file it wrote and the etcdctl calls."""
    from components.templates import render

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "etcdctl-calls"
    curl = "\n".join(f'case "$*" in *{url}/version*) ' + ('exit 7 ;;' if answer == "refused" else f"echo '{answer}'; exit 0 ;;")
                     + " esac" for url, answer in answers.items())
    stubs = {"curl": curl + "\nexit 28",
             "etcdctl": f'echo "$*" >> {calls}\ncase "$*" in\n'
                        '  *"member list"*) echo "2, started, m2, https://10.0.0.2:2380, https://10.0.0.2:2379, false"\n'
                        '                   echo "3, started, m3, https://10.0.0.3:2380, https://10.0.0.3:2379, false" ;;\n'
                        '  *"member add"*) echo \'ETCD_INITIAL_CLUSTER="m2=https://10.0.0.2:2380,m3=https://10.0.0.3:2380,'
                        'm1=https://10.0.0.1:2380"\' ;;\nesac',
             "logger": ""}
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = render("etcd/etcd-join.sh.j2", name="m1", peer_url="https://10.0.0.1:2380",
                    initial_cluster=",".join(f"m{i}=https://10.0.0.{i}:2380" for i in (1, 2, 3)),
                    others="https://10.0.0.2:2379,https://10.0.0.3:2379", peers=",".join(JOIN_PEERS),
                    bin_dir=str(bin_dir), pki={k: f"/pki/{k}" for k in ("ca", "peer_cert", "peer_key", "admin_cert", "admin_key")},
                    data_dir=str(tmp_path / "data"), env_file=str(tmp_path / "initial.env"))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=30)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "initial.env").read_text(), calls.read_text() if calls.exists() else ""


def test_a_member_bootstraps_with_peers_that_bootstrap_too_and_joins_a_cluster_that_runs(tmp_path: Path) -> None:
    """etcd-join asks the other members' peer ports (at once, where a bootstrapping member's client
    port says nothing until it can serve): none running, or all still bootstrapping ("not_decided"),
    is a new cluster, decided without etcdctl; a peer naming the cluster's version means one runs,
    and this member is added to it as a learner."""
    new = "ETCD_INITIAL_CLUSTER=m1=https://10.0.0.1:2380,m2=https://10.0.0.2:2380,m3=https://10.0.0.3:2380\n" \
          "ETCD_INITIAL_CLUSTER_STATE=new\n"
    bootstrapping = '{"etcdserver":"3.4.23","etcdcluster":"not_decided"}'
    for case, answers in (("none", {"https://10.0.0.2:2380": "refused", "https://10.0.0.3:2380": "refused"}),
                          ("bootstrapping", {"https://10.0.0.2:2380": bootstrapping, "https://10.0.0.3:2380": "refused"})):
        env, calls = run_etcd_join(tmp_path / case, answers)
        assert (env, calls) == (new, ""), case
    env, calls = run_etcd_join(tmp_path / "running", {"https://10.0.0.2:2380": "refused",
                                                      "https://10.0.0.3:2380": '{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}'})
    assert env.endswith("ETCD_INITIAL_CLUSTER_STATE=existing\n") and "m1=https://10.0.0.1:2380" in env
    assert "member list" in calls and "member add m1 --learner --peer-urls=https://10.0.0.1:2380" in calls


def test_a_files_sha256_is_checked_with_openssl_where_there_is_one_and_with_sha256sum_where_not(tmp_path: Path) -> None:
    """What every release file and image tarball is checked with before it is installed: a file
    whose sum differs, or that is gone, fails naming the file, whichever tool hashed it."""
    import hashlib

    from components.templates import render

    good = tmp_path / "release.tar.gz"
    good.write_bytes(b"release" * 1000)
    sum_ = hashlib.sha256(good.read_bytes()).hexdigest()
    no_openssl = tmp_path / "no-openssl"
    no_openssl.mkdir()
    (no_openssl / "openssl").write_text("#!/bin/sh\nexit 127\n")   # as if it were not installed
    (no_openssl / "openssl").chmod(0o755)
    check = render("remote/sha256-check.sh.j2") + 'sha256_check "$1" "$2"\n'
    for path in ("/usr/bin:/bin", f"{no_openssl}:/usr/bin:/bin"):
        def run(expected: str, file: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["sh", "-c", check, "sh", expected, str(file)], capture_output=True, text=True,
                                  env={"PATH": path})  # noqa: B023
        assert run(sum_, good).returncode == 0, run(sum_, good).stderr
        wrong = run("0" * 64, good)
        assert wrong.returncode == 1 and f"{good}: its sha256 is {sum_}, not {'0' * 64}" in wrong.stderr
        gone = run(sum_, tmp_path / "gone")
        assert gone.returncode == 1 and "gone: its sha256 is unreadable" in gone.stderr
