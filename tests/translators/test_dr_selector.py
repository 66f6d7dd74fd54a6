"""DestinationRule ``workloadSelector``: a rule narrowed to the client workloads it selects,
looked up as istiod's SidecarScope.DestinationRule does (selected proxies first, then the
namespace's rule without a selector, else none), never exported, merged only with rules of
the same selector; and selected proxies share layers with proxies that see the same rules."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from translators import Translator, api
from translators.model import parse_resource
from translators.model.world import Proxy, World

HOST = "web.default.svc.cluster.local"
PLAIN = f"outbound|80||{HOST}"


def dr(name: str, ns: str, lb: str, subsets: list[str], selector: dict[str, str] | None = None,
       host: str = HOST) -> dict[str, Any]:
    spec: dict[str, Any] = {"host": host, "trafficPolicy": {"loadBalancer": {"simple": lb}},
                            "subsets": [{"name": s, "labels": {"version": s}} for s in subsets]}
    if selector is not None:
        spec["workloadSelector"] = {"matchLabels": selector}
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def base_docs() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        *({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"web-{v}", "namespace": "default", "labels": {"app": "web", "version": v}},
           "spec": {"containers": [{"name": "web"}]}, "status": {"phase": "Running", "podIP": f"10.0.0.{i}"}}
          for i, v in enumerate(("v1", "v2"), start=1)),
    ]


def mesh(*rules: dict[str, Any]) -> Translator:
    docs = [*base_docs(), *rules]
    resources = {r.key: r for r in (parse_resource(d, "mesh.yaml") for d in docs)}
    t = Translator()
    t.update(World(1, MappingProxyType(resources), frozenset(resources)))
    return t


def clusters(t: Translator, ns: str, **labels: str) -> dict[str, Cluster]:
    ip = f"10.9.{len(labels)}.{sum(map(len, labels.values())) % 250 + 1}"
    out = t.for_proxy(Proxy(id=f"sidecar~{ip}~c.{ns}", ip=ip, namespace=ns, labels=labels))
    return {name: msg for layer in out[api.CLUSTER] for name, msg in layer.resources.items()
            if name.endswith(HOST)}  # type: ignore[misc]


def test_selected_clients_get_their_rule_the_others_the_namespaces() -> None:
    t = mesh(dr("web", "default", "ROUND_ROBIN", ["v1"]),
             dr("web-canary", "default", "RANDOM", ["v1", "v2"], {"app": "canary"}))
    selected = clusters(t, "default", app="canary", extra="x")
    assert selected[PLAIN].lb_policy == Cluster.RANDOM
    assert set(selected) == {PLAIN, f"outbound|80|v1|{HOST}", f"outbound|80|v2|{HOST}"}
    other = clusters(t, "default", app="other")
    assert other[PLAIN].lb_policy == Cluster.ROUND_ROBIN and set(other) == {PLAIN, f"outbound|80|v1|{HOST}"}
    # Never exported: another namespace sees the namespace-wide rule, whatever its labels.
    assert clusters(t, "elsewhere", app="canary")[PLAIN].lb_policy == Cluster.ROUND_ROBIN
    # No warning about the selector, and the rule counts as used.
    assert not [e for e in t.errors if "web-canary" in e.resource], t.errors


def test_a_namespace_with_only_a_selector_rule_gives_its_other_proxies_none() -> None:
    """istiod: the client namespace's rules for the host are found, none applies, so none
    (not the service namespace's rule that every other namespace sees)."""
    t = mesh(dr("web", "default", "ROUND_ROBIN", ["v1"]),
             dr("web-team", "team", "RANDOM", ["t"], {"app": "x"}))
    assert set(clusters(t, "team", app="x")) == {PLAIN, f"outbound|80|t|{HOST}"}
    unselected = clusters(t, "team", app="y")
    assert set(unselected) == {PLAIN} and unselected[PLAIN].lb_policy == Cluster.LEAST_REQUEST  # no rule: defaults
    assert clusters(t, "default", app="x")[PLAIN].lb_policy == Cluster.ROUND_ROBIN


def test_the_first_selected_rule_wins_and_same_selectors_merge() -> None:
    t = mesh(dr("a-front", "default", "RANDOM", ["v1"], {"tier": "front"}),
             dr("b-canary", "default", "ROUND_ROBIN", ["v2"], {"app": "canary"}),
             dr("c-canary", "default", "LEAST_REQUEST", ["v3"], {"app": "canary"}))
    both = clusters(t, "default", app="canary", tier="front")
    assert both[PLAIN].lb_policy == Cluster.RANDOM and f"outbound|80|v1|{HOST}" in both  # a-front: first by name
    canary = clusters(t, "default", app="canary")
    # b-canary and c-canary merged: b's traffic policy, both subsets.
    assert canary[PLAIN].lb_policy == Cluster.ROUND_ROBIN
    assert {f"outbound|80|v2|{HOST}", f"outbound|80|v3|{HOST}"} <= set(canary)
    assert any("c-canary" in e.resource and "trafficPolicy" in e.field for e in t.errors)


def test_a_more_specific_host_wins_over_a_selected_wildcard() -> None:
    t = mesh(dr("exact", "default", "ROUND_ROBIN", ["v1"]),
             dr("wild", "default", "RANDOM", ["v2"], {"app": "canary"}, host="*.default.svc.cluster.local"))
    assert clusters(t, "default", app="canary")[PLAIN].lb_policy == Cluster.ROUND_ROBIN


def test_selected_proxies_of_one_namespace_share_layers() -> None:
    t = mesh(dr("web-canary", "default", "RANDOM", ["v2"], {"app": "canary"}))

    def layers(ip: str, **labels: str) -> list[object]:
        out = t.for_proxy(Proxy(id=f"sidecar~{ip}~c.default", ip=ip, namespace="default", labels=labels))
        return [layer.resources for layer in out[api.CLUSTER]]

    assert layers("10.9.0.1", app="canary", pod="1") == layers("10.9.0.2", app="canary", pod="2")
    assert layers("10.9.0.1", app="canary") != layers("10.9.0.3", app="other")


def test_a_subset_some_client_has_is_not_reported_missing_and_the_memo_holds(monkeypatch: Any) -> None:
    """The route check asks whether any client has the subset's cluster: a subset only a
    selector rule defines is fine, one no rule defines is reported. An edit of the selector
    rule that keeps its subsets leaves web's routes as they were (the subset sets are interned)."""
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "web", "namespace": "default"},
          "spec": {"hosts": ["web"], "http": [
              {"match": [{"headers": {"x": {"exact": "2"}}}], "route": [{"destination": {"host": "web", "subset": "v2"}}]},
              {"route": [{"destination": {"host": "web", "subset": "v9"}}]}]}}
    other = dr("other", "default", "RANDOM", [], host="other.default.svc.cluster.local")
    docs = [*base_docs(), dr("web", "default", "ROUND_ROBIN", ["v1"]),
            dr("web-canary", "default", "RANDOM", ["v2"], {"app": "canary"}), vs, other]
    resources = {r.key: r for r in (parse_resource(d, "mesh.yaml") for d in docs)}
    world = World(1, MappingProxyType(resources), frozenset(resources))
    t = Translator()
    t.update(world)
    missing = [e.message for e in t.errors if "is not defined by any DestinationRule" in e.message]
    assert len(missing) == 1 and "'v9'" in missing[0], missing

    import translators.translate as translate_module
    from translators import routes

    built: list[str] = []
    real = routes.virtual_host_part

    def counting(shape: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(shape.host)
        return real(shape, *args, **kwargs)

    monkeypatch.setattr(translate_module.routes, "virtual_host_part", counting)
    # The selector rule's load balancer changes, not its subsets: web is looked at again (its
    # rules changed) and finds every input of its routes the same object.
    r = parse_resource(dr("web-canary", "default", "LEAST_REQUEST", ["v2"], {"app": "canary"}), "mesh.yaml")
    t.update(world.evolve(MappingProxyType({**resources, r.key: r}), [r.key]))
    assert built == [], built
    assert clusters(t, "default", app="canary")[PLAIN].lb_policy == Cluster.LEAST_REQUEST  # (the edit took)
