#!/usr/bin/env bash
# `make images`: build the operator and worker images (docker/*.Dockerfile) with podman, buildah or
# docker, whichever is installed (IMAGE_TOOL picks one). `make push-images` (PUSH=1) pushes them too.
#
#   IMAGE_REGISTRY  where the images are named and pushed  (default ghcr.io/loraplane)
#   IMAGE_TAG       their tag                              (default the chart's appVersion)
#   PYTHON_IMAGE    the operator's base image              (default python:3.11-slim)
#   CUDA_IMAGE      the worker's base image                (default nvidia/cuda:12.8.1-runtime-ubuntu24.04)
#   IMAGES          which to build                         (default "operator worker")
#   BUILD_CA_BUNDLE a CA bundle pip must trust during the build (a TLS-inspecting proxy; default
#                   $PIP_CERT, the one this machine's pip trusts); podman and buildah mount it
#                   read-only for the build only, it stays out of the image
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
registry=${IMAGE_REGISTRY:-ghcr.io/loraplane}
tag=${IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/loraplane/Chart.yaml)}
tool=${IMAGE_TOOL:-}
if [ -z "$tool" ]; then
  for candidate in podman buildah docker; do
    if command -v "$candidate" >/dev/null; then tool=$candidate; break; fi
  done
fi
[ -n "$tool" ] || { echo "[images] needs podman, buildah or docker (apt-get install podman)" >&2; exit 1; }

ca_args=()
ca=${BUILD_CA_BUNDLE:-}
if [ -n "$ca" ] && [ "$tool" = docker ]; then
  echo "[images] BUILD_CA_BUNDLE needs podman or buildah (docker build mounts no volumes)" >&2; exit 1
fi
[ -n "$ca" ] || [ "$tool" = docker ] || ca=${PIP_CERT:-}
if [ -n "$ca" ]; then
  ca_args=(-v "$(realpath "$ca"):/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt)
fi

build() {  # name, build args...
  local name=$1; shift
  set -- "$@" ${ca_args[@]+"${ca_args[@]}"}
  local image="$registry/$name:$tag" start; start=$(date +%s)
  echo "[images] building $image with $tool" >&2
  case "$tool" in
    # chroot isolation: builds where no user namespaces or overlay mounts are available
    buildah) buildah bud --layers --isolation "${BUILDAH_ISOLATION:-chroot}" -f "docker/$name.Dockerfile" \
      -t "$image" "$@" . ;;
    *) "$tool" build -f "docker/$name.Dockerfile" -t "$image" "$@" . ;;
  esac
  echo "[images] built $image in $(( $(date +%s) - start )) s" >&2
  if [ "${PUSH:-0}" = 1 ]; then
    echo "[images] pushing $image" >&2
    "$tool" push "$image"
  fi
  echo "$image"
}

for name in ${IMAGES:-operator worker}; do
  case "$name" in
    operator) build operator ${PYTHON_IMAGE:+--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"} ;;
    worker) build worker ${CUDA_IMAGE:+--build-arg "CUDA_IMAGE=$CUDA_IMAGE"} ;;
    *) echo "[images] unknown image $name (operator, worker)" >&2; exit 1 ;;
  esac
done
