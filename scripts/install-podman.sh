#!/usr/bin/env bash
# Installs the OCI engine for the image tests (tests/container; `make test` runs this): Debian's
# podman, runc (crun cannot run containers on this machine type) and mmdebstrap (builds the
# local base image, since no registry is reachable). Without root or apt the image tests skip
# and say why; this never fails.
set -u

if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 &&
    command -v mmdebstrap >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-podman: podman/runc/mmdebstrap missing and cannot install them here" \
        "(needs root and apt-get); the image tests will be skipped" >&2
    exit 0
fi
echo "install-podman: installing podman, runc and mmdebstrap (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq podman runc mmdebstrap; } >/tmp/install-podman.log 2>&1; then
    echo "install-podman: apt-get failed (see /tmp/install-podman.log);" \
        "the image tests will fail (make test requires them as root)" >&2
fi
exit 0
