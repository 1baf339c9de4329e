#!/usr/bin/env bash
# Builds a Docker image holding Debian's postgresql package, without any
# container registry: debootstrap a minimal Debian bookworm tree from the
# apt mirror this machine already uses, install postgresql into it, and
# `docker import` the tree. The image has no entrypoint; internal/sandbox
# runs initdb, pg_ctl and pg_basebackup itself (PGREPLICA_SANDBOX=docker).
#
# Run once; later runs find the image and only print its name. The image
# name is always the LAST line printed:
#
#	PGREPLICA_DOCKER_IMAGE=$(bash scripts/postgres-image.sh | tail -1)
#
# Takes about 3.5 minutes the first time on the 2-core machine this project
# runs on (measured: 3m22s, 373 MB image with PostgreSQL 15), under a second
# afterwards. Needs root (debootstrap and chroot) and installs debootstrap
# with apt-get when it is missing.
#
# Environment: PGREPLICA_IMAGE_NAME (default pgreplica-postgres:bookworm),
# DEBIAN_MIRROR (default: the first http(s) mirror of /etc/apt/sources.list*,
# else http://deb.debian.org/debian), PGREPLICA_IMAGE_REBUILD=1 to rebuild.
set -euo pipefail

image=${PGREPLICA_IMAGE_NAME:-pgreplica-postgres:bookworm}
suite=bookworm

log() { printf '%s\n' "$*" >&2; }

if ! command -v docker >/dev/null 2>&1; then
	log "postgres-image: no docker command; install Docker first"
	exit 1
fi
if [ "${PGREPLICA_IMAGE_REBUILD:-}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
	log "postgres-image: $image exists (PGREPLICA_IMAGE_REBUILD=1 rebuilds it)"
	echo "$image"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	log "postgres-image: building $image needs root (debootstrap, chroot)"
	exit 1
fi

# mirror: the Debian archive apt is configured with here (deb822 URIs: or
# one-line deb entries), so no other host is contacted.
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
	mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
		awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i } /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }' |
		grep -E '/debian/?$' | head -1 || true)
	mirror=${mirror:-http://deb.debian.org/debian}
fi

if ! command -v debootstrap >/dev/null 2>&1; then
	log "postgres-image: installing debootstrap"
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
fi

began=$(date +%s)
work=$(mktemp -d /tmp/pgreplica-image-XXXXXX)
cleanup() {
	# A failed chroot step may leave proc mounted inside the tree.
	umount "$work/root/proc" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

log "postgres-image: debootstrap $suite from $mirror (minbase)"
debootstrap --variant=minbase --include=postgresql,procps,iproute2 \
	"$suite" "$work/root" "$mirror" >&2

# Slim the tree: apt lists, caches and docs are not needed at run time.
# Debian's package creates a cluster "main" on install: remove it, the
# sandbox runs initdb itself.
chroot "$work/root" sh -c '
	set -e
	for c in $(ls /etc/postgresql 2>/dev/null); do
		for n in $(ls /etc/postgresql/$c); do pg_dropcluster --stop "$c" "$n" || true; done
	done
	apt-get clean
	rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
	mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql
' >&2

log "postgres-image: docker import as $image"
tar -C "$work/root" -c . | docker import \
	--change 'CMD ["sleep", "infinity"]' \
	--change 'LABEL org.pgreplica.image=postgres' \
	- "$image" >&2

log "postgres-image: built $image in $(($(date +%s) - began))s ($(ls -d "$work"/root/usr/lib/postgresql/*/bin))"
echo "$image"
