"""telemetry.istio.io Telemetry: access logging and tracing of a mesh, a namespace or a workload.

Scope and precedence are Istio's: a Telemetry in the root namespace without a selector is
mesh-wide, one in another namespace without a selector covers that namespace, and one with
``selector.matchLabels`` covers the workloads it selects; the more specific one overrides
the fields it sets (features/telemetry.py). ``metrics`` is kept and reported as not
supported: Envoy's own stats are what sidecars expose on 15090.

The checks are Istio's (ValidateTelemetry), plus one of ours: an access-log filter must be
CEL that Envoy's access-log filters can express (model/cel.py), named at its field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from translators.model import cel
from translators.model.base import IstioModel, Resource
from translators.model.networking import Problems
from translators.model.security import PolicySelector, PolicyTargetReference, _selection_problems

ISTIO_TELEMETRY = ("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1")

#: CLIENT: the proxy's outbound side; SERVER: its inbound side.
WorkloadMode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]


class ProviderRef(IstioModel):
    name: str = ""


class WorkloadModeSelector(IstioModel):
    mode: WorkloadMode = "CLIENT_AND_SERVER"


class AccessLoggingFilter(IstioModel):
    expression: str = ""


class AccessLogging(IstioModel):
    match: WorkloadModeSelector | None = None
    providers: list[ProviderRef] = []
    disabled: bool | None = None
    filter: AccessLoggingFilter | None = None


class LiteralTag(IstioModel):
    value: str = ""


class EnvironmentTag(IstioModel):
    name: str = ""
    defaultValue: str = ""


class RequestHeaderTag(IstioModel):
    name: str = ""
    defaultValue: str = ""


class CustomTag(IstioModel):
    literal: LiteralTag | None = None
    environment: EnvironmentTag | None = None
    header: RequestHeaderTag | None = None


class Tracing(IstioModel):
    match: WorkloadModeSelector | None = None
    providers: list[ProviderRef] = []
    randomSamplingPercentage: float | None = None
    disableSpanReporting: bool | None = None
    customTags: dict[str, CustomTag] = {}
    useRequestIdForTraceSampling: bool | None = None


class TelemetrySpec(IstioModel):
    selector: PolicySelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: list[PolicyTargetReference] = []
    tracing: list[Tracing] = []
    metrics: list[dict] = []
    accessLogging: list[AccessLogging] = []


class Telemetry(Resource):
    KIND = "Telemetry"
    API_VERSIONS = ISTIO_TELEMETRY
    spec: TelemetrySpec = TelemetrySpec()

    @model_validator(mode="after")
    def _check(self) -> Telemetry:
        p = Problems()
        s = self.spec
        _selection_problems(p, s.selector, s.targetRef, s.targetRefs)
        for i, t in enumerate(s.tracing):
            at = ("spec", "tracing", i)
            if t.randomSamplingPercentage is not None and not 0 <= t.randomSamplingPercentage <= 100:
                p.add((*at, "randomSamplingPercentage"), "randomSamplingPercentage must be in range [0.0, 100.0]",
                      t.randomSamplingPercentage)
            for name, tag in t.customTags.items():
                kinds = [k for k in ("literal", "environment", "header") if getattr(tag, k) is not None]
                if len(kinds) != 1:
                    p.add((*at, "customTags", name), "a custom tag is one of literal, environment or header "
                          f"(found {', '.join(kinds) or 'none'})")
                elif kinds[0] != "literal" and not getattr(tag, kinds[0]).name:
                    p.add((*at, "customTags", name, kinds[0], "name"), "must not be empty")
            _providers(p, at, t.providers)
        for i, a in enumerate(s.accessLogging):
            at = ("spec", "accessLogging", i)
            _providers(p, at, a.providers)
            if a.filter is not None and a.filter.expression:
                try:
                    cel.parse(a.filter.expression)
                except cel.CelError as e:
                    p.add((*at, "filter", "expression"), str(e), a.filter.expression)
        p.raise_any("Telemetry")
        return self

    @property
    def access_filters(self) -> dict[int, cel.Node]:
        """``accessLogging`` index -> its parsed filter (validated above, so it parses)."""
        return {i: cel.parse(a.filter.expression) for i, a in enumerate(self.spec.accessLogging)
                if a.filter is not None and a.filter.expression}


def _providers(p: Problems, at: tuple[str | int, ...], providers: list[ProviderRef]) -> None:
    for k, ref in enumerate(providers):
        if not ref.name:
            p.add((*at, "providers", k, "name"), "provider name must not be empty")
