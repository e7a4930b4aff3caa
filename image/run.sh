#!/usr/bin/env bash
# Run capinfer's image here the way a container runtime with a read-only root runs it:
#
#   image/run.sh [--entrypoint PROGRAM] [--env NAME=VALUE]... [--volume HOST:PATH[:ro]]...
#                [--image REF] [-- ARG...]
#
# `make image` builds the image first. Needs root, buildah, util-linux (unshare, setpriv)
# and coreutils (chroot); no container engine.
#
# What is honoured from the image's config: Entrypoint (--entrypoint replaces it, as
# `docker run --entrypoint` does), Cmd (replaced by ARGs), Env (--env adds or overrides),
# User (numeric UID:GID, as the Dockerfile sets it), WorkingDir (only "/" is supported;
# another is refused). HOME comes from the image's /etc/passwd, as Kubernetes does.
#
# How it runs: `buildah from` makes a container (a private vfs copy of the image's root);
# `unshare --mount --pid --fork` gives the process its own mount and PID namespaces (it is
# PID 1, as in a pod); it shares the host's network namespace, so 127.0.0.1 is this
# machine's (the local cluster binds there). In the new mount namespace:
#   - the container's root is bind-mounted onto itself and that bind mount remounted
#     read-only (MS_RDONLY, `mount -o remount,bind,ro`): the kernel refuses every write
#     under / with EROFS, whoever asks. This is what readOnlyRootFilesystem does.
#   - writable: /tmp only (a 16 MiB tmpfs, like the Helm chart's emptyDir), and /dev/shm.
#   - /proc is the new PID namespace's, /sys is read-only, /dev a tmpfs holding only
#     null, zero, full, random, urandom and tty (then read-only too).
#   - each --volume is bind-mounted (read-only with :ro) on a mount point made in the
#     container's copy before the root turns read-only; PATH must not cross a symlink.
# Then `setpriv --no-new-privs env -i IMAGE_ENV... chroot --userspec=UID:GID --groups=GID
# ROOT ENTRYPOINT...` (the process sees the image's environment and nothing of this one's):
# setuid() away from root clears the permitted and effective capability sets, and
# no_new_privs stops any setuid or file-capability binary from regaining them. (The
# bounding set is left as it is: dropping it before chroot would also drop chroot's own.)
# SIGTERM and SIGINT to this script reach the process; the container is removed at exit.
set -euo pipefail
here="${BASH_SOURCE[0]%/*}"
[[ "$here" != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source=image/common.sh
source "$here/common.sh"

usage="usage: image/run.sh [--entrypoint PROGRAM] [--env NAME=VALUE]... \
[--volume HOST:PATH[:ro]]... [--image REF] [-- ARG...]"
entrypoint=""
image_ref=""
extra_env=()
volumes=()
args=()
have_args=false
while (($#)); do
    case "$1" in
        --entrypoint) entrypoint="${2:?--entrypoint needs a program}"; shift 2 ;;
        --env) extra_env+=("${2:?--env needs NAME=VALUE}"); shift 2 ;;
        --volume) volumes+=("${2:?--volume needs HOST:PATH[:ro]}"); shift 2 ;;
        --image) image_ref="${2:?--image needs a reference}"; shift 2 ;;
        -h | --help)
            help_text
            exit 0
            ;;
        --) shift; args=("$@"); have_args=true; break ;;
        *) die "unknown argument: $1 ($usage)" 2 ;;
    esac
done
for pair in "${extra_env[@]}"; do
    [[ "$pair" == [A-Za-z_]*=* ]] || die "--env $pair: expected NAME=VALUE" 2
done

require_root
require_tools buildah unshare setpriv chroot mount python3
init_storage
[[ -z "$image_ref" ]] || IMAGE="$image_ref"
image_exists "$IMAGE" || die "no image $IMAGE in $CACHE/storage: build it with \`make image\`" 3

# The image's config, one field per line (Env and the command NUL-free, JSON-decoded).
config="$("${BUILDAH[@]}" inspect --type image "$IMAGE")"
field() {
    python3 -c '
import json, sys
config = json.loads(sys.stdin.read())["OCIv1"].get("config", {})
value = config.get(sys.argv[1])
if isinstance(value, list):
    print("\n".join(value))
elif value:
    print(value)
' "$1" <<<"$config"
}
user="$(field User)"
workdir="$(field WorkingDir)"
mapfile -t image_env < <(field Env)
mapfile -t image_entrypoint < <(field Entrypoint)
mapfile -t image_cmd < <(field Cmd)

[[ -z "$workdir" || "$workdir" == / ]] || die "the image's WorkingDir is $workdir: only / is supported"
[[ "$user" =~ ^[0-9]+(:[0-9]+)?$ ]] \
    || die "the image's User is '${user:-<unset>}': expected numeric UID[:GID]" 3
uid="${user%%:*}"
gid="${user#*:}"
[[ "$user" == *:* ]] || gid="$uid"

if [[ -n "$entrypoint" ]]; then
    command_line=("$entrypoint")
    $have_args || image_cmd=()
else
    command_line=("${image_entrypoint[@]}")
fi
if $have_args; then
    command_line+=("${args[@]}")
else
    command_line+=("${image_cmd[@]}")
fi
((${#command_line[@]})) || die "the image has no Entrypoint or Cmd and none was given" 2

ctr="$("${BUILDAH[@]}" from --pull=never --name "capinfer-run-$$" "$IMAGE")"
# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
    "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
root="$("${BUILDAH[@]}" mount "$ctr")"

home=/
while IFS=: read -r _ _ entry_uid _ _ entry_home _; do
    [[ "$entry_uid" == "$uid" ]] && home="$entry_home"
done <"$root/etc/passwd"

# Mount points for the volumes, made in the container's own copy (never through a symlink,
# which could lead out of it).
volume_args=()
for spec in "${volumes[@]}"; do
    IFS=: read -r host target mode <<<"$spec"
    [[ -e "$host" && "$target" == /* && ( -z "$mode" || "$mode" == ro ) ]] \
        || die "--volume $spec: expected an existing HOST path, an absolute PATH and :ro or nothing" 2
    probe="$root"
    IFS=/ read -ra parts <<<"${target#/}"
    for part in "${parts[@]}"; do
        probe="$probe/$part"
        [[ ! -L "$probe" ]] || die "--volume $spec: $target crosses a symlink in the image" 2
    done
    if [[ -d "$host" ]]; then
        mkdir -p "$root$target"
    else
        mkdir -p "$(dirname "$root$target")"
        [[ -e "$root$target" ]] || : >"$root$target"
    fi
    volume_args+=("$host" "$root$target" "${mode:-rw}")
done

# Runs as root in the new namespaces: mounts, then the image's process.
# shellcheck disable=SC2016  # expanded by the inner bash, from its arguments
inside='
set -euo pipefail
root="$1" uid="$2" gid="$3" nvolumes="$4" nenv="$5"; shift 5
mount --bind "$root" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,nodev,mode=1777,size=16m tmpfs "$root/tmp"
mount -t tmpfs -o nosuid,noexec,mode=755,size=64k tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    : >"$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mkdir "$root/dev/shm"
mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=64m shm "$root/dev/shm"
mount -o remount,bind,ro,nosuid,noexec "$root/dev"
for ((i = 0; i < nvolumes; i++)); do
    mount --bind "$1" "$2"
    [[ "$3" == ro ]] && mount -o remount,bind,ro "$2"
    shift 3
done
mount -o remount,bind,ro "$root"
environment=("${@:1:nenv}")
shift "$nenv"
exec "$SETPRIV" --no-new-privs "$ENV_BIN" -i "${environment[@]}" \
    "$CHROOT" --userspec="$uid:$gid" --groups="$gid" "$root" "$@"
'
# The process's environment is the image's, nothing of this shell's (env -i at the last
# step; the tools before it are this machine's, by absolute path).
env_list=("${image_env[@]}" "HOME=$home" "HOSTNAME=$(hostname)" "${extra_env[@]}")
SETPRIV="$(command -v setpriv)" ENV_BIN="$(command -v env)" CHROOT="$(command -v chroot)" \
    unshare --mount --propagation private --pid --fork --kill-child=SIGKILL \
    bash -c "$inside" capinfer-run "$root" "$uid" "$gid" \
    "$((${#volume_args[@]} / 3))" "${#env_list[@]}" \
    "${volume_args[@]}" "${env_list[@]}" "${command_line[@]}" &
launcher=$!
# shellcheck disable=SC2329  # invoked by the TERM and INT traps
forward() {
    # The image's process is unshare's only child: PID 1 of its namespace.
    local pid=""
    read -r pid _ <"/proc/$launcher/task/$launcher/children" 2>/dev/null || true
    [[ -z "$pid" ]] || kill -s "$1" "$pid" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT
status=0
while true; do
    wait "$launcher" && status=0 || status=$?
    # wait returns early (>128) when a trapped signal arrives; keep waiting for the child.
    kill -0 "$launcher" 2>/dev/null || break
done
exit "$status"
