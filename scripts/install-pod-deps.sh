#!/usr/bin/env bash
# Installs the Debian packages the real-pod tier needs to build its images
# without a registry or a Docker engine: buildah (daemonless builds from the
# Dockerfile) and mmdebstrap (the Debian bookworm base image). Only those
# missing (with their recommends, as tested); kept apart from install-system-deps.sh so `make setup` never needs them.
set -euo pipefail

packages=(buildah mmdebstrap)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
