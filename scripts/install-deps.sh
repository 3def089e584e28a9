#!/usr/bin/env bash
# Installs everything snapscan needs on a fresh Debian 12 machine: the Go
# toolchain the module asks for, libyara for the scanner, and the real tools
# the tests and the demo use to make disk images. Run as root (or via sudo).
set -euo pipefail

GO_VERSION=1.26.8
PACKAGES=(
	build-essential pkg-config git ca-certificates curl openssl
	libyara-dev yara                          # the YARA engine (libyara 4.2.3) and reference CLI
	qemu-utils                                # qemu-img, qemu-io: image formats
	python3-libvhdi                           # cross-checks the VHD/VHDX differencing fixtures
	e2fsprogs dosfstools mtools               # ext2/3/4 and FAT images
	gdisk fdisk                               # sgdisk, sfdisk: partition tables
	xfsprogs ntfs-3g lvm2 fuse3 attr          # XFS, NTFS (setfattr), LVM2 images
	squashfs-tools xorriso genisoimage        # squashfs, ISO9660 images
	zstd xz-utils bzip2 zip unzip             # archives for scanner tests
	sqlite3                                   # inspecting the appliance database
	postgresql                                # PostgreSQL 15: fleet mode's shared state, started by the tests (internal/pgtest)
	time                                      # /usr/bin/time -v for peak RSS in benchmarks
	libvirt-daemon libvirt-daemon-driver-qemu # a private libvirtd for the libvirt connector's tests (no system service)
	qemu-system-x86                           # the TCG guest those tests freeze
	linux-image-cloud-amd64 busybox-static cpio # that guest's kernel and initramfs (testdata/guest.sh)
	rsyslog rsyslog-openssl                   # a real syslog collector (TCP, TLS, UDP) for the SIEM event tests
	prometheus                                # promtool: checks and unit-tests deploy/monitoring's rules
	chromium                                  # headless browser for the console's browser tests (chromedp)
)

if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null; then
		exec sudo "$0" "$@"
	fi
	echo "install-deps.sh: run as root" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

# Go: Debian 12 ships 1.19, too old for this module. Go publishes its
# toolchains as modules on the Go module proxy (golang.org/toolchain); fetch
# the one go.mod names with Debian's go and install it under /usr/local/go.
have_go() {
	command -v "$1" >/dev/null 2>&1 && "$1" version 2>/dev/null | grep -q "go${GO_VERSION}"
}
if ! have_go /usr/local/go/bin/go; then
	apt-get install -y -qq --no-install-recommends golang-go >/dev/null
	tmp=$(mktemp -d)
	(
		cd "$tmp"
		export GOPATH="$tmp/gopath" GOFLAGS=-modcacherw GOTOOLCHAIN=local
		/usr/bin/go mod init tmp >/dev/null 2>&1
		dir=$(/usr/bin/go mod download -json "golang.org/toolchain@v0.0.1-go${GO_VERSION}.linux-amd64" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		rm -rf /usr/local/go
		cp -a "$dir" /usr/local/go
		chmod +x /usr/local/go/bin/* /usr/local/go/pkg/tool/*/* 2>/dev/null || true
	)
	rm -rf "$tmp"
fi
/usr/local/go/bin/go version
echo "install-deps.sh: done"
