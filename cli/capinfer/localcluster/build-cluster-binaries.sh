#!/usr/bin/env bash
# Builds the local control plane's binaries from source (Go module proxy only):
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes),
# etcd, helm and kwok/kwokctl. Output goes to a cache outside the repository, one folder
# per pinned version, so a second run is a no-op.
#
#   build-cluster-binaries.sh                  # build what is missing, print the bin dir
#   CAPINFER_CACHE_DIR=/somewhere build-...    # cache location (default ~/.cache/capinfer)
set -euo pipefail

# Pinned versions: change them here, nowhere else.
KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"

CACHE_DIR="${CAPINFER_CACHE_DIR:-$HOME/.cache/capinfer}"
BIN_DIR="$CACHE_DIR/bin/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-kwok-$KWOK_VERSION"
WORK_DIR="$CACHE_DIR/build"

ALL_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm kwok kwokctl)

all_cached() {
    local b
    for b in "${ALL_BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
}
# The warm path: nothing to build, no toolchain or network needed.
if all_cached; then
    echo "$BIN_DIR"
    exit 0
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

say() { printf '[build-cluster-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'build-cluster-binaries: error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH (need Go >= 1.24; install it, e.g. apt-get install golang-go or from go.dev)"
proxy="$(go env GOPROXY | cut -d, -f1)"
if [[ "$proxy" == http* ]] && ! curl -fs --max-time 20 -o /dev/null "$proxy/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.info"; then
    die "the Go module proxy $proxy is unreachable (or lacks k8s.io/kubernetes@$KUBERNETES_VERSION)"
fi

mkdir -p "$BIN_DIR" "$WORK_DIR"
LOG="$WORK_DIR/build.log"
: >"$LOG"

# quiet CMD...: run a command with its chatter in the build log; show the log tail on failure.
quiet() {
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        die "'$*' failed (full log: $LOG)"
    fi
}

# new_module DIR: an empty wrapper module to build a foreign main package in.
new_module() {
    rm -rf "$1" && mkdir -p "$1"
    printf 'module capinfer.local/build\n\ngo 1.24\n' >"$1/go.mod"
}

build_kubernetes() {
    local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
    local missing=0 b
    for b in "${want[@]}"; do [[ -x "$BIN_DIR/$b" ]] || missing=1; done
    if ((missing == 0)); then say "kubernetes $KUBERNETES_VERSION: cached"; return; fi
    local dir="$WORK_DIR/kubernetes" minor="${KUBERNETES_VERSION#v1.}"
    new_module "$dir"
    cd "$dir"
    say "kubernetes $KUBERNETES_VERSION: resolving modules"
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" 2>>"$LOG" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$KUBERNETES_VERSION"
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and maps them to local
    # paths; replace each with its published v0.<minor> release instead.
    local staging
    staging="$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r&&$2=="v0.0.0"{print $1}' "$gomod")"
    [[ -n "$staging" ]] || die "found no staging modules in $gomod"
    local m
    for m in $staging; do go mod edit -replace "$m=$m@v0.$minor"; done
    go mod edit -require "k8s.io/kubernetes@$KUBERNETES_VERSION"
    quiet go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION"
    local major=1 kminor="${minor%%.*}" date
    date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    local ldflags="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$kminor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date -X $pkg.gitCommit=capinfer-build"
    done
    for b in "${want[@]}"; do
        if [[ -x "$BIN_DIR/$b" ]]; then continue; fi
        say "kubernetes $KUBERNETES_VERSION: compiling $b (the first one takes longest)"
        quiet go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/$b.tmp" "k8s.io/kubernetes/cmd/$b"
        mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
    done
}

build_etcd() {
    if [[ -x "$BIN_DIR/etcd" ]]; then say "etcd $ETCD_VERSION: cached"; return; fi
    local dir="$WORK_DIR/etcd"
    new_module "$dir"
    cd "$dir"
    cat >main.go <<'GO'
// etcd server entry point, built from go.etcd.io/etcd/server/v3.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    say "etcd $ETCD_VERSION: resolving and compiling"
    quiet go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    quiet go mod tidy
    quiet go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd.tmp" .
    mv "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
}

# build_plain NAME MODULE VERSION PKG...: a tool whose go.mod needs no replaces.
build_plain() {
    local name="$1" module="$2" version="$3"; shift 3
    local missing=0 p
    for p in "$@"; do [[ -x "$BIN_DIR/${p##*/}" ]] || missing=1; done
    if ((missing == 0)); then say "$name $version: cached"; return; fi
    local dir="$WORK_DIR/$name"
    new_module "$dir"
    cd "$dir"
    say "$name $version: resolving and compiling"
    quiet go get "$module@$version"
    local ldflags="-s -w"
    [[ "$name" == helm ]] && ldflags+=" -X helm.sh/helm/v3/internal/version.version=$version"
    [[ "$name" == kwok ]] && ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.Version=$version"
    for p in "$@"; do
        quiet go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/${p##*/}.tmp" "$p"
        mv "$BIN_DIR/${p##*/}.tmp" "$BIN_DIR/${p##*/}"
    done
}

start=$SECONDS
build_etcd
build_plain kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
build_plain helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
build_kubernetes
say "done in $((SECONDS - start)) s: $BIN_DIR"
echo "$BIN_DIR"
