#!/usr/bin/env bash
# Installs, in one apt-get run, the Debian packages the tests need and the machine lacks: Mesa's
# lavapipe Vulkan driver and loader when no Vulkan driver is present (the `wgpu` tests;
# scripts/setup-vulkan.sh checks the result), and Chromium (the browser test). Needs root or
# sudo when something is missing; does nothing otherwise.
set -euo pipefail

packages=()
icds=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null || true)
loader=$(ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' || true)
if [ -z "$icds" ] || [ -z "$loader" ]; then
  packages+=(mesa-vulkan-drivers libvulkan1)
fi
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
[ ${#packages[@]} = 0 ] && exit 0

echo "setup-apt: installing ${packages[*]}" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
