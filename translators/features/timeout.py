"""HTTPRoute.timeout: Istio disables Envoy's 15 s route timeout unless a VirtualService
sets one, and bounds gRPC's own ``grpc-timeout`` header by the same value."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf import duration_pb2

from translators.model.types import Duration

#: Istio's default: no route timeout.
NO_TIMEOUT = duration_pb2.Duration(seconds=0)


def apply_timeout(action: rc.RouteAction, timeout: Duration | None) -> None:
    value = timeout.proto() if timeout is not None else NO_TIMEOUT
    action.timeout.CopyFrom(value)
    # The deprecated max_grpc_timeout, as istiod writes it. Its replacement is not the same:
    # with any RouteAction.max_stream_duration Envoy's router leaves ``timeout`` unenforced
    # (a 500ms timeout let a 4 s answer through, Envoy 1.40; cf. envoyproxy/envoy#15530).
    action.max_grpc_timeout.CopyFrom(value)
