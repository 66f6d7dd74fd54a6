"""VirtualService resilience features through a real Envoy sidecar and real upstreams:
Istio's default retries, explicit retries and per-try timeouts, route timeouts, fault
injection and mirroring.

Attempts are counted at the upstream: the echo app can be told to fail (or stall) its
next requests, so "the client saw 200, the pod saw 2 requests" is a retry that happened.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import LoopbackAllocator, UpstreamServer, eventually
from harness.http_mesh import HttpMesh, http_mesh, track_logs
from harness.traffic import assert_share


@pytest.fixture(scope="module")
def mesh(envoy_binary: str, loopback: LoopbackAllocator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpMesh]:
    with http_mesh(envoy_binary, loopback, tmp_path_factory.mktemp("http-resilience")) as m:
        yield m


@pytest.fixture(autouse=True)
def _logs(request: pytest.FixtureRequest, mesh: HttpMesh) -> None:
    track_logs(request, mesh.processes)


def to(subset: str, **extra: Any) -> dict[str, Any]:
    return {"destination": {"host": "web", "subset": subset}, **extra}


def on(prefix: str, **http: Any) -> dict[str, Any]:
    return {"name": prefix.strip("/"), "match": [{"uri": {"prefix": prefix}}], **http}


def settled(*servers: UpstreamServer) -> list[int]:
    """Request counts once they stop moving (mirrored copies arrive after the answer)."""
    def stable() -> list[int]:
        before = [s.requests for s in servers]
        time.sleep(0.3)
        after = [s.requests for s in servers]
        assert before == after
        return after

    return eventually(stable, timeout=10)


# ---------------------------------------------------------------- retries


def test_default_retries_hide_a_flaky_upstream(mesh: HttpMesh) -> None:
    """No ``retries`` field: Istio's default (2 retries, 503 included) applies."""
    mesh.apply([on("/off", retries={"attempts": 0}, route=[to("v1")]), {"route": [to("v1")]}])
    v1 = mesh.v1
    for _ in range(10):
        v1.fail_next(1)  # the first request of each pair fails
        r = mesh.request("/flaky")
        assert (r.status, r.seen["pod"]) == (200, "web-v1")
    assert v1.requests == 20

    v1.reset()
    v1.fail_next(3)  # one attempt and two retries, all failing: the client gets the last 503
    assert mesh.request("/flaky").status == 503
    assert v1.requests == 3

    # A service without any VirtualService gets the same default route.
    shadow = mesh.pods["shadow"]
    shadow.fail_next(1)
    r = mesh.request("/", host="shadow")
    assert (r.status, r.seen["service"]) == (200, "shadow")
    assert shadow.requests == 2

    # attempts: 0 turns retries off.
    v1.reset()
    v1.fail_next(1)
    assert mesh.request("/off").status == 503
    assert v1.requests == 1


def test_explicit_retries_attempts_and_status_codes(mesh: HttpMesh) -> None:
    mesh.apply([on("/codes", retries={"attempts": 4, "retryOn": "connect-failure,429"}, route=[to("v1")]),
                {"route": [to("v1")]}])
    v1 = mesh.v1
    v1.fail_next(4, 429)
    r = mesh.request("/codes")
    assert r.status == 200 and v1.requests == 5  # four retries

    v1.reset()
    v1.fail_next(5, 429)
    assert mesh.request("/codes").status == 429 and v1.requests == 5  # no fifth retry

    # retryOn lists 429 only: a 503 is not retried here, although Istio's default would.
    v1.reset()
    v1.fail_next(1, 503)
    assert mesh.request("/codes").status == 503 and v1.requests == 1


def test_per_try_timeout_cuts_a_slow_attempt_and_retries(mesh: HttpMesh) -> None:
    mesh.apply([on("/pertry", retries={"attempts": 2, "perTryTimeout": "300ms", "retryOn": "gateway-error"},
                   route=[to("v1")]),
                {"route": [to("v1")]}])
    v1 = mesh.v1
    v1.script({"delay_ms": 5000})  # the first attempt would answer after 5 s
    r = mesh.request("/pertry", timeout=10)
    assert (r.status, r.seen["pod"]) == (200, "web-v1")
    assert v1.requests == 2
    assert 0.29 <= r.elapsed < 3.0, r.elapsed  # cut at 300 ms (timers may fire a few ms early)

    v1.reset()
    v1.script(*[{"delay_ms": 5000}] * 3)
    r = mesh.request("/pertry", timeout=10)
    assert r.status == 504 and v1.requests == 3  # every attempt timed out
    assert 0.87 <= r.elapsed < 3.5, r.elapsed


# ---------------------------------------------------------------- timeout


def test_route_timeout_answers_504_within_its_window(mesh: HttpMesh) -> None:
    mesh.apply([on("/bounded", timeout="500ms", route=[to("v1")]), {"route": [to("v1")]}])
    r = mesh.request("/bounded?delay_ms=5000", timeout=10)
    assert (r.status, r.body) == (504, "upstream request timeout")
    assert 0.49 <= r.elapsed < 3.0, r.elapsed  # about the timeout, well below the upstream's 5 s
    assert mesh.v1.requests == 1  # a route timeout is not retried
    # A slow answer inside the window passes.
    r = mesh.request("/bounded?delay_ms=200", timeout=10)
    assert r.status == 200


# ---------------------------------------------------------------- fault injection


def test_fault_delay_and_abort_percentage(mesh: HttpMesh) -> None:
    mesh.apply([
        on("/delay", fault={"delay": {"fixedDelay": "600ms", "percentage": {"value": 100}}}, route=[to("v1")]),
        on("/abort", fault={"abort": {"httpStatus": 418, "percentage": {"value": 30}}}, route=[to("v1")]),
        on("/always503", fault={"abort": {"httpStatus": 503, "percentage": {"value": 100}}}, route=[to("v1")]),
        {"route": [to("v1")]},
    ])
    for _ in range(2):
        r = mesh.request("/delay", timeout=10)
        # Envoy's timers run on its event loop's cached clock: they may fire a few ms early.
        assert r.status == 200 and r.elapsed >= 0.59, r.elapsed
    assert mesh.v1.requests == 2

    mesh.v1.reset()
    n = 1000
    statuses = collections.Counter(mesh.request("/abort").status for _ in range(n))
    assert set(statuses) == {200, 418}, statuses
    assert_share(statuses[418], n, 30, statuses)
    assert mesh.v1.requests == statuses[200]  # aborted requests never left the sidecar

    # An injected 503 is the answer: the router's retries do not see it.
    mesh.v1.reset()
    r = mesh.request("/always503")
    assert (r.status, r.body) == (503, "fault filter abort")
    assert mesh.v1.requests == 0


def test_fault_comes_before_cors_as_in_istio(mesh: HttpMesh) -> None:
    """Istio's filter order (fault, then CORS): an injected abort answers preflights too."""
    mesh.apply([{"corsPolicy": {"allowOrigins": [{"exact": "https://good.example"}], "allowMethods": ["POST"]},
                 "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
                 "route": [to("v1")]}])
    r = mesh.request("/", method="OPTIONS",
                     headers={"Origin": "https://good.example", "Access-Control-Request-Method": "POST"})
    assert (r.status, r.body) == (418, "fault filter abort")
    assert r.header("access-control-allow-origin") is None
    assert mesh.v1.requests == 0


# ---------------------------------------------------------------- mirroring


def test_mirror_copies_requests_and_drops_the_answers(mesh: HttpMesh) -> None:
    shadow, shadow2 = mesh.pods["shadow"], mesh.pods["shadow2"]
    mesh.apply([
        on("/all", route=[to("v1")], mirror={"host": "shadow"}),
        on("/half", route=[to("v1")], mirror={"host": "shadow"}, mirrorPercentage={"value": 50}),
        on("/list", route=[to("v1")], mirrors=[{"destination": {"host": "shadow"}},
                                              {"destination": {"host": "shadow2"}, "percentage": {"value": 50}}]),
        {"route": [to("v1")]},
    ])
    shadow.fail_next(30, 500)  # the mirror's failures do not reach the caller
    for i in range(30):
        r = mesh.request(f"/all/{i}", method="POST" if i % 2 else "GET")
        assert (r.status, r.seen["pod"]) == (200, "web-v1")
    assert settled(shadow, shadow2) == [30, 0]
    assert mesh.v1.requests == 30
    copies = shadow.seen
    assert sorted(c["path"] for c in copies) == sorted(f"/all/{i}" for i in range(30))
    assert collections.Counter(c["method"] for c in copies) == {"GET": 15, "POST": 15}
    assert {c["host"] for c in copies} == {"web-shadow"}  # Envoy marks a copy's host

    for s in (shadow, shadow2, mesh.v1):
        s.reset()
    n = 400
    for _ in range(n):
        assert mesh.request("/half").seen["pod"] == "web-v1"
    copied = settled(shadow)[0]
    assert 0.40 * n <= copied <= 0.60 * n, copied  # 50 %, about five standard deviations wide

    for s in (shadow, shadow2):
        s.reset()
    n = 200
    for _ in range(n):
        assert mesh.request("/list").seen["pod"] == "web-v1"
    everything, half = settled(shadow, shadow2)
    assert everything == n
    assert 0.35 * n <= half <= 0.65 * n, half
