"""The release files the lab deploys from with `artifacts.source: local`: an etcd bundle in the
upstream layout built from the image's Debian etcd, haproxy's Debian packages the image lacks, plus
the shared lab bundle when there is one."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from lab.common import REPO_ROOT, SHARED_STATE_DIR, LabError, atomic_write, log, sh
from lab.rootfs import MIRROR, rootfs_key

ARTIFACTS_DIR = SHARED_STATE_DIR / "artifacts"
ARTIFACTS_STAMP = SHARED_STATE_DIR / "artifacts.stamp"
# Release files the registries lack (flannel, cri-dockerd, Kubernetes 1.24, images, a newer etcd),
# built from upstream sources; a user's clone has none (see ../shared/lab-artifacts/README.md).
SHARED_UNPACKED = SHARED_STATE_DIR / "shared-artifacts"
# The node-local API server proxy: the program installs every .deb in <dir>/apiServerProxy/<arch>/
# (`artifacts.sources.apiServerProxy: local`), so that directory holds haproxy and the dependencies
# the image lacks, and nothing else. The stamp (outside it) names the image and the files.
API_SERVER_PROXY_PACKAGES = ["haproxy"]
API_SERVER_PROXY_DIR = ARTIFACTS_DIR / "apiServerProxy"
API_SERVER_PROXY_STAMP = SHARED_STATE_DIR / "apiServerProxy.stamp"


def shared_artifacts() -> Path | None:
    """The shared lab bundle: $KH_LAB_SHARED_ARTIFACTS, else `../shared/lab-artifacts` beside this
    checkout — or beside the checkout it was cloned from (CI runs on `git clone . /tmp/x`)."""
    if os.environ.get("KH_LAB_SHARED_ARTIFACTS"):
        return Path(os.environ["KH_LAB_SHARED_ARTIFACTS"])
    repos = [REPO_ROOT]
    origin = subprocess.run(["git", "-C", str(REPO_ROOT), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin.startswith("/") or origin.startswith("file://"):
        repos.append(Path(origin.removeprefix("file://")))
    for repo in repos:
        candidate = repo.resolve().parent / "shared" / "lab-artifacts"
        if (candidate / "unpack.sh").is_file():
            return candidate
    return None


def _status_field(root: Path, package: str, field: str) -> str:
    status = (root / "var/lib/dpkg/status").read_text()
    for para in status.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", para, re.M):
            m = re.search(rf"^{field}: (\S+)$", para, re.M)
            if m:
                return m.group(1)
    raise LabError(f"package {package} not found in {root}/var/lib/dpkg/status")


def debian_version(root: Path, package: str) -> str:
    return _status_field(root, package, "Version")


def debian_architecture(root: Path) -> str:
    return _status_field(root, "dpkg", "Architecture")


def upstream_version(debver: str) -> str:
    v = debver.split(":", 1)[-1]          # epoch
    if "-" in v:
        v = v.rsplit("-", 1)[0]           # debian revision
    return re.split(r"[+~]", v, maxsplit=1)[0]  # +dfsg, ~rc repack suffixes


def ensure_artifacts(root: Path) -> str:
    ver = upstream_version(debian_version(root, "etcd-server"))
    name = f"etcd-v{ver}-linux-amd64"
    tarball = ARTIFACTS_DIR / f"{name}.tar.gz"
    sums = ARTIFACTS_DIR / "SHA256SUMS"
    stamp = f"{rootfs_key()} {ver}\n"
    if (tarball.exists() and sums.exists() and ARTIFACTS_STAMP.exists()
            and ARTIFACTS_STAMP.read_text() == stamp):
        return ver
    log(f"building artifact bundle {tarball}")
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS_DIR / f"etcd-v{ver}-linux-amd64.tar.gz").unlink(missing_ok=True)
    tmp = ARTIFACTS_DIR / f".{name}.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tf:
        d = tarfile.TarInfo(name)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tf.addfile(d)
        for binary in ("etcd", "etcdctl"):
            src = root / "usr/bin" / binary
            if not src.is_file():
                raise LabError(f"{src} missing in rootfs")
            ti = tf.gettarinfo(str(src), arcname=f"{name}/{binary}")
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mode = 0o755
            with open(src, "rb") as f:
                tf.addfile(ti, f)
    os.replace(tmp, tarball)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    atomic_write(sums, f"{digest}  {tarball.name}\n")
    atomic_write(ARTIFACTS_STAMP, stamp)
    return ver


def ensure_shared_artifacts() -> list[str]:
    """Unpack the shared lab bundle (its own unpack.sh: idempotent, verifies every sum) and link its
    files beside the etcd bundle, merging their sums into the one SHA256SUMS that
    `artifacts.source: local` reads. Returns the file names; none when there is no bundle."""
    bundle = shared_artifacts()
    if bundle is None or not (bundle / "unpack.sh").is_file():
        log(f"no shared lab artifacts (looked beside {REPO_ROOT} and its origin; set KH_LAB_SHARED_ARTIFACTS): "
            "the lab has only its own etcd bundle")
        return []
    unpack = bundle / "unpack.sh"
    sh("sh", str(unpack), str(SHARED_UNPACKED), timeout=600)
    shared = dict(line.split()[::-1] for line in (SHARED_UNPACKED / "SHA256SUMS").read_text().splitlines() if line.strip())
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    for name in shared:
        src, dst = SHARED_UNPACKED / name, ARTIFACTS_DIR / name
        if dst.exists() and os.path.samefile(src, dst):
            continue
        tmp = ARTIFACTS_DIR / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # another file system
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    sums = ARTIFACTS_DIR / "SHA256SUMS"
    own = [line for line in (sums.read_text().splitlines() if sums.exists() else [])
           if line.strip() and line.split()[-1] not in shared]
    merged = own + [f"{digest}  {name}" for name, digest in sorted(shared.items())]
    if not sums.exists() or sums.read_text() != "\n".join(merged) + "\n":
        atomic_write(sums, "\n".join(merged) + "\n")
    return sorted(shared)


def ensure_api_server_proxy_debs(root: Path) -> list[str]:
    """Put haproxy's .deb and those of its dependencies (recursively, no recommends) that the image
    does not have into <artifacts>/apiServerProxy/<arch>/, fetched from the image's mirror, as an
    air-gapped user brings them. Fetched once per image (the stamp holds its key). Returns the names.

    apt runs on this host against the image's dpkg status, sources and keyrings, with its lists,
    caches and downloads in a scratch dir: nothing in the shared, cached image changes."""
    arch = debian_architecture(root)
    target = API_SERVER_PROXY_DIR / arch
    key = f"{rootfs_key()} {arch} {' '.join(API_SERVER_PROXY_PACKAGES)}"
    if API_SERVER_PROXY_STAMP.exists() and target.is_dir():
        stamped = API_SERVER_PROXY_STAMP.read_text().splitlines()
        if stamped[:1] == [key] and sorted(p.name for p in target.iterdir()) == stamped[1:]:
            return stamped[1:]
    if shutil.which("apt-get") is None:
        raise LabError("apt-get is missing: the lab fetches haproxy's Debian packages with it (a Debian host)")
    log(f"fetching {', '.join(API_SERVER_PROXY_PACKAGES)} and the dependencies the image lacks from {MIRROR} "
        f"into {target}")
    API_SERVER_PROXY_DIR.mkdir(parents=True, exist_ok=True)
    # leftovers of an interrupted fetch (the caller holds the artifacts' lock: nobody else is fetching)
    for stale in [*SHARED_STATE_DIR.glob(".apt-*"), *API_SERVER_PROXY_DIR.glob(".*")]:
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".apt-", dir=SHARED_STATE_DIR) as scratch_dir:
        scratch = Path(scratch_dir)
        archives = scratch / "archives"
        for d in ("state/lists/partial", "cache", "archives/partial", "log"):
            (scratch / d).mkdir(parents=True)
        # read first (APT_CONFIG), so the parts dir read next is the image's, never this host's;
        # no locks: nothing is installed, and the image must stay as it is
        config = scratch / "apt.conf"
        config.write_text("\n".join([
            f'Dir::Etc "{root}/etc/apt/";',
            f'Dir::State "{scratch}/state/";',
            f'Dir::State::status "{root}/var/lib/dpkg/status";',
            f'Dir::Cache "{scratch}/cache/";',
            f'Dir::Cache::archives "{archives}/";',
            f'Dir::Log "{scratch}/log/";',
            f'APT::Architecture "{arch}";',
            f'APT::Architectures {{ "{arch}"; }};',
            'APT::Sandbox::User "root";',
            'Debug::NoLocking "true";',
            'Acquire::Languages "none";',
            'APT::Update::Error-Mode "any";',   # an index that failed to download fails `update`
        ]) + "\n")
        env = {**os.environ, "APT_CONFIG": str(config), "DEBIAN_FRONTEND": "noninteractive"}
        try:
            sh("apt-get", "-q", "update", env=env, timeout=600)
            sh("apt-get", "-q", "install", "--download-only", "-y", "--no-install-recommends",
               *API_SERVER_PROXY_PACKAGES, env=env, timeout=600)
        except LabError as e:
            raise LabError(f"could not fetch {', '.join(API_SERVER_PROXY_PACKAGES)} from the image's mirror "
                           f"({root}/etc/apt/sources.list; KH_LAB_MIRROR picks another): {e}") from None
        fetched = sorted(archives.glob("*.deb"))
        staging = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=API_SERVER_PROXY_DIR))
        os.chmod(staging, 0o755)
        for deb in fetched:
            os.replace(deb, staging / deb.name)
    if target.exists():
        shutil.rmtree(target)
    os.rename(staging, target)
    debs = [deb.name for deb in fetched]
    atomic_write(API_SERVER_PROXY_STAMP, "\n".join([key, *debs]) + "\n")
    log(f"{target}: " + (", ".join(f"{d} ({(target / d).stat().st_size // 1024} KiB)" for d in debs)
                         or "nothing: the image has them all"))
    return debs
