"""The security.istio.io policies of one workload, on the inbound side of its sidecar:
which AuthorizationPolicies and RequestAuthentications select it, and the filters (and
JWKS clusters) they make.

Selection is istiod's: a policy in the root namespace applies mesh-wide, one elsewhere
to its own namespace; ``selector.matchLabels`` narrows it to the workloads with those
labels. ``targetRef``/``targetRefs`` of kind Service (or ServiceEntry) select the
workloads of that service in the policy's namespace: istiod honours such references at
waypoints only (and ignores the policy on sidecars); without waypoints meshpilot applies
them at the sidecars of the service's workloads. Gateway and GatewayClass references
select nothing here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from translators.errors import ConfigError
from translators.features import authz, jwt
from translators.model import Resource
from translators.model.index import ResourceIndex
from translators.model.mesh import MeshConfig
from translators.model.names import outbound_cluster
from translators.model.registry import MeshService
from translators.model.security import AuthorizationPolicy, PolicyTargetReference, RequestAuthentication

#: Kinds whose change can change a workload's inbound policy.
KINDS = frozenset({AuthorizationPolicy.KIND, RequestAuthentication.KIND, MeshConfig.KIND})

Policy = AuthorizationPolicy | RequestAuthentication


@dataclass(frozen=True, eq=False)
class InboundPolicy:
    """What the policies of one workload add to its inbound listeners and clusters."""

    http_filters: tuple[hcm.HttpFilter, ...] = ()  # ahead of the HTTP listeners' own filters
    network_filters: tuple[lc.Filter, ...] = ()  # ahead of tcp_proxy on TCP ports
    clusters: tuple[cluster_pb2.Cluster, ...] = ()  # to fetch JWKS from outside the registry
    errors: tuple[ConfigError, ...] = ()


NO_POLICY = InboundPolicy()

_SERVICE = ("core", "Service")
_SERVICE_ENTRY = ("networking.istio.io", "ServiceEntry")


def _targets(ref: PolicyTargetReference, namespace: str, services: Sequence[MeshService]) -> bool:
    kind = (ref.canonical_group, ref.kind)
    if kind not in (_SERVICE, _SERVICE_ENTRY):
        return False
    return any(s.shape.name == ref.name and s.shape.namespace == namespace and s.shape.kubernetes == (kind == _SERVICE)
               for s in services)


def selects(policy: Policy, labels: Mapping[str, str], services: Sequence[MeshService]) -> bool:
    """Whether ``policy`` (in the workload's namespace or the root one) applies to the
    workload with ``labels`` that ``services`` select."""
    spec = policy.spec
    refs = spec.targetRefs or ([spec.targetRef] if spec.targetRef is not None else [])
    if refs:
        return any(_targets(r, policy.metadata.namespace, services) for r in refs)
    return spec.selector is None or all(labels.get(k) == v for k, v in spec.selector.matchLabels.items())


def selected(index: ResourceIndex, root_namespace: str, namespace: str, labels: Mapping[str, str],
             services: Sequence[MeshService]) -> tuple[Policy, ...]:
    """The policies of a workload: AuthorizationPolicies (root namespace first), then
    RequestAuthentications (own namespace first), each namespace's by name."""
    out: list[Policy] = []
    for kind, order in ((AuthorizationPolicy.KIND, (root_namespace, namespace)),
                        (RequestAuthentication.KIND, (namespace, root_namespace))):
        for ns in dict.fromkeys(order):
            found = index.in_namespace(kind, ns)
            for name in sorted(found):
                policy = found[name]
                assert isinstance(policy, AuthorizationPolicy | RequestAuthentication)
                if selects(policy, labels, services):
                    out.append(policy)
    return tuple(out)


def needs_registry(policies: Iterable[Policy]) -> bool:
    """Whether the translation of ``policies`` looks services up (ext_authz, JWKS)."""
    return any((isinstance(p, AuthorizationPolicy) and p.spec.action == "CUSTOM")
               or (isinstance(p, RequestAuthentication) and any(r.jwksUri and not r.jwks for r in p.spec.jwtRules))
               for p in policies)


# ---------------------------------------------------------------- registry look-ups


def provider_cluster(services: Mapping[str, MeshService], service: str, port: int) -> tuple[str, str] | str:
    """Istio's LookupCluster for an extension provider's ``service`` (``host`` or
    ``namespace/host``): (host, cluster), or why there is none. The port must be one of
    the service's: Envoy refuses a gRPC service on a cluster it does not have."""
    ns, slash, host = service.rpartition("/")
    svc = services.get(host)
    if svc is None or (slash and ns not in ("", "*") and svc.shape.namespace != ns):
        return f"could not find service {service} in the service registry"
    if not any(p.number == port for p in svc.shape.ports):
        return f"service {svc.host} has no port {port}"
    return svc.host, outbound_cluster(port, svc.host)


def registry_cluster(services: Mapping[str, MeshService], host: str, port: int) -> str | None:
    svc = services.get(host)
    if svc is None or not any(p.number == port for p in svc.shape.ports):
        return None
    return outbound_cluster(port, host)


def providers(mesh: MeshConfig | None, services: Mapping[str, MeshService]) -> tuple[dict[str, authz.Provider], list[ConfigError]]:
    return authz.resolve_providers(mesh, lambda service, port: provider_cluster(services, service, port))


# ---------------------------------------------------------------- a workload's filters


def inbound_policy(policies: Sequence[Policy], ext_providers: dict[str, authz.Provider],
                   services: Mapping[str, MeshService]) -> InboundPolicy:
    """The inbound filters of a workload from its ``policies`` (``selected``), in istiod's
    order: CUSTOM (ext_authz), JWT authentication, then AUDIT, DENY, ALLOW."""
    if not policies:
        return NO_POLICY
    aps = authz.Selected.of(p for p in policies if isinstance(p, AuthorizationPolicy))
    rules = [(p, i, r) for p in policies if isinstance(p, RequestAuthentication) for i, r in enumerate(p.spec.jwtRules)]
    custom, local, errors = authz.http_filters(aps, ext_providers)
    config, clusters, jwt_errors = jwt.authentication(rules, lambda host, port: registry_cluster(services, host, port))
    http = [*custom, *([jwt.http_filter(config)] if config is not None else []), *local]
    return InboundPolicy(tuple(http), tuple(authz.network_filters(aps, ext_providers)), tuple(clusters),
                         tuple(errors + jwt_errors))


# ---------------------------------------------------------------- per policy


def policy_warnings(policies: Iterable[Resource]) -> list[ConfigError]:
    """What Istio warns about a policy by itself (not per workload)."""
    out: list[ConfigError] = []
    for p in policies:
        if not isinstance(p, AuthorizationPolicy | RequestAuthentication):
            continue
        spec = p.spec
        refs = spec.targetRefs or ([spec.targetRef] if spec.targetRef is not None else [])
        for i, ref in enumerate(refs):
            if (ref.canonical_group, ref.kind) not in (_SERVICE, _SERVICE_ENTRY):
                field = "spec.targetRef" if spec.targetRef is not None and not spec.targetRefs else f"spec.targetRefs[{i}]"
                out.append(ConfigError(p.source, str(p.key), field, f"a {ref.kind} reference applies to Gateway API "
                                       "gateways, which meshpilot does not run: this policy selects no workload", "warning"))
        if spec.selector is not None and not spec.selector.matchLabels:
            out.append(ConfigError(p.source, str(p.key), "spec.selector", "workload selector specified without labels",
                                   "warning"))
        if isinstance(p, AuthorizationPolicy) and p.spec.action == "DENY":
            for i, rule in enumerate(p.spec.rules):
                tcp_from = any(f.source is not None and f.source.tcp_fields for f in rule.from_)
                tcp_to = any(t.operation is not None and (t.operation.ports or t.operation.notPorts) for t in rule.to)
                if (rule.from_ and not rule.to and not tcp_from) or (rule.to and not tcp_to):
                    out.append(ConfigError(p.source, str(p.key), f"spec.rules[{i}]",
                                           "configured AuthorizationPolicy will deny all traffic to TCP ports under its "
                                           "scope due to the use of only HTTP attributes in a DENY rule; it is "
                                           "recommended to explicitly specify the port", "warning"))
    return out
