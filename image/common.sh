# shellcheck shell=bash
# Shared by image/build.sh and image/run.sh (sourced, not run).
#
# Everything buildah stores for capinfer lives in its own storage, outside the repository:
# ${CAPINFER_CACHE_DIR:-~/.cache/capinfer}/images/ (vfs driver: plain copies, no overlay
# mounts; chroot isolation: no container runtime).
#
# Until require_root and require_tools have passed, only bash builtins run here, so the
# refusals work, and can be tested, whatever PATH holds.

die() {
    printf '%s: error: %s\n' "${0##*/}" "$1" >&2
    exit "${2:-1}"
}

step() {
    printf '==> %s\n' "$*" >&2
}

require_root() {
    if ((EUID != 0)); then
        die "must run as root (buildah's vfs storage, chroot isolation and the mount \
namespace of image/run.sh need it)" 2
    fi
}

require_tools() {
    local tool package missing=() packages=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 && continue
        missing+=("$tool")
        case "$tool" in
            unshare | setpriv) package=util-linux ;;
            chroot) package=coreutils ;;
            *) package="$tool" ;;
        esac
        [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
    done
    if ((${#missing[@]})); then
        die "missing: ${missing[*]} (on Debian: apt-get install -y ${packages[*]})" 2
    fi
}

REPO="$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)"

# After the checks: where the storage is, and the image's name.
init_storage() {
    CACHE="${CAPINFER_CACHE_DIR:-${HOME:?HOME is not set}/.cache/capinfer}/images"
    BUILDAH=(buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs)
    # shellcheck disable=SC2034  # used by the scripts that source this file
    IMAGE="${CAPINFER_IMAGE:-capinfer:$(project_version)}"
}

# capinfer:<the operator distribution's version> (capinfer's distributions share one).
# buildah stores it as localhost/capinfer:<version>.
project_version() {
    local line
    while IFS= read -r line; do
        if [[ "$line" =~ ^version\ =\ \"(.+)\"$ ]]; then
            printf '%s\n' "${BASH_REMATCH[1]}"
            return
        fi
    done <"$REPO/operator/pyproject.toml"
    die "no version in $REPO/operator/pyproject.toml"
}

# The base the Dockerfile builds FROM (its PYTHON_IMAGE default), fully qualified.
dockerfile_base() {
    local line value=""
    while IFS= read -r line; do
        if [[ "$line" =~ ^ARG\ PYTHON_IMAGE=(.+)$ ]]; then
            value="${BASH_REMATCH[1]}"
            break
        fi
    done <"$REPO/Dockerfile"
    [[ -n "$value" ]] || die "the Dockerfile has no 'ARG PYTHON_IMAGE=<default>'"
    [[ "$value" != *@* ]] || die "the Dockerfile pins PYTHON_IMAGE by digest ($value): \
a stand-in cannot carry that digest; build with the real base instead"
    case "$value" in
        */*/*) ;;
        */*) value="docker.io/$value" ;;
        *) value="docker.io/library/$value" ;;
    esac
    printf '%s\n' "$value"
}

image_exists() {
    "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1
}

# The comment block at the top of the running script, without its '#'s.
help_text() {
    local line
    while IFS= read -r line; do
        [[ "$line" == "#!"* ]] && continue
        [[ "$line" == "#"* ]] || break
        line="${line#\#}"
        printf '%s\n' "${line# }"
    done <"$0"
}
