# meshpilot's images: two targets that share their build stages.
#
#   docker build --target meshpilot -t meshpilot .          the control plane: `meshpilot serve ...`
#   docker build --target sidecar   -t meshpilot-proxy .    Envoy that bootstraps itself with
#                                                           `meshpilot bootstrap` (a sidecar or gateway)
#
# Both run as a non-root user. Envoy is the official image's binary. (The tests, where no
# registry is reachable, build local stand-ins under these base image names:
# scripts/docker-test-env.sh.)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40.0

FROM ${ENVOY_IMAGE} AS envoy

# Two layers that change at different rates: the dependencies (when pyproject.toml does) and
# meshpilot itself (every commit), so a code change rebuilds and ships a few MB, not 230.
FROM ${PYTHON_IMAGE} AS deps
RUN python3 -m venv /opt/meshpilot
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && /opt/meshpilot/bin/pip install --no-cache-dir --disable-pip-version-check -q -r /tmp/requirements.txt "setuptools>=68"

# What ships: the dependencies without pip and setuptools (only the build needs them).
FROM deps AS runtime-deps
RUN /opt/meshpilot/bin/pip uninstall -q -y setuptools pip

FROM deps AS build
# pyproject.toml names README.md as the long description: a stub keeps README edits from rebuilding.
RUN echo "meshpilot, a service-mesh control plane" >/src/README.md
COPY ca /src/ca
COPY translators /src/translators
COPY xds_server /src/xds_server
# pip leaves the .pyc files in place: the non-root user could not write them at run time.
RUN /opt/meshpilot/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps --no-build-isolation \
        --target /opt/meshpilot-app /src

FROM ${PYTHON_IMAGE} AS meshpilot
COPY --from=runtime-deps /opt/meshpilot /opt/meshpilot
COPY --from=build /opt/meshpilot-app /opt/meshpilot-app
ENV PATH=/opt/meshpilot-app/bin:/opt/meshpilot/bin:$PATH \
    PYTHONPATH=/opt/meshpilot-app \
    PYTHONUNBUFFERED=1 \
    MESHPILOT_STATE_DIR=/var/lib/meshpilot/ca
RUN mkdir -p /var/lib/meshpilot /etc/meshpilot && chown 65532:65532 /var/lib/meshpilot
USER 65532:65532
EXPOSE 15010 15012 15014
# /healthz on the --http-address of the CMD below, through bash's /dev/tcp (cheaper than Python).
HEALTHCHECK --interval=2s --timeout=3s --start-period=60s \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/15014 && printf 'GET /healthz HTTP/1.1\\r\\nHost: meshpilot\\r\\nConnection: close\\r\\n\\r\\n' >&3 && grep -q '^HTTP/1.. 200' <&3"]
ENTRYPOINT ["meshpilot"]
CMD ["serve", "--config-dir", "/etc/meshpilot", "--xds-address", "0.0.0.0:15010", \
     "--xds-tls-address", "0.0.0.0:15012", "--http-address", "0.0.0.0:15014"]

FROM meshpilot AS sidecar
COPY --from=envoy /usr/local/bin/envoy /usr/local/bin/envoy
COPY docker/proxy-entrypoint.sh /usr/local/bin/meshpilot-proxy
# Ready when Envoy's admin (on the proxy IP: the entrypoint writes where) answers /ready with
# LIVE. Bash's /dev/tcp, not Python: a check every 2 s in every proxy must cost next to nothing.
HEALTHCHECK --interval=2s --timeout=3s --start-period=60s \
    CMD ["bash", "-c", "read -r ip port </tmp/envoy-admin && exec 3<>/dev/tcp/$ip/$port && printf 'GET /ready HTTP/1.1\\r\\nHost: envoy\\r\\nConnection: close\\r\\n\\r\\n' >&3 && grep -q '^LIVE' <&3"]
ENTRYPOINT ["meshpilot-proxy"]
