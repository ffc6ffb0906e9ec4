"""EtcdCluster: an etcd cluster with mutual TLS on every host with role `etcd`.

Per member, in parallel with the other members (no member waits for another), one `HostService`
(`etcd-<host>`, one SSH session): the `etcd` user and its 0700 data dir, the binaries (from the
artifact source), certs, keys and the restart helper, then the systemd unit, started without
blocking, because a new cluster only becomes ready once a quorum of members runs. One health gate
then waits until every member answers over TLS and all agree on the membership, and names the
members that do not.

Membership follows the stack, one member per run: a member starts through `etcd-join` (the unit's
ExecStartPre, as root), which bootstraps a new cluster with the others, or joins a running one as a
learner (`member add --learner`; a member that ran before on a machine now empty is removed first);
the health gate removes members the stack dropped (while the rest keep quorum), promotes learners,
and passes once the members are exactly the stack's. `membership_check` is the preflight's part on
running members: it refuses two changes in one run, or one that would lose quorum. Snapshots are
a timer on the first member (`etcd.backup`); `etcd.restoreFrom` rebuilds every member from one
(EtcdRestore).

A change that restarts etcd (a flag, a cert, a new binary) updates the members in parallel, but
each member's restart goes through `etcd-restart`: one member at a time under a lock kept in etcd,
only while the others hold quorum, waiting until it is healthy again.

Stacks deployed before the members were one `HostService` each have four commands per member
(`etcd-account-`, `etcd-files-`, `etcd-binaries-…-install`, `etcd-unit-`). The unit's command
becomes the service (an alias: an update with the same digest, so etcd is not restarted). The
other three stay as `Retired` no-ops under their names: the engine deletes a resource that leaves
the program by running the delete it was created with, and theirs remove the data dir, the certs
and the binaries the service now owns.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_random as random
from pulumi_command import remote

from components.artifacts import ReleaseFiles, StagedRelease
from components.etcd_restore import EtcdRestore, EtcdRestoreArgs
from components.layout import ETCD_BACKUP, ETCD_CLIENT_PORT, ETCD_INITIAL_ENV, ETCD_JOIN, ETCD_PKI, ETCD_RESTART, STATE_DIR, UNIT_DIR
from components.links import ETCD_FLANNELD_USER, ETCD_LOCK_USER, EtcdEndpoints
from components.pki import EtcdCerts
from components.remote import HealthGate, HostCommand, HostFile, HostService, HostStep, Retired
from components.spec import EtcdSpec, HostSpec, SshSpec
from components.spec.etcd import BackupSpec
from components.templates import render

# etcd users: a client cert's common name (ClusterPKI) is its user
APISERVER_USER = "kube-apiserver-etcd-client"
HEALTHCHECK_USER = "kube-etcd-healthcheck-client"
LOCK_PREFIX = "kube-hardway"        # the rolling-restart locks, etcd's and the workers'


def client_url(host: HostSpec) -> str:
    return f"https://{host.internal_address}:{ETCD_CLIENT_PORT}"


def peer_url(host: HostSpec) -> str:
    return f"https://{host.internal_address}:2380"


def membership(members: tuple[HostSpec, ...]) -> str:
    """The stack's members as the membership scripts compare them: `name=peer-url ...`."""
    return " ".join(f"{m.name}={peer_url(m)}" for m in members)


def membership_check(host: HostSpec, members: tuple[HostSpec, ...], etcd: EtcdSpec, etcdctl: str) -> str:
    """The preflight's part on a member that runs already: one member added or removed per run, and
    never one that leaves the cluster without quorum (`etcd/membership-check.sh.j2`)."""
    return render("etcd/membership-check.sh.j2", host=host.name, data_dir=etcd.data_dir, pki=ETCD_PKI,
                  etcdctl=etcdctl, stack=membership(members), urls=[client_url(m) for m in members])


def _unit_file(host: HostSpec, bin_dir: str, etcd: EtcdSpec, enable_v2: bool, cluster_token: str) -> str:
    extra = {**({"enable-v2": "true"} if enable_v2 else {}), **etcd.extra_args}
    return render("etcd/etcd.service.j2", name=host.name, address=host.internal_address, bin_dir=bin_dir,
                  data_dir=etcd.data_dir, cluster_token=cluster_token, join=ETCD_JOIN, env_file=ETCD_INITIAL_ENV,
                  pki=ETCD_PKI, extra_args=extra)


@dataclass(frozen=True)
class EtcdArgs:
    members: tuple[HostSpec, ...]
    ssh: SshSpec
    etcd: EtcdSpec
    certs: EtcdCerts
    release: Mapping[str, ReleaseFiles]     # per architecture among the members
    enable_v2: bool = False                 # flannel < 0.18 reads its config through the v2 API
    flannel_prefix: str = "/coreos.com/network"   # flanneld's etcd user may touch this prefix only
    masters: tuple[HostSpec, ...] = ()      # their API servers stop while etcd is restored from a snapshot


class EtcdCluster(pulumi.ComponentResource):
    client_endpoints: list[str]

    def __init__(self, name: str, args: EtcdArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:etcd:EtcdCluster", name, None, opts)
        members, ssh, certs = args.members, args.ssh, args.certs
        # Keeps a member of another cluster from joining this one by mistake; not a secret.
        token = random.RandomId(f"{name}-cluster-token", byte_length=8,
                                opts=pulumi.ResourceOptions(parent=self))
        initial_cluster = ",".join(f"{m.name}={peer_url(m)}" for m in members)

        services: list[HostService] = []
        bin_dirs: list[str] = []
        for host in members:
            binaries = StagedRelease(f"{name}-binaries-{host.name}", host, ssh, args.release[host.arch],
                                     parent=self, moved_from=_retired(name, host, ssh, parent=self))
            bin_dirs.append(binaries.bin_dir)
            values = {"state_dir": STATE_DIR, "data_dir": args.etcd.data_dir,
                      "retired_manifest": f"{name}-files-{host.name}.list"}
            account = HostStep(render("etcd/account-create.sh.j2", **values),
                               render("etcd/account-delete.sh.j2", **values))
            others = [m for m in members if m != host]
            etcd_reads = [   # what etcd itself reads: a change restarts it
                HostFile(ETCD_PKI["ca"], certs.ca_cert),
                HostFile(ETCD_PKI["server_cert"], certs.server[host.name].cert_pem),
                HostFile(ETCD_PKI["server_key"], certs.server[host.name].key_pem, "0600", "etcd:etcd"),
                HostFile(ETCD_PKI["peer_cert"], certs.peer[host.name].cert_pem),
                HostFile(ETCD_PKI["peer_key"], certs.peer[host.name].key_pem, "0600", "etcd:etcd"),
            ]
            helpers = [      # what the gate, the restart helper and the admin steps use
                HostFile(ETCD_PKI["client_cert"], certs.healthcheck_client.cert_pem),
                HostFile(ETCD_PKI["client_key"], certs.healthcheck_client.key_pem, "0600"),
                HostFile(ETCD_PKI["admin_cert"], certs.admin.cert_pem),
                HostFile(ETCD_PKI["admin_key"], certs.admin.key_pem, "0600"),
                HostFile(ETCD_PKI["lock_cert"], certs.lock_client.cert_pem),
                HostFile(ETCD_PKI["lock_key"], certs.lock_client.key_pem, "0600"),
                HostFile(ETCD_RESTART, render(
                    "etcd/etcd-restart.sh.j2", name=host.name, count=len(members),
                    others=",".join(client_url(m) for m in others),
                    others_named=" ".join(f"{m.name}={client_url(m)}" for m in others),
                    bin_dir=binaries.bin_dir, pki=ETCD_PKI), "0755"),
                HostFile(ETCD_JOIN, render(
                    "etcd/etcd-join.sh.j2", name=host.name, peer_url=peer_url(host), initial_cluster=initial_cluster,
                    others=",".join(client_url(m) for m in others), peers=",".join(peer_url(m) for m in others),
                    bin_dir=binaries.bin_dir, pki=ETCD_PKI,
                    data_dir=args.etcd.data_dir, env_file=ETCD_INITIAL_ENV), "0755"),
            ]
            unit_file = token.hex.apply(functools.partial(
                _unit_file, host, binaries.bin_dir, args.etcd, args.enable_v2))
            # The binaries are among what etcd reads: a new release restarts it (rolling, below).
            # A stack from before takes over the unit's command (its digest of unit and reads is
            # the one recorded on the host: no restart), whose `triggers` are ignored: a changed
            # trigger would replace the member, and a replacement deletes first (etcd stopped on
            # every member at once, its data dir wiped).
            services.append(HostService(
                f"{name}-{host.name}", host, ssh, "etcd.service", unit_file, files=[*etcd_reads, *helpers],
                steps=[account, binaries.step], reads=[binaries.identity, *(f.content for f in etcd_reads)],
                no_block=True, restart=f"{ETCD_RESTART} {args.etcd.health_timeout}",
                opts=pulumi.ResourceOptions(parent=self, depends_on=binaries.copies,
                                            aliases=[pulumi.Alias(name=f"{name}-unit-{host.name}")],
                                            ignore_changes=["triggers"])))

        gate_host = members[0]
        restore = EtcdRestore(f"{name}-restore", EtcdRestoreArgs(
            snapshot=args.etcd.restore_from, members=members, masters=args.masters, ssh=ssh, data_dir=args.etcd.data_dir,
            bin_dir=bin_dirs[0], initial_cluster=initial_cluster, peer_urls={m.name: peer_url(m) for m in members}),
            opts=pulumi.ResourceOptions(parent=self, depends_on=services)) if args.etcd.restore_from else None
        check_members = [{"name": m.name, "url": client_url(m), "peer": peer_url(m)} for m in members]
        self.health = HealthGate(
            f"{name}-health", gate_host, ssh,
            what=f"etcd cluster ({len(members)} members)",
            check=render("etcd/health-check.sh.j2", members=check_members, bin_dir=bin_dirs[0], pki=ETCD_PKI,
                         stack=membership(members)),
            # a member on a new machine (its host key changed) starts empty and joins: the gate promotes it
            triggers=[s.digest for s in services] + [f"{m.name}={m.host_key or m.address}" for m in members]
            + ([f"restore={restore.restore_id}"] if restore else []),
            timeout=args.etcd.health_timeout,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*services, *(restore.rebuilt if restore else [])]))
        if restore:
            restore.start_control_plane(after=self.health)

        # etcd users; passwords only for the two that log in through the JSON gateway (workers)
        self.passwords = {user: random.RandomPassword(f"{name}-{user}-password", length=32, special=False,
                                                      opts=pulumi.ResourceOptions(parent=self)).result
                          for user in (ETCD_FLANNELD_USER, ETCD_LOCK_USER)}
        if args.etcd.auth:
            self.auth = self._auth(name, gate_host, ssh, bin_dirs[0], members, args.flannel_prefix)

        # snapshots on the first member; where they are is the stack output `etcdBackups`
        self.backups = {"host": gate_host.name, "dir": args.etcd.backup.dir, "schedule": args.etcd.backup.schedule,
                        "keep": args.etcd.backup.keep} if args.etcd.backup.enabled else None
        if args.etcd.backup.enabled:
            _backup_service(name, gate_host, ssh, bin_dirs[0], args.etcd.backup,
                            pulumi.ResourceOptions(parent=self, depends_on=[self.health]))

        self.client_endpoints = [client_url(m) for m in members]
        self.ca_file = ETCD_PKI["ca"]
        self.client_cert_file = ETCD_PKI["admin_cert"]
        self.client_key_file = ETCD_PKI["admin_key"]
        # what later components need: flannel's network config runs etcdctl as root on a member
        self.endpoints = EtcdEndpoints(
            tuple(self.client_endpoints), admin_host=gate_host, etcdctl=f"{bin_dirs[0]}/etcdctl",
            client_pki={"ca": self.ca_file, "client_cert": self.client_cert_file, "client_key": self.client_key_file},
            health=self.health, users=self.auth if args.etcd.auth else None, passwords=self.passwords)
        self.register_outputs({
            "clientEndpoints": self.client_endpoints,
            "caFile": self.ca_file,
            "clientCertFile": self.client_cert_file,
            "clientKeyFile": self.client_key_file,
        })

    def _auth(self, name: str, host: HostSpec, ssh: SshSpec, bin_dir: str, members: tuple[HostSpec, ...],
              flannel_prefix: str) -> HostCommand:
        """etcd's users and roles, then auth on (`etcd/auth-create.sh.j2`), on one member as root."""
        # each user with a password gets one role of its own keys: role name, user, keys
        grants = (("flanneld", ETCD_FLANNELD_USER, (f"{flannel_prefix}/",)), ("lock", ETCD_LOCK_USER, (f"{LOCK_PREFIX}/",)))
        roles = {user: {"name": f"kube-hardway-{what}-{hashlib.sha256(repr(keys).encode()).hexdigest()[:8]}",
                        "prefixes": keys} for what, user, keys in grants}
        users = [{"name": "root", "roles": ["root"], "password": False},
                 {"name": APISERVER_USER, "roles": ["root"], "password": False},   # compaction needs root
                 *({"name": user, "roles": [role["name"]], "password": True} for user, role in roles.items()),
                 {"name": HEALTHCHECK_USER, "roles": [], "password": False}]       # `endpoint health` needs no key
        values = {"pki": ETCD_PKI, "etcdctl": f"{bin_dir}/etcdctl", "endpoints": ",".join(client_url(m) for m in members)}
        stdin = pulumi.Output.all(*(self.passwords[str(u["name"])] for u in users if u["password"])).apply(
            lambda pw: "".join(f"{p}\n" for p in pw))
        return HostCommand(
            f"{name}-auth", host, ssh,
            create=render("etcd/auth-create.sh.j2", users=users, roles=[{"name": "root", "prefixes": ()}, *roles.values()],
                          **values),
            delete=render("etcd/auth-delete.sh.j2", **values), stdin=pulumi.Output.secret(stdin),
            logging=remote.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.health]))


def _backup_service(name: str, host: HostSpec, ssh: SshSpec, bin_dir: str, backup: BackupSpec,
                    opts: pulumi.ResourceOptions) -> HostService:
    """etcd-backup.timer on `host`: a checked snapshot on `backup.schedule`, the newest `backup.keep`
    kept in `backup.dir` (`etcd/etcd-backup.sh.j2`)."""
    values = {"dir": backup.dir, "state_dir": STATE_DIR}
    service = render("etcd/etcd-backup.service.j2", script=ETCD_BACKUP)
    return HostService(
        f"{name}-backup-{host.name}", host, ssh, "etcd-backup.timer",
        render("etcd/etcd-backup.timer.j2", schedule=backup.schedule),
        files=[HostFile(ETCD_BACKUP, render("etcd/etcd-backup.sh.j2", name=host.name, dir=backup.dir, keep=backup.keep,
                                            bin_dir=bin_dir, pki=ETCD_PKI), "0755"),
               HostFile(f"{UNIT_DIR}/etcd-backup.service", service)],
        steps=[HostStep(render("etcd/backup-dir-create.sh.j2", **values), render("etcd/backup-dir-delete.sh.j2", **values))],
        reads=[service], opts=opts)


def _retired(name: str, host: HostSpec, ssh: SshSpec, parent: pulumi.Resource) -> pulumi.Resource:
    """A member's commands from before it was one `HostService`, kept under their names with nothing
    to run (see the module's doc); the member's account step forgets the files' manifest. Returns
    the component the binaries' copy shipped under."""
    release = pulumi.ComponentResource("kube-hardway:artifacts:InstalledRelease", f"{name}-binaries-{host.name}",
                                       None, pulumi.ResourceOptions(parent=parent))
    release.register_outputs({})
    Retired(f"{name}-account-{host.name}", host, ssh, opts=pulumi.ResourceOptions(parent=parent))
    Retired(f"{name}-files-{host.name}", host, ssh, opts=pulumi.ResourceOptions(parent=parent))
    Retired(f"{name}-binaries-{host.name}-install", host, ssh, opts=pulumi.ResourceOptions(parent=release))
    return release
