#!/usr/bin/env bash
# The real telemetry back ends tests/e2e/test_telemetry.py runs against, cached outside the repo.
# Idempotent; fast when warm (two file checks). Called by ./dev setup; a failure here only warns:
# the telemetry tests then skip, saying what is missing.
#
#   $CACHE/prometheus-<ver>/usr/bin/prometheus   Debian's `prometheus` package, unpacked (apt-get download +
#                                                dpkg-deb -x): no root, no system service, no daemon started
#   $CACHE/zipkin/zipkin-server-<ver>-exec.jar   io.zipkin:zipkin-server:<ver>:exec from Maven Central,
#                                                fetched with Maven (mvn dependency:copy); run with java -jar
set -euo pipefail

CACHE="${MESHPILOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshpilot}"
ZIPKIN_VERSION="${ZIPKIN_VERSION:-3.6.1}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'telemetry-tools: %s\n' "$*" >&2; }

prometheus() {
  local bin
  bin="$(ls "$CACHE"/prometheus-*/usr/bin/prometheus 2>/dev/null | head -1 || true)"
  if [[ -n "$bin" && -x "$bin" ]]; then return 0; fi
  command -v apt-get >/dev/null 2>&1 || { warn "no apt-get: cannot fetch Debian's prometheus"; return 1; }
  say "fetching Debian's prometheus package into $CACHE"
  local tmp
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  if ! (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1); then
    [[ $(id -u) -eq 0 ]] && apt-get update -q >/dev/null 2>&1 || true
    (cd "$tmp" && apt-get download -q prometheus >/dev/null) || { warn "apt-get download prometheus failed"; return 1; }
  fi
  local deb ver
  deb="$(ls "$tmp"/prometheus_*.deb | head -1)"
  ver="$(dpkg-deb -f "$deb" Version)"
  mkdir -p "$tmp/x"
  dpkg-deb -x "$deb" "$tmp/x"
  rm -rf "$CACHE/prometheus-$ver"
  mkdir -p "$CACHE"
  mv "$tmp/x" "$CACHE/prometheus-$ver"
}

# apt-get install as root, with one `apt-get update` first if the lists are missing or stale.
apt_install() {
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

zipkin() {
  local jar="$CACHE/zipkin/zipkin-server-$ZIPKIN_VERSION-exec.jar"
  [[ -s "$jar" ]] && return 0
  if ! command -v java >/dev/null 2>&1; then
    say "installing a Java runtime (apt-get) for Zipkin"
    apt_install default-jre-headless || { warn "no java (Debian: default-jre-headless): no Zipkin"; return 1; }
  fi
  if ! command -v mvn >/dev/null 2>&1; then
    say "installing maven (apt-get) to fetch Zipkin from Maven Central"
    apt_install maven || { warn "no mvn, and apt-get install maven failed: cannot fetch Zipkin"; return 1; }
  fi
  say "fetching io.zipkin:zipkin-server:$ZIPKIN_VERSION:exec from Maven Central into $CACHE/zipkin"
  mkdir -p "$CACHE/zipkin"
  mvn -q -B dependency:copy -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" \
    -DoutputDirectory="$CACHE/zipkin" -Dmdep.overWriteReleases=true >/dev/null \
    || { warn "mvn dependency:copy of zipkin-server failed"; return 1; }
  [[ -s "$jar" ]]
}

rc=0
prometheus || rc=1
zipkin || rc=1
exit $rc
