#!/usr/bin/env bash
# Installs the build and test dependencies from Debian's packages (CUDA, when wanted, comes with the machine).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config libcli11-dev nlohmann-json3-dev libsentencepiece-dev libgtest-dev >/dev/null
