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
    # istiod sets the deprecated max_grpc_timeout; this is its replacement, same meaning
    # (0: the grpc-timeout header is used as it is), without Envoy's deprecation warnings.
    action.max_stream_duration.grpc_timeout_header_max.CopyFrom(value)
