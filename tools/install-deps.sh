#!/usr/bin/env bash
# Installs the build and test dependencies from Debian's packages (CUDA, when wanted, comes with the machine).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config libcli11-dev nlohmann-json3-dev libsentencepiece-dev libgtest-dev libedit-dev python3-pip >/dev/null
# mistral-common: its wheel carries the real tekken.json files the tokenizer tests compare against (the
# tests skip tekken without it). Debian's Python may refuse pip without --break-system-packages.
if ! python3 -c "import mistral_common" 2>/dev/null; then
  python3 -m pip install --quiet mistral-common 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages mistral-common ||
    echo "install-deps: could not install mistral-common; tekken tests will be skipped" >&2
fi
