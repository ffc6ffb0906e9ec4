"""Local test lab for kube-hardway: N systemd-nspawn machines on a private bridge.

Usage from tests:

    from lab import lab
    info = lab.up(hosts=3)      # same dict as /var/lib/kube-hardway-lab/state.json
    lab.run("kh-lab-1", "hostname")
    lab.down()

See lab/README.md.
"""
