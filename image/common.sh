# Shared by image/build.sh, image/run.sh and image/check.sh (sourced, not run).
#
# Everything buildah stores for capinfer lives in its own storage, outside the repository:
# ${CAPINFER_CACHE_DIR:-~/.cache/capinfer}/images/ (vfs driver: plain copies, no overlay
# mounts needed; chroot isolation: no container runtime needed).

# The checks below use bash builtins only, so they work (and can be tested) with any PATH.
die() {
    printf '%s: error: %s\n' "${0##*/}" "$1" >&2
    exit "${2:-1}"
}

step() {
    printf '==> %s\n' "$*" >&2
}

require_root() {
    if ((EUID != 0)); then
        die "must run as root (buildah's vfs storage and chroot isolation need it; \
rootless buildah needs subuid ranges this script does not set up)" 2
    fi
}

require_tools() {
    local tool missing=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        die "missing: ${missing[*]} (on Debian: apt-get install -y buildah debootstrap util-linux)" 2
    fi
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CAPINFER_CACHE_DIR:-$HOME/.cache/capinfer}/images"
BUILDAH=(buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs)

# The image's tag: capinfer:<the package's version>.
project_version() {
    sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n 1
}

IMAGE="${CAPINFER_IMAGE:-capinfer:$(project_version)}"

# buildah stores short names under localhost/ (capinfer:0.1.0 -> localhost/capinfer:0.1.0).
image_exists() {
    "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1
}
