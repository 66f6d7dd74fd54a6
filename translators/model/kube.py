"""Kubernetes core resources the service registry is built from: Service, EndpointSlice, Pod."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from translators.model.base import KubeModel, Resource


class ServicePort(KubeModel):
    name: str = ""
    port: Annotated[int, Field(ge=1, le=65535)]
    targetPort: int | str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    appProtocol: str | None = None


class ServiceSpec(KubeModel):
    selector: dict[str, str] | None = None
    ports: list[ServicePort] = []
    clusterIP: str | None = None
    type: str = "ClusterIP"


class Service(Resource):
    KIND = "Service"
    API_VERSIONS = ("v1",)
    spec: ServiceSpec = ServiceSpec()


class EndpointConditions(KubeModel):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class ObjectReference(KubeModel):
    kind: str = ""
    name: str = ""
    namespace: str | None = None


class SliceEndpoint(KubeModel):
    addresses: list[str] = Field(min_length=1)
    conditions: EndpointConditions = EndpointConditions()
    targetRef: ObjectReference | None = None
    nodeName: str | None = None
    zone: str | None = None


class SlicePort(KubeModel):
    name: str = ""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    protocol: str = "TCP"
    appProtocol: str | None = None


class EndpointSlice(Resource):
    KIND = "EndpointSlice"
    API_VERSIONS = ("discovery.k8s.io/v1",)
    addressType: Literal["IPv4", "IPv6", "FQDN"] = "IPv4"
    endpoints: list[SliceEndpoint] = []
    ports: list[SlicePort] = []

    @field_validator("endpoints", "ports", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        # The API server writes a slice with no endpoints (a Service none of whose pods has an IP yet) as null.
        return [] if value is None else value

    @property
    def service_name(self) -> str | None:
        return self.metadata.labels.get("kubernetes.io/service-name")


class ContainerPort(KubeModel):
    containerPort: int
    name: str | None = None
    protocol: str = "TCP"


class Container(KubeModel):
    name: str = ""
    ports: list[ContainerPort] = []


class PodSpec(KubeModel):
    serviceAccountName: str = "default"
    containers: list[Container] = []


class PodIP(KubeModel):
    ip: str


class PodStatus(KubeModel):
    podIP: str | None = None
    podIPs: list[PodIP] = []
    phase: str | None = None


class Pod(Resource):
    KIND = "Pod"
    API_VERSIONS = ("v1",)
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()

    @property
    def ips(self) -> list[str]:
        ips = [p.ip for p in self.status.podIPs]
        if self.status.podIP and self.status.podIP not in ips:
            ips.insert(0, self.status.podIP)
        return ips


