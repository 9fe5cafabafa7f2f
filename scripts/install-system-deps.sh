#!/usr/bin/env bash
# Installs the Debian packages the test ground and the demo use, only those
# missing: Prometheus and Alertmanager (monitoring), Fashion-MNIST (the worked
# example's data), openssl (cluster credentials). Go must already be present:
# the local Kubernetes control plane is built from the Go module proxy.
set -euo pipefail

packages=(prometheus prometheus-alertmanager dataset-fashion-mnist openssl ca-certificates)
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

command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || {
  echo "Go 1.26+ is required to build the local cluster (https://go.dev/dl)" >&2
  exit 1
}
