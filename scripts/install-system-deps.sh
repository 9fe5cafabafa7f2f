#!/usr/bin/env bash
# Installs the Debian packages the test ground and the demo use, only those
# missing: Prometheus and Alertmanager (monitoring), Fashion-MNIST (the worked
# example's data), openssl (cluster credentials). Go must already be present:
# the local Kubernetes control plane is built from the Go module proxy.
set -euo pipefail

"$(dirname "$0")/install-debian-packages.sh" prometheus prometheus-alertmanager dataset-fashion-mnist openssl ca-certificates

command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || {
  echo "Go 1.26+ is required to build the local cluster (https://go.dev/dl)" >&2
  exit 1
}
