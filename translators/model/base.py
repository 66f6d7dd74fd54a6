"""The base of every model: frozen pydantic models with Kubernetes metadata.

Field names follow the Kubernetes and Istio APIs (camelCase) so a manifest that
`kubectl apply` accepts parses here unchanged. Models are frozen: a World snapshot
shares unchanged objects between versions, and translators memoize on identity.

Fields of the Istio API that are not modelled yet are kept (``extra="allow"``) so
valid Istio YAML is never rejected for them; the loader reports them as ignored.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Field


class IstioModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class KubeModel(BaseModel):
    """For Kubernetes core parts we only read: unknown fields are simply ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class ObjectMeta(KubeModel):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: str = "default"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class ResourceKey(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class Resource(KubeModel):
    """A top-level manifest. ``source`` records where it came from (file path) for errors."""

    KIND: ClassVar[str] = ""
    API_VERSIONS: ClassVar[tuple[str, ...]] = ()

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    source: str = Field(default="", exclude=True)

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


