"""Kubernetes core resources: Service, EndpointSlice, Pod (the service registry is built from
them) and Secret (a Gateway's credentials)."""

from __future__ import annotations

import base64
import binascii
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




class Secret(Resource):
    """A core/v1 Secret, for a Gateway's ``credentialName``. ``data`` (base64) and
    ``stringData`` never show in a repr, a dump or a debug page: :meth:`values` is the only
    way to the bytes, and only the SDS server calls it."""

    KIND = "Secret"
    API_VERSIONS = ("v1",)
    type: str = "Opaque"
    data: dict[str, str] = Field(default={}, exclude=True, repr=False)
    stringData: dict[str, str] = Field(default={}, exclude=True, repr=False)

    @field_validator("data", mode="before")
    @classmethod
    def _base64(cls, data: object) -> object:
        if data is None:
            return {}
        if isinstance(data, dict):
            for key, value in data.items():
                try:
                    base64.b64decode(str(value), validate=True)
                except (binascii.Error, ValueError):
                    raise ValueError(f"data.{key} is not valid base64") from None  # never the value
        return data

    @field_validator("stringData", mode="before")
    @classmethod
    def _null(cls, data: object) -> object:
        return {} if data is None else data

    def values(self) -> dict[str, bytes]:
        """The decoded entries; ``stringData`` wins over ``data`` as the API server merges them."""
        out = {k: base64.b64decode(v) for k, v in self.data.items()}
        out.update((k, v.encode()) for k, v in self.stringData.items())
        return out

    def __repr__(self) -> str:
        return f"Secret({self.metadata.namespace}/{self.metadata.name}, type={self.type}, keys={sorted(self.values())})"
