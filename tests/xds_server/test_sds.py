"""SDS over real gRPC: who gets which key, on which port, proven at the protocol level.

The control plane runs in-process (translator, cache, secret store, gRPC server on a
plaintext and a TLS port, as ``meshpilot serve`` does); a client speaks ADS and the
standalone SecretDiscoveryService the way Envoy does, with or without a token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.secret.v3 import sds_pb2_grpc
from harness import free_port
from prometheus_client import REGISTRY

from ca import CertificateAuthority, TokenAuthority, WorkloadIdentity
from ca.clock import utcnow
from tests.xds_server.adsclient import AdsClient, node
from translators.api import CLUSTER, SECRET
from translators.model.world import World
from translators.translate import Translator
from xds_server.app.mesh_ca import MeshCA
from xds_server.sources.parse import parse_text
from xds_server.xds.cache import XdsCache
from xds_server.xds.server import XdsServer, start_grpc

PROXY_IP = "127.0.61.1"
NAMES = ["default", "ROOTCA"]

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}]
"""


class Plane:
    """meshpilot's xDS side in-process: a plaintext and a TLS port over one server."""

    def __init__(self, state: Path, ttl: timedelta) -> None:
        self.state = state
        self.mesh_ca = MeshCA(state, workload_ttl=ttl)
        self.cache = XdsCache(Translator())
        world = World()
        parsed = parse_text(SERVICE, "svc.yaml")
        world = world.evolve({d.resource.key: d.resource for d in parsed.documents if d.resource})
        self.cache.update(world)
        self.xds = XdsServer(self.cache, self.mesh_ca.secrets)
        self.plain = f"127.0.0.1:{free_port()}"
        self.tls = f"127.0.0.1:{free_port()}"
        self.servers: list[grpc.aio.Server] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.servers.append(await start_grpc(self.xds, self.plain))
        creds = self.mesh_ca.server_credentials("127.0.0.1")
        self.servers.append(await start_grpc(self.xds, self.tls, creds))
        self.task = asyncio.create_task(self.mesh_ca.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for s in self.servers:
            await s.stop(grace=None)
        self.mesh_ca.close()

    def token(self, namespace: str, sa: str, **kw: Any) -> str:
        return self.mesh_ca.tokens.issue_token(WorkloadIdentity.of(namespace, sa), **kw)

    def tls_channel(self, roots: bytes | None = None) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=roots or self.mesh_ca.ca.trust_bundle())
        return grpc.aio.secure_channel(self.tls, creds)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    p = Plane(tmp_path / "ca", timedelta(hours=1))
    await p.start()
    yield p
    await p.stop()


class Client(AdsClient):
    """AdsClient with gRPC metadata (where Envoy puts the bootstrap's initial_metadata),
    on ADS or on the standalone SDS service."""

    def __init__(self, channel: grpc.aio.Channel, *, token: str | None = None, delta: bool = False,
                 sds: bool = False) -> None:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if sds:
            stub: Any = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            call = stub.DeltaSecrets(metadata=metadata) if delta else stub.StreamSecrets(metadata=metadata)
        else:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = (stub.DeltaAggregatedResources(metadata=metadata) if delta
                    else stub.StreamAggregatedResources(metadata=metadata))
        self.delta = delta
        self.call = call
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def ask_secrets(self, namespace: str = "shop", sa: str = "web", ip: str = PROXY_IP) -> Any:
        n = node(ip, namespace=namespace)
        n.metadata.update({"SERVICE_ACCOUNT": sa})
        if self.delta:
            await self.send(node=n, type_url=SECRET, resource_names_subscribe=NAMES)
        else:
            await self.send(node=n, type_url=SECRET, resource_names=NAMES)
        return await self.recv()


def secrets_of(resp: Any) -> dict[str, Secret]:
    out = {}
    for r in resp.resources:
        any_ = r.resource if hasattr(r, "resource") else r
        s = Secret()
        any_.Unpack(s)
        out[s.name] = s
    return out


def leaf_of(s: Secret) -> x509.Certificate:
    return x509.load_pem_x509_certificates(s.tls_certificate.certificate_chain.inline_bytes)[0]


def verify(s: Secret, root: Secret) -> str:
    """Verify the chain against ROOTCA as a peer would; returns the cert's SPIFFE ID."""
    chain = x509.load_pem_x509_certificates(s.tls_certificate.certificate_chain.inline_bytes)
    roots = x509.load_pem_x509_certificates(root.validation_context.trusted_ca.inline_bytes)
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    verifier.verify(chain[0], chain[1:])
    key = serialization.load_pem_private_key(s.tls_certificate.private_key.inline_bytes, None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, pub) == \
        chain[0].public_key().public_bytes(serialization.Encoding.DER, pub)
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    return str(uri)


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("meshpilot_sds_identity_rejected_total", {"reason": reason}) or 0.0


# ------------------------------------------------------------------ proving an identity


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_tls_stream_with_its_token_gets_its_own_certificate(plane: Plane, delta: bool) -> None:
    channel = plane.tls_channel()
    client = Client(channel, token=plane.token("shop", "web"), delta=delta)
    got = secrets_of(await client.ask_secrets("shop", "web"))
    assert set(got) == {"default", "ROOTCA"}
    assert verify(got["default"], got["ROOTCA"]) == "spiffe://cluster.local/ns/shop/sa/web"
    # Config rides on the same stream.
    await client.send(type_url=CLUSTER)
    assert (await client.recv()).type_url == CLUSTER
    client.cancel()
    await channel.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_standalone_secret_discovery_service(plane: Plane, delta: bool) -> None:
    channel = plane.tls_channel()
    client = Client(channel, token=plane.token("shop", "web"), delta=delta, sds=True)
    got = secrets_of(await client.ask_secrets("shop", "web"))
    assert verify(got["default"], got["ROOTCA"]) == "spiffe://cluster.local/ns/shop/sa/web"
    await client.send(type_url=CLUSTER)  # the SDS service serves secrets only
    assert await client.silent(0.3)
    client.cancel()
    await channel.close()


async def test_one_identity_shares_a_certificate_and_others_never_see_it(plane: Plane) -> None:
    channel = plane.tls_channel()
    a1 = Client(channel, token=plane.token("shop", "web"))
    a2 = Client(channel, token=plane.token("shop", "web"))
    b = Client(channel, token=plane.token("shop", "cart"))
    s1 = secrets_of(await a1.ask_secrets("shop", "web", "127.0.61.2"))
    s2 = secrets_of(await a2.ask_secrets("shop", "web", "127.0.61.3"))
    s3 = secrets_of(await b.ask_secrets("shop", "cart", "127.0.61.4"))
    assert leaf_of(s1["default"]).serial_number == leaf_of(s2["default"]).serial_number
    assert verify(s3["default"], s3["ROOTCA"]) == "spiffe://cluster.local/ns/shop/sa/cart"
    same_key = s3["default"].tls_certificate.private_key.inline_bytes == s1["default"].tls_certificate.private_key.inline_bytes
    assert not same_key  # (a boolean: a failure must not print keys)
    for c in (a1, a2, b):
        c.cancel()
    await channel.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_plaintext_port_never_serves_a_secret(plane: Plane, delta: bool, capsys: pytest.CaptureFixture[str]) -> None:
    before = rejected("plaintext")
    channel = grpc.aio.insecure_channel(plane.plain)
    token = plane.token("shop", "web")
    client = Client(channel, token=token, delta=delta)  # a valid token changes nothing here
    resp = await client.ask_secrets("shop", "web")
    assert not resp.resources
    assert rejected("plaintext") == before + 1
    await client.send(type_url=CLUSTER)  # config is still served
    cds = await client.recv()
    assert cds.type_url == CLUSTER and cds.resources
    client.cancel()
    await channel.close()
    out = capsys.readouterr()
    token_logged = token in out.out + out.err
    assert "no secrets for this stream" in out.out + out.err and not token_logged


async def test_standalone_sds_on_the_plaintext_port_serves_nothing(plane: Plane) -> None:
    channel = grpc.aio.insecure_channel(plane.plain)
    client = Client(channel, token=plane.token("shop", "web"), sds=True)
    assert not (await client.ask_secrets("shop", "web")).resources
    client.cancel()
    await channel.close()


def _tampered(token: str) -> str:
    head, payload, mac = token.split(".")
    return f"{head}.{payload}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"


@pytest.mark.parametrize(
    ("reason", "make"),
    [
        ("missing_token", lambda p: None),
        ("invalid_token", lambda p: _tampered(p.token("shop", "web"))),
        ("invalid_token", lambda p: "not-a-token"),
        ("expired_token", lambda p: TokenAuthority.load_or_create(
            p.state, clock=lambda: utcnow() - timedelta(days=2)).issue_token(
                WorkloadIdentity.of("shop", "web"), timedelta(hours=1))),
        # Impersonation: a real token, stolen from (or issued to) another identity.
        ("identity_mismatch", lambda p: p.token("shop", "cart")),
        ("identity_mismatch", lambda p: p.token("other", "web")),
    ],
    ids=["missing", "tampered", "garbage", "expired", "other-sa", "other-namespace"],
)
async def test_no_certificate_without_proof_of_the_claimed_identity(
    plane: Plane, reason: str, make: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    before = rejected(reason)
    token = make(plane)
    channel = plane.tls_channel()
    client = Client(channel, token=token)
    resp = await client.ask_secrets("shop", "web")  # the node claims shop/web
    assert not resp.resources
    assert rejected(reason) == before + 1
    await client.send(type_url=CLUSTER)  # config, but no key
    assert (await client.recv()).resources
    client.cancel()
    await channel.close()
    logs = capsys.readouterr()
    text = logs.out + logs.err
    assert reason in text
    token_logged = bool(token) and token in text
    assert not token_logged


async def test_a_client_that_does_not_trust_the_ca_cannot_connect(plane: Plane, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    channel = plane.tls_channel(roots=other.trust_bundle())
    client = Client(channel, token=plane.token("shop", "web"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.ask_secrets("shop", "web")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    client.cancel()
    await channel.close()


# ------------------------------------------------------------------ rotation and redaction


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_renewal_is_pushed_at_half_life(tmp_path: Path, delta: bool) -> None:
    p = Plane(tmp_path / "ca", timedelta(seconds=4))
    await p.start()
    try:
        channel = p.tls_channel()
        client = Client(channel, token=p.token("shop", "web"), delta=delta)
        first = await client.ask_secrets("shop", "web")
        if delta:
            await client.send(type_url=SECRET, response_nonce=first.nonce)
        else:
            await client.send(type_url=SECRET, resource_names=NAMES, version_info=first.version_info,
                              response_nonce=first.nonce)
        old = leaf_of(secrets_of(first)["default"])
        pushed = await client.recv(timeout=10)  # at ~2 s, unasked
        got = secrets_of(pushed)
        assert set(got) == {"default"}  # ROOTCA did not change: not re-sent
        new = leaf_of(got["default"])
        assert new.serial_number != old.serial_number
        assert new.not_valid_after_utc > old.not_valid_after_utc
        client.cancel()
        await channel.close()
    finally:
        await p.stop()


async def test_debug_views_and_logs_hold_no_key(plane: Plane, capsys: pytest.CaptureFixture[str]) -> None:
    channel = plane.tls_channel()
    token = plane.token("shop", "web")
    client = Client(channel, token=token)
    got = secrets_of(await client.ask_secrets("shop", "web"))
    key = got["default"].tls_certificate.private_key.inline_bytes
    delivered = b"PRIVATE KEY" in key
    assert delivered  # the stream itself did get its key
    syncz = repr(plane.xds.syncz())
    described = repr(plane.mesh_ca.describe())
    view = plane.mesh_ca.secrets.current(WorkloadIdentity.of("shop", "web"))
    texts = [syncz, described, repr(view), repr(list(view.resources())) if view else ""]
    # (booleans, so a failure does not print the very key it found)
    leaked = [i for i, text in enumerate(texts) if "PRIVATE KEY" in text or token in text]
    assert not leaked, f"key or token in text #{leaked}"
    assert "spiffe://cluster.local/ns/shop/sa/web" in syncz and "not_after" in described
    client.cancel()
    await channel.close()
    logs = capsys.readouterr()
    leaked_in_logs = "PRIVATE KEY" in logs.out + logs.err or token in logs.out + logs.err
    assert not leaked_in_logs
