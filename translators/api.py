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

from collections.abc import Hashable, Mapping
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


@dataclass(frozen=True, eq=False)
class Layer:
    key: Hashable
    resources: Mapping[str, Message]


ProxyResources = dict[str, list[Layer]]  # type_url -> layers


@dataclass(frozen=True, eq=False)
class TranslationErrors:
    """Problems found while translating; translation is best effort and goes on."""

    errors: tuple[ConfigError, ...] = ()
