"""Parsing hostile or careless YAML: alias bombs, duplicate keys, oversized files.

Each refusal is a file-level ``ConfigError`` naming the file and line, so the file source
keeps serving what the file provided before. The loaders are checked both ways: on
libyaml (``CSafeLoader``, the default when PyYAML has it) and on the pure-Python fallback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml

from translators.model import DestinationRule, ResourceKey, VirtualService
from xds_server.sources import parse
from xds_server.sources.files import DirectorySource
from xds_server.sources.parse import ALIAS_BUDGET, MAX_BYTES, parse_text

DR = ResourceKey("DestinationRule", "default", "reviews")
VS = ResourceKey("VirtualService", "default", "reviews")


@pytest.fixture(params=["libyaml", "python"], autouse=True)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "libyaml":
        if not hasattr(yaml, "CSafeLoader"):
            pytest.skip("PyYAML was built without libyaml")
        monkeypatch.setattr(parse, "_Loader", parse._make_loader(yaml.CSafeLoader))
    else:
        monkeypatch.setattr(parse, "_Loader", parse._make_loader(yaml.SafeLoader))
    yield request.param


def laughs(levels: int = 9, width: int = 9) -> str:
    """A DestinationRule whose ``spec.x<levels>`` expands to ``width ** levels`` strings."""
    lines = [
        "apiVersion: networking.istio.io/v1",
        "kind: DestinationRule",
        "metadata: {name: reviews}",
        "spec:",
        "  host: reviews",
        '  x0: &x0 ["lol"]',
    ]
    for i in range(1, levels + 1):
        lines.append(f"  x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def one_error(text: str | bytes, file: str = "r.yaml", **kw: Any) -> str:
    parsed = parse_text(text, file, **kw)
    assert parsed.failed and parsed.documents == (), parsed
    (err,) = parsed.errors
    assert (err.file, err.resource, err.field, err.severity) == (file, "", "", "error")
    return str(err)


DR_TEXT = dedent("""\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata:
      name: reviews
    spec:
      host: reviews
      subsets:
      - name: v1
        labels: {version: v1}
    """)


# ---------------------------------------------------------------- alias bombs


@pytest.mark.timeout(2)
def test_billion_laughs_is_refused_in_milliseconds() -> None:
    text = laughs()  # 9 ** 9: 387 million strings once expanded
    assert len(text.encode()) < 700
    assert one_error(text) == (
        "r.yaml: line 10: YAML aliases expand to more than 10000 nodes; refused (an alias bomb?)"
    )


@pytest.mark.timeout(2)
def test_the_cost_does_not_grow_with_the_expansion() -> None:
    # 10 ** 60 nodes once expanded: only counting shared nodes can refuse this in time.
    assert "YAML aliases expand to more than" in one_error(laughs(levels=60, width=10))


@pytest.mark.timeout(2)
def test_alias_bomb_keeps_the_last_good_version_served(tmp_path: Path) -> None:
    f = tmp_path / "reviews.yaml"
    f.write_text(DR_TEXT)
    source = DirectorySource(tmp_path)
    good = source.load().resources[DR]
    f.write_text(laughs())
    result = source.load()
    assert result.resources[DR] is good
    assert [str(e) for e in result.errors] == [
        "reviews.yaml: line 10: YAML aliases expand to more than 10000 nodes; refused (an alias bomb?)"
    ]


def test_aliases_up_to_the_budget_are_fine_and_beyond_it_refused() -> None:
    anchor = "base: &b [" + ", ".join(str(i) for i in range(99)) + "]\n"  # 100 nodes
    fits = ALIAS_BUDGET // 100
    ok = parse.parse_text(anchor + "uses: [" + ", ".join(["*b"] * fits) + "]\n", "r.yaml")
    assert not ok.failed  # not a manifest, but it loaded
    over = anchor + "uses: [" + ", ".join(["*b"] * (fits + 1)) + "]\n"
    assert one_error(over) == (
        f"r.yaml: line 2: YAML aliases expand to more than {ALIAS_BUDGET} nodes; refused (an alias bomb?)"
    )


def test_a_recursive_alias_is_refused() -> None:
    assert (
        one_error("a: &a [1, *a]\n") == "r.yaml: line 1: a YAML alias refers to a collection that contains it"
    )
    assert one_error("a: &a {b: {c: *a}}\n") == (
        "r.yaml: line 1: a YAML alias refers to a collection that contains it"
    )


def test_ordinary_anchors_aliases_and_merge_keys_still_work() -> None:
    text = dedent("""\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: reviews
          labels: &labels {app: reviews, team: books}
          annotations: *labels
        spec:
          host: reviews
          trafficPolicy: &policy
            loadBalancer: {simple: ROUND_ROBIN}
            connectionPool: {tcp: {maxConnections: 10}}
          subsets:
          - name: v1
            labels: &v1 {version: v1}
            trafficPolicy: *policy
          - name: v2
            labels:
              <<: *v1
              version: v2
            trafficPolicy:
              <<: *policy
              loadBalancer: {simple: LEAST_REQUEST}
        """)
    (doc,) = parse_text(text, "r.yaml").documents
    assert doc.errors == ()
    dr = doc.resource
    assert isinstance(dr, DestinationRule)
    assert dr.metadata.labels == {"app": "reviews", "team": "books"}
    v1, v2 = dr.spec.subsets
    assert v1.labels == {"version": "v1"} and v2.labels == {"version": "v2"}  # the explicit key wins
    policy = dr.spec.trafficPolicy
    assert policy is not None and policy.loadBalancer is not None and policy.connectionPool is not None
    assert v1.trafficPolicy == policy
    assert v2.trafficPolicy is not None and v2.trafficPolicy.loadBalancer is not None
    assert v2.trafficPolicy.loadBalancer.simple == "LEAST_REQUEST"
    assert v2.trafficPolicy.connectionPool == policy.connectionPool  # merged in


@pytest.mark.parametrize(
    "text",
    [
        DR_TEXT,
        "a: !!set {x, y}\nb: !!omap [{a: 1}, {b: 2}]\nc: !!pairs [{a: 1}, {a: 2}]\n",
        "ints: [0, 7, -3, +4, 0x1F, 0o17, 017, 1_000, 0b101, '010', 190:20:30]\n",
        "floats: [1.5, -.inf, .NaN, 1e3, 6.8523015e+5]\nwhen: [2001-12-14, 2001-12-14t21:59:43.10-05:00]\n",
        "bools: [yes, No, TRUE, off, on]\nnulls: [~, null, '', \"\"]\nbin: !!binary aGVsbG8=\n",
        "k: &k key\n*k : value\n",
        "1: a\n'1': b\n1.0x: c\ntrue_: d\n",
        "base: &b {x: 1, y: 2}\nm:\n  <<: [*b, {x: 5, z: 0}]\n  w: 1\n",
        "---\n---\na: 1\n...\n---\n# only a comment\n",
        "s: !!str 12\nt: !!int '12'\nu: !!float 1\n",
    ],
)
def test_loads_what_pyyaml_loads(text: str) -> None:
    expected = list(yaml.load_all(text, Loader=yaml.SafeLoader))
    got = parse._load_yaml(text)
    # NaN is not equal to itself: compare its text
    assert repr(got) == repr(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a: !Custom [1]\n",
            "YAML syntax error at line 1, column 4: could not determine a constructor for the tag '!Custom'",
        ),
        (
            "a: !Custom x\n",
            "YAML syntax error at line 1, column 4: could not determine a constructor for the tag '!Custom'",
        ),
        ("? [a, b]\n: c\n", "line 1: a mapping key must be a scalar, not a list"),
        ("a: !!omap [{a: 1, b: 2}]\n", "line 1: omap items must be one-key mappings"),
        ("m:\n  <<: [1]\n", "line 2: `<<` merges a mapping or a list of mappings"),
    ],
)
def test_what_cannot_be_built_is_a_file_error(text: str, message: str) -> None:
    assert one_error(text) == f"r.yaml: {message}"


# ---------------------------------------------------------------- duplicate keys


def test_duplicate_top_level_key_names_file_line_and_key() -> None:
    text = DR_TEXT + "spec: {host: ratings}\n"
    assert one_error(text) == "r.yaml: line 10: duplicate key 'spec' in a mapping (first at line 5)"


def test_duplicate_nested_key_names_its_line() -> None:
    # The trial's mistake: two weights on one destination; the last one silently won.
    text = dedent("""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: reviews
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews, subset: v1}
              weight: 100
            - destination: {host: reviews, subset: v2}
              weight: 0
              weight: 100
        """)
    assert one_error(text) == "r.yaml: line 13: duplicate key 'weight' in a mapping (first at line 12)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\nb: 2\na: 3\n", "line 3: duplicate key 'a' in a mapping (first at line 1)"),
        ("a: {x: 1, 'x': 2}\n", "line 1: duplicate key 'x' in a mapping (first at line 1)"),
        ("- {b: 1}\n- b: 1\n  c: 2\n  b: 3\n", "line 4: duplicate key 'b' in a mapping (first at line 2)"),
        ("k: &k v\nm:\n  v: 1\n  *k : 2\n", "line 4: duplicate key 'v' in a mapping (first at line 3)"),
        ("1: a\n0x1: b\n", "line 2: duplicate key 1 in a mapping (first at line 1)"),
        ("a: 1\n'a ': 2\n? |\n  a\n: 3\n", None),  # different keys: "a", "a " and "a\n"
    ],
)
def test_duplicate_keys_in_any_form(text: str, message: str | None) -> None:
    if message is None:
        assert not parse_text(text, "r.yaml").failed
    else:
        assert one_error(text) == f"r.yaml: {message}"


def test_merged_keys_may_be_overridden_but_explicit_ones_not_repeated() -> None:
    assert parse._load_yaml("d: &d {a: 1}\nm: {<<: *d, a: 2}\n") == [{"d": {"a": 1}, "m": {"a": 2}}]
    assert one_error("d: &d {a: 1}\nm:\n  <<: *d\n  a: 2\n  a: 3\n") == (
        "r.yaml: line 5: duplicate key 'a' in a mapping (first at line 4)"
    )


def test_duplicate_keys_in_json_are_refused_too() -> None:
    text = '{"apiVersion": "v1", "kind": "Service", "kind": "Pod", "metadata": {"name": "x"}}'
    assert one_error(text, "r.json", is_json=True) == "r.json: duplicate key 'kind' in an object"


def test_duplicate_key_edit_keeps_serving_the_last_good_version(tmp_path: Path) -> None:
    f = tmp_path / "routing.yaml"
    f.write_text(DR_TEXT.replace("      host: reviews\n", "      host: reviews\n      trafficPolicy: {}\n"))
    source = DirectorySource(tmp_path)
    good = source.load().resources[DR]
    f.write_text(DR_TEXT + "  - name: v2\n    labels: {version: v2}\n    name: v3\n")
    result = source.load()
    assert result.resources[DR] is good
    assert [str(e) for e in result.errors] == [
        "routing.yaml: line 12: duplicate key 'name' in a mapping (first at line 10)"
    ]


# ---------------------------------------------------------------- size cap


def test_size_cap_on_parse_text() -> None:
    assert MAX_BYTES == 16 * 1024 * 1024
    assert one_error(b"# " + b"x" * 100, max_bytes=50) == "r.yaml: file is larger than 50 bytes; not read"
    # A str is measured in UTF-8 bytes: 40 three-byte characters are 120 bytes.
    assert one_error("# " + "€" * 40, max_bytes=100) == "r.yaml: file is larger than 100 bytes; not read"
    assert not parse_text("# " + "€" * 30, "r.yaml", max_bytes=100).failed


def test_size_cap_default_is_shared_by_the_file_source(tmp_path: Path) -> None:
    assert DirectorySource(tmp_path).max_file_bytes == MAX_BYTES
    f = tmp_path / "big.yaml"
    f.write_text(DR_TEXT)
    source = DirectorySource(tmp_path, max_file_bytes=len(DR_TEXT) + 10)
    good = source.load().resources[DR]
    f.write_text(DR_TEXT + "#" * 20 + "\n")
    result = source.load()
    assert result.resources[DR] is good
    assert [e.message for e in result.errors] == [f"file is larger than {len(DR_TEXT) + 10} bytes; not read"]


def test_a_valid_virtual_service_still_parses() -> None:
    text = dedent("""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - route:
            - {destination: {host: reviews, subset: v1}, weight: 90}
            - {destination: {host: reviews, subset: v2}, weight: 10}
        """)
    (doc,) = parse_text(text, "r.yaml").documents
    assert doc.errors == () and isinstance(doc.resource, VirtualService) and doc.key == VS
    assert [d.weight for d in doc.resource.spec.http[0].route] == [90, 10]
