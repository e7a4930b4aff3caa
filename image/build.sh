#!/usr/bin/env bash
# Build capinfer's image from the Dockerfile with buildah: no Docker engine, no registry.
#
#   image/build.sh [--rebuild-base]        (as root; `make image` runs it)
#
# THE BASE IS A STAND-IN. The Dockerfile builds FROM its PYTHON_IMAGE build arg
# (python:3.11.13-slim-bookworm), which cannot be pulled where capinfer is built and tested
# (no image registry is reachable). This script makes a stand-in from Debian's own packages
# (debootstrap --variant=minbase bookworm, plus python3 3.11 and python3-venv from bookworm)
# and tags it with that exact name in capinfer's private buildah storage, so the
# Dockerfile is built as written, with `--pull=never`. The stand-in's Python is Debian's
# 3.11 (/usr/bin/python3), not the upstream image's 3.11 in /usr/local; both are bookworm.
# It carries the label io.capinfer.base-stand-in, which the built image inherits.
# An image to publish is built from the real base by any OCI builder, e.g.
#   docker build -t capinfer:0.1.0 .
#
# Caches (outside the repository): ${CAPINFER_CACHE_DIR:-~/.cache/capinfer}/images/
#   storage/, run/        buildah's storage (vfs driver) holding the stand-in and the image
#   debootstrap-debs/     the Debian packages debootstrap downloaded
# The stand-in is made once (about a minute) and reused; --rebuild-base makes it again.
set -euo pipefail
here="${BASH_SOURCE[0]%/*}"
[[ "$here" != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source=image/common.sh
source "$here/common.sh"

rebuild_base=false
for arg in "$@"; do
    case "$arg" in
        --rebuild-base) rebuild_base=true ;;
        -h | --help)
            help_text
            exit 0
            ;;
        *) die "unknown argument: $arg (usage: image/build.sh [--rebuild-base])" 2 ;;
    esac
done

require_root
require_tools buildah debootstrap chroot sed
init_storage

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${CAPINFER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${CAPINFER_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

build_base() {
    local ref="$1" ctr root pyversion
    step "making the stand-in for $ref: debootstrap $DEBIAN_SUITE (minbase) + python3 from Debian"
    mkdir -p "$CACHE/debootstrap-debs"
    ctr="$("${BUILDAH[@]}" from --name "capinfer-base-$$" scratch)"
    # shellcheck disable=SC2064  # expand now: the trap must remove this container
    trap "\"\${BUILDAH[@]}\" rm '$ctr' >/dev/null 2>&1 || true" EXIT
    root="$("${BUILDAH[@]}" mount "$ctr")"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        --cache-dir="$CACHE/debootstrap-debs" \
        "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" \
        | sed -u 's/^/    /' >&2 \
        || die "debootstrap failed (is $DEBIAN_MIRROR reachable?)"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
        "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
    pyversion="$(chroot "$root" python3 -c 'import platform; print(platform.python_version())')"
    [[ "$pyversion" == 3.11.* ]] || die "the stand-in's Python is $pyversion, not 3.11"
    "${BUILDAH[@]}" config \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 \
        --env PYTHON_VERSION="$pyversion" \
        --cmd '["python3"]' \
        --label io.capinfer.base-stand-in="$ref stand-in: Debian $DEBIAN_SUITE minbase, \
python3 $pyversion from Debian packages (capinfer image/build.sh)" \
        "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$ref" >/dev/null
    trap - EXIT
    step "stand-in $ref: Python $pyversion, $(image_size "$ref")"
}

image_size() {
    "${BUILDAH[@]}" images --noheading --format '{{.Size}}' "$1" | head -n 1
}

base_ref="$(dockerfile_base)"
start=$SECONDS
mkdir -p "$CACHE"
if $rebuild_base || ! image_exists "$base_ref"; then
    image_exists "$base_ref" && "${BUILDAH[@]}" rmi "$base_ref" >/dev/null
    build_base "$base_ref"
else
    step "reusing the stand-in for $base_ref (--rebuild-base makes it again)"
fi
base_s=$((SECONDS - start))

# RUN steps trust the certificate authorities this machine trusts (a TLS-inspecting proxy
# in front of the package index, where there is one): its bundle and a pip.conf that points
# pip at it are bind-mounted read-only for the build's RUN steps only, never committed.
trust=()
if [[ -r "$CA_BUNDLE" ]]; then
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$CACHE/pip.conf"
    trust=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"
        --volume "$CACHE/pip.conf:/etc/pip.conf:ro")
fi

step "building $IMAGE from $REPO/Dockerfile (buildah bud, chroot isolation, no pull)"
# Without --layers: one layer on top of the base, not a full vfs copy per instruction.
"${BUILDAH[@]}" bud --isolation chroot --pull=never --layers=false "${trust[@]}" \
    --tag "$IMAGE" --file "$REPO/Dockerfile" "$REPO" \
    || die "buildah bud failed: see its output above"
build_s=$((SECONDS - start - base_s))
# The storage is capinfer's own: an image a rebuild untagged is a full vfs copy, never used.
"${BUILDAH[@]}" rmi --prune >/dev/null

step "built $IMAGE: $(image_size "$IMAGE") uncompressed (base stand-in step ${base_s} s, \
image build ${build_s} s)"
step "run it: image/run.sh --help   |   check it: make image-check"
