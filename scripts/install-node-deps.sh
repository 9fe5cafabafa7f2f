#!/usr/bin/env bash
# Installs the Debian packages the test ground's real node uses, only those
# missing: containerd (the container runtime, run by the test ground as its own
# process with its own socket and directories, never the system service), runc,
# the CNI plugins (bridge, host-local, loopback), iptables, nftables and conntrack (the
# kubelet's and the plugins' rules) and busybox-static (the small local images
# the node's own pause and test images are made from). Root only: a kubelet
# mounts, creates network namespaces and cgroups.
set -euo pipefail

"$(dirname "$0")/install-debian-packages.sh" containerd runc containernetworking-plugins iptables nftables conntrack busybox-static
