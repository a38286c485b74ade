#!/usr/bin/env bash
# System and Python packages llmq-gpu's demo and tests need on a fresh Debian
# machine: Mesa's lavapipe (software Vulkan, so GPU kernels run without a GPU),
# unzip, pip, and the Python packages the tests compare against.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
dpkg -s libvulkan1 >/dev/null 2>&1 || need+=(libvulkan1)
command -v unzip >/dev/null || need+=(unzip)
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# The Austen texts come from a Debian package fetched with `apt-get download`,
# which needs package lists; fresh images often ship without them.
lists_ready=1
apt-cache show r-cran-janeaustenr >/dev/null 2>&1 || lists_ready=0
if [ ${#need[@]} -gt 0 ] || [ $lists_ready = 0 ]; then
  $SUDO apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if [ -f scripts/requirements-test.txt ]; then
  python3 -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages -r scripts/requirements-test.txt
fi
