"""The Kubernetes source against a real API server: `meshpilot serve --kubeconfig` follows
Services, Pods (with the EndpointSlices the controller manager makes of them),
DestinationRules and VirtualServices applied with kubectl, and real Envoy traffic follows.

Everything runs in the cluster's network namespace (see conftest.py): the upstreams
answer on 10.244.x.y pod addresses, which exist only there.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import EnvoyProcess, LoopbackAllocator, MeshpilotServer, UpstreamServer, eventually, request
from harness.kube import KubeCluster, kube_meshpilot, pod_manifest, track

from translators.model import ResourceKey
from xds_server.local.bootstrap import build_bootstrap
from xds_server.sources.files import LoadResult
from xds_server.sources.kubernetes import Kind, KubernetesSource

PORT = 9080  # the service port clients call
TARGET = 8080  # where the pods answer


def virtual_service(ns: str, subset: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "echo", "namespace": ns},
            "spec": {"hosts": ["echo"], "http": [{"route": [{"destination": {"host": "echo", "subset": subset}}]}]}}


def destination_rule(ns: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "echo", "namespace": ns},
            "spec": {"host": "echo", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                 {"name": "v2", "labels": {"version": "v2"}}]}}


@dataclass
class KubeMesh:
    cluster: KubeCluster
    ns: str
    server: MeshpilotServer
    client: EnvoyProcess
    client_ip: str
    v1: UpstreamServer
    v2: UpstreamServer

    def versions(self, n: int = 20) -> collections.Counter[str]:
        def one() -> str:
            status, body = request(self.client_ip, PORT, "/", "echo")
            return str(body.get("version")) if status == 200 and isinstance(body, dict) else f"HTTP {status}"

        return collections.Counter(one() for _ in range(n))

    def world(self) -> set[str]:
        return set(self.server.get("/debug/world")[1]["resources"])


@pytest.fixture
def kube_mesh(
    request: pytest.FixtureRequest,
    kube_cluster: KubeCluster,
    kube_namespace: str,
    istio_crds: None,
    start_envoy: Callable[..., EnvoyProcess],
    start_upstream: Callable[..., UpstreamServer],
    loopback: LoopbackAllocator,
    tmp_path: Path,
) -> Iterator[KubeMesh]:
    cluster, ns = kube_cluster, kube_namespace
    ips = {v: cluster.pod_ip() for v in ("v1", "v2")}
    ups = {v: start_upstream(ip, TARGET, service="echo", version=v, pod=f"echo-{v}") for v, ip in ips.items()}
    cluster.apply(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": ns},
         "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": PORT, "targetPort": TARGET}]}},
        *(pod_manifest(f"echo-{v}", ns, {"app": "echo", "version": v}, ports=(TARGET,)) for v in ips),
        destination_rule(ns),
        virtual_service(ns, "v1"),
    )
    for v, ip in ips.items():
        cluster.set_pod_ready(ns, f"echo-{v}", ip)
    server = kube_meshpilot(cluster.kubeconfig, workdir=tmp_path / "meshpilot")
    track(request, server)
    server.start(timeout=60)
    try:
        client_ip = loopback.allocate()
        client = start_envoy(
            build_bootstrap(xds_address=server.xds_address, proxy_ip=client_ip, namespace=ns, pod="client",
                            labels={"app": "client"}),
            wait="live", name="client")
        yield KubeMesh(cluster, ns, server, client, client_ip, ups["v1"], ups["v2"])
    finally:
        server.stop()


def test_serve_follows_applies_edits_and_deletions(kube_mesh: KubeMesh) -> None:
    m, ns = kube_mesh, kube_mesh.ns
    slice_names = [s["metadata"]["name"] for s in m.cluster.get("endpointslices", "-n", ns)["items"]]
    expected = {f"Service {ns}/echo", f"Pod {ns}/echo-v1", f"Pod {ns}/echo-v2",
                f"DestinationRule {ns}/echo", f"VirtualService {ns}/echo",
                *(f"EndpointSlice {ns}/{name}" for name in slice_names)}
    assert slice_names
    eventually(lambda: expected <= m.world(), timeout=20, message="/debug/world shows what kubectl applied")
    # The cluster's own objects come too (the `kubernetes` Service in `default`).
    assert "Service default/kubernetes" in m.world()

    eventually(lambda: m.versions() == collections.Counter({"v1": 20}), timeout=20,
               message="the sidecar routes to subset v1 through the pods' 10.244 addresses")
    assert m.v1.requests >= 20 and m.v2.requests == 0

    # An edit of the VirtualService reaches the proxy's config, then its traffic.
    proxy = next(s["proxy"] for s in m.server.get("/debug/syncz")[1])
    before = m.server.get(f"/debug/config?proxy={proxy}")[1]["types"]["rds"]["version"]
    m.cluster.apply(virtual_service(ns, "v2"))
    eventually(lambda: m.server.get(f"/debug/config?proxy={proxy}")[1]["types"]["rds"]["version"] != before,
               timeout=20, message="the route configuration changes")
    eventually(lambda: m.versions() == collections.Counter({"v2": 20}), timeout=20, message="traffic moves to v2")

    # A pod that goes unready leaves the endpoints (through its EndpointSlice).
    m.cluster.set_pod_ready(ns, "echo-v2", m.v2.ip, ready=False)
    eventually(lambda: m.versions(5) == collections.Counter({"HTTP 503": 5}), timeout=20,
               message="subset v2 has no ready endpoint")
    m.cluster.set_pod_ready(ns, "echo-v2", m.v2.ip)
    eventually(lambda: m.versions() == collections.Counter({"v2": 20}), timeout=20)

    # Deletion is seen: without the VirtualService both versions serve.
    m.cluster.kubectl("delete", "virtualservice", "echo", "-n", ns)
    eventually(lambda: f"VirtualService {ns}/echo" not in m.world(), timeout=20)
    eventually(lambda: set(m.versions(40)) == {"v1", "v2"}, timeout=20, message="round robin over both pods")
    assert m.server.get("/debug/errors")[1] == []


def test_an_invalid_object_keeps_its_last_valid_version_and_is_reported(kube_mesh: KubeMesh) -> None:
    m, ns = kube_mesh, kube_mesh.ns
    eventually(lambda: m.versions() == collections.Counter({"v1": 20}), timeout=20)
    # The CRD's schema checks types only (a string is a string); meshpilot's validation refuses it.
    bad = virtual_service(ns, "v2")
    bad["spec"]["http"][0]["timeout"] = "soon"
    m.cluster.apply(bad)

    def reported() -> dict[str, Any]:
        (err,) = [e for e in m.server.get("/debug/errors")[1] if e["severity"] == "error"]
        return err  # type: ignore[no-any-return]

    err = eventually(reported, timeout=20)
    assert err["file"] == "kubernetes"
    assert err["resource"] == f"VirtualService {ns}/echo"
    assert err["field"] == "spec.http[0].timeout"
    assert m.versions() == collections.Counter({"v1": 20})  # still the last valid version

    m.cluster.apply(virtual_service(ns, "v2"))
    eventually(lambda: m.versions() == collections.Counter({"v2": 20}), timeout=20)
    # Eventually: the EndpointSlice controller may be rewriting the slices meanwhile (a moment
    # without endpoints is warned about as subsets selecting none, and then settles).
    eventually(lambda: m.server.get("/debug/errors")[1] == [], timeout=20, message="no problem left")


def test_an_api_server_restart_loses_no_update(kube_mesh: KubeMesh) -> None:
    m, ns = kube_mesh, kube_mesh.ns
    eventually(lambda: m.versions() == collections.Counter({"v1": 20}), timeout=20)
    assert m.cluster.apiserver is not None
    m.cluster.apiserver.stop(10)
    # Unreachable: reported, and the last state keeps serving.
    eventually(lambda: m.server.get("/healthz")[0] == 503, timeout=20, message="the watch failure is reported")
    assert f"VirtualService {ns}/echo" in m.world()
    assert m.versions() == collections.Counter({"v1": 20})

    m.cluster.start_apiserver()
    # Changes right after the restart, while meshpilot may still be backing off.
    m.cluster.apply(virtual_service(ns, "v2"))
    m.cluster.kubectl("delete", "destinationrule", "echo", "-n", ns)
    m.cluster.apply(destination_rule(ns))
    eventually(lambda: m.versions() == collections.Counter({"v2": 20}), timeout=40, message="the edit arrives")
    eventually(lambda: m.server.get("/healthz")[0] == 200, timeout=40, message="healthy again")
    assert {f"DestinationRule {ns}/echo", f"VirtualService {ns}/echo"} <= m.world()


# ---------------------------------------------------------------- the source in-process


class Results:
    """Collects what a running ``KubernetesSource.changes()`` yields."""

    def __init__(self, source: KubernetesSource) -> None:
        self.source = source
        self.items: list[LoadResult] = []
        self.failures: list[str] = []
        self.recoveries = 0

    async def run(self) -> None:
        async for result in self.source.changes(on_failure=lambda why, _: self.failures.append(why),
                                                on_recovery=self._recovered):
            self.items.append(result)

    def _recovered(self) -> None:
        self.recoveries += 1

    async def quiet(self, seconds: float = 1.0, timeout: float = 30.0) -> LoadResult:
        """The last result once none has come for ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            seen = len(self.items)
            await asyncio.sleep(seconds)
            if len(self.items) == seen and self.items:
                return self.items[-1]
        raise AssertionError(f"results still coming after {timeout} s")

    async def until(self, check: Callable[[LoadResult], bool], timeout: float = 20.0) -> LoadResult:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.items and check(self.items[-1]):
                return self.items[-1]
            if asyncio.get_running_loop().time() > deadline:
                last = self.items[-1] if self.items else None
                raise AssertionError(f"not seen in {timeout} s; last: {last and sorted(map(str, last.resources))}"
                                     f" {last and last.errors}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def running(kube_cluster: KubeCluster) -> AsyncIterator[Callable[..., Results]]:
    tasks: list[asyncio.Task[None]] = []

    def start(**kw: Any) -> Results:
        results = Results(KubernetesSource(kube_cluster.kubeconfig, **kw))
        tasks.append(asyncio.create_task(results.run()))
        return results

    yield start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_kind_without_its_crd_is_skipped_with_a_warning_until_installed(
    kube_cluster: KubeCluster, kube_namespace: str, running: Callable[..., Results]
) -> None:
    gadgets = Kind("Gadget", "gadgets", "meshpilot-test.example.com", ("v1",), crd=True, modelled=False)
    services = Kind("Service", "services")
    results = running(kinds=(services, gadgets), crd_recheck=0.5)
    first = await results.until(lambda r: True)
    # Listed anyway: the kinds that exist are served, the missing CRD is a warning.
    assert ResourceKey("Service", "default", "kubernetes") in first.resources
    (warning,) = first.errors
    assert warning.severity == "warning" and "gadgets.meshpilot-test.example.com" in warning.message

    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "gadgets.meshpilot-test.example.com"},
           "spec": {"group": "meshpilot-test.example.com", "scope": "Namespaced",
                    "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget", "listKind": "GadgetList"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    await asyncio.to_thread(kube_cluster.apply, crd)
    try:
        await results.until(lambda r: not r.errors)
        assert not results.failures
    finally:
        await asyncio.to_thread(kube_cluster.kubectl, "delete", "crd", "gadgets.meshpilot-test.example.com")


def _service(ns: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": 80}]}}


async def test_a_watch_the_server_ends_resumes_from_its_resource_version(
    kube_cluster: KubeCluster, kube_namespace: str, running: Callable[..., Results]
) -> None:
    ns = kube_namespace
    results = running(kinds=(Kind("Service", "services"),), watch_seconds=1)  # the server ends each in ~1 s
    await asyncio.to_thread(kube_cluster.apply, _service(ns, "first"))
    await results.until(lambda r: ResourceKey("Service", ns, "first") in r.resources)
    for _ in range(150):  # a few watches end and are started again
        if results.source.stats()["Service"]["watches"] >= 3:
            break
        await asyncio.sleep(0.1)
    await asyncio.to_thread(kube_cluster.apply, _service(ns, "second"))
    await asyncio.to_thread(kube_cluster.kubectl, "delete", "service", "first", "-n", ns)
    await results.until(lambda r: ResourceKey("Service", ns, "second") in r.resources
                        and ResourceKey("Service", ns, "first") not in r.resources)
    stats = results.source.stats()["Service"]
    assert stats["watches"] >= 3, stats
    assert (stats["lists"], stats["gone"], stats["failures"]) == (1, 0, 0), stats  # resumed, never relisted
    assert not results.failures


async def test_an_edit_is_merged_in_place_and_says_which_keys_changed(
    kube_cluster: KubeCluster, kube_namespace: str, running: Callable[..., Results]
) -> None:
    """An object edited in place is swapped into the last merge, and the result names its key
    (what World.evolve diffs instead of every key); an added or deleted object merges afresh
    (the chain of hints breaks: the next result's changes are unknown, so the pipeline diffs).
    Each result holds what a fresh merge of the source's stores would."""
    ns = kube_namespace
    results = running(kinds=(Kind("Service", "services"),))
    await asyncio.to_thread(kube_cluster.apply, _service(ns, "a"))
    await asyncio.to_thread(kube_cluster.apply, _service(ns, "b"))
    key_a, key_b = ResourceKey("Service", ns, "a"), ResourceKey("Service", ns, "b")
    await results.until(lambda r: {key_a, key_b} <= r.resources.keys())
    for port in (81, 82, 83):
        before = await results.quiet()
        edited = _service(ns, "a")
        edited["spec"]["ports"][0]["port"] = port
        await asyncio.to_thread(kube_cluster.apply, edited)
        after = await results.until(lambda r, p=port: r.resources[key_a].spec.ports[0].port == p)  # type: ignore[attr-defined]
        changes = after.changes_since(before)
        # An earlier test's namespace still going away: its Services' deletion, between the
        # two results, rightly broke the chain. Edit again once it has.
        foreign = {k for k in before.resources.keys() ^ after.resources.keys() if k.namespace != ns}
        if changes is not None or not foreign:
            break
    assert changes == frozenset({key_a}), foreign
    assert after.resources[key_b] is before.resources[key_b]
    await asyncio.to_thread(kube_cluster.apply, _service(ns, "c"))
    added = await results.until(lambda r: ResourceKey("Service", ns, "c") in r.resources)
    assert added.changes_since(after) is None
    source = results.source
    source._merge()  # a fresh merge of the same stores
    assert dict(added.resources) == source._merged


async def test_an_api_server_restart_makes_it_relist_and_nothing_is_lost(
    kube_cluster: KubeCluster, kube_namespace: str, running: Callable[..., Results]
) -> None:
    ns = kube_namespace
    results = running(kinds=(Kind("Service", "services"),))
    await asyncio.to_thread(kube_cluster.apply, _service(ns, "before"))
    await results.until(lambda r: ResourceKey("Service", ns, "before") in r.resources)
    first = results.items[-1]

    # Another kind's write moves etcd's revision past the last one this watch saw, so the
    # restarted server's watch cache starts after it: resuming is refused with 410 Gone.
    await asyncio.to_thread(kube_cluster.kubectl, "create", "configmap", "bump", "-n", ns)
    assert kube_cluster.apiserver is not None
    kubernetes = ResourceKey("Service", "default", "kubernetes")
    before = len(results.items)
    await asyncio.to_thread(kube_cluster.apiserver.stop, 10)
    await asyncio.sleep(1)
    # The outage looks like no deletion (other tests' namespaces may still be going away: only ours counts).
    for r in results.items[before - 1:]:
        assert {ResourceKey("Service", ns, "before"), kubernetes} <= r.resources.keys(), "the last state keeps serving"
    await asyncio.to_thread(kube_cluster.start_apiserver)
    await asyncio.to_thread(kube_cluster.apply, _service(ns, "after"))
    await asyncio.to_thread(kube_cluster.kubectl, "delete", "service", "before", "-n", ns)
    last = await results.until(
        lambda r: ResourceKey("Service", ns, "after") in r.resources
        and ResourceKey("Service", ns, "before") not in r.resources, timeout=40)
    stats = results.source.stats()["Service"]
    assert stats["failures"] >= 1 and results.failures, "the restart was noticed and reported"
    assert results.recoveries >= 1
    assert stats["gone"] >= 1 and stats["lists"] >= 2, stats
    # What did not change keeps its identity through the relist (nothing re-translated for it).
    assert last.resources[kubernetes] is first.resources[kubernetes]


# ---------------------------------------------------------------- Secrets (gateway credentials)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_secrets_of_the_types_read_are_watched_and_their_data_never_shown(
    request: pytest.FixtureRequest, kube_cluster: KubeCluster, kube_namespace: str, istio_crds: None, tmp_path: Path,
) -> None:
    ns = kube_namespace
    marker = f"not-for-your-eyes-{secrets.token_hex(8)}"

    def secret(name: str, type_: str, data: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "type": type_,
                "data": {k: _b64(v) for k, v in data.items()}}

    kube_cluster.apply(
        secret("cred", "kubernetes.io/tls", {"tls.crt": f"{marker}-crt", "tls.key": f"{marker}-key"}),
        secret("opaque", "Opaque", {"cert": marker}),
        # Types meshpilot does not read: never sent (field selector) or dropped unparsed.
        secret("registry", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": '{"auths": {}}'}),
        secret("basic", "kubernetes.io/basic-auth", {"username": "u", "password": marker}),
    )
    server = kube_meshpilot(kube_cluster.kubeconfig, workdir=tmp_path / "meshpilot", extra_args=("--log-level", "debug"))
    track(request, server)
    server.start(timeout=60)
    try:
        def world() -> set[str]:
            return set(server.get("/debug/world")[1]["resources"])

        eventually(lambda: {f"Secret {ns}/cred", f"Secret {ns}/opaque"} <= world(), timeout=20,
                   message="the tls and Opaque Secrets are in the world")
        assert not {f"Secret {ns}/registry", f"Secret {ns}/basic"} & world()
        # An edit and a delete are followed.
        kube_cluster.apply(secret("cred2", "kubernetes.io/tls", {"tls.crt": f"{marker}-2", "tls.key": marker}))
        kube_cluster.kubectl("delete", "secret", "cred", "-n", ns)
        eventually(lambda: f"Secret {ns}/cred2" in world() and f"Secret {ns}/cred" not in world(), timeout=20)
        # The data shows nowhere: not in the debug pages, not in the log (at debug level).
        for path in ("/debug/world", "/debug/errors", "/debug/syncz", "/debug/pushes"):
            status, body = server.get(path)
            text = json.dumps(body)
            assert marker not in text and _b64(marker)[:16] not in text, path
        log = server.log_path.read_text()
        assert marker not in log and _b64(marker)[:16] not in log
    finally:
        server.stop()
