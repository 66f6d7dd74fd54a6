#!/usr/bin/env bash
# Builds the binaries of the real Kubernetes test cluster (etcd, kube-apiserver,
# kube-controller-manager, kubectl, helm) into ${MESHPILOT_CACHE:-~/.cache/meshpilot}/kube/bin.
# Versions are pinned by tools/kube/go.mod and tools/etcd/go.mod (with their go.sum); helm by
# HELM_VERSION below. Idempotent: binaries already built at the right version are only reported.
#
#   scripts/kube-test-cluster.sh            build what is missing
#   scripts/kube-test-cluster.sh --prune    also delete the Go module/build caches (~4.7 GB) afterwards
#   scripts/kube-test-cluster.sh --bin-dir  print the binary directory and exit
#
# MESHPILOT_GO_JOBS (default 2) sets `go build -p`. Builds run under `nice -n 19`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MESHPILOT_CACHE:-$HOME/.cache/meshpilot}/kube
BIN=$CACHE/bin
HELM_VERSION=v3.22.0
JOBS=${MESHPILOT_GO_JOBS:-2}

PRUNE=0
for arg in "$@"; do
    case $arg in
        --prune) PRUNE=1 ;;
        --bin-dir) echo "$BIN"; exit 0 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[kube-test-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The version a module is required at in one of our go.mod files.
mod_version() { awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1"; }

K8S_VERSION=$(mod_version "$REPO/tools/kube/go.mod" k8s.io/kubernetes)
ETCD_VERSION=$(mod_version "$REPO/tools/etcd/go.mod" go.etcd.io/etcd/server/v3)
[[ -n $K8S_VERSION && -n $ETCD_VERSION ]] || { echo "cannot read versions from tools/*/go.mod" >&2; exit 1; }

command -v go >/dev/null || { echo "go is not installed (Go >= 1.26 is needed)" >&2; exit 1; }
GO_VERSION=$(go env GOVERSION)
case $GO_VERSION in
    go1.2[6-9]*|go1.[3-9][0-9]*) ;;
    *) echo "Go >= 1.26 is needed to build Kubernetes $K8S_VERSION, found $GO_VERSION" >&2; exit 1 ;;
esac

mkdir -p "$BIN"
# Everything Go writes stays in the cache: the repo only holds go.mod/go.sum.
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# Prints the version line of a built binary, or nothing if it is missing or broken.
version_of() {
    local exe=$BIN/$1
    [[ -x $exe ]] || return 0
    case $1 in
        etcd) "$exe" --version 2>/dev/null | awk '/^etcd Version:/ { print "v" $3 }' ;;
        kubectl) "$exe" version --client 2>/dev/null | awk '/^Client Version:/ { print $3 }' ;;
        helm) "$exe" version --template '{{.Version}}' 2>/dev/null ;;
        *) "$exe" --version 2>/dev/null | awk '{ print $2 }' ;;
    esac
}

# Runs a build in the background and prints a heartbeat so a 4-minute link does not look hung.
run_with_heartbeat() {
    local what=$1; shift
    local start=$SECONDS
    "$@" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 5
        if kill -0 "$pid" 2>/dev/null && (( (SECONDS - start) % 30 < 5 )); then
            log "  ... still building $what ($((SECONDS - start)) s)"
        fi
    done
    wait "$pid" || { log "FAILED: $what"; return 1; }
    log "built $what in $((SECONDS - start)) s"
}

needs_build() {
    local name=$1 want=$2 have
    have=$(version_of "$name")
    if [[ $have == "$want" ]]; then
        log "$name $have (cached: $BIN/$name)"
        return 1
    fi
    [[ -n $have ]] && log "$name is $have, want $want: rebuilding"
    return 0
}

log "Go $GO_VERSION; cache $CACHE; go build -p $JOBS under nice -n 19"
TOTAL_START=$SECONDS

if needs_build etcd "$ETCD_VERSION"; then
    log "building etcd $ETCD_VERSION (about 1 min cold)"
    run_with_heartbeat "etcd $ETCD_VERSION" \
        env -C "$REPO/tools/etcd" nice -n 19 go build -p "$JOBS" -trimpath -ldflags "-s -w" \
        -o "$BIN/etcd" go.etcd.io/etcd/server/v3
fi

# Without these /version (and Helm's view of the cluster) reads v0.0.0.
K8S_MINOR=${K8S_VERSION#v1.}; K8S_MINOR=${K8S_MINOR%%.*}
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
    K8S_LDFLAGS+=" -X $pkg.gitTreeState=clean"
done
K8S_PKGS=()
for name in kube-apiserver kube-controller-manager kubectl; do
    if needs_build "$name" "$K8S_VERSION"; then
        K8S_PKGS+=("k8s.io/kubernetes/cmd/$name")
    fi
done
if (( ${#K8S_PKGS[@]} )); then
    log "building ${K8S_PKGS[*]##*/} $K8S_VERSION (about 5 min cold; the linker peaks near 2 GiB)"
    run_with_heartbeat "${K8S_PKGS[*]##*/}" \
        env -C "$REPO/tools/kube" nice -n 19 go build -p "$JOBS" -trimpath -ldflags "$K8S_LDFLAGS" \
        -o "$BIN/" "${K8S_PKGS[@]}"
fi

if needs_build helm "$HELM_VERSION"; then
    log "building helm $HELM_VERSION (about 1 min cold)"
    # Stamped like Helm's Makefile so `helm version` and its default KubeVersion are right.
    nice -n 19 go mod download helm.sh/helm/v3@"$HELM_VERSION"
    HELM_CLIENT_GO=$(mod_version "$GOMODCACHE/cache/download/helm.sh/helm/v3/@v/$HELM_VERSION.mod" k8s.io/client-go)
    HELM_K8S_MINOR=${HELM_CLIENT_GO#v0.}; HELM_K8S_MINOR=${HELM_K8S_MINOR%%.*}
    HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    HELM_LDFLAGS+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        HELM_LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
    done
    run_with_heartbeat "helm $HELM_VERSION" \
        env GOBIN="$BIN" nice -n 19 go install -p "$JOBS" -trimpath -ldflags "$HELM_LDFLAGS" \
        helm.sh/helm/v3/cmd/helm@"$HELM_VERSION"
fi

for name in etcd kube-apiserver kube-controller-manager kubectl helm; do
    have=$(version_of "$name")
    [[ -n $have ]] || { log "FAILED: $BIN/$name does not report a version"; exit 1; }
    log "ok: $name $have"
done

if (( PRUNE )); then
    log "pruning Go caches in $CACHE/go"
    chmod -R u+w "$CACHE/go" 2>/dev/null || true
    rm -rf "$CACHE/go"
fi
log "done in $((SECONDS - TOTAL_START)) s; binaries in $BIN"
