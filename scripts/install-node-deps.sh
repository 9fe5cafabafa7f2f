#!/usr/bin/env bash
# Installs the Debian packages the test ground's real node uses, only those
# missing: containerd (the container runtime, run by the test ground as its own
# process with its own socket and directories, never the system service), runc,
# the CNI plugins (bridge, host-local, loopback), iptables, nftables and conntrack (the
# kubelet's and the plugins' rules) and busybox-static (the small local images
# the node's own pause and test images are made from). Root only: a kubelet
# mounts, creates network namespaces and cgroups.
set -euo pipefail

packages=(containerd runc containernetworking-plugins iptables nftables conntrack busybox-static)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
