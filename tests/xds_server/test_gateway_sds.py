"""Gateway credentials over SDS at the protocol level: a gateway that proved its identity
gets ``kubernetes://<credentialName>`` from the Secrets of its namespace, a sidecar (or a
gateway of another namespace, or one on the plaintext port) never does, and a changed
Secret is pushed. Key bytes stay out of versions and debug output."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

import pytest

from tests.xds_server.adsclient import node
from tests.xds_server.test_sds import Client, Plane, secrets_of
from translators.api import SECRET
from translators.model import Resource, Secret
from translators.model.world import World
from xds_server.xds.secrets import CredentialStore, credential_resources
from xds_server.xds.server import XdsServer

GW_NS = "istio-system"
WANTED = ["default", "ROOTCA", "kubernetes://ingress-cert", "kubernetes://ingress-cert-cacert"]


def secret(name: str, namespace: str = GW_NS, **values: bytes) -> Secret:
    return Secret.model_validate({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k.replace("_", "."): base64.b64encode(v).decode() for k, v in values.items()}})


CERT = secret("ingress-cert", tls_crt=b"CERT-1", tls_key=b"KEY-1-SECRET", ca_crt=b"CA-1")


class GatewayPlane(Plane):
    def __init__(self, state: Path, ttl: timedelta) -> None:
        super().__init__(state, ttl)
        self.credentials = CredentialStore()
        self.world = World()
        self.xds = XdsServer(self.cache, self.mesh_ca.secrets, credentials=self.credentials)

    def publish(self, *resources: Resource) -> None:
        by_key = dict(self.world.resources)
        by_key.update({r.key: r for r in resources})
        self.world = self.world.evolve(MappingProxyType(by_key))
        self.cache.update(self.world)
        self.credentials.update(self.world)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[GatewayPlane]:
    p = GatewayPlane(tmp_path / "ca", timedelta(hours=1))
    p.publish(CERT, secret("other-cert", "shop", tls_crt=b"C", tls_key=b"K"))
    await p.start()
    yield p
    await p.stop()


async def ask(client: Client, namespace: str, *, gateway: bool, names: list[str] = WANTED) -> dict:
    n = node("127.0.62.1", namespace=namespace)
    if gateway:
        n.id = n.id.replace("sidecar~", "router~", 1)
    n.metadata.update({"SERVICE_ACCOUNT": "gw"})
    await client.send(node=n, type_url=SECRET, resource_names=names)
    return secrets_of(await client.recv())


async def test_a_gateway_gets_its_namespaces_credentials(plane: GatewayPlane) -> None:
    channel = plane.tls_channel()
    client = Client(channel, token=plane.token(GW_NS, "gw"))
    got = await ask(client, GW_NS, gateway=True)
    assert set(got) == set(WANTED)
    cert = got["kubernetes://ingress-cert"].tls_certificate
    assert (cert.certificate_chain.inline_bytes, cert.private_key.inline_bytes) == (b"CERT-1", b"KEY-1-SECRET")
    ca = got["kubernetes://ingress-cert-cacert"].validation_context.trusted_ca.inline_bytes
    assert ca == b"CA-1"
    # A new key (same certificate bytes, to show the version follows the key too) is pushed.
    plane.publish(secret("ingress-cert", tls_crt=b"CERT-1", tls_key=b"KEY-2-SECRET", ca_crt=b"CA-1"))
    pushed = secrets_of(await client.recv())
    assert pushed["kubernetes://ingress-cert"].tls_certificate.private_key.inline_bytes == b"KEY-2-SECRET"
    client.cancel()
    await channel.close()


@pytest.mark.parametrize(("namespace", "gateway"), [(GW_NS, False), ("shop", True)], ids=["sidecar", "other-namespace"])
async def test_no_credentials_for_sidecars_or_other_namespaces(plane: GatewayPlane, namespace: str, gateway: bool) -> None:
    channel = plane.tls_channel()
    client = Client(channel, token=plane.token(namespace, "gw"))
    got = await ask(client, namespace, gateway=gateway)
    assert set(got) == {"default", "ROOTCA"}
    client.cancel()
    await channel.close()


def test_versions_follow_the_key_without_being_its_hash() -> None:
    one = credential_resources(CERT)["kubernetes://ingress-cert"]
    same = credential_resources(secret("ingress-cert", tls_crt=b"CERT-1", tls_key=b"KEY-1-SECRET"))["kubernetes://ingress-cert"]
    other = credential_resources(secret("ingress-cert", tls_crt=b"CERT-1", tls_key=b"KEY-2"))["kubernetes://ingress-cert"]
    assert one.version == same.version != other.version
    assert "KEY-1" not in repr(one) and "KEY-1" not in repr(CERT)


def test_generic_secret_and_a_separate_cacert_secret() -> None:
    generic = Secret.model_validate({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "g", "namespace": GW_NS},
                                     "stringData": {"cert": "C", "key": "K", "cacert": "CA"}})
    assert set(credential_resources(generic)) == {"kubernetes://g", "kubernetes://g-cacert"}
    ca_only = secret("g2-cacert", ca_crt=b"CA")
    assert set(credential_resources(ca_only)) == {"kubernetes://g2-cacert"}
    store = CredentialStore()
    world = World().evolve(MappingProxyType({s.key: s for s in (generic, ca_only)}))
    store.update(world)
    assert set(store.layer(GW_NS).resources) == {"kubernetes://g", "kubernetes://g-cacert", "kubernetes://g2-cacert"}
    described = store.describe(GW_NS)
    assert set(described) == set(store.layer(GW_NS).resources)
    assert all(len(v) == 16 for v in described.values())  # versions only
