#!/bin/sh
# Writes the flag list of each Kubernetes component binary in DIR (one flag name a line, without
# the leading --) into OUT, from the binaries' own `--help`: the reference for a version the lab
# runs. Used for 1.24 with ../shared/lab-artifacts (v1.24.0-alpha.1):
#   tests/data/flags/from-help.sh /var/lib/kube-hardway-lab/artifacts tests/data/flags/1.24
set -eu
dir=$1 out=$2
mkdir -p "$out"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  "$dir/$b" --help 2>&1 | grep -oE '^\s+(-[a-z], )?--[a-z0-9-]+' | sed -E 's/.*--//' | sort -u > "$out/$b.txt"
done
