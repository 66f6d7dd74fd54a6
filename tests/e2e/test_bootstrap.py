"""`meshpilot bootstrap` against the real Envoy: it validates, Envoy runs it, and the server reads its node back."""

from __future__ import annotations

import argparse
import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import json_format
from harness import EnvoyProcess, eventually, free_port, validate_bootstrap

from xds_server.local import bootstrap
from xds_server.local.bootstrap import build_bootstrap


def _cli(*argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    bootstrap.add_arguments(parser)
    out = io.StringIO()
    with redirect_stdout(out):
        assert bootstrap.run(parser.parse_args(list(argv))) == 0
    return dict(json.loads(out.getvalue()))


# ---------------------------------------------------------------- the JSON itself


def test_cli_writes_the_documented_bootstrap() -> None:
    b = _cli("--xds-address", "127.0.0.1:15010", "--proxy-ip", "127.0.10.3", "--namespace", "default",
             "--pod", "reviews-v1", "--service-account", "bookinfo-reviews",
             "--label", "app=reviews", "--label", "version=v1")
    assert b["node"]["id"] == "sidecar~127.0.10.3~reviews-v1.default~default.svc.cluster.local"
    assert b["node"]["cluster"] == "reviews.default"
    assert b["node"]["metadata"] == {
        "NAMESPACE": "default",
        "LABELS": {"app": "reviews", "version": "v1"},
        "SERVICE_ACCOUNT": "bookinfo-reviews",
        "INSTANCE_IPS": "127.0.10.3",
        "NAME": "reviews-v1",
        "MESHPILOT_ROLE": "sidecar",
    }
    ads = b["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC"
    assert ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    assert ads["grpc_services"] == [{"envoy_grpc": {
        "cluster_name": "xds-grpc",
        "retry_policy": {"retry_back_off": {"base_interval": "0.2s", "max_interval": "1s"}}}}]
    for key in ("cds_config", "lds_config"):
        assert b["dynamic_resources"][key] == {"ads": {}, "resource_api_version": "V3"}
    assert b["admin"]["address"]["socket_address"] == {"address": "127.0.10.3", "port_value": 15000}
    xds, admin = b["static_resources"]["clusters"]
    assert xds["name"] == "xds-grpc"
    assert xds["type"] == "STATIC"
    assert xds["connect_timeout"] == "1s"
    assert xds["upstream_bind_config"]["source_address"]["address"] == "127.0.10.3"
    opts = xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"]
    # Istio's Prometheus port, by default: /stats/prometheus of the admin, on the proxy's IP.
    (stats,) = b["static_resources"]["listeners"]
    assert stats["address"]["socket_address"] == {"address": "127.0.10.3", "port_value": 15090}
    (route,) = stats["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert route["match"] == {"prefix": "/stats/prometheus"} and route["route"]["cluster"] == admin["name"]
    assert "listeners" not in _cli("--xds-address", "127.0.0.1:15010", "--proxy-ip", "127.0.10.3", "--namespace",
                                   "default", "--stats-port", "0")["static_resources"]


def test_defaults_gateway_and_delta() -> None:
    b = _cli("--xds-address", "meshpilot.example:15010", "--proxy-ip", "127.0.30.1", "--namespace", "istio-system",
             "--role", "gateway", "--delta", "--admin-port", "19000")
    assert b["node"]["id"] == "router~127.0.30.1~gateway-127-0-30-1.istio-system~istio-system.svc.cluster.local"
    assert b["node"]["cluster"] == "gateway-127-0-30-1.istio-system"
    assert b["node"]["metadata"]["MESHPILOT_ROLE"] == "gateway"
    assert b["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    assert b["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"
    assert b["admin"]["address"]["socket_address"]["port_value"] == 19000


def test_replica_addresses_are_more_endpoints_of_the_xds_cluster() -> None:
    b = _cli("--xds-address", "127.0.0.2:15010", "--xds-replica-address", "127.0.0.3:15010",
             "--xds-replica-address", "127.0.0.4:15011", "--proxy-ip", "127.0.10.3", "--namespace", "default")
    xds = b["static_resources"]["clusters"][0]  # (then the admin's, for the stats listener)
    (locality,) = xds["load_assignment"]["endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in locality["lb_endpoints"]] == [
        {"address": "127.0.0.2", "port_value": 15010}, {"address": "127.0.0.3", "port_value": 15010},
        {"address": "127.0.0.4", "port_value": 15011}]
    assert xds["type"] == "STATIC"
    with pytest.raises(ValueError, match="all IPs or all DNS names"):
        build_bootstrap(xds_address="127.0.0.2:15010", xds_replicas=["meshpilot.example:15010"],
                        proxy_ip="127.0.0.5")


@pytest.mark.parametrize("bad", [
    {"xds_replicas": ["127.0.0.3"]},
    {"proxy_ip": "not-an-ip"},
    {"xds_address": "no-port"},
    {"xds_address": "127.0.0.1:99999"},
    {"role": "waypoint"},
    {"namespace": ""},
])
def test_bad_input_is_refused(bad: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"xds_address": "127.0.0.1:15010", "proxy_ip": "127.0.0.5", "namespace": "default", **bad}
    with pytest.raises(ValueError):
        build_bootstrap(**kwargs)


def test_the_server_reads_the_node_back() -> None:
    """The seam with xds_server/app/node.py: what the bootstrap writes is the Proxy the server sees."""
    node_module = pytest.importorskip("xds_server.app.node")
    b = build_bootstrap(xds_address="127.0.0.1:15010", proxy_ip="127.0.10.4", namespace="shop", pod="reviews-v2",
                        service_account="reviews", labels={"app": "reviews", "version": "v2"})
    node = json_format.ParseDict(b["node"], Node())
    proxy = node_module.proxy_from_node(node)
    assert (proxy.role, proxy.ip, proxy.namespace, proxy.pod_name, proxy.service_account) == (
        "sidecar", "127.0.10.4", "shop", "reviews-v2", "reviews")
    assert dict(proxy.labels) == {"app": "reviews", "version": "v2"}
    gateway = node_module.proxy_from_node(json_format.ParseDict(
        build_bootstrap(xds_address="127.0.0.1:1", proxy_ip="127.0.30.1", role="gateway")["node"], Node()))
    assert gateway.role == "gateway"


# ---------------------------------------------------------------- with the real Envoy


@pytest.mark.parametrize("variant", ["sotw", "delta", "gateway", "dns"])
def test_envoy_validates_the_bootstrap(envoy_binary: str, tmp_path: Path, variant: str) -> None:
    b = build_bootstrap(
        xds_address="localhost:15010" if variant == "dns" else "127.0.0.1:15010",
        proxy_ip="127.0.10.9", namespace="default", labels={"app": "x"},
        delta=variant == "delta", role="gateway" if variant == "gateway" else "sidecar",
    )
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(b))
    result = validate_bootstrap(envoy_binary, path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def xds_listener(proxy_ip: str) -> Iterator[tuple[str, int, list[str]]]:
    """A bare TCP listener standing in for meshpilot: records the source IP of each connection."""
    host = "127.0.0.1"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(16)
    sock.settimeout(0.2)
    peers: list[str] = []
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, (peer, _) = sock.accept()
            except OSError:
                continue
            peers.append(peer)
            conns.append(conn)  # hold it open, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield host, sock.getsockname()[1], peers
    stop.set()
    thread.join(2)
    for c in conns:
        c.close()
    sock.close()


def test_envoy_starts_on_its_own_ip(
    start_envoy: Callable[..., EnvoyProcess], proxy_ip: str, xds_listener: tuple[str, int, list[str]]
) -> None:
    host, port, peers = xds_listener
    admin_port = free_port(proxy_ip)
    envoy = start_envoy(build_bootstrap(xds_address=f"{host}:{port}", proxy_ip=proxy_ip, namespace="default",
                                        pod="t", labels={"app": "t"}, admin_port=admin_port))

    # The admin answers on the proxy's IP, and on no other.
    assert envoy.admin_url == f"http://{proxy_ip}:{admin_port}"
    info = envoy.server_info()
    assert info["state"] in ("PRE_INITIALIZING", "INITIALIZING", "LIVE")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", admin_port), timeout=1):
        pass

    # It runs the bootstrap we gave it.
    dumped = envoy.bootstrap_dump()
    assert dumped["node"]["id"] == f"sidecar~{proxy_ip}~t.default~default.svc.cluster.local"
    assert "xds-grpc::" in envoy.admin_get("/clusters")

    # Its stream to the control plane leaves from the proxy's own IP.
    eventually(lambda: peers, timeout=10, message="Envoy connects to the xDS address")
    assert set(peers) == {proxy_ip}
    assert envoy.stat("control_plane.connected_state") in (0, 1)

    envoy.stop()
    assert not envoy.alive


def test_envoy_without_a_control_plane_stays_up(start_envoy: Callable[..., EnvoyProcess], proxy_ip: str) -> None:
    nowhere = free_port("127.0.0.1")  # nothing listens here
    envoy = start_envoy(build_bootstrap(xds_address=f"127.0.0.1:{nowhere}", proxy_ip=proxy_ip, delta=True,
                                        admin_port=free_port(proxy_ip)))
    eventually(lambda: envoy.stat("cluster.xds-grpc.upstream_cx_connect_fail") > 0, timeout=15,
               message="Envoy keeps retrying the absent control plane")
    assert envoy.alive
    assert envoy.stat("control_plane.connected_state") == 0
