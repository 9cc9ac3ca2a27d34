#!/usr/bin/env bash
# Build the container image from deploy/Containerfile and run it (tests/container): installs
# podman, buildah and mmdebstrap (Debian packages) when missing, then runs the opt-in test.
# Needs root (or sudo) for apt and for the builds; no registry: the base image is made from
# Debian's packages, the wheels on the host. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
for tool in podman buildah mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "== Python environment (.venv)"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q -e '.[dev]'
fi

echo "== podman $(podman --version | awk '{print $3}'), buildah $(buildah --version | awk '{print $3}')"
echo "== tests/container (build and run the image)"
# root: podman and buildah keep their images in /var/lib/containers
as_root env NATSGATE_CONTAINER_TEST=1 \
  .venv/bin/python -m pytest -v -s -p no:cacheprovider tests/container "$@"
