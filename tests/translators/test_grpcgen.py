"""The proxyless gRPC generator: what a GENERATOR=grpc node gets, in the forms gRPC's xDS
client accepts (the e2e tests prove them with real grpcio; these pin the details)."""

from __future__ import annotations

from typing import Any

import yaml
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)

from tests.translators.translate_cases import world_of
from translators import Translator, api
from translators.features import fault
from translators.grpcgen import INBOUND_PREFIX
from translators.model import parse_resource
from translators.model.world import Proxy

HOST = "greeter.default.svc.cluster.local"
RDS = f"outbound|50051||{HOST}"

MESH = """
apiVersion: v1
kind: Service
metadata: {name: greeter, namespace: default}
spec:
  selector: {app: greeter}
  ports: [{name: grpc, port: 50051, targetPort: 50051}, {name: tcp-admin, port: 9000, targetPort: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: greeter-v1, namespace: default, labels: {app: greeter, version: v1}}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: greeter-v2, namespace: default, labels: {app: greeter, version: v2}}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: prod}
spec:
  selector: {app: other}
  ports: [{name: grpc, port: 50051}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: grpc, protocol: GRPC}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: greeter, namespace: default}
spec:
  host: greeter
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    outlierDetection: {consecutive5xxErrors: 3}
    tls: {mode: SIMPLE}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 65537}, useSourceIp: true}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: greeter, namespace: default}
spec:
  hosts: [greeter]
  http:
  - name: testers
    match: [{headers: {x-user: {exact: tester}}}]
    route: [{destination: {host: greeter, subset: v2}}]
    timeout: 2s
    retries: {attempts: 3, retryOn: "unavailable,5xx", perTryTimeout: 1s}
  - name: by-query
    match: [{queryParams: {debug: {exact: "1"}}}]
    route: [{destination: {host: greeter, subset: v1}}]
  - name: split
    route:
    - {destination: {host: greeter, subset: v1}, weight: 80}
    - {destination: {host: greeter, subset: v2}, weight: 20}
    retries: {attempts: 0}
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}}
    corsPolicy: {allowOrigins: [{exact: "https://x"}]}
"""


def translate(generator: str = "grpc", namespace: str = "default", ip: str = "10.0.0.9") -> tuple[Translator, dict]:
    t = Translator()
    t.update(world_of([parse_resource(d, "mesh.yaml") for d in yaml.safe_load_all(MESH) if d]))
    proxy = Proxy(id=f"sidecar~{ip}~client.{namespace}~{namespace}.svc.cluster.local", ip=ip, namespace=namespace,
                  generator=generator)  # type: ignore[arg-type]
    return t, t.for_proxy(proxy)


def resources(out: dict, type_url: str) -> dict[str, Any]:
    return {name: msg for layer in out.get(type_url, []) for name, msg in layer.resources.items()}


def test_listeners_are_api_listeners_named_as_channels_ask() -> None:
    _, out = translate()
    lds = resources(out, api.LISTENER)
    # Every form Istio accepts for a service in the client's namespace; only the full
    # and namespace-qualified ones for another namespace.
    assert {f"{HOST}:50051", "greeter.default.svc:50051", "greeter.default:50051", "greeter:50051"} <= lds.keys()
    assert {"other.prod.svc.cluster.local:50051", "other.prod:50051"} <= lds.keys() and "other:50051" not in lds
    assert "api.example.com:443" in lds
    manager = HttpConnectionManager()
    assert lds["greeter:50051"].api_listener.api_listener.Unpack(manager)
    assert manager.rds.route_config_name == RDS and manager.rds.config_source.HasField("ads")
    assert [f.name for f in manager.http_filters] == [fault.FILTER, "envoy.filters.http.router"]  # router last
    _, other_ns = translate(namespace="prod")
    assert "greeter:50051" not in resources(other_ns, api.LISTENER)


def test_inbound_listener_for_a_server_its_services_target() -> None:
    _, out = translate(ip="10.0.0.1")  # greeter-v1's own IP
    lds = resources(out, api.LISTENER)
    inbound = {n for n in lds if n.startswith(INBOUND_PREFIX)}
    assert inbound == {f"{INBOUND_PREFIX}{a}:{p}" for a in ("10.0.0.1", "0.0.0.0", "[::]") for p in (50051, 9000)}
    lst: Listener = lds[f"{INBOUND_PREFIX}10.0.0.1:50051"]
    assert lst.address.socket_address.address == "10.0.0.1" and lst.address.socket_address.port_value == 50051
    assert lds[f"{INBOUND_PREFIX}[::]:50051"].address.socket_address.address == "::"
    (chain,) = lst.filter_chains
    manager = HttpConnectionManager()
    assert chain.filters[0].typed_config.Unpack(manager) and not chain.HasField("transport_socket")
    (route,) = manager.route_config.virtual_hosts[0].routes
    assert route.HasField("non_forwarding_action")
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]  # fault is client-only
    _, client = translate(ip="10.0.0.9")
    assert not any(n.startswith(INBOUND_PREFIX) for n in resources(client, api.LISTENER))


def test_routes_in_the_forms_grpc_reads() -> None:
    _, out = translate()
    rds = resources(out, api.ROUTE)
    (vh,) = rds[RDS].virtual_hosts
    assert {HOST, f"{HOST}:50051", "greeter:50051", "greeter.default:50051", "greeter.default.svc:50051"} <= set(vh.domains)
    testers, split = vh.routes  # the query-parameter route is left out: gRPC would skip it
    assert [r.name for r in vh.routes] == ["testers", "split"]
    a = testers.route
    assert a.cluster == f"outbound|50051|v2|{HOST}"
    assert a.max_stream_duration.grpc_timeout_header_max.seconds == 2 and not a.HasField("timeout")
    assert a.retry_policy.retry_on == "unavailable" and a.retry_policy.num_retries.value == 3
    assert not a.retry_policy.HasField("per_try_timeout") and not a.retry_policy.retry_host_predicate
    assert [h.filter_state.key for h in a.hash_policy] == ["io.grpc.channel_id"]  # useSourceIp, for gRPC
    s = split.route
    assert [(c.name.split("|")[2], c.weight.value) for c in s.weighted_clusters.clusters] == [("v1", 80), ("v2", 20)]
    assert s.retry_policy.retry_on == "" and not s.retry_policy.HasField("num_retries")  # off: never num_retries 0
    assert set(split.typed_per_filter_config) == {fault.FILTER}  # CORS is not a gRPC filter
    # Istio's default retries, on the virtual host, reduced to the codes gRPC knows.
    assert vh.retry_policy.retry_on == "unavailable,cancelled" and vh.retry_policy.num_retries.value == 2
    # A port not named for HTTP still gets a route for gRPC.
    assert rds[f"outbound|9000||{HOST}"].virtual_hosts[0].routes[0].route.cluster == f"outbound|9000||{HOST}"


def test_clusters_and_endpoints_gRPC_accepts() -> None:
    _, out = translate()
    cds: dict[str, Cluster] = resources(out, api.CLUSTER)
    assert "BlackHoleCluster" not in cds
    default = cds[RDS]
    assert default.type == Cluster.EDS and default.lb_policy == Cluster.ROUND_ROBIN  # LEAST_REQUEST is Envoy's
    assert not default.HasField("outlier_detection") and not default.HasField("transport_socket")
    assert [t.max_requests.value for t in default.circuit_breakers.thresholds] == [2**32 - 1]
    assert cds[f"outbound|50051|v2|{HOST}"].lb_policy == Cluster.RING_HASH  # MAGLEV is Envoy's
    ext = cds["outbound|443||api.example.com"]
    assert ext.type == Cluster.LOGICAL_DNS
    assert ext.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "api.example.com"
    eds = resources(out, api.ENDPOINT)
    (loc,) = eds[RDS].endpoints
    assert loc.HasField("locality") and loc.load_balancing_weight.value == 2 and len(loc.lb_endpoints) == 2
    (v2,) = eds[f"outbound|50051|v2|{HOST}"].endpoints
    assert [e.endpoint.address.socket_address.address for e in v2.lb_endpoints] == ["10.0.0.2"]


def test_warnings_only_while_a_grpc_client_is_served() -> None:
    t, _ = translate(generator="envoy")
    assert not any("proxyless gRPC" in e.message for e in t.errors)
    t, _ = translate()
    found = {e.field for e in t.errors if "proxyless gRPC" in e.message}
    assert found == {
        "spec.trafficPolicy.loadBalancer.simple", "spec.trafficPolicy.outlierDetection", "spec.trafficPolicy.tls",
        "spec.subsets[1].trafficPolicy.loadBalancer.consistentHash.maglev",
        "spec.http[0].retries.perTryTimeout", "spec.http[1].match[0].queryParams", "spec.http[2].corsPolicy",
    }, found


def test_envoy_proxies_are_unchanged_and_layers_are_shared() -> None:
    t, envoy = translate(generator="envoy")
    assert "BlackHoleCluster" in resources(envoy, api.CLUSTER)
    assert "10.0.0.9_50051" in resources(envoy, api.LISTENER) and "50051" in resources(envoy, api.ROUTE)
    a = t.for_proxy(Proxy(id="a", ip="10.0.0.7", generator="grpc"))
    b = t.for_proxy(Proxy(id="b", ip="10.0.0.8", generator="grpc"))
    for type_url in (api.CLUSTER, api.ENDPOINT, api.ROUTE):
        assert all(x is y for x, y in zip(a[type_url], b[type_url], strict=True)), type_url
    assert a[api.LISTENER][0] is b[api.LISTENER][0]  # the namespace's outbound listeners


def test_a_change_converts_only_what_it_touched() -> None:
    docs = [d for d in yaml.safe_load_all(MESH) if d]
    t = Translator()
    world = world_of([parse_resource(d, "mesh.yaml") for d in docs])
    t.update(world)
    proxy = Proxy(id="a", ip="10.0.0.7", generator="grpc")
    before = t.for_proxy(proxy)
    moved = next(d for d in docs if d["kind"] == "Pod" and d["metadata"]["name"] == "greeter-v2")
    moved["status"]["podIP"] = "10.0.0.3"  # an endpoint moves: no cluster, listener or route changes
    resources_now = dict(world.resources)
    pod = parse_resource(moved, "mesh.yaml")
    resources_now[pod.key] = pod
    t.update(world.evolve(resources_now))
    after = t.for_proxy(proxy)
    for type_url in (api.CLUSTER, api.LISTENER, api.ROUTE):
        assert all(x is y for x, y in zip(before[type_url], after[type_url], strict=True)), type_url
    old, new = resources(before, api.ENDPOINT), resources(after, api.ENDPOINT)
    other = "outbound|50051||other.prod.svc.cluster.local"
    assert old[other] is new[other]  # another service's: converted once, the same proto
    assert old[f"outbound|50051|v2|{HOST}"] is not new[f"outbound|50051|v2|{HOST}"]


def test_warnings_go_when_no_grpc_client_is_left() -> None:
    t, _ = translate()
    assert any("proxyless gRPC" in e.message for e in t.errors)
    world = world_of([parse_resource(d, "mesh.yaml") for d in yaml.safe_load_all(MESH) if d], version=7)
    t.update(world)  # a new world, and only Envoy proxies ask for it
    t.for_proxy(Proxy(id="envoy", ip="10.0.0.8"))
    assert not any("proxyless gRPC" in e.message for e in t.errors)
