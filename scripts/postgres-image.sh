#!/usr/bin/env bash
# Builds a Docker image holding Debian's PostgreSQL server package of one
# major version, without any container registry: debootstrap a minimal
# Debian tree of the release that ships that version, from the apt mirror
# this machine already uses, install postgresql-<major> into it, and
# `docker import` the tree. The image has no entrypoint; internal/sandbox
# runs initdb, pg_ctl and pg_basebackup itself (PGREPLICA_SANDBOX=docker).
#
#	scripts/postgres-image.sh [MAJOR]
#
#	MAJOR  Debian release      image
#	13     bullseye (11)       pgreplica-postgres:13
#	15     bookworm (12)       pgreplica-postgres:15   (the default)
#	17     trixie (13)         pgreplica-postgres:17
#
# Each version is its own image, so each is built once: later runs find it
# and only print its name. The image name is always the LAST line printed:
#
#	PGREPLICA_DOCKER_IMAGE=$(bash scripts/postgres-image.sh 17 | tail -1)
#
# Takes 3 to 6 minutes the first time on the 2-core machine this project
# runs on (measured per version in BENCHMARKS.md), under a second
# afterwards. Needs root (debootstrap and chroot) and installs debootstrap
# with apt-get when it is missing.
#
# Environment: PGREPLICA_IMAGE_NAME (default pgreplica-postgres:MAJOR),
# DEBIAN_MIRROR (default: the first http(s) mirror of /etc/apt/sources.list*,
# else http://deb.debian.org/debian), PGREPLICA_IMAGE_REBUILD=1 to rebuild.
set -euo pipefail

log() { printf '%s\n' "$*" >&2; }

major=${1:-15}
# suite: the Debian release whose main archive ships postgresql-$major as
# its default PostgreSQL (Debian carries one major per release).
case $major in
13) suite=bullseye ;;
15) suite=bookworm ;;
17) suite=trixie ;;
*)
	log "postgres-image: no Debian release ships PostgreSQL $major as its default (known: 13 bullseye, 15 bookworm, 17 trixie)"
	exit 2
	;;
esac
image=${PGREPLICA_IMAGE_NAME:-pgreplica-postgres:$major}

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
debootstrap --variant=minbase --include=postgresql-$major,procps,iproute2 \
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

# The tree must hold exactly the version asked for: a suite that ships
# another major would otherwise give a mislabelled image.
if [ ! -x "$work/root/usr/lib/postgresql/$major/bin/postgres" ]; then
	log "postgres-image: $suite has no /usr/lib/postgresql/$major/bin/postgres after installing postgresql-$major"
	exit 1
fi

log "postgres-image: docker import as $image"
tar -C "$work/root" -c . | docker import \
	--change 'CMD ["sleep", "infinity"]' \
	--change 'LABEL org.pgreplica.image=postgres' \
	--change "LABEL org.pgreplica.postgres.major=$major org.pgreplica.debian.suite=$suite" \
	- "$image" >&2

log "postgres-image: built $image in $(($(date +%s) - began))s ($(chroot "$work/root" /usr/lib/postgresql/$major/bin/postgres --version 2>/dev/null || echo "postgresql-$major"), $suite)"
echo "$image"
