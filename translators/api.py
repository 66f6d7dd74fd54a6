"""The seam between translation and the xDS cache.

Translation returns, for one proxy and per xDS type, a list of *layers*. A layer is a
mapping of resource name to Envoy proto plus a ``key`` saying who shares it:

* ``("clusters", "outbound")`` - every sidecar gets the same outbound clusters;
* ``("routes", "<namespace>")`` - route configs differ by the proxy's namespace (short host names);
* ``("listeners", <proxy.key>)`` - listeners bind the proxy's own IP, so they are per proxy.

The cache serializes a layer once and shares the bytes with every proxy whose
translation hands back the same layer object. Translators must therefore return the
*same* mapping object (``is``) when nothing it depends on changed; that is what makes a
change cost what it touches and not what exists.

Resource names in one type never collide across the layers of one proxy.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from translators.errors import ConfigError

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
#: Virtual hosts on their own (VHDS): the server splits route configurations into these for
#: delta clients; translation never produces them.
VIRTUAL_HOST = "type.googleapis.com/envoy.config.route.v3.VirtualHost"

#: Make-before-break: a proxy learns clusters, then their endpoints, then the listeners
#: and routes that use them. Removals go the other way round.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

SHORT_NAMES = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds", SECRET: "sds", VIRTUAL_HOST: "vhds"}


class EncodedResources(Mapping[str, Message]):
    """A layer's resources that translation already holds serialized (deterministic bytes,
    e.g. route configurations assembled from encoded virtual hosts): the cache takes
    ``data`` as it is; a message is parsed only when someone reads one (tests, debug pages)."""

    __slots__ = ("data", "message_type", "pieces")

    def __init__(self, data: Mapping[str, bytes], message_type: type[Message],
                 pieces: Mapping[str, tuple[bytes, ...]] | None = None):
        self.data = data
        self.message_type = message_type
        #: name -> the pieces (whole top-level fields) ``data[name]`` is the concatenation of,
        #: when it was assembled from them: the same piece objects change after change
        self.pieces = pieces or {}

    def __getitem__(self, name: str) -> Message:
        return self.message_type.FromString(self.data[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@dataclass(frozen=True, eq=False)
class Layer:
    key: Hashable
    resources: Mapping[str, Message]


ProxyResources = dict[str, list[Layer]]  # type_url -> layers


@dataclass(frozen=True, eq=False)
class TranslationErrors:
    """Problems found while translating; translation is best effort and goes on."""

    errors: tuple[ConfigError, ...] = ()
