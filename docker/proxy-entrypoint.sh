#!/bin/sh
# The sidecar (or gateway) image's entrypoint: writes this proxy's bootstrap with
# `meshpilot bootstrap ARGS...` (see `meshpilot bootstrap --help`), then runs Envoy on it.
#
#   meshpilot-proxy --xds-address meshpilot:15010 --proxy-ip 10.89.0.13 --pod reviews-v1 \
#       --service-account bookinfo-reviews --label app=reviews --label version=v1
#
# ENVOY_ARGS adds Envoy options (default: --log-level warn).
set -eu
meshpilot bootstrap --namespace "${POD_NAMESPACE:-default}" "$@" >/tmp/envoy.json.tmp
mv /tmp/envoy.json.tmp /tmp/envoy.json
# Where the admin listens, for the image's HEALTHCHECK.
python3 -c 'import json; a = json.load(open("/tmp/envoy.json"))["admin"]["address"]["socket_address"]
print(a["address"], a["port_value"])' >/tmp/envoy-admin
# One proxy per container: no hot restart (it needs shared memory), one worker thread.
# shellcheck disable=SC2086
exec envoy -c /tmp/envoy.json --disable-hot-restart --concurrency "${ENVOY_CONCURRENCY:-1}" \
    --drain-time-s 1 ${ENVOY_ARGS:---log-level warn}
