"""Real Envoy checks every golden case's output: ``envoy --mode validate`` on a static
bootstrap made from it (EDS clusters get their assignments inline, RDS routes are inlined)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import any_pb2, json_format
from translate_cases import TESTDATA, load_case, world_of

from translators import Translator, api
from translators.model.types import ENVOY_MAX_PROGRAM_SIZE
from translators.model.world import Proxy

HCM = "envoy.filters.network.http_connection_manager"


def _envoy() -> str | None:
    candidates = [os.environ.get("MESHPILOT_ENVOY", "")]
    candidates += sorted(str(p) for p in Path.home().glob(".cache/meshpilot/envoy-*/envoy/_bin/envoy"))
    candidates.append("/tmp/mp/envoy-prefix/envoy/_bin/envoy")
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


ENVOY = _envoy()
CASES = sorted(p.name.removesuffix(".in.yaml") for p in TESTDATA.glob("*.in.yaml"))


def _bootstrap(case: str) -> dict:
    return bootstrap_for(*load_case(case))


def bootstrap_for(resources: list, proxy: Proxy) -> dict:
    """A static bootstrap of ``proxy``'s translation of ``resources``, for ``envoy --mode validate``."""
    t = Translator()
    t.update(world_of(resources))
    out = t.for_proxy(proxy)
    merged = {url: {n: m for layer in out.get(url, []) for n, m in layer.resources.items()} for url in api.PUSH_ORDER}
    b = bootstrap_pb2.Bootstrap()
    b.node.id, b.node.cluster = proxy.id, "test"
    # The RE2 program-size limit meshpilot's bootstrap gives Envoy (see translators.model.types).
    layer = b.layered_runtime.layers.add(name="static")
    layer.static_layer.update({"re2.max_program_size.error_level": ENVOY_MAX_PROGRAM_SIZE})
    for cluster in merged[api.CLUSTER].values():
        c = b.static_resources.clusters.add()
        c.CopyFrom(cluster)
        if c.type == cluster_pb2.Cluster.EDS:
            c.ClearField("eds_cluster_config")
            c.type = cluster_pb2.Cluster.STATIC
            c.load_assignment.CopyFrom(merged[api.ENDPOINT][c.name])
    for listener in merged[api.LISTENER].values():
        lst = b.static_resources.listeners.add()
        lst.CopyFrom(listener)
        for f in lst.filter_chains[0].filters:
            if f.name == HCM:
                manager = hcm.HttpConnectionManager()
                f.typed_config.Unpack(manager)
                if manager.HasField("rds"):
                    manager.route_config.CopyFrom(merged[api.ROUTE][manager.rds.route_config_name])
                    # RDS does not check cluster names; broken destinations (503 NC) are by design.
                    manager.route_config.validate_clusters.value = any(e.severity == "error" for e in t.errors) is False
                packed = any_pb2.Any()
                packed.Pack(manager)
                f.typed_config.CopyFrom(packed)
    return _static_secrets(json.loads(json_format.MessageToJson(b)))


@functools.cache
def _mesh_secrets() -> list[dict]:
    """``default`` and ``ROOTCA`` as a proxy gets them over SDS, from a throwaway CA."""
    # Imported here: at collection, this directory's sys.path entry lets tests/ca shadow ca.
    from ca import CertificateAuthority, WorkloadIdentity

    with tempfile.TemporaryDirectory() as state:
        ca = CertificateAuthority.load_or_create(Path(state) / "ca")
        cert = ca.issue(WorkloadIdentity.of("default", "default"))
        return [
            {"name": "default", "tlsCertificate": {"certificateChain": {"inlineString": cert.chain_pem.decode()},
                                                   "privateKey": {"inlineString": cert.private_key.reveal().decode()}}},
            {"name": "ROOTCA", "validationContext": {"trustedCa": {"inlineString": ca.trust_bundle().decode()}}},
        ]


def _static_secrets(bootstrap: dict) -> dict:
    """SDS over ADS made static, like EDS and RDS above: the secrets go into the bootstrap and
    the references lose their config source (``envoy --mode validate`` crashes on SDS over ADS
    in static clusters)."""
    found = False

    def walk(node: object) -> None:
        nonlocal found
        if isinstance(node, dict):
            if node.get("name") in ("default", "ROOTCA") and "sdsConfig" in node:
                del node["sdsConfig"]
                found = True
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(bootstrap)
    if found:
        bootstrap["staticResources"]["secrets"] = _mesh_secrets()
    return bootstrap


@pytest.mark.skipif(ENVOY is None, reason="no envoy binary (set MESHPILOT_ENVOY)")
def test_envoy_accepts_every_case(tmp_path: Path) -> None:
    procs = {}
    for case in CASES:
        path = tmp_path / f"{case}.json"
        path.write_text(json.dumps(_bootstrap(case)))
        cmd = [ENVOY, "--mode", "validate", "-c", str(path), "-l", "error", "--base-id", str(hash(case) % 10000)]
        procs[case] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # type: ignore[list-item]
    failures = {}
    for case, proc in procs.items():
        output, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failures[case] = output[-2000:]
    assert not failures, failures
