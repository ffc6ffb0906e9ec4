"""Every release kube-hardway installs: where each file comes from, what is inside, and its sha256.

This is the one place a version is pinned. A version bump is a reviewed diff of this module: the
default version and the sha256 of each of its files per architecture, copied from upstream's
published sums — as kubespray pins `*_checksums[arch][version]` — never a sum fetched from beside
the file it is meant to check.

A version without a pin here takes its sums from `artifacts.checksums` in the stack config, or,
as a last resort, from upstream's sum file during `pulumi up`, with a warning that says so.
Nothing in this module does I/O: a preview needs neither the network nor the files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from components.checksums import PINNED_SHA256

ARCHES = ("amd64", "arm64")

# The newest upstream releases, read from each upstream repository's release tags; a default's
# files have their sha256 pinned in components/checksums.py where upstream publishes sums (README,
# "Releases, pins and offline previews").
DEFAULT_VERSIONS: dict[str, str] = {
    "kubernetes": "1.37.0",
    "etcd": "3.6.14",
    "flannel": "0.28.9",
    "docker": "29.7.2",
    "criDockerd": "0.4.3",
    "registry": "3.1.1",
}

KUBERNETES_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
                       "kube-proxy", "kubectl")


@dataclass(frozen=True)
class Asset:
    """One upstream release file."""

    filename: str                      # upstream's asset name, and the file's name in artifacts.dir
    url_path: str                      # where it is under the release's base URL
    sums_path: str | None              # upstream's sum file listing it (None: upstream publishes none)
    binaries: Mapping[str, str]        # archive member -> installed name (a bare binary: itself)
    archive: bool = True               # a .tar.gz/.tgz to unpack, or the binary itself
    # Names like `kubelet` or `docker-29.7.2.tgz` do not say their architecture; in a local
    # bundle they are looked for in `<artifacts.dir>/<arch>/` before `<artifacts.dir>/`.
    names_arch: bool = True
    sha256: str | None = None          # known from the file itself (a distribution's package file)
    package: str = ""                  # the package a distribution's package file installs


@dataclass(frozen=True)
class Release:
    component: str                     # the versions.<component> and artifacts.mirrors.<component> key
    version: str
    arch: str
    default_base: str
    assets: tuple[Asset, ...]
    packages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # package manager -> names
    install_dir: str | None = None     # None: the artifact source's bin dir
    # binary -> its name in the distribution's package, where that differs (Debian: docker-registry)
    package_binaries: Mapping[str, str] = field(default_factory=dict)
    package_files: bool = False        # the assets are the distribution's package files, not a release

    @property
    def key(self) -> str:
        return f"{self.component}-{self.version}-{self.arch}"

    def pinned(self, asset: Asset) -> str | None:
        return PINNED_SHA256.get(self.component, {}).get(self.version, {}).get(self.arch, {}).get(asset.filename)

    def only(self, *binaries: str) -> Release:
        """The same release restricted to the assets that provide `binaries` (Kubernetes ships one
        file per binary; a worker needs two of six)."""
        wanted = set(binaries)
        assets = tuple(a for a in self.assets if wanted & set(a.binaries.values()))
        missing = wanted - {b for a in assets for b in a.binaries.values()}
        if missing:
            raise ValueError(f"{self.component} {self.version} has no binaries {sorted(missing)}")
        return Release(self.component, self.version, self.arch, self.default_base, assets,
                       self.packages, self.install_dir, self.package_binaries, self.package_files)


# What the program installs from the distribution, never from an upstream release: from the
# hosts' repository (`package`), or from the package files in `<artifacts.dir>/<component>/<arch>/`,
# with their dependencies, copied like any release file (`local`, for hosts that reach no
# repository). They are named as `apt-get download` and `dnf download` name them.
DISTRIBUTION_PACKAGES: dict[str, Mapping[str, tuple[str, ...]]] = {
    "apiServerProxy": {"apt-get": ("haproxy",), "dnf": ("haproxy",), "yum": ("haproxy",)},
}
PACKAGE_SOURCES = ("package", "local")
PACKAGE_FILE_SUFFIXES = (".deb", ".rpm")


def package_name(filename: str) -> str:
    """The package a file installs, from its name: `name_version_arch.deb`, `name-version-release.arch.rpm`."""
    if filename.endswith(".deb"):
        return filename.split("_", 1)[0]
    return filename.rsplit("-", 2)[0]


def distribution_release(component: str, arch: str, files: tuple[tuple[str, str], ...] = ()) -> Release:
    """`component` from the distribution: its packages, or (`files`: (file name, sha256) pairs) those files."""
    assets = tuple(Asset(name, "", None, {}, archive=False, sha256=sha, package=package_name(name))
                   for name, sha in files)
    return Release(component, "distribution", arch, "", assets, packages=DISTRIBUTION_PACKAGES[component],
                   package_files=bool(files))


def _github(repo: str) -> str:
    return f"https://github.com/{repo}/releases/download"


def _etcd(version: str, arch: str) -> Release:
    stem = f"etcd-v{version}-linux-{arch}"
    # etcdutl (offline snapshot status and restore) is in the tarball from 3.5; 3.4's etcdctl does both
    minor = tuple(int(n) for n in version.split("-", 1)[0].split(".")[:2])
    binaries = ("etcd", "etcdctl", *(("etcdutl",) if minor >= (3, 5) else ()))
    return Release(
        "etcd", version, arch, _github("etcd-io/etcd"),
        (Asset(f"{stem}.tar.gz", f"v{version}/{stem}.tar.gz", f"v{version}/SHA256SUMS",
               {f"{stem}/{b}": b for b in binaries}),),
        packages={"apt-get": ("etcd-server", "etcd-client"), "dnf": ("etcd",), "yum": ("etcd",)},
    )


def _flannel(version: str, arch: str) -> Release:
    name = f"flannel-v{version}-linux-{arch}.tar.gz"
    return Release(
        "flannel", version, arch, _github("flannel-io/flannel"),
        (Asset(name, f"v{version}/{name}", None,
               {"flanneld": "flanneld", "mk-docker-opts.sh": "mk-docker-opts.sh"}),),
    )


def _docker(version: str, arch: str) -> Release:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}[arch]
    binaries = ("docker", "dockerd", "containerd", "containerd-shim-runc-v2", "ctr", "docker-init",
                "docker-proxy", "runc")
    return Release(
        "docker", version, arch, "https://download.docker.com/linux/static/stable",
        (Asset(f"docker-{version}.tgz", f"{machine}/docker-{version}.tgz", None,
               {f"docker/{b}": b for b in binaries}, names_arch=False),),
        packages={"apt-get": ("docker.io",), "dnf": ("moby-engine",), "yum": ("docker",)},
    )


def _cri_dockerd(version: str, arch: str) -> Release:
    name = f"cri-dockerd-{version}.{arch}.tgz"
    return Release(
        "criDockerd", version, arch, _github("Mirantis/cri-dockerd"),
        (Asset(name, f"v{version}/{name}", None, {"cri-dockerd/cri-dockerd": "cri-dockerd"}),),
    )


def _kubernetes(version: str, arch: str) -> Release:
    return Release(
        "kubernetes", version, arch, "https://dl.k8s.io/release",
        tuple(Asset(b, f"v{version}/bin/linux/{arch}/{b}", f"v{version}/bin/linux/{arch}/{b}.sha256",
                    {b: b}, archive=False, names_arch=False) for b in KUBERNETES_BINARIES),
    )


def _registry(version: str, arch: str) -> Release:
    name = f"registry_{version}_linux_{arch}.tar.gz"
    return Release(
        "registry", version, arch, _github("distribution/distribution"),
        (Asset(name, f"v{version}/{name}", f"v{version}/{name}.sha256", {"registry": "registry"}),),
        packages={"apt-get": ("docker-registry",), "dnf": ("distribution",), "yum": ("docker-distribution",)},
        package_binaries={"registry": "docker-registry"},
    )


_RELEASES: dict[str, Callable[[str, str], Release]] = {
    "etcd": _etcd,
    "flannel": _flannel,
    "docker": _docker,
    "criDockerd": _cri_dockerd,
    "kubernetes": _kubernetes,
    "registry": _registry,
}
assert set(_RELEASES) == set(DEFAULT_VERSIONS)


def release(component: str, version: str, arch: str = "amd64") -> Release:
    """The release files of `component` at `version` for `arch` (no I/O)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHES)}")
    return _RELEASES[component](version, arch)
