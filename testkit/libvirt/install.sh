#!/usr/bin/env bash
# Installs QEMU 10.0 + libvirt 11.3 (and libvirt-dev for the `virt` crate) from Debian's
# bookworm-backports, plus cpio and openssl for the test guest and certificates. The mirrors are
# the ones this machine's apt already uses; a private sources list leaves /etc/apt alone.
# Packages are pinned one by one: `-t bookworm-backports` would also pull systemd from backports.
# Re-runnable: does nothing when libvirtd 11 and qemu-system-x86_64 are already there.
set -euo pipefail
if command -v libvirtd >/dev/null && command -v qemu-system-x86_64 >/dev/null \
  && pkg-config --exists 'libvirt >= 11' 2>/dev/null && command -v cpio >/dev/null; then
  exit 0
fi
R=${PADDOCK_APT_DIR:-/var/tmp/paddock-apt}
APT="-o Dir::Etc::sourcelist=$R/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::lists=$R/lists -o Dir::Cache::archives=$R/archives"
mkdir -p "$R/lists/partial" "$R/archives/partial"
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ]; then
  main=$(awk '/^URIs:/{u=$2} /^Suites:/{if ($0 !~ /security/) {print u; exit}}' "$src")
  sec=$(awk '/^URIs:/{u=$2} /^Suites:.*security/{print u; exit}' "$src")
else
  main=$(awk '$1=="deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  sec=$(awk '$1=="deb" && $3 ~ /security/ {print $2; exit}' /etc/apt/sources.list)
fi
[ -n "$main" ] || { echo "install.sh: no Debian mirror found in the machine's apt configuration" >&2; exit 1; }
printf "deb $main %s main\n" bookworm bookworm-updates bookworm-backports > "$R/sources.list"
[ -n "$sec" ] && echo "deb $sec bookworm-security main" >> "$R/sources.list"
apt-get $APT update -qq
b=bookworm-backports
DEBIAN_FRONTEND=noninteractive apt-get $APT install -y -qq --no-install-recommends \
  qemu-system-x86/$b qemu-system-common/$b qemu-system-data/$b seabios/$b \
  libvirt-daemon/$b libvirt-daemon-driver-qemu/$b libvirt-daemon-common/$b libvirt-daemon-log/$b \
  libvirt-clients/$b libvirt0/$b libvirt-common/$b libvirt-dev/$b \
  pkg-config cpio openssl iproute2 util-linux >/dev/null
echo "install.sh: $(libvirtd --version | head -1), $(qemu-system-x86_64 --version | head -1)"
