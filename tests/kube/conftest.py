"""A real Kubernetes control plane for the tests in this package (see ``harness.kube``).

``kube_cluster`` is started once per session (seconds when the binaries are built; the
first run builds them, printing progress). Every test here runs with its thread inside the
cluster's network namespace, so the usual fixtures (``start_meshpilot``, ``start_envoy``,
``start_upstream``, ``loopback``) start their processes and servers there too.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from harness.kube import PROCESSES, REPO_ROOT, KubeCluster, KubeClusterError, ensure_binaries  # noqa: E402
from harness.progress import progress_printer  # noqa: E402

CRDS = REPO_ROOT / "charts" / "meshpilot" / "crds"


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    try:
        binaries = ensure_binaries(progress_printer(request.config))
    except (KubeClusterError, OSError) as e:
        pytest.fail(f"cannot build the test Kubernetes binaries: {e}", pytrace=False)
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"), binaries=binaries)
    # The built kubectl and helm first on PATH (/usr/bin/kubectl is too old for this server).
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{binaries}{os.pathsep}{path}"
    try:
        try:
            cluster.start()
        except (KubeClusterError, OSError) as e:
            pytest.fail(f"cannot start the test Kubernetes cluster: {e}", pytrace=False)
        yield cluster
    finally:
        cluster.stop()
        os.environ["PATH"] = path


@pytest.fixture(autouse=True)
def _in_cluster_netns(kube_cluster: KubeCluster) -> Iterator[None]:
    # Whatever ran before (a test that stops the API server may fail before it restarts it).
    kube_cluster.ensure_apiserver()
    with kube_cluster.entered():
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for process in item.stash.get(PROCESSES, []):
            report.sections.append((f"log of {process!r}", process.log_tail(60)))
        cluster = getattr(item, "funcargs", {}).get("kube_cluster")
        if isinstance(cluster, KubeCluster) and cluster.apiserver is not None:
            report.sections.append(("log of kube-apiserver", cluster.apiserver.log_tail(30)))
    return report


@pytest.fixture(scope="session")
def istio_crds(kube_cluster: KubeCluster) -> None:
    """The chart's CRDs installed (``kubectl apply``: a test may install them with helm too)."""
    kube_cluster.kubectl("apply", "-f", str(CRDS))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))


_namespaces = itertools.count(1)


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace per test (its ``default`` ServiceAccount exists), deleted afterwards."""
    name = f"t{next(_namespaces)}"
    kube_cluster.create_namespace(name)
    yield name
    # No kubelet confirms a graceful pod deletion: force it, or the namespace stays Terminating.
    kube_cluster.kubectl("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", check=False)
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
