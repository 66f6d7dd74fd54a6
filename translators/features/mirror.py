"""HTTPRoute.mirror / mirrors -> request mirror policies: copies go to the mirror cluster
and their responses are dropped. 100 % unless a percentage says otherwise; 0 % is off."""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf import wrappers_pb2

from translators.features._proto import fraction, whole_percent
from translators.model import Destination, HTTPRoute
from translators.model.types import Percent

#: (destination, field path) -> cluster name
ClusterOf = Callable[[Destination, str], str]


def _policy(cluster: str, percentage: Percent | None, integer: int | None = None) -> rc.RouteAction.RequestMirrorPolicy | None:
    if percentage is not None:
        if percentage.value <= 0:
            return None
        share = fraction(percentage)
    elif integer is not None:
        if integer <= 0:
            return None
        share = whole_percent(integer)
    else:
        share = whole_percent(100)
    return rc.RouteAction.RequestMirrorPolicy(
        cluster=cluster,
        runtime_fraction=base_pb2.RuntimeFractionalPercent(default_value=share),
        trace_sampled=wrappers_pb2.BoolValue(value=False),
    )


def mirror_policies(http: HTTPRoute, cluster_of: ClusterOf) -> list[rc.RouteAction.RequestMirrorPolicy]:
    out = []
    if http.mirror is not None:
        p = _policy(cluster_of(http.mirror, ".mirror"), http.mirrorPercentage, http.mirrorPercent)
        if p is not None:
            out.append(p)
    for i, m in enumerate(http.mirrors):
        p = _policy(cluster_of(m.destination, f".mirrors[{i}].destination"), m.percentage)
        if p is not None:
            out.append(p)
    return out
