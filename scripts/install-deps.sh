#!/usr/bin/env bash
# install-deps.sh - installs the Debian 12 packages flicker's build, runtime
# and tests need.  Idempotent: installs only what is missing.
set -euo pipefail
PKGS=(
  build-essential pkg-config clang libclang-rt-14-dev   # compilers, libFuzzer/sanitizer runtimes
  libevent-dev libjansson-dev libsqlite3-dev libssl-dev libzip-dev libseccomp-dev libcurl4-openssl-dev
  python3 python3-pytest python3-boto3 awscli           # runtimes' interpreter + test clients
  nodejs                                                # Node.js runtime
  zip unzip curl iproute2 procps psmisc util-linux e2fsprogs
  etcd-server etcd-client                               # the distributed journal backend + its tests
  linux-source-6.1 bc flex bison libelf-dev xz-utils    # the microVM guest kernel (scripts/guest-kernel.sh)
  qemu-system-x86 erofs-utils busybox-static            # microVMs, their root images (scripts/guest-rootfs.sh)
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "install-deps: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
