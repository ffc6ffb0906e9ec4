"""The problem collector and the value validators every config section shares.

Each validator takes the value, the key path it was found at and the collector; on a bad value it
records one problem naming the path and the fix and returns a safe default, so parsing goes on and
the user sees every problem of the stack file at once.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi

NAMESPACE = "kube-hardway"

LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.]+)?$")
_HOST_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
)


class ConfigError(pulumi.RunError):
    """Raised with every problem found; RunError makes Pulumi print it without a traceback."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) in the stack config (Pulumi.<stack>.yaml):\n{lines}"
        )


def did_you_mean(value: object, known: Sequence[str], what: str = "known keys") -> str:
    """The closest known value, else the whole list (`what` names it): for unknown keys."""
    hint = difflib.get_close_matches(str(value), list(known), n=1)
    return f"did you mean '{hint[0]}'?" if hint else f"{what}: {', '.join(known)}"


def valid_values(value: object, known: Sequence[str], what: str) -> str:
    """`valid <what>: a, b, c`, with the closest one suggested when there is one."""
    hint = difflib.get_close_matches(str(value), list(known), n=1)
    return f"valid {what}: {', '.join(known)}" + (f" (did you mean '{hint[0]}'?)" if hint else "")


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{NAMESPACE}:{path}: {message}")

    def unknown_keys(self, path: str, value: Mapping[str, Any], known: Sequence[str]) -> None:
        for key in value:
            if key not in known:
                self.add(f"{path}.{key}" if path else str(key), f"unknown key; {did_you_mean(key, known)}")

    def section(self, key: str, value: Any, known: Sequence[str]) -> Mapping[str, Any]:
        """A map-valued section (`{}` when unset), its unknown keys reported."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(key, f"must be a map of settings, got {type(value).__name__}")
            return {}
        self.unknown_keys(key, value, known)
        return value


def integer(value: Any, path: str, p: Problems, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        p.add(path, f"must be a whole number between {lo} and {hi}, got {value!r}")
        return default
    number = int(value)
    if not lo <= number <= hi:
        p.add(path, f"must be between {lo} and {hi}, got {number}")
        return default
    return number


def flag(value: Any, path: str, p: Problems, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        p.add(path, f"must be true or false, got {value!r}")
        return default
    return value


def string(value: Any, path: str, p: Problems, default: str | None = None) -> str | None:
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        p.add(path, f"must be a non-empty string, got {value!r}")
        return default
    return value.strip()


def ipv4(value: Any, path: str, p: Problems) -> ipaddress.IPv4Address | None:
    try:
        ip = ipaddress.IPv4Address(str(value).strip())
    except ValueError:
        p.add(path, f"must be an IPv4 address like 192.168.1.200, got {value!r}")
        return None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        p.add(path, f"{ip} cannot be a host address (unspecified, loopback or multicast)")
        return None
    return ip


def cidr(value: Any, path: str, p: Problems) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(str(value).strip(), strict=True)
    except ValueError as err:
        p.add(path, f"must be an IPv4 network in CIDR form like 172.30.0.0/16 ({err})")
        return None


def host_key(value: Any, path: str, p: Problems) -> str | None:
    text = string(value, path, p)
    if text is None:
        return None
    parts = text.split()
    example = "an authorized_keys-style line like 'ssh-ed25519 AAAAC3Nza...'"
    if len(parts) < 2 or parts[0] not in _HOST_KEY_TYPES:
        p.add(path, f"must be {example} (types: {', '.join(_HOST_KEY_TYPES)}); "
              "read it with `ssh-keyscan -t ed25519 <address>`")
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        embedded = blob[4 : 4 + length].decode()
    except (ValueError, struct.error, UnicodeDecodeError):
        p.add(path, f"the key data is not valid base64 SSH key data; expected {example}")
        return None
    if embedded != parts[0]:
        p.add(path, f"says {parts[0]} but the key data is {embedded}")
        return None
    return f"{parts[0]} {parts[1]}"


def version(value: Any, path: str, p: Problems, default: str) -> str:
    if value is None:
        return default
    if not _VERSION.match(str(value).strip()):
        p.add(path, f"must be a release version like {default} (a leading 'v' is allowed), got {value!r}")
        return default
    return str(value).strip().removeprefix("v")


def string_list(value: Any, path: str, p: Problems) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        p.add(path, f"must be a list of strings, got {value!r}")
        return ()
    return tuple(v.strip() for v in value)


# What a URL of ours needs: scheme://host[:port][/path]. No user info (a password would show on a
# command line), query or fragment, and none of the characters a shell gives a meaning to.
_URL = re.compile(r"^(?P<scheme>[a-z]+)://(?P<host>[A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])(:(?P<port>\d{1,5}))?"
                  r"(?P<path>/[A-Za-z0-9._~%+/-]*)?$")


def url(value: str, path: str, p: Problems, schemes: tuple[str, ...] = ("http", "https")) -> None:
    """A URL that reaches hosts' scripts and units: refused unless it is one, of `schemes`."""
    m = _URL.match(value)
    if not m or m["scheme"] not in schemes or (not m["host"] and m["scheme"] != "file") \
            or (m["port"] is not None and not 0 < int(m["port"]) < 65536):
        p.add(path, f"must be a URL like {schemes[0]}://host[:port][/path] ({' or '.join(s + '://' for s in schemes)}; "
              f"letters, digits and . _ ~ % + - / only: no spaces, quotes, $, `, ;, user info or query), got {value!r}")


# Directories a setting may never name: the system's own, where other software keeps its data, or
# what kube-hardway itself keeps elsewhere. A dedicated directory's delete removes what the program
# made in it, and the directory itself only if it is then empty.
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found", "/media",
    "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/local", "/usr/local/bin",
    "/usr/local/lib", "/usr/local/sbin", "/usr/sbin", "/usr/share", "/usr/src", "/var/backups", "/var/cache",
    "/var/lib", "/var/local", "/var/log", "/var/mail", "/var/opt", "/var/run", "/var/spool", "/var/tmp",
    "/etc/kubernetes", "/etc/systemd", "/etc/docker", "/etc/etcd", "/var/lib/docker", "/var/lib/kubelet",
    "/var/lib/containerd", "/var/lib/kube-hardway", "/var/lib/dpkg", "/var/lib/apt", "/var/lib/systemd",
})
_VOLATILE = ("/proc/", "/sys/", "/dev/", "/run/", "/tmp/")     # gone at boot or not storage at all
_DIR = re.compile(r"^(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)+$")


def directory(value: str, path: str, p: Problems, example: str) -> str:
    """A dedicated absolute directory on the hosts, normalised (a trailing / dropped); refused if it
    is not one, names a system directory or a parent of one, or lies in a volatile tree."""
    normal = value.rstrip("/") or "/"
    why = None
    if not _DIR.match(normal) or any(part in (".", "..") for part in normal.split("/")):
        why = "an absolute path of letters, digits and . _ + - (no .., //, spaces, globs or shell characters)"
    elif normal in SYSTEM_DIRS or any(d.startswith(normal + "/") for d in SYSTEM_DIRS):
        why = "a directory of its own, not a system directory (or one holding one)"
    elif normal.startswith(_VOLATILE) or (normal.startswith("/home/") and normal.count("/") == 2):
        why = "a directory of its own, not in a volatile tree or a user's home itself"
    if why:
        p.add(path, f"must be {why}, like {example}, got {value!r}")
    return normal
