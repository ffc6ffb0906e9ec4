"""sha256 of pinned release files: PINNED_SHA256[component][version][arch][filename].

Data only. Every value was copied from upstream's published sums as recorded by kubespray
(kubernetes-sigs/kubespray `roles/kubespray_defaults/vars/main/checksums.yml` at
46dbdd3994b32640bcd806b0097f50e8fdf1d514, 2026-08-21: `etcd_binary_checksums`), never from beside
the file it checks. A version bump adds a block here and is reviewed as such.

Not pinned yet, because no stored upstream source lists their sums (see README, "Releases"):
Kubernetes 1.37.0 (dl.k8s.io publishes a `.sha256` beside each binary, taken at `up` with a
warning), flannel 0.28.9, Docker 29.7.2 and cri-dockerd 0.4.3 (upstream publishes no sums:
`artifacts.checksums` is required for them). `tests/unit/test_artifacts.py` keeps that list exact.
"""

PINNED_SHA256: dict[str, dict[str, dict[str, dict[str, str]]]] = {
    "etcd": {
        "3.6.14": {
            "amd64": {"etcd-v3.6.14-linux-amd64.tar.gz": "ffe840ff9295808e88cce2794a18a5ac87f12a5203c8314d0bf6aa119b41bac5"},
            "arm64": {"etcd-v3.6.14-linux-arm64.tar.gz": "fa1b80565ee6fc2df1ae6f57a508b221f3ecc7d591c317c581cd8281b0842b3e"},
        },
    },
}
