"""Where things live on a host: directories, files, ports and unit names, for every component.

One place, so that a component never imports another for a path, and a reader finds from here
which component writes a file (the section it is in) and which reads it (grep the name).
"""

from __future__ import annotations

# kube-hardway's own: what it records about a host (takeover records, release markers, rollback
# copies), and the helper scripts it installs
STATE_DIR = "/var/lib/kube-hardway"
LIB_DIR = "/usr/local/lib/kube-hardway"
# where release files and image tarballs wait, from their copy until they are checked and installed:
# made by the preflight, mode 0700, owned by the SSH user (root, or the sudo user that copies over
# SFTP), so no other local user can swap a file between its check and its use (as in /var/tmp)
STAGING_DIR = f"{STATE_DIR}/staging"
# every service's unit files (HostService): the administrator's directory, ahead of the distribution's
UNIT_DIR = "/etc/systemd/system"
# one restart at a time, cluster-wide, under a lock in etcd (remote-level: `rolling_restart`)
ROLLING_RESTART = f"{LIB_DIR}/rolling-restart"
# on the first master: the stack's nodes, each with its role and Kubernetes version (NodeSet's
# record); a node's drain reads its version there (KubeNode)
NODES_FILE = f"{STATE_DIR}/nodes"
# there too: written when a node's drain fails, so the drains of that run still waiting stop (KubeNode)
DRAIN_FAILED = f"{STATE_DIR}/drain-failed"

# etcd (EtcdCluster)
ETCD_PKI_DIR = "/etc/etcd/pki"
ETCD_PKI = {
    "ca": f"{ETCD_PKI_DIR}/ca.crt",
    "server_cert": f"{ETCD_PKI_DIR}/server.crt",
    "server_key": f"{ETCD_PKI_DIR}/server.key",
    "peer_cert": f"{ETCD_PKI_DIR}/peer.crt",
    "peer_key": f"{ETCD_PKI_DIR}/peer.key",
    "client_cert": f"{ETCD_PKI_DIR}/healthcheck-client.crt",   # user kube-etcd-healthcheck-client: no key
    "client_key": f"{ETCD_PKI_DIR}/healthcheck-client.key",
    "admin_cert": f"{ETCD_PKI_DIR}/root-client.crt",           # user root: the auth setup, flannel's config
    "admin_key": f"{ETCD_PKI_DIR}/root-client.key",
    "lock_cert": f"{ETCD_PKI_DIR}/lock-client.crt",            # user kube-hardway-lock: etcd-restart's lock
    "lock_key": f"{ETCD_PKI_DIR}/lock-client.key",
}
ETCD_RESTART = f"{LIB_DIR}/etcd-restart"
ETCD_JOIN = f"{LIB_DIR}/etcd-join"                             # etcd's ExecStartPre: new cluster or join
ETCD_INITIAL_ENV = "/etc/etcd/initial-cluster.env"              # what it decided, read by etcd
ETCD_BACKUP = f"{LIB_DIR}/etcd-backup"                         # a snapshot, checked; etcd-backup.timer runs it
ETCD_CLIENT_PORT = 2379

# etcd users on workers: they reach etcd through its JSON gateway, which ignores a client cert's
# name (with auth on it refuses a cert that has one), so a worker shows a nameless "gateway" cert
# and logs in with a password: flanneld's for its health check, the lock user's for restarts
ETCD_LOCK_PASSWORD = "/etc/kube-hardway/etcd-lock.password"     # DockerNode's, for rolling-restart

# flannel (FlannelNetwork)
FLANNEL_PKI_DIR = "/etc/flannel/pki"
FLANNELD_PKI = {"ca": f"{FLANNEL_PKI_DIR}/ca.crt", "cert": f"{FLANNEL_PKI_DIR}/flanneld.crt",
                "key": f"{FLANNEL_PKI_DIR}/flanneld.key"}   # flanneld's own: etcd user flanneld
FLANNEL_SUBNET_FILE = "/run/flannel/subnet.env"
FLANNEL_DOCKER_ENV = "/run/flannel/docker"      # DOCKER_NETWORK_OPTIONS, read by docker.service

# Docker (DockerNode)
DOCKER_HEALTH = f"{LIB_DIR}/docker-health"

# the control plane (ControlPlane)
KUBE_CONF_DIR = "/etc/kubernetes"
ADMISSION_CONFIG = f"{KUBE_CONF_DIR}/admission.yaml"    # the API server's admission plugins' settings
KUBE_PKI_DIR = f"{KUBE_CONF_DIR}/pki"
KUBE_PKI = {
    # ca.crt: every Kubernetes CA the cluster trusts (two during a rotation); ca-signer.crt and ca.key:
    # the one that signs, which the controller-manager signs kubelets' client certs with
    "ca": f"{KUBE_PKI_DIR}/ca.crt", "ca_signer": f"{KUBE_PKI_DIR}/ca-signer.crt", "ca_key": f"{KUBE_PKI_DIR}/ca.key",
    "apiserver": f"{KUBE_PKI_DIR}/apiserver.crt", "apiserver_key": f"{KUBE_PKI_DIR}/apiserver.key",
    "kubelet_client": f"{KUBE_PKI_DIR}/apiserver-kubelet-client.crt",
    "kubelet_client_key": f"{KUBE_PKI_DIR}/apiserver-kubelet-client.key",
    "etcd_ca": f"{KUBE_PKI_DIR}/etcd/ca.crt", "etcd_client": f"{KUBE_PKI_DIR}/apiserver-etcd-client.crt",
    "etcd_client_key": f"{KUBE_PKI_DIR}/apiserver-etcd-client.key",
    "sa_key": f"{KUBE_PKI_DIR}/sa.key", "sa_pub": f"{KUBE_PKI_DIR}/sa.pub",
}
AUDIT_LOG = "/var/log/kubernetes/audit.log"
API_PORT = 6443
ADMIN_KUBECONFIG = f"{KUBE_CONF_DIR}/admin.kubeconfig"     # on masters: what the control plane's steps use
# the admin cert's group, cluster-admin through a binding an operator can delete (as kubeadm >= 1.29:
# revocable, unlike system:masters); only the break-glass super-admin cert, kept on the masters to
# make that binding, is in system:masters
CLUSTER_ADMINS_GROUP = "kube-hardway:cluster-admins"
SUPER_ADMIN_KUBECONFIG = f"{KUBE_CONF_DIR}/super-admin.kubeconfig"
ENCRYPTION_CONFIG = f"{KUBE_CONF_DIR}/encryption.yaml"   # the Secrets' keys at rest (0600)

# a node (KubeNode): the kubelet, kube-proxy, cri-dockerd and the local API server proxy
NODE_DIR = f"{KUBE_CONF_DIR}/node"
NODE_CA = f"{NODE_DIR}/ca.crt"
KUBELET_DIR = "/var/lib/kubelet"
KUBELET_KUBECONFIG = f"{NODE_DIR}/kubelet.kubeconfig"       # written by the kubelet after bootstrap
KUBELET_CLIENT = f"{KUBELET_DIR}/pki/kubelet-client-current.pem"
# the kubelet's node-wide image pull credentials (<root-dir>/config.json), read at every pull;
# written with Docker's files (the registry login), before any kubelet runs
KUBELET_PULL_CREDENTIALS = f"{KUBELET_DIR}/config.json"
KUBELET_HEALTHZ_PORT = 10248                # the kubelet's default healthz, on 127.0.0.1
NODE_HEALTH = f"{LIB_DIR}/kubelet-health"
KUBE_PROXY_HEALTH_PORT = 10256
CRI_SOCKET = "/run/cri-dockerd.sock"
RUN_DIR = "/run"   # gone at reboot: the node gate's once-per-client-cert kubelet restart markers

# the registries (Registry)
REGISTRY_CONFIG_DIR = "/etc/kube-hardway-registry"
REGISTRY_PKI = {"ca": f"{REGISTRY_CONFIG_DIR}/pki/ca.crt", "cert": f"{REGISTRY_CONFIG_DIR}/pki/registry.crt",
                "key": f"{REGISTRY_CONFIG_DIR}/pki/registry.key"}
# the private registry's logins: nodes pull (a read-only instance), the team pushes (its own port)
REGISTRY_HTPASSWD = {"private": f"{REGISTRY_CONFIG_DIR}/htpasswd", "push": f"{REGISTRY_CONFIG_DIR}/htpasswd-push"}
REGISTRY_UNITS = {"private": "kube-hardway-registry.service", "push": "kube-hardway-registry-push.service",
                  "cache": "kube-hardway-registry-cache.service"}

# names inside the cluster that masters and nodes both use
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"   # masters' taint (NoSchedule) and label
