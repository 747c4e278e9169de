#!/bin/sh
# `make image`: build docker/Dockerfile with podman, the same image for orchestrator, scorecard
# and Ray (CPU torch). Settings (environment):
#   IMAGE       the tag (default localhost/mlipilot:<pyproject version>)
#   IMAGE_BASE  published: the Dockerfile's own base (python:3.12.12-slim-bookworm, pulled);
#               local: a debootstrapped Debian bookworm with Debian's Python 3.11
#               (docker/local-base.sh), for hosts that reach the Debian mirror and PyPI but no
#               container registry;
#               auto (default): published when that image is here or can be pulled, else local.
#   PODMAN_BUILD_ARGS  more `podman build` arguments.
# With IMAGE_BASE=local the build also takes this host's pip settings, as build-time mounts only
# (nothing of them stays in the image): a CPU torch wheel from PIP_FIND_LINKS (a folder), which
# then pins TORCH_VERSION=<version>+cpu, and the CA bundle pip trusts (PIP_CERT), for hosts
# whose egress re-signs TLS.
set -eu
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/docker/containers.conf}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE=${IMAGE:-localhost/mlipilot:$version}
BASE=${IMAGE_BASE:-auto}
arg_default() { sed -n "s/^ARG $1=//p" docker/Dockerfile | head -1 | tr -d '"'; }
published=$(arg_default PYTHON_IMAGE)
torch=$(arg_default TORCH_VERSION)
command -v podman >/dev/null || { echo "make image: podman is not installed (apt-get install podman runc)" >&2; exit 2; }

if [ "$BASE" = auto ]; then
  if podman image exists "$published" || timeout 120 podman pull -q "$published" >/dev/null 2>&1; then
    BASE=published
  else
    echo "make image: cannot pull $published; building on a local Debian base (IMAGE_BASE=local)"
    BASE=local
  fi
fi

set --
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case "$BASE" in
  published) ;;
  local)
    base=localhost/mlipilot-base:bookworm
    docker/local-base.sh "$base"
    set -- --build-arg "PYTHON_IMAGE=$base"
    conf="$tmp/pip.conf"
    printf '[global]\n' >"$conf"
    cert=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
    if [ -n "$cert" ] && [ -f "$cert" ]; then
      printf 'cert = /etc/mlipilot-build/ca.crt\n' >>"$conf"
      set -- "$@" --volume "$cert:/etc/mlipilot-build/ca.crt:ro"
    fi
    links=${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}
    for dir in $links; do
      [ -d "$dir" ] || continue
      wheel=$(ls "$dir"/torch-"$torch"+cpu-cp311-*.whl 2>/dev/null | head -1)
      [ -n "$wheel" ] || continue
      echo "make image: torch $torch+cpu from $wheel (a build-time mount)"
      printf 'find-links = /etc/mlipilot-build/wheels\n' >>"$conf"
      set -- "$@" --volume "$dir:/etc/mlipilot-build/wheels:ro" \
        --build-arg "TORCH_VERSION=$torch+cpu" --build-arg "TORCH_INDEX_URL=https://pypi.org/simple"
      break
    done
    set -- "$@" --volume "$conf:/etc/pip.conf:ro"
    ;;
  *) echo "make image: IMAGE_BASE=$BASE: use published, local or auto" >&2; exit 2 ;;
esac

start=$(date +%s)
# shellcheck disable=SC2086
podman build --layers -f docker/Dockerfile --ignorefile docker/Dockerfile.dockerignore \
  -t "$IMAGE" "$@" ${PODMAN_BUILD_ARGS:-} .
seconds=$(($(date +%s) - start))
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
python=$(podman run --rm --read-only --entrypoint python3 "$IMAGE" -c \
  'import platform, ray, torch, mlipilot; print(platform.python_version(), "ray", ray.__version__, "torch", torch.__version__)' 2>/dev/null || echo "?")
echo "image: $IMAGE base=$BASE build=${seconds}s size=$((size / 1000000)) MB python $python"
