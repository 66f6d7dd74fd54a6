"""gRPC: ADS (state of the world and delta) and the standalone SDS service, over grpc.aio.

Responses leave as bytes already assembled from each resource's pre-encoded entry, so
the methods are registered with an identity serializer instead of the generated stubs.

One ``XdsServer`` serves two kinds of port: the plaintext one (istiod's 15010), which
serves config and never a secret, and the TLS one (15012), where a stream that proves its
identity with a mesh token also gets that identity's certificate (see ``secrets``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest
from grpc._cython.cygrpc import ExecuteBatchError  # what a write to a closed stream raises

from translators.api import SECRET, VIRTUAL_HOST
from translators.model.world import Proxy
from xds_server.app.node import NodeError, proxy_from_node
from xds_server.xds.cache import ProxyView, TypeView, XdsCache
from xds_server.xds.convergence import ConvergenceTracker
from xds_server.xds.protocol import DeltaStream, SharedResponses, SotwStream
from xds_server.xds.secrets import CredentialStore, Grant, SecretStore
from xds_server.xds.status import STREAMS, StreamStatus, TypeStatus
from xds_server.xds.vhds import VhdsSplitter

log = structlog.get_logger("xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
VIEW_CHANGED = object()
#: Requests read from a client and not handled yet, per stream. Past this, the stream stops
#: reading; gRPC then stops taking the client's messages (HTTP/2 flow control), so a client
#: sending faster than it is served waits instead of growing the server's memory.
MAX_QUEUED_REQUESTS = 16

_NO_VIEW = ProxyView(0, {})
_PLAINTEXT = Grant(None, "plaintext", "the plaintext xDS port never serves secrets; use the TLS port")
_NO_CA = Grant(None, "disabled", "this server has no certificate authority")


def _identity(payload: bytes) -> bytes:
    return payload


class Inbox:
    """What one stream has to handle: requests in arrival order, at most ``limit`` of them,
    and at most one "view changed" (config changes merge: the stream always sends the latest
    view). A pending view change and queued requests take turns, so a client flooding requests
    cannot hold back its pushes, nor a burst of changes its requests.

    A stuck client (one that stops reading) stalls only its own stream at ``context.write``;
    meanwhile this holds at most ``limit`` requests and one view change, however many
    changes are made.
    """

    def __init__(self, limit: int = MAX_QUEUED_REQUESTS) -> None:
        self.requests: deque[Any] = deque()
        self.pending_views = 0  # 0 or 1
        self.closed = False
        self._turn_of_requests = False
        self._room = asyncio.Semaphore(limit)
        self._wake = asyncio.Event()

    async def put(self, request: Any) -> None:
        await self._room.acquire()
        self.requests.append(request)
        self._wake.set()

    def view_changed(self) -> None:
        self.pending_views = 1
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def get(self) -> Any:
        """The next thing to handle: ``VIEW_CHANGED``, a request, or None once the client is done."""
        while True:
            if self.pending_views and not (self._turn_of_requests and self.requests):
                self.pending_views = 0
                self._turn_of_requests = True
                return VIEW_CHANGED
            if self.requests:
                self._turn_of_requests = False
                self._room.release()
                return self.requests.popleft()
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()


class XdsServer:
    def __init__(self, cache: XdsCache, secrets: SecretStore | None = None,
                 convergence: ConvergenceTracker | None = None, credentials: CredentialStore | None = None,
                 vhds: bool = True):
        self.cache = cache
        #: delta Envoys get route configurations as stubs and their virtual hosts over VHDS
        #: (a change sends the virtual hosts it touched); SotW streams always get whole tables
        self.vhds = VhdsSplitter() if vhds else None
        self.convergence = convergence
        self.secrets = secrets
        self.credentials = credentials  # gateways' credentialName secrets, from the World
        self.streams: dict[int, StreamStatus] = {}
        #: per stream: which port it came in on and what identity it proved (for /debug/syncz)
        self.security: dict[int, dict[str, Any]] = {}
        #: per stream: what waits to be handled (bounded; see ``Inbox``)
        self.inboxes: dict[int, Inbox] = {}
        self.shared = SharedResponses()
        self._ids = 0
        if secrets is not None:
            secrets.probe = self  # so a root rotation can wait for every proxy to hold the new bundle

    def handler(self, *, tls: bool = False) -> grpc.GenericRpcHandler:
        """The ADS service; ``tls``: this handler serves the TLS port, where secrets may go."""

        async def sotw(requests: AsyncIterator[DiscoveryRequest], context: Any) -> None:
            await self._serve(requests, context, "sotw", tls=tls)

        async def delta(requests: AsyncIterator[DeltaDiscoveryRequest], context: Any) -> None:
            await self._serve(requests, context, "delta", tls=tls)

        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    sotw, request_deserializer=DiscoveryRequest.FromString, response_serializer=_identity
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    delta, request_deserializer=DeltaDiscoveryRequest.FromString, response_serializer=_identity
                ),
            },
        )

    def sds_handler(self, *, tls: bool = False) -> grpc.GenericRpcHandler:
        """The standalone SecretDiscoveryService: the same streams, restricted to secrets."""

        async def sotw(requests: AsyncIterator[DiscoveryRequest], context: Any) -> None:
            await self._serve(requests, context, "sotw", tls=tls, secrets_only=True)

        async def delta(requests: AsyncIterator[DeltaDiscoveryRequest], context: Any) -> None:
            await self._serve(requests, context, "delta", tls=tls, secrets_only=True)

        return grpc.method_handlers_generic_handler(
            SDS_SERVICE,
            {
                "StreamSecrets": grpc.stream_stream_rpc_method_handler(
                    sotw, request_deserializer=DiscoveryRequest.FromString, response_serializer=_identity
                ),
                "DeltaSecrets": grpc.stream_stream_rpc_method_handler(
                    delta, request_deserializer=DeltaDiscoveryRequest.FromString, response_serializer=_identity
                ),
            },
        )

    def handlers(self, *, tls: bool = False) -> tuple[grpc.GenericRpcHandler, ...]:
        return (self.handler(tls=tls), self.sds_handler(tls=tls))

    async def _grant(self, proxy: Proxy, context: Any, tls: bool) -> Grant:
        if not tls:
            return _PLAINTEXT
        if self.secrets is None:
            return _NO_CA
        return await self.secrets.authenticate_stream(
            context.invocation_metadata() or (), proxy.namespace, proxy.service_account)

    async def _serve(
        self, requests: AsyncIterator[Any], context: Any, protocol: str, *, tls: bool, secrets_only: bool = False
    ) -> None:
        try:
            first = await anext(aiter(requests))
        except StopAsyncIteration:
            return
        try:
            proxy = proxy_from_node(first.node)
        except NodeError as e:
            log.warning("stream refused", reason=str(e), protocol=protocol)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        grant = await self._grant(proxy, context, tls)
        if grant.ok:
            assert grant.identity is not None
            # Translation gives mTLS config only to proxies that will have the secrets it needs.
            proxy = replace(proxy, identity=grant.identity.spiffe_id)
        elif tls:
            SecretStore.reject(grant, proxy.id, port="tls")
        self._ids += 1
        sid = self._ids
        tracker = None if secrets_only else self.convergence
        status = StreamStatus(proxy.id, protocol, convergence=tracker, stream_id=sid)
        stream = (SotwStream if protocol == "sotw" else DeltaStream)(status, self.shared)
        # gRPC's xDS clients have no VHDS; Envoy has it on delta streams only.
        splitter = self.vhds if protocol == "delta" and not secrets_only and proxy.generator != "grpc" else None
        inbox = Inbox()
        secret_view: TypeView | None = None  # set once the stream asked for secrets it may have
        refused_logged = tls  # on the TLS port the refusal was logged at open

        def on_view(_view: object = None) -> None:
            inbox.view_changed()

        def view() -> ProxyView:
            config = ProxyView(self.cache.generation, {}) if secrets_only else self.cache.view(proxy)
            if splitter is not None:
                config = splitter.view(config)
            if secret_view is None:
                return config
            assert self.secrets is not None and grant.identity is not None
            current = self.secrets.current(grant.identity) or secret_view
            if credentials:  # a gateway: its namespace's credentials beside its own certificate
                assert self.credentials is not None
                current = TypeView(SECRET, (*current.layers, self.credentials.layer(proxy.namespace)))
            return ProxyView(config.generation, {**config.types, SECRET: current})

        def plain_ack(req: Any) -> bool:
            """A delta ACK or NACK that changes no subscription: it reads no view and sends nothing."""
            return protocol == "delta" and bool(req.response_nonce) and req.type_url in stream.types \
                and not req.resource_names_subscribe and not req.resource_names_unsubscribe

        async def read() -> None:
            try:
                async for req in requests:
                    if not inbox.requests and plain_ack(req):
                        # Nothing queued ahead of it: settled here, without waking the stream's
                        # task (a change's fan-out brings one ACK per proxy).
                        stream.on_request(req, _NO_VIEW)
                        continue
                    await inbox.put(req)
            finally:
                inbox.close()

        # Generations told of since the last send (bursts merge). Bounded: the tracker keeps only
        # its latest changes anyway, and a stuck stream is told of every change.
        notified: deque[int] = deque(maxlen=tracker.keep if tracker is not None else 1)

        def on_config(view: ProxyView) -> None:
            if tracker is not None:
                notified.append(view.generation)
            on_view()

        unwatch = (lambda: None) if secrets_only else self.cache.watch(proxy, on_config)
        unwatch_secrets = unwatch_credentials = None
        # Only gateways get credentials, and only on a stream that proved an identity.
        credentials = grant.ok and proxy.role == "gateway" and self.credentials is not None
        self.streams[sid] = status
        self.inboxes[sid] = inbox
        self.security[sid] = {"port": "tls" if tls else "plaintext", "secrets": grant.reason,
                              "identity": grant.identity.spiffe_id if grant.identity else None}
        STREAMS.labels(protocol).inc()
        reader = asyncio.create_task(read())
        log.info("stream opened", proxy=proxy.id, ip=proxy.ip, namespace=proxy.namespace, protocol=protocol,
                 port="tls" if tls else "plaintext", identity=proxy.identity or None,
                 service="sds" if secrets_only else "ads")
        try:
            item: Any = first
            while item is not None:
                if item is VIEW_CHANGED:
                    current = view()
                    outgoing = stream.on_view(current)
                    if tracker is not None:
                        tracker.sent(sid, current.generation, [o.nonce for o in outgoing], notified,
                                     sum(len(o.payload) for o in outgoing))
                        notified.clear()
                else:
                    if secrets_only and item.type_url != SECRET:
                        item = await inbox.get()
                        continue
                    if item.type_url == SECRET and secret_view is None:
                        if grant.ok:
                            assert self.secrets is not None and grant.identity is not None
                            unwatch_secrets = self.secrets.watch(grant.identity, on_view)
                            if credentials:
                                assert self.credentials is not None
                                unwatch_credentials = self.credentials.watch(proxy.namespace, on_view)
                            secret_view = await self.secrets.view(grant.identity)
                        elif not refused_logged:
                            refused_logged = True
                            SecretStore.reject(grant, proxy.id, port="plaintext")
                    outgoing = stream.on_request(item, _NO_VIEW if plain_ack(item) else view())
                for out in outgoing:
                    await context.write(out.payload)  # blocks while this client does not read
                item = await inbox.get()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except ExecuteBatchError:
            pass  # a write pending (a slow client) when the stream was closed or the server stopped
        except Exception:
            # A bug, not a protocol event: the proxy reconnects, but the log must say why.
            log.exception("stream failed", proxy=proxy.id, protocol=protocol)
            raise
        finally:
            unwatch()
            if tracker is not None:
                tracker.closed(sid)
            if unwatch_secrets is not None:
                unwatch_secrets()
            if unwatch_credentials is not None:
                unwatch_credentials()
            reader.cancel()
            del self.streams[sid]
            del self.security[sid]
            del self.inboxes[sid]
            STREAMS.labels(protocol).dec()
            log.info("stream closed", proxy=proxy.id, protocol=protocol)

    def config_view(self, proxy: Proxy) -> ProxyView:
        """What ``proxy`` should have: route configurations whole (as Envoy assembles them), and
        for a delta Envoy with VHDS, the virtual hosts it is sent too."""
        view = self.cache.view(proxy)
        delta = any(s.protocol == "delta" and s.proxy_id == proxy.id for s in self.streams.values())
        if self.vhds is None or not delta or proxy.generator == "grpc":
            return view
        hosts = self.vhds.view(view).types.get(VIRTUAL_HOST)
        return view if hosts is None else ProxyView(view.generation, {**view.types, VIRTUAL_HOST: hosts})

    def _secret_streams(self) -> Iterator[tuple[int, TypeStatus]]:
        """Streams that proved an identity and asked for secrets, with their SDS status."""
        for sid, status in list(self.streams.items()):
            st = status.types.get(SECRET)
            if st is not None and self.security.get(sid, {}).get("secrets") == "ok":
                yield sid, st

    def secret_nonces(self) -> dict[int, str]:
        return {sid: st.sent_nonce for sid, st in self._secret_streams()}

    def secrets_acked_since(self, before: dict[int, str]) -> bool:
        """Has every such stream been sent secrets since ``before`` and acknowledged (or rejected) them?"""
        for sid, st in self._secret_streams():
            if not st.sent_nonce or st.sent_nonce == before.get(sid):
                return False
            rejected = st.nack is not None and st.nack.get("nonce") == st.sent_nonce
            if st.acked_nonce != st.sent_nonce and not rejected:
                return False
        return True

    def syncz(self) -> list[dict[str, Any]]:
        """Every stream's status, with the port it uses and the identity it proved (no secrets)."""
        out = []
        for sid, status in self.streams.items():
            d = status.as_dict()
            sec = dict(self.security.get(sid, {}))
            if self.secrets is not None and sec.get("identity"):
                described = self.secrets.describe_spiffe(sec["identity"])
                if described is not None:
                    sec["certificate"] = described
            d["security"] = sec
            out.append(d)
        return sorted(out, key=lambda s: s["proxy"])


async def start_grpc(
    server_impl: XdsServer, address: str, credentials: grpc.ServerCredentials | None = None
) -> grpc.aio.Server:
    """Serve ADS and SDS on ``address``: over TLS with ``credentials`` (secrets allowed), else plaintext."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_concurrent_streams", 100_000),
            # A thousand proxies connecting at once can queue calls for a while; the
            # default would cancel them after 30 s.
            ("grpc.server_max_unrequested_time_in_server", 600),
            # grpc.aio counts open streams against these (defaults 1,000 and 3,000): past about
            # 1,800 streams new ones failed with INTERNAL (tests/xds_server/test_protocol_abuse.py).
            ("grpc.server.max_pending_requests", 100_000),
            ("grpc.server.max_pending_requests_hard_limit", 100_000),
        ]
    )
    server.add_generic_rpc_handlers(server_impl.handlers(tls=credentials is not None))
    if credentials is not None:
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for xDS on {address}")
    await server.start()
    return server
