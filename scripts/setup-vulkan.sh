#!/usr/bin/env bash
# Makes a Vulkan driver available for the `wgpu`/`vulkan` features' tests: on a machine with no
# GPU that is Mesa's lavapipe (software Vulkan, a CPU) from Debian's `mesa-vulkan-drivers`.
# Installs it with apt-get when no Vulkan driver manifest is present (needs root or sudo);
# prints the drivers found. Used by scripts/setup.sh --tests.
set -euo pipefail

icds() { ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null || true; }

loader() { ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' || true; }

if [ -z "$(icds)" ] || [ -z "$(loader)" ]; then
  echo "setup-vulkan: no Vulkan driver found; installing mesa-vulkan-drivers (lavapipe)" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
if [ -z "$(icds)" ]; then
  echo "setup-vulkan: still no Vulkan driver manifest; wgpu tests cannot run" >&2
  exit 1
fi
echo "setup-vulkan: Vulkan drivers: $(icds | xargs -n1 basename | tr '\n' ' ')"
