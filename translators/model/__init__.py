"""The mesh as typed models: Kubernetes and Istio resources, the World snapshot of them,
its indexes, the service registry built from them, and Istio's names.

``translators.model`` re-exports the resource models, so ``from translators.model import
VirtualService`` works whatever module a kind lives in.
"""

from __future__ import annotations

from typing import Any

from translators.model.base import IstioModel, KubeModel, ObjectMeta, Resource, ResourceKey
from translators.model.gateway import Gateway, GatewayPort, GatewaySpec, Server, ServerTLSSettings
from translators.model.kube import (
    Container,
    ContainerPort,
    EndpointConditions,
    EndpointSlice,
    ObjectReference,
    Pod,
    PodIP,
    PodSpec,
    PodStatus,
    Secret,
    Service,
    ServicePort,
    ServiceSpec,
    SliceEndpoint,
    SlicePort,
)
from translators.model.mesh import MeshConfig
from translators.model.networking import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    ConsistentHash,
    CorsPolicy,
    Delegate,
    Destination,
    DestinationRule,
    DestinationRuleSpec,
    HeaderOperations,
    Headers,
    HTTPDirectResponse,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPMirrorPolicy,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    L4MatchAttributes,
    LoadBalancerSettings,
    OutlierDetection,
    PortSelector,
    PortTrafficPolicy,
    RouteDestination,
    SEPort,
    ServiceEntry,
    ServiceEntrySpec,
    StringMatch,
    Subset,
    TCPRoute,
    TLSMatchAttributes,
    TLSRoute,
    TrafficPolicy,
    VirtualService,
    VirtualServiceSpec,
    WorkloadEntry,
    WorkloadEntrySpec,
    WorkloadSelector,
)
from translators.model.security import AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from translators.model.sidecar import Sidecar
from translators.model.telemetry import Telemetry
from translators.model.types import Duration, Percent

#: kind -> model class, for the loaders.
KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (Service, EndpointSlice, Pod, ServiceEntry, WorkloadEntry, VirtualService, DestinationRule,
                AuthorizationPolicy, RequestAuthentication, MeshConfig, PeerAuthentication, Gateway, Secret, Sidecar,
                Telemetry)
}


def parse_resource(doc: dict[str, Any], source: str = "") -> Resource:
    """Validate one manifest into its model class, chosen by ``kind``.

    Raises KeyError for an unknown kind and pydantic.ValidationError for a bad document.
    """
    cls = KINDS[doc["kind"]]
    return cls.model_validate({**doc, "source": source})


__all__ = [
    "KINDS", "ClientTLSSettings", "ConnectionPoolSettings", "ConsistentHash", "Container", "ContainerPort",
    "CorsPolicy", "Delegate", "Destination", "DestinationRule", "DestinationRuleSpec", "Duration",
    "EndpointConditions", "EndpointSlice", "HTTPDirectResponse", "HTTPFaultInjection", "HTTPMatchRequest",
    "HTTPMirrorPolicy", "HTTPRedirect", "HTTPRetry", "HTTPRewrite", "HTTPRoute", "HTTPRouteDestination",
    "HeaderOperations", "Headers", "IstioModel", "KubeModel", "L4MatchAttributes", "LoadBalancerSettings", "ObjectMeta",
    "ObjectReference", "OutlierDetection", "Percent", "Pod", "PodIP", "PodSpec", "PodStatus", "PortSelector",
    "PortTrafficPolicy", "Resource", "ResourceKey", "RouteDestination", "SEPort", "Service", "ServiceEntry", "ServiceEntrySpec",
    "ServicePort", "ServiceSpec", "SliceEndpoint", "SlicePort", "StringMatch", "Subset", "TCPRoute", "TLSMatchAttributes", "TLSRoute", "TrafficPolicy",
    "VirtualService", "VirtualServiceSpec", "WorkloadEntry", "WorkloadEntrySpec", "WorkloadSelector",
    "parse_resource",
    "AuthorizationPolicy", "Gateway", "GatewayPort", "GatewaySpec", "MeshConfig", "Secret", "Server",
    "ServerTLSSettings", "PeerAuthentication", "RequestAuthentication", "Sidecar", "Telemetry",
]
