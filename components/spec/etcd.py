"""`etcd`: the etcd members' data directory, extra flags, health timeout, whether etcd checks
who a client is (`auth`, on by default: users and roles by client-cert name, see EtcdCluster), and
its snapshots (`backup`: when, how many are kept, where; `restoreFrom`: one to rebuild the cluster from)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.spec.problems import Problems, directory, flag, integer, string

KEY = "etcd"
KNOWN = ("auth", "backup", "dataDir", "extraArgs", "healthTimeoutSeconds", "restoreFrom")
BACKUP_KNOWN = ("enabled", "schedule", "keep", "dir")
# a systemd OnCalendar value ("hourly", "*-*-* 00/6:00:00", "Mon..Fri 02:30"): its characters only
_CALENDAR = re.compile(r"^[A-Za-z0-9*/:,.~ -]+$")
_FLAG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VALUE = re.compile(r"^[A-Za-z0-9._:/,=@%+-]+$")

# etcd flags the program owns; letting extraArgs override them would break TLS or membership.
ETCD_MANAGED_FLAGS = frozenset(
    {
        "name", "data-dir", "listen-client-urls", "advertise-client-urls", "listen-peer-urls",
        "initial-advertise-peer-urls", "initial-cluster", "initial-cluster-token",
        "initial-cluster-state", "client-cert-auth", "trusted-ca-file", "cert-file", "key-file",
        "peer-client-cert-auth", "peer-trusted-ca-file", "peer-cert-file", "peer-key-file",
        "peer-cert-allowed-hostname", "peer-cert-allowed-cn",
    }
)


@dataclass(frozen=True)
class BackupSpec:
    enabled: bool = True
    schedule: str = "*-*-* 00/6:00:00"      # systemd OnCalendar: every 6 hours
    keep: int = 12                          # the newest snapshots kept (3 days at the default schedule)
    dir: str = "/var/lib/etcd-backup"


@dataclass(frozen=True)
class EtcdSpec:
    data_dir: str = "/var/lib/etcd"
    extra_args: Mapping[str, str] = field(default_factory=dict)
    health_timeout: int = 120
    auth: bool = True                       # etcd RBAC: each client cert's name is a user with a role
    backup: BackupSpec = BackupSpec()
    restore_from: str | None = None         # a snapshot on the admin machine every member is rebuilt from


def parse(etcd: Mapping[str, Any], p: Problems, parsed: Mapping[str, Any]) -> EtcdSpec:
    data_dir = directory(string(etcd.get("dataDir"), "etcd.dataDir", p, EtcdSpec.data_dir) or EtcdSpec.data_dir,
                         "etcd.dataDir", p, EtcdSpec.data_dir)
    extra = etcd.get("extraArgs") or {}
    if not isinstance(extra, Mapping):
        p.add("etcd.extraArgs", "must be a map of etcd flag (without --) -> value")
        extra = {}
    for name, value in extra.items():
        if not _FLAG.match(str(name)):
            p.add(f"etcd.extraArgs.{name}", "must be an etcd flag name without the leading --, like heartbeat-interval")
        elif name in ETCD_MANAGED_FLAGS:
            p.add(f"etcd.extraArgs.{name}", "is managed by kube-hardway (TLS and membership); remove it")
        if not isinstance(value, (str, int, bool)) or not _VALUE.match(str(value)):
            p.add(f"etcd.extraArgs.{name}", "value must be one word of letters, digits and . _ : / , = @ % + - "
                  f"(no spaces, quotes or shell characters), got {value!r}")
    restore_from = string(etcd.get("restoreFrom"), "etcd.restoreFrom", p)
    if restore_from is not None and not Path(restore_from).is_file():
        p.add("etcd.restoreFrom", f"{restore_from!r} is not a file on this machine: point it at a snapshot copied "
              "from the host the stack output etcdBackups names (etcd-snapshot-<time>.db)")
        restore_from = None
    return EtcdSpec(data_dir=data_dir, backup=_backup(etcd.get("backup"), data_dir, p), restore_from=restore_from,
                    auth=flag(etcd.get("auth"), "etcd.auth", p, EtcdSpec.auth),
                    health_timeout=integer(etcd.get("healthTimeoutSeconds"), "etcd.healthTimeoutSeconds", p,
                                           EtcdSpec.health_timeout, 5, 3600),
                    extra_args={str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in extra.items()})


def _backup(backup: Any, data_dir: str, p: Problems) -> BackupSpec:
    if backup is None:
        return BackupSpec()
    if not isinstance(backup, Mapping):
        p.add("etcd.backup", "must be a map with enabled, schedule, keep and dir")
        return BackupSpec()
    for key in backup:
        if key not in BACKUP_KNOWN:
            p.add(f"etcd.backup.{key}", f"is not a setting; the settings are {', '.join(BACKUP_KNOWN)}")
    schedule = string(backup.get("schedule"), "etcd.backup.schedule", p, BackupSpec.schedule) or BackupSpec.schedule
    if not _CALENDAR.fullmatch(schedule):
        p.add("etcd.backup.schedule", f"must be a systemd OnCalendar value like {BackupSpec.schedule!r} or "
              f"'hourly' (letters, digits, spaces and * / : , . ~ -), got {schedule!r}")
        schedule = BackupSpec.schedule
    where = directory(string(backup.get("dir"), "etcd.backup.dir", p, BackupSpec.dir) or BackupSpec.dir,
                      "etcd.backup.dir", p, BackupSpec.dir)
    if where == data_dir or where.startswith(data_dir + "/") or data_dir.startswith(where + "/"):
        p.add("etcd.backup.dir", f"must be outside etcd.dataDir ({data_dir}): a snapshot is what survives losing it")
    return BackupSpec(enabled=flag(backup.get("enabled"), "etcd.backup.enabled", p, BackupSpec.enabled),
                      schedule=schedule, keep=integer(backup.get("keep"), "etcd.backup.keep", p, BackupSpec.keep, 1, 1000),
                      dir=where)
