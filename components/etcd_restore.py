"""EtcdRestore: every etcd member rebuilt from one snapshot (`etcd.restoreFrom`), as etcd documents
it for a cluster that lost quorum or its data: a new cluster (new ID) from the snapshot, with the
stack's members.

The snapshot is copied to every member first (nothing stops if a copy fails); then, on every host,
what writes to etcd stops (the API server and its controllers on the masters) and etcd on every
member; only then is each member's data dir rebuilt (`snapshot restore`, the old `member/` kept
aside) and etcd started; EtcdCluster's gate waits for the restored cluster; then the control
plane starts again. The resources are named after the snapshot's digest: the same file is restored
once (a re-run restores nothing), a new file is a new restore. Taking `etcd.restoreFrom` out of the
stack deletes them, and with them what the members held before the restore.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.layout import STAGING_DIR
from components.remote import HostCommand, connection
from components.spec import HostSpec, SshSpec
from components.templates import render


@dataclass(frozen=True)
class EtcdRestoreArgs:
    snapshot: str                          # on the admin machine
    members: tuple[HostSpec, ...]
    masters: tuple[HostSpec, ...]           # whose API servers write to etcd
    ssh: SshSpec
    data_dir: str
    bin_dir: str                            # etcdutl (3.5+) or etcdctl on the members
    initial_cluster: str                    # name=peer-url,... of the stack's members
    peer_urls: dict[str, str]               # member name -> its peer URL


class EtcdRestore(pulumi.ComponentResource):
    rebuilt: list[pulumi.Resource]          # what the cluster's health gate waits for

    def __init__(self, name: str, args: EtcdRestoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("kube-hardway:etcd:EtcdRestore", name, None, opts)
        with open(args.snapshot, "rb") as snapshot:     # (a snapshot can be gigabytes: read in chunks)
            restore_id = hashlib.file_digest(snapshot, "sha256").hexdigest()[:12]
        self.restore_id = restore_id
        staged = f"{STAGING_DIR}/etcd-restore-{restore_id}.db"
        child = pulumi.ResourceOptions(parent=self)
        copies = [remote.CopyToRemote(f"{name}-{restore_id}-copy-{m.name}", connection=connection(m, args.ssh),
                                      source=pulumi.FileAsset(args.snapshot), remote_path=staged, opts=child)
                  for m in args.members]
        members = {m.name for m in args.members}
        masters = {m.name for m in args.masters}
        hosts = {h.name: h for h in (*args.members, *args.masters)}.values()
        stops = [HostCommand(f"{name}-{restore_id}-stop-{h.name}", h, args.ssh,
                             create=render("etcd/restore-stop.sh.j2", id=restore_id, host=h.name,
                                           master=h.name in masters, member=h.name in members),
                             opts=pulumi.ResourceOptions(parent=self, depends_on=copies))
                 for h in hosts]
        self.rebuilt = []
        for m in args.members:
            values = {"id": restore_id, "name": m.name, "data_dir": args.data_dir, "snapshot": staged,
                      "aside": f"{args.data_dir}/member.before-restore-{restore_id}"}
            self.rebuilt.append(HostCommand(
                f"{name}-{restore_id}-{m.name}", m, args.ssh,
                create=render("etcd/restore-create.sh.j2", bin_dir=args.bin_dir, initial_cluster=args.initial_cluster,
                              token=f"kube-hardway-restore-{restore_id}", peer_url=args.peer_urls[m.name], **values),
                delete=render("etcd/restore-delete.sh.j2", **values),
                opts=pulumi.ResourceOptions(parent=self, depends_on=stops)))
        self._masters = args.masters
        self._ssh = args.ssh
        self._name = name
        self.register_outputs({"restored": restore_id})

    def start_control_plane(self, after: pulumi.Resource) -> None:
        """The API servers and their controllers start again, once `after` (the restored cluster's
        health gate) passed."""
        for h in self._masters:
            HostCommand(f"{self._name}-{self.restore_id}-start-{h.name}", h, self._ssh,
                        create=render("etcd/restore-start.sh.j2", id=self.restore_id, host=h.name),
                        opts=pulumi.ResourceOptions(parent=self, depends_on=[after]))
