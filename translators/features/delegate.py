"""VirtualService delegation: an http entry of a root VirtualService may hand its matching
requests to a delegate VirtualService (one without hosts), whose entries are merged
under the root's, as Istio merges them.

Each delegate match must be a refinement of one of the root's matches (a conflict drops
the delegate entry); fields the delegate leaves out come from the root entry.
"""

from __future__ import annotations

from collections.abc import Callable

from translators.model import HTTPMatchRequest, HTTPRoute, StringMatch, VirtualService

#: (root VirtualService, field path, entry) -> where each merged entry came from
Entry = tuple[VirtualService, str, HTTPRoute]
Lookup = Callable[[str, str], VirtualService | None]  # (namespace, name) -> delegate


def _string_conflict(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    if root is None or leaf is None:
        return False
    if root.regex is not None or leaf.regex is not None:
        return True  # a regex cannot be intersected with anything
    if root.exact is not None:
        return leaf.exact != root.exact
    if root.prefix is not None:
        value = leaf.prefix if leaf.prefix is not None else leaf.exact
        return value is None or not value.startswith(root.prefix)
    return True


def _conflict(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> bool:
    pairs = [(root.uri, leaf.uri), (root.scheme, leaf.scheme), (root.method, leaf.method), (root.authority, leaf.authority)]
    pairs += [(root.headers.get(k), v) for k, v in leaf.headers.items()]
    pairs += [(root.withoutHeaders.get(k), v) for k, v in leaf.withoutHeaders.items()]
    pairs += [(root.queryParams.get(k), v) for k, v in leaf.queryParams.items()]
    if any(_string_conflict(r, v) for r, v in pairs):
        return True
    if root.ignoreUriCase != leaf.ignoreUriCase:
        return True
    if root.port and leaf.port and root.port != leaf.port:
        return True
    if root.sourceNamespace and leaf.sourceNamespace != root.sourceNamespace:
        return True
    if any(k in root.sourceLabels and root.sourceLabels[k] != v for k, v in leaf.sourceLabels.items()):
        return True
    return bool(root.gateways and leaf.gateways and not set(leaf.gateways) <= set(root.gateways))


def _joined(a: str, b: str) -> str:
    return f"{a}-{b}" if a and b else a or b


def _merge_match(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> HTTPMatchRequest:
    return leaf.model_copy(update={
        "name": _joined(root.name, leaf.name),
        "uri": leaf.uri or root.uri,
        "scheme": leaf.scheme or root.scheme,
        "method": leaf.method or root.method,
        "authority": leaf.authority or root.authority,
        "headers": {**root.headers, **leaf.headers},
        "withoutHeaders": {**root.withoutHeaders, **leaf.withoutHeaders},
        "queryParams": {**root.queryParams, **leaf.queryParams},
        "port": leaf.port or root.port,
        "sourceLabels": {**root.sourceLabels, **leaf.sourceLabels},
        "sourceNamespace": leaf.sourceNamespace or root.sourceNamespace,
        "gateways": leaf.gateways or root.gateways,
        "statPrefix": leaf.statPrefix or root.statPrefix,
    })


def _merge_matches(root: list[HTTPMatchRequest], leaf: list[HTTPMatchRequest]) -> list[HTTPMatchRequest] | None:
    """None when a delegate match refines none of the root's."""
    if not root or not leaf:
        return root or leaf
    out = []
    for sub in leaf:
        merged = [_merge_match(r, sub) for r in root if not _conflict(r, sub)]
        if not merged:
            return None
        out += merged
    return out


_INHERITED = ("rewrite", "directResponse", "timeout", "retries", "fault", "mirror", "mirrorPercent",
              "mirrorPercentage", "corsPolicy", "headers")


def merge(root: HTTPRoute, leaf: HTTPRoute) -> HTTPRoute | None:
    matches = _merge_matches(root.match, leaf.match)
    if matches is None:
        return None
    update: dict[str, object] = {"match": matches, "name": _joined(root.name, leaf.name)}
    update.update({f: getattr(root, f) for f in _INHERITED if getattr(leaf, f) is None and getattr(root, f) is not None})
    if not leaf.mirrors and root.mirrors:
        update["mirrors"] = root.mirrors
    return leaf.model_copy(update=update)


def flatten(vs: VirtualService, lookup: Lookup) -> tuple[list[Entry], list[tuple[str, str]], list[VirtualService]]:
    """``vs``'s http entries with delegates merged in: (entries, problems as (field, message),
    the delegates used)."""
    entries: list[Entry] = []
    problems: list[tuple[str, str]] = []
    used: list[VirtualService] = []
    for i, http in enumerate(vs.spec.http):
        field = f"spec.http[{i}]"
        if http.delegate is None:
            entries.append((vs, field, http))
            continue
        ns = http.delegate.namespace or vs.metadata.namespace
        leaf_vs = lookup(ns, http.delegate.name)
        if leaf_vs is None:
            problems.append((f"{field}.delegate", f"delegate VirtualService {ns}/{http.delegate.name} not found; "
                             "this entry is skipped"))
            continue
        if leaf_vs.spec.hosts:
            problems.append((f"{field}.delegate", f"VirtualService {ns}/{http.delegate.name} has hosts: only a "
                             "VirtualService without hosts can be a delegate; this entry is skipped"))
            continue
        used.append(leaf_vs)
        for j, leaf in enumerate(leaf_vs.spec.http):
            if leaf.delegate is not None:
                problems.append((f"{field}.delegate", f"{ns}/{http.delegate.name} spec.http[{j}] delegates again; "
                                 "Istio allows one level of delegation, so it is skipped"))
                continue
            merged = merge(http, leaf)
            if merged is None:
                problems.append((f"{field}.delegate", f"{ns}/{http.delegate.name} spec.http[{j}]: its matches "
                                 "conflict with this entry's; skipped"))
                continue
            entries.append((leaf_vs, f"spec.http[{j}]", merged))
    return entries, problems, used
