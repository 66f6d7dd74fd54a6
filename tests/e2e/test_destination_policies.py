"""DestinationRule traffic policies through a real Envoy sidecar to real upstreams.

One mesh for the whole module (one ``meshpilot serve``, one client sidecar): every
policy gets its own Service (and DestinationRule), several Services select the same pods
so that "with the policy" and "without it" see the same upstream. Assertions are on
traffic that went through Envoy: statuses, which pod answered, what the upstream saw,
and Envoy's own stats and config_dump for the cluster ``outbound|PORT|SUBSET|HOST``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from harness import ConfigDir, EnvoyProcess, LoopbackAllocator, MeshpilotServer, eventually, request_full
from harness.controlled_upstream import ControlledUpstream
from harness.http_mesh import track_logs
from harness.tls_upstream import Pem, TestPki, TlsUpstream

from xds_server.local.bootstrap import build_bootstrap

PORT, PORT2 = 9080, 9081  # service ports the client calls
TARGET = 8080  # where every pod answers (each on its own loopback IP)
NS = "default"
MAX = 2**32 - 1
SLOW = 1.0  # seconds a slow pod takes: long enough that a burst of requests overlaps on any machine
NET = "networking.istio.io/v1"


def fqdn(name: str) -> str:
    return f"{name}.{NS}.svc.cluster.local"


def cluster_name(svc: str, port: int = PORT, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{fqdn(svc)}"


# ---------------------------------------------------------------- manifests


def service(name: str, app: str, ports: tuple[int, ...] = (PORT,)) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": app},
                     "ports": [{"name": f"http-{p}", "port": p, "targetPort": TARGET} for p in ports]}}


def pod(name: str, ip: str, app: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": app, **labels}},
            "status": {"phase": "Running", "podIP": ip}}


def rule(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "DestinationRule", "metadata": {"name": name, "namespace": NS},
            "spec": {"host": name, **spec}}


def routes(name: str, *http: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": name, "namespace": NS},
            "spec": {"hosts": [name], "http": list(http) or [{"route": [{"destination": {"host": name}}]}]}}


def tls_rules(pki: dict[str, Pem]) -> list[dict[str, Any]]:
    ca, other, client = str(pki["ca"].cert), str(pki["other-ca"].cert), pki["client"]
    return [
        service("tls-simple", "tls-a"),
        rule("tls-simple", trafficPolicy={"tls": {"mode": "SIMPLE", "caCertificates": ca, "sni": "secure.example"}}),
        # No sni: the request's host is sent, and must be one of the certificate's names.
        service("tls-auto", "tls-a"),
        rule("tls-auto", trafficPolicy={"tls": {"mode": "SIMPLE", "caCertificates": ca}}),
        service("tls-auto-mismatch", "tls-a"),
        rule("tls-auto-mismatch", trafficPolicy={"tls": {"mode": "SIMPLE", "caCertificates": ca}}),
        service("tls-wrong-ca", "tls-a"),
        rule("tls-wrong-ca", trafficPolicy={"tls": {"mode": "SIMPLE", "caCertificates": other, "sni": "secure.example"}}),
        service("tls-mutual", "tls-m"),
        rule("tls-mutual", trafficPolicy={"tls": {
            "mode": "MUTUAL", "caCertificates": ca, "sni": "secure.example",
            "clientCertificate": str(client.cert), "privateKey": str(client.key),
            "subjectAltNames": ["secure.example"]}}),
        service("tls-simple-to-mutual", "tls-m"),
        rule("tls-simple-to-mutual", trafficPolicy={"tls": {"mode": "SIMPLE", "caCertificates": ca,
                                                            "sni": "secure.example"}}),
    ]


def manifests(pods: dict[str, ControlledUpstream], tls: dict[str, TlsUpstream], pki: dict[str, Pem]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name, p in pods.items():
        app = name.rsplit("-", 1)[0]
        extra = {"version": name.rsplit("-", 1)[1]} if app == "subsets" else {}
        docs.append(pod(name, p.ip, app, **extra))
    docs += [pod(name, t.ip, name) for name, t in tls.items()]
    docs += [
        # 1. circuit breaking: the same slow pod behind a limited and an unlimited service
        service("cb-limited", "slow"),
        rule("cb-limited", trafficPolicy={"connectionPool": {
            "tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 100}}}),
        service("cb-open", "slow"),
        # 2. outlier detection over two pods, one of which the test breaks
        service("outlier", "flaky"),
        rule("outlier", trafficPolicy={
            "loadBalancer": {"simple": "ROUND_ROBIN"},
            "outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s", "baseEjectionTime": "3s",
                                 "maxEjectionPercent": 100}}),
        # 4. simple load balancers over the same three pods
        service("lb-rr", "lb"), rule("lb-rr", trafficPolicy={"loadBalancer": {"simple": "ROUND_ROBIN"}}),
        service("lb-lr", "lb"), rule("lb-lr", trafficPolicy={"loadBalancer": {"simple": "LEAST_REQUEST"}}),
        service("lb-random", "lb"), rule("lb-random", trafficPolicy={"loadBalancer": {"simple": "RANDOM"}}),
        # 5. subset policies (v2 slow) and port-level settings
        service("subsets", "subsets"),
        rule("subsets", trafficPolicy={"loadBalancer": {"simple": "ROUND_ROBIN"}}, subsets=[
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {
                "loadBalancer": {"simple": "RANDOM"},
                "connectionPool": {"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}}}},
            {"name": "v2plain", "labels": {"version": "v2"}}]),
        routes("subsets",
               {"match": [{"uri": {"prefix": "/v2plain"}}], "route": [{"destination": {"host": "subsets", "subset": "v2plain"}}]},
               {"match": [{"uri": {"prefix": "/v2"}}], "route": [{"destination": {"host": "subsets", "subset": "v2"}}]},
               {"route": [{"destination": {"host": "subsets"}}]}),
        service("ports", "ports", (PORT, PORT2)),
        rule("ports", trafficPolicy={
            "loadBalancer": {"simple": "ROUND_ROBIN"},
            "connectionPool": {"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}},
            "outlierDetection": {"consecutive5xxErrors": 7},
            "portLevelSettings": [{"port": {"number": PORT2}, "loadBalancer": {"simple": "RANDOM"}}]}),
        # 7. connection settings that reach Envoy
        service("tuned", "tuned"),
        rule("tuned", trafficPolicy={"connectionPool": {
            "tcp": {"connectTimeout": "250ms", "maxConnectionDuration": "60s",
                    "tcpKeepalive": {"time": "30s", "interval": "5s", "probes": 3}},
            "http": {"idleTimeout": "20s", "maxRequestsPerConnection": 1, "maxRetries": 4,
                     "http2MaxRequests": 50, "http1MaxPendingRequests": 20}}}),
        service("tuned-plain", "tuned"),
        service("tuned-h2", "nothing"),
        rule("tuned-h2", trafficPolicy={"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE",
                                                                     "maxConcurrentStreams": 10}}}),
    ]
    # 3. consistent hashing: four services over the same four pods, each with a VirtualService
    # (the hash key goes on the route)
    for algo in ("ringHash", "maglev"):
        table = {"ringHash": {"minimumRingSize": 1024}, "maglev": {"tableSize": 65537}}[algo]
        short = "ring" if algo == "ringHash" else "maglev"
        for key, hash_key in (("header", {"httpHeaderName": "x-user"}),
                              ("cookie", {"httpCookie": {"name": "session", "ttl": "60s"}})):
            name = f"hash-{short}-{key}"
            docs += [service(name, "sticky"), routes(name),
                     rule(name, trafficPolicy={"loadBalancer": {"consistentHash": {**hash_key, algo: table}}})]
    docs += [service("hash-novs", "sticky"),
             rule("hash-novs", trafficPolicy={"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}})]
    return docs + tls_rules(pki)


# ---------------------------------------------------------------- the mesh


@dataclass
class Mesh:
    server: MeshpilotServer
    client: EnvoyProcess
    client_ip: str
    pods: dict[str, ControlledUpstream]
    tls: dict[str, TlsUpstream]
    services: list[str] = field(default_factory=list)

    def get(self, host: str, path: str = "/", *, port: int = PORT, headers: dict[str, str] | None = None,
            timeout: float = 5.0) -> tuple[int, Any, dict[str, str]]:
        return request_full(self.client_ip, port, path, host, headers=headers, timeout=timeout)

    def pod_of(self, host: str, path: str = "/", **kw: Any) -> str:
        status, body, _ = self.get(host, path, **kw)
        assert status == 200, (host, status, body)
        return str(body["pod"])

    def stat(self, cluster: str, name: str) -> int:
        return self.client.stat(f"cluster.{cluster}.{name}")

    def burst(self, host: str, n: int, path: str = "/", *, port: int = PORT) -> list[tuple[int, dict[str, str]]]:
        """``n`` requests at once, each on its own connection: ``(status, headers)`` of each."""
        out: list[tuple[int, dict[str, str]]] = []
        lock = threading.Lock()
        start = threading.Barrier(n)

        def one() -> None:
            start.wait()
            try:
                status, _, headers = self.get(host, path, port=port, timeout=SLOW * 10)
            except OSError as e:
                status, headers = -1, {"error": repr(e)}
            with lock:
                out.append((status, headers))

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    def cluster_config(self, name: str) -> dict[str, Any]:
        return self.client.clusters()[name]

    def cds_synced(self) -> dict[str, Any]:
        (stream,) = [s for s in self.server.get("/debug/syncz")[1] if s["proxy"].startswith(f"sidecar~{self.client_ip}~")]
        cds = stream["types"]["cds"]
        assert not cds.get("nack"), cds
        assert cds.get("acked_nonce") == cds["sent_nonce"], cds
        return dict(cds)


def _overflowed(results: list[tuple[int, dict[str, str]]]) -> int:
    """503s Envoy answered itself because a circuit breaker was full."""
    return sum(1 for status, headers in results if status == 503 and headers.get("x-envoy-overloaded") == "true")


@pytest.fixture(scope="module")
def mesh(envoy_binary: str, loopback: LoopbackAllocator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("destination-policies")
    certs = TestPki(tmp / "certs")
    ca, other = certs.ca("test-ca"), certs.ca("other-ca")
    pki = {"ca": ca, "other-ca": other, "client": certs.issue(ca, "client-sidecar", client=True)}
    server_pem = certs.issue(ca, "tls-a", sans=["secure.example", "tls-auto", fqdn("tls-auto")])
    delays = {"slow-0": SLOW, "subsets-v2": SLOW, "ports-0": SLOW}
    names = ["slow-0", "flaky-a", "flaky-b", *(f"sticky-{i}" for i in range(4)), *(f"lb-{i}" for i in range(3)),
             "subsets-v1", "subsets-v2", "ports-0", "tuned-0"]
    pods = {n: ControlledUpstream(loopback.allocate(), TARGET, pod=n, delay=delays.get(n, 0.0)) for n in names}
    tls = {"tls-a": TlsUpstream(loopback.allocate(), TARGET, server_pem, pod="tls-a"),
           "tls-m": TlsUpstream(loopback.allocate(), TARGET, server_pem, client_ca=ca, pod="tls-m")}
    config = ConfigDir(tmp / "mesh")
    docs = manifests(pods, tls, pki)
    config.write("mesh.yaml", docs)
    started: list[Any] = []
    try:
        for up in [*pods.values(), *tls.values()]:
            started.append(up.start())
        server = MeshpilotServer(config.path, workdir=tmp / "meshpilot")
        started.append(server)
        server.start()
        client_ip = loopback.allocate()
        client = EnvoyProcess(build_bootstrap(xds_address=server.xds_address, proxy_ip=client_ip, namespace=NS,
                                              pod="client", labels={"app": "client"}),
                              binary=envoy_binary, workdir=tmp / "envoy", name="client")
        started.append(client)
        client.start(wait="live")
        m = Mesh(server, client, client_ip, pods, tls,
                 [d["metadata"]["name"] for d in docs if d["kind"] == "Service"])
        expected = {cluster_name(s) for s in m.services} | {cluster_name("ports", PORT2)}
        eventually(lambda: expected <= set(client.clusters()), timeout=20, message="every cluster reaches the client")
        eventually(m.cds_synced, timeout=10, message="Envoy ACKs the clusters")
        for svc in ("cb-open", "outlier", "lb-rr", "subsets", "tuned", "hash-ring-header", "tls-simple"):
            eventually(lambda svc=svc: m.get(svc)[0] == 200, timeout=15, message=f"{svc} answers through the sidecar")
        yield m
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, mesh: Mesh) -> None:
    track_logs(request, [mesh.client, mesh.server])


# ---------------------------------------------------------------- 1. circuit breaking


def test_connection_pool_limits_overflow_with_503_only_where_configured(mesh: Mesh) -> None:
    limited, open_ = cluster_name("cb-limited"), cluster_name("cb-open")
    before = mesh.stat(limited, "upstream_rq_pending_overflow")
    n = 8
    results: dict[str, list[tuple[int, dict[str, str]]]] = {}

    def load(svc: str) -> None:
        results[svc] = mesh.burst(svc, n)

    threads = [threading.Thread(target=load, args=(svc,)) for svc in ("cb-limited", "cb-open")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # One connection, one pending request: the rest overflow at once.
    statuses = collections.Counter(s for s, _ in results["cb-limited"])
    overflow = _overflowed(results["cb-limited"])
    assert overflow >= n // 2 and statuses[200] >= 1 and statuses[200] + overflow == n, statuses
    assert mesh.stat(limited, "upstream_rq_pending_overflow") - before == overflow
    assert mesh.stat(limited, "upstream_cx_total") == 1  # one connection to the pod, never more

    # The same pod, the same load, no policy: every request waits its turn and succeeds.
    assert [s for s, _ in results["cb-open"]] == [200] * n
    assert mesh.stat(open_, "upstream_rq_pending_overflow") == 0

    thresholds = mesh.cluster_config(limited)["circuit_breakers"]["thresholds"][0]
    assert (thresholds["max_connections"], thresholds["max_pending_requests"], thresholds["max_requests"]) == (1, 1, 100)
    assert mesh.cluster_config(open_)["circuit_breakers"]["thresholds"][0]["max_connections"] == MAX


# ---------------------------------------------------------------- 2. outlier detection


def test_outlier_detection_ejects_the_failing_pod_and_takes_it_back(mesh: Mesh) -> None:
    bad, good = mesh.pods["flaky-a"], mesh.pods["flaky-b"]
    name = cluster_name("outlier")
    ejected = "outlier_detection.ejections_enforced_consecutive_5xx"
    assert mesh.stat(name, ejected) == 0
    bad.status = 503
    try:
        # The default retry hides bad's 503s from the client; outlier detection counts them.
        def eject() -> None:
            mesh.get("outlier")
            assert mesh.stat(name, ejected) >= 1

        eventually(eject, timeout=10, interval=0.02, message="two 5xx in a row eject the failing pod")
        ejected_at = time.monotonic()
        health = dict(((ip, h) for ip, _, h in mesh.client.endpoints(name)))
        assert "failed_outlier_check" in health[bad.ip] and health[good.ip] == "HEALTHY", health
        bad.reset()
        answered = [mesh.pod_of("outlier") for _ in range(10)]
        assert answered == ["flaky-b"] * 10 and bad.requests == 0  # ejected: not even tried
    finally:
        bad.status = 200

    # Healthy again: after baseEjectionTime (3s) the next interval tick brings it back.
    eventually(lambda: "flaky-a" in {mesh.pod_of("outlier") for _ in range(4)}, timeout=15, interval=0.2,
               message="the recovered pod receives traffic again")
    assert time.monotonic() - ejected_at >= 2.0  # not before its ejection time (3s) was served
    counts = collections.Counter(mesh.pod_of("outlier") for _ in range(10))
    assert counts == {"flaky-a": 5, "flaky-b": 5}  # round robin over both again
    od = mesh.cluster_config(name)["outlier_detection"]
    assert (od["consecutive_5xx"], od["interval"], od["base_ejection_time"], od["max_ejection_percent"]) == (2, "1s", "3s", 100)
    assert mesh.cluster_config(name)["common_lb_config"]["healthy_panic_threshold"] == {}  # 0 %: no panic mode


# ---------------------------------------------------------------- 3. consistent hashing


@pytest.mark.parametrize("algo", ["ring", "maglev"])
def test_consistent_hash_by_header_sticks_per_value_and_spreads_values(mesh: Mesh, algo: str) -> None:
    svc = f"hash-{algo}-header"
    by_user = {f"user-{i}": {mesh.pod_of(svc, headers={"x-user": f"user-{i}"}) for _ in range(6)} for i in range(12)}
    assert all(len(p) == 1 for p in by_user.values()), by_user  # each value sticks to one pod
    assert len(set().union(*by_user.values())) >= 2, by_user  # different values land on different pods
    c = mesh.cluster_config(cluster_name(svc))
    assert c["lb_policy"] == ("RING_HASH" if algo == "ring" else "MAGLEV")


@pytest.mark.parametrize("algo", ["ring", "maglev"])
def test_consistent_hash_by_cookie_sets_the_cookie_then_sticks_to_it(mesh: Mesh, algo: str) -> None:
    svc = f"hash-{algo}-cookie"
    first_pods = set()
    for _ in range(10):
        status, body, headers = mesh.get(svc)
        assert status == 200
        cookie = headers.get("set-cookie", "")
        assert cookie.startswith("session=") and "Max-Age=60" in cookie, headers
        value = cookie.split(";", 1)[0]
        replayed = {mesh.pod_of(svc, headers={"cookie": value}) for _ in range(5)}
        assert replayed == {body["pod"]}, (value, body["pod"], replayed)
        # A client that sends its cookie back is not given another one.
        assert "set-cookie" not in mesh.get(svc, headers={"cookie": value})[2]
        first_pods.add(body["pod"])
    assert len(first_pods) >= 2, first_pods  # new sessions spread over the pods


def test_consistent_hash_applies_without_a_virtual_service(mesh: Mesh) -> None:
    (vhost,) = [v for vs in mesh.client.route_configs().values() for v in vs.get("virtual_hosts", [])
                if "hash-novs" in v["domains"]]
    assert vhost["routes"][0]["route"].get("hash_policy") == [{"header": {"header_name": "x-user"}}]


# ---------------------------------------------------------------- 4. simple load balancers


def _sequence(mesh: Mesh, svc: str, n: int) -> list[str]:
    return [mesh.pod_of(svc) for _ in range(n)]


def _shares_of_slow(mesh: Mesh, services: tuple[str, ...], slow: str, clients: int = 8,
                    each: int = 12) -> dict[str, float]:
    """The share of requests ``slow`` answers for each service, all loaded at once by
    ``clients`` sequential clients each (hosts are per cluster, so are their active requests)."""
    counts: dict[str, collections.Counter[str]] = {svc: collections.Counter() for svc in services}
    lock = threading.Lock()

    def client(svc: str) -> None:
        for _ in range(each):
            p = mesh.pod_of(svc, timeout=10)
            with lock:
                counts[svc][p] += 1

    threads = [threading.Thread(target=client, args=(svc,)) for svc in services for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for svc in services:
        assert sum(counts[svc].values()) == clients * each, counts
    return {svc: counts[svc][slow] / (clients * each) for svc in services}


def test_round_robin_random_and_least_request_are_visible_in_the_distribution(mesh: Mesh) -> None:
    rr = _sequence(mesh, "lb-rr", 90)
    assert collections.Counter(rr) == {"lb-0": 30, "lb-1": 30, "lb-2": 30}
    assert all(a != b for a, b in zip(rr, rr[1:], strict=False))  # strictly in turn
    rnd = _sequence(mesh, "lb-random", 90)
    counts = collections.Counter(rnd)
    assert set(counts) == {"lb-0", "lb-1", "lb-2"} and min(counts.values()) >= 12, counts
    assert any(a == b for a, b in zip(rnd, rnd[1:], strict=False))  # random repeats; round robin never does

    slow = mesh.pods["lb-0"]
    slow.delay = 0.5
    try:
        shares = _shares_of_slow(mesh, ("lb-rr",), "lb-0", clients=4, each=9)
        shares |= _shares_of_slow(mesh, ("lb-lr",), "lb-0")
    finally:
        slow.delay = 0.0
    # Round robin ignores load: a third each. Least request (the better of two random picks)
    # steers around the busy pod: it gets about a ninth, when both picks are the slow one.
    assert 0.3 <= shares["lb-rr"] <= 0.37, shares
    assert shares["lb-lr"] <= 0.25, shares
    policies = {svc: mesh.cluster_config(cluster_name(svc)).get("lb_policy", "ROUND_ROBIN")
                for svc in ("lb-rr", "lb-lr", "lb-random", "cb-open")}
    assert policies == {"lb-rr": "ROUND_ROBIN", "lb-lr": "LEAST_REQUEST", "lb-random": "RANDOM",
                        "cb-open": "LEAST_REQUEST"}  # Istio's default without a rule


# ---------------------------------------------------------------- 5. subsets and ports


def test_subset_policy_applies_only_to_routes_that_target_the_subset(mesh: Mesh) -> None:
    n = 6
    results: dict[str, list[tuple[int, dict[str, str]]]] = {}

    def load(path: str) -> None:
        results[path] = mesh.burst("subsets", n, path)

    threads = [threading.Thread(target=load, args=(p,)) for p in ("/v2", "/v2plain", "/")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # /v2 and /v2plain reach the same (slow) pod; only the subset with the pool limits overflows.
    assert _overflowed(results["/v2"]) >= n // 2, results["/v2"]
    assert [s for s, _ in results["/v2plain"]] == [200] * n
    assert [s for s, _ in results["/"]] == [200] * n
    assert mesh.stat(cluster_name("subsets", subset="v2"), "upstream_rq_pending_overflow") >= n // 2
    assert mesh.stat(cluster_name("subsets", subset="v2plain"), "upstream_rq_pending_overflow") == 0
    assert mesh.stat(cluster_name("subsets"), "upstream_rq_pending_overflow") == 0

    clusters = mesh.client.clusters()
    v2, plain, host = (clusters[cluster_name("subsets", subset=s)] for s in ("v2", "v2plain", ""))
    assert v2["lb_policy"] == "RANDOM" and v2["circuit_breakers"]["thresholds"][0]["max_connections"] == 1
    for c in (plain, host):  # the rule's top level: round robin (the proto default), no limits
        assert "lb_policy" not in c and c["circuit_breakers"]["thresholds"][0]["max_connections"] == MAX


def test_port_level_settings_replace_the_top_level_for_their_port(mesh: Mesh) -> None:
    n = 6
    results: dict[int, list[tuple[int, dict[str, str]]]] = {}

    def load(port: int) -> None:
        results[port] = mesh.burst("ports", n, port=port)

    threads = [threading.Thread(target=load, args=(p,)) for p in (PORT, PORT2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _overflowed(results[PORT]) >= n // 2, results[PORT]  # the top level's pool limits
    assert [s for s, _ in results[PORT2]] == [200] * n  # the port's own policy has none

    top, port2 = mesh.cluster_config(cluster_name("ports")), mesh.cluster_config(cluster_name("ports", PORT2))
    assert "lb_policy" not in top and top["circuit_breakers"]["thresholds"][0]["max_connections"] == 1
    assert top["outlier_detection"]["consecutive_5xx"] == 7
    # Wholesale: only the port-level loadBalancer, and defaults for everything it omits.
    assert port2["lb_policy"] == "RANDOM" and "outlier_detection" not in port2
    assert port2["circuit_breakers"]["thresholds"][0]["max_connections"] == MAX


# ---------------------------------------------------------------- 6. TLS origination


def test_tls_simple_verifies_the_server_and_sends_sni(mesh: Mesh) -> None:
    up = mesh.tls["tls-a"]
    status, body, _ = mesh.get("tls-simple", "/simple")
    assert status == 200, body
    assert (body["pod"], body["sni"], body["client_cn"]) == ("tls-a", "secure.example", "")
    assert body["tls_version"] in ("TLSv1.2", "TLSv1.3")

    # No sni in the rule: Envoy sends the request's host and checks the certificate is for it.
    status, body, _ = mesh.get("tls-auto", "/auto")
    assert status == 200 and body["sni"] == "tls-auto", body
    errors_before = len(up.handshake_errors)
    status, _, _ = mesh.get("tls-auto-mismatch", "/auto-mismatch")
    assert status == 503
    assert mesh.stat(cluster_name("tls-auto-mismatch"), "ssl.fail_verify_san") >= 1

    # A CA that did not sign the server's certificate: Envoy refuses it; nothing is served.
    status, _, _ = mesh.get("tls-wrong-ca", "/wrong-ca")
    assert status == 503
    assert mesh.stat(cluster_name("tls-wrong-ca"), "ssl.fail_verify_error") >= 1
    assert len(up.handshake_errors) > errors_before  # the server saw Envoy abort the handshakes
    assert not [r for r in up.requests if r["path"] in ("/wrong-ca", "/auto-mismatch")]


def test_tls_mutual_presents_the_client_certificate(mesh: Mesh) -> None:
    up = mesh.tls["tls-m"]
    status, body, _ = mesh.get("tls-mutual", "/mutual")
    assert status == 200, body
    assert (body["pod"], body["sni"], body["client_cn"]) == ("tls-m", "secure.example", "client-sidecar")
    # The same server with SIMPLE: no client certificate, the server refuses the handshake.
    errors_before = len(up.handshake_errors)
    status, _, _ = mesh.get("tls-simple-to-mutual", "/no-client-cert")
    assert status == 503
    assert len(up.handshake_errors) > errors_before
    assert [r["path"] for r in up.requests] == ["/mutual"] * len(up.requests)

    ctx = mesh.cluster_config(cluster_name("tls-mutual"))["transport_socket"]["typed_config"]
    common = ctx["common_tls_context"]
    assert ctx["sni"] == "secure.example" and len(common["tls_certificates"]) == 1
    assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}


# ---------------------------------------------------------------- 7. connection settings


def test_connection_settings_reach_envoy_and_are_acked(mesh: Mesh) -> None:
    mesh.cds_synced()
    c = mesh.cluster_config(cluster_name("tuned"))
    assert c["connect_timeout"] == "0.250s"
    assert c["upstream_connection_options"]["tcp_keepalive"] == {
        "keepalive_probes": 3, "keepalive_time": 30, "keepalive_interval": 5}
    t = c["circuit_breakers"]["thresholds"][0]
    assert (t["max_requests"], t["max_pending_requests"], t["max_retries"]) == (50, 20, 4)
    options = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"] == {
        "idle_timeout": "20s", "max_connection_duration": "60s", "max_requests_per_connection": 1}
    assert "http_protocol_options" in options["explicit_http_config"]  # HTTP/1.1, as the port says

    h2 = mesh.cluster_config(cluster_name("tuned-h2"))
    h2_options = h2["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert h2_options["explicit_http_config"]["http2_protocol_options"] == {"max_concurrent_streams": 10}
    assert mesh.cluster_config(cluster_name("tuned-plain"))["connect_timeout"] == "10s"  # Istio's default

    # maxRequestsPerConnection: 1 -> a new upstream connection for every request; without it, one is reused.
    tuned, plain = cluster_name("tuned"), cluster_name("tuned-plain")
    before = mesh.stat(tuned, "upstream_cx_total"), mesh.stat(plain, "upstream_cx_total")
    for _ in range(5):
        assert mesh.get("tuned")[0] == 200 and mesh.get("tuned-plain")[0] == 200
    assert mesh.stat(tuned, "upstream_cx_total") - before[0] == 5
    assert mesh.stat(plain, "upstream_cx_total") - before[1] <= 1
