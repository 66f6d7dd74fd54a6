"""``docker compose up``: Bookinfo on meshpilot, driven by Istio's own Bookinfo files.

A real Docker daemon (started here when none runs, and then stopped and cleaned up), the
real compose v2 plugin and images built from the repo's Dockerfiles, on local stand-ins for
their base images (``scripts/docker-test-env.sh``; cached in ``~/.cache/meshpilot/docker``).
The stack's manifest directory is a copy of ``examples/bookinfo``; each test puts exactly
the Istio files of one traffic task into its ``mesh/`` directory, as a user would, and
checks what the product page shows through the ingress gateway (Istio's
``bookinfo-gateway.yaml``), published on 127.0.0.1 as the README says. The last test takes
the stack down and checks that no container, network, bridge or iptables rule of it is left.

Skipped only where no Docker daemon can run (not root and none answers, or nothing can
install one).
"""

from __future__ import annotations

import collections
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import eventually, free_port, request_full
from harness.docker import REPO_ROOT, Compose, DockerHost, DockerUnavailable, machine_lock
from harness.progress import progress_printer

# A cold first run installs Docker, builds the base images, the compose plugin and the images:
# 2 minutes on an idle machine, over 15 on a busy one. Warm: about 1.5 minutes.
pytestmark = pytest.mark.timeout(1800)

BOOKINFO = REPO_ROOT / "examples" / "bookinfo"
SUBNET_PREFIX = "10.89.0."
ALWAYS = ("services.yaml", "pods.yaml", "destination-rule-all.yaml", "bookinfo-gateway.yaml")
REVIEWS_ERROR = "Sorry, product reviews are currently unavailable for this book."
#: How long one page may take: Bookinfo's productpage waits up to 2 x 3 s for reviews.
PAGE_TIMEOUT = 15.0


@dataclass
class Page:
    status: int
    reviews_version: str  # "" when reviews did not answer
    star_color: str
    text: str
    seconds: float


@dataclass
class Stack:
    compose: Compose
    config: Path
    entry: tuple[str, int, str | None]  # where requests enter the mesh: ip, port, Host header
    bridges: list[str]
    up_seconds: float

    def apply(self, *task_files: str) -> None:
        """The mesh directory holds exactly the always-there files and these task files."""
        mesh = self.config / "mesh"
        wanted = {*ALWAYS, *task_files}
        for path in mesh.iterdir():
            if path.name not in wanted and path.suffix == ".yaml":
                path.unlink()
        for name in task_files:
            if not (mesh / name).exists():
                shutil.copy(self.config / "istio" / name, mesh / f".{name}.tmp")
                (mesh / f".{name}.tmp").rename(mesh / name)  # meshpilot never sees half a file

    def get(self, path: str, *, user: str = "", headers: dict[str, str] | None = None,
            timeout: float = PAGE_TIMEOUT) -> tuple[int, Any, dict[str, str]]:
        ip, port, host = self.entry
        all_headers = dict(headers or {})
        if user:
            all_headers["cookie"] = f"user={user}"
        return request_full(ip, port, path, host, headers=all_headers, timeout=timeout)

    def page(self, user: str = "") -> Page:
        started = time.monotonic()
        status, body, _ = self.get("/productpage", user=user)
        text = str(body)
        match = re.search(r'data-reviews-version="([^"]*)" data-star-color="([^"]*)"', text)
        assert status == 200 and match, f"/productpage answered {status}: {text[:300]}"
        return Page(status, match[1], match[2], text, time.monotonic() - started)

    def pages(self, count: int, user: str = "") -> collections.Counter[tuple[str, str]]:
        """(reviews version, star colour) over ``count`` product pages, four at a time."""
        with ThreadPoolExecutor(4) as pool:
            return collections.Counter((p.reviews_version, p.star_color)
                                       for p in pool.map(lambda _: self.page(user), range(count)))

    def settle(self, check: Callable[[], object], what: str, timeout: float = 30) -> None:
        eventually(check, timeout=timeout, interval=0.3, message=f"{what} after the change to {self.config}/mesh")


@pytest.fixture(scope="module")
def docker_host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerHost]:
    show = progress_printer(request.config)
    host = DockerHost(tmp_path_factory.mktemp("docker"), show)
    with machine_lock("compose-test", show):
        try:
            host.ensure()
        except DockerUnavailable as e:
            pytest.skip(f"no Docker daemon can run here: {e}")
        try:
            yield host
        finally:
            host.stop()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, docker_host: DockerHost,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    show = progress_printer(request.config)
    config = tmp_path_factory.mktemp("bookinfo")
    shutil.copytree(BOOKINFO / "istio", config / "istio")
    shutil.copytree(BOOKINFO / "mesh", config / "mesh", symlinks=True)  # its links point into ../istio
    for d in (config, config / "istio", config / "mesh"):
        d.chmod(0o755)  # meshpilot runs as uid 65532 in its container
    gateway_port = free_port()
    compose = Compose({"BOOKINFO_CONFIG": str(config), "BOOKINFO_PORT": str(gateway_port),
                       "MESHPILOT_HTTP_PORT": str(free_port())}, config)
    compose("down", "--remove-orphans", "--timeout", "5", check=False)  # an earlier run killed halfway
    started = time.monotonic()
    compose("build")
    show(f"[compose] images built in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    try:
        compose("up", "--detach", "--wait", "--pull", "never", timeout=300)
        up = time.monotonic() - started
        show(f"[compose] stack up and healthy in {up:.1f} s")
        bridges = list(compose.networks().values())
        # Through the ingress gateway, published on 127.0.0.1 (Istio's bookinfo-gateway.yaml).
        yield Stack(compose, config, ("127.0.0.1", gateway_port, None), bridges, up)
    except Exception:
        show(compose.logs())
        raise
    finally:
        compose("down", "--remove-orphans", "--timeout", "10", check=False)


def test_bookinfo_answers_with_every_reviews_version(stack: Stack) -> None:
    """destination-rule-all only: reviews round-robins over v1 (no stars), v2 (black), v3 (red)."""
    stack.apply()
    published = stack.compose("port", "istio-ingressgateway", "8080").stdout.split()
    assert published == [f"127.0.0.1:{stack.entry[1]}"], f"the gateway is published on {published}, not 127.0.0.1 only"
    seen = stack.pages(30)
    assert set(seen) == {("v1", ""), ("v2", "black"), ("v3", "red")}, seen
    assert "<dt>publisher</dt><dd>PublisherA</dd>" in stack.page().text  # details answered


def test_trace_headers_reach_ratings(stack: Stack) -> None:
    """What Bookinfo's apps propagate: the trace headers sent to productpage arrive at ratings."""
    stack.apply("virtual-service-reviews-test-v2.yaml")  # jason -> v2, which asks ratings
    sent = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}

    def traced() -> None:
        status, body, _ = stack.get("/api/v1/products/0/reviews", user="jason", headers=sent)
        assert status == 200 and body["version"] == "v2", body
        at_reviews, at_ratings = body["trace"], body["ratings_seen"]
        for where in (at_reviews, at_ratings):
            assert {k: where.get(k) for k in sent} == sent, where
            assert where.get("end-user") == "jason", where
        # The gateway gives an outside request its own x-request-id (as Istio's does); the
        # apps carry that one along.
        assert at_reviews.get("x-request-id") and at_ratings.get("x-request-id") == at_reviews["x-request-id"]

    stack.settle(traced, "jason's reviews call carrying the trace headers to ratings")


def test_all_v1(stack: Stack) -> None:
    """virtual-service-all-v1.yaml: every page shows reviews v1, without stars."""
    stack.apply("virtual-service-all-v1.yaml")
    stack.settle(lambda: stack.pages(12) == {("v1", ""): 12}, "only reviews v1")
    assert stack.pages(60) == {("v1", ""): 60}


def test_reviews_80_20(stack: Stack) -> None:
    """virtual-service-reviews-80-20.yaml: 500 pages split 80/20 between v1 and v2, within 5 points."""
    stack.apply("virtual-service-reviews-80-20.yaml")
    stack.settle(lambda: ("v2", "black") in stack.pages(12), "reviews v2 in the mix")
    seen = stack.pages(500)
    assert set(seen) <= {("v1", ""), ("v2", "black")}, seen
    share = 100 * seen["v1", ""] / 500
    assert 75 <= share <= 85, f"v1 got {share:.1f}% of 500 pages (configured 80): {seen}"


def test_jason_sees_v2(stack: Stack) -> None:
    """virtual-service-reviews-test-v2.yaml: jason (logged in) sees v2's black stars, everyone else v1."""
    stack.apply("virtual-service-reviews-test-v2.yaml")
    stack.settle(lambda: stack.pages(12) == {("v1", ""): 12}, "anonymous users on v1 only")
    assert stack.pages(40, user="jason") == {("v2", "black"): 40}
    assert stack.pages(40) == {("v1", ""): 40}


def test_login_sets_the_user(stack: Stack) -> None:
    ip, port, host = stack.entry
    status, _, headers = request_full(ip, port, "/login", host, method="POST", body=b"username=jason",
                                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert status == 302 and headers.get("set-cookie", "").startswith("user=jason;"), headers
    assert '<b class="user">jason</b>' in stack.page(user="jason").text


def test_ratings_delay_times_out_productpage(stack: Stack) -> None:
    """virtual-service-ratings-test-delay.yaml (with test-v2): a 7 s delay on ratings for jason.

    As Istio's fault injection task shows: reviews v2 waits for it (its timeout is 10 s),
    productpage gives up after 3 s, tries once more, and after about 6 s shows that reviews
    are unavailable. Other users are not delayed.
    """
    stack.apply("virtual-service-reviews-test-v2.yaml", "virtual-service-ratings-test-delay.yaml")
    stack.settle(lambda: REVIEWS_ERROR in stack.page(user="jason").text, "the delay reaching jason", timeout=60)
    page = stack.page(user="jason")
    assert page.reviews_version == "" and REVIEWS_ERROR in page.text
    assert 5.5 <= page.seconds <= 9, f"jason's page took {page.seconds:.1f} s (expected 2 x productpage's 3 s)"
    fast = stack.page()
    assert (fast.reviews_version, fast.star_color) == ("v1", "") and fast.seconds < 3  # no timeout on the way


def test_down_leaves_nothing(stack: Stack, docker_host: DockerHost) -> None:
    """`docker compose down` removes every container, network and iptables rule of the stack;
    a daemon started by this test is then stopped and leaves no chain, rule or docker0."""
    assert stack.compose.containers(), "the stack should be running before down"
    started = time.monotonic()
    stack.compose("down", "--remove-orphans", "--timeout", "10")
    down = time.monotonic() - started
    assert not stack.compose.leftovers(SUBNET_PREFIX, stack.bridges)
    assert down < 15, f"down took {down:.1f} s (an app ignoring SIGTERM?)"
    if docker_host.daemon is not None:
        docker_host.stop()
        assert not docker_host.leftovers()
