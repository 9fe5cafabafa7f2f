#!/usr/bin/env bash
# Installs the Debian packages the real-pod tier needs to build its images
# without a registry or a Docker engine: buildah (daemonless builds from the
# Dockerfile) and mmdebstrap (the Debian bookworm base image). Only those
# missing (with their recommends, as tested); kept apart from install-system-deps.sh so `make setup` never needs them.
set -euo pipefail

"$(dirname "$0")/install-debian-packages.sh" --with-recommends buildah mmdebstrap
