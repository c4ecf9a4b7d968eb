#!/usr/bin/env bash
# A Debian base image made here, for building the images where no registry serves base images:
# debootstrap (Debian's own packages) of bookworm with Python 3.11 in a venv at /opt/venv (first on
# PATH, so `python` and `pip` are the venv's), imported into local container storage. Prints its name.
#   PYTHON_IMAGE=$(scripts/base-image.sh) IMAGE_TOOL=buildah make images
# Root, debootstrap and podman or buildah needed. The rootfs is cached under ~/.cache/loraplane/images.
set -euo pipefail
suite=${BASE_SUITE:-bookworm}
mirror=${BASE_MIRROR:-http://deb.debian.org/debian}
name=localhost/loraplane-base:$suite-python3
cache=${LORAPLANE_CACHE:-$HOME/.cache/loraplane}/images
rootfs="$cache/$suite-python3.rootfs"
tool=$(command -v podman || command -v buildah || true)
[ -n "$tool" ] || { echo "[base-image] needs podman or buildah" >&2; exit 1; }

if "$tool" image exists "$name" 2>/dev/null || "$tool" inspect --type image "$name" >/dev/null 2>&1; then
  echo "$name"; exit 0
fi
if [ ! -f "$rootfs/.complete" ]; then
  rm -rf "$rootfs" && mkdir -p "$cache"
  echo "[base-image] debootstrap $suite into $rootfs (a few minutes: Debian packages)" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$rootfs" "$mirror" >&2
  chroot "$rootfs" python3 -m venv /opt/venv
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  touch "$rootfs/.complete"
fi
echo "[base-image] importing $rootfs as $name" >&2
path=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ "$(basename "$tool")" = podman ]; then
  tar --exclude=./.complete -C "$rootfs" -c . | podman import --change "ENV PATH=$path" - "$name" >/dev/null
else
  container=$(buildah from scratch)
  buildah copy "$container" "$rootfs" / >/dev/null
  buildah config --env "PATH=$path" "$container"
  buildah commit --rm "$container" "$name" >/dev/null
fi
echo "$name"
