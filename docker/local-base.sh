#!/bin/sh
# A local stand-in for the published base image (python:3.12.12-slim-bookworm) where no container
# registry can be reached: Debian bookworm (minbase) from the Debian mirror, with Debian's own
# Python, imported into podman as $1 (default localhost/mlipilot-base:bookworm).
#
# Debian bookworm's python3 is 3.11 (the published base has 3.12): the closest Python the
# Debian mirror has, and the one the CPU torch wheel on such hosts is built for (cp311).
# mlipilot supports both (requires-python >=3.10). Only this base differs; the Dockerfile is the
# same. Needs root, debootstrap and podman; ~1-2 min; skipped when the image exists already
# (FORCE=1 rebuilds).
set -eu
NAME=${1:-localhost/mlipilot-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "${FORCE:-0}" != 1 ] && podman image exists "$NAME"; then
  echo "local base: $NAME exists (FORCE=1 to rebuild)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "local-base.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
root=$(mktemp -d /var/tmp/mlipilot-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
start=$(date +%s)
# python3-pip: the Dockerfile installs with the base's pip, as python:*-slim has one.
debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
  bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
# python:*-slim's defaults that matter to the Dockerfile: a UTF-8 locale and `python` on PATH.
ln -sf python3 "$root/usr/bin/python"
tar -C "$root" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$NAME" >/dev/null
echo "local base: $NAME ($(chroot "$root" python3 -V), $(($(date +%s) - start)) s)"
