"""The Grafana dashboard shipped in the chart asks only for metrics a running `meshpilot serve` exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import ConfigDir, MeshpilotServer

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "meshpilot" / "dashboards" / "meshpilot.json"
#: PromQL words that look like metric names: keywords and aggregation modifiers.
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                      "offset", "le", "inf", "nan"})
#: Sample names per exposed family, by its type (the text format names a counter's family with its _total).
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "untyped": ("",), "info": ("_info",)}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers not called as functions, outside label
    matchers, grouping clauses, range selectors, strings and Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def exposed(metrics_text: str) -> set[str]:
    out = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out.update(name + s for s in SUFFIXES.get(kind, ("",)))
            if kind == "counter" and not name.endswith("_total"):
                out.add(name + "_total")
        elif line and not line.startswith("#"):
            out.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return out


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def test_metric_names_are_parsed_from_promql() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"$instance"}[5m])))') == {
        "a_bucket"}
    assert metric_names("sum(rate(x_sum[$__rate_interval])) / sum(rate(x_count[1m])) or vector(0)") == {"x_sum", "x_count"}


def test_every_dashboard_expression_names_exposed_metrics(
        config_dir: ConfigDir, start_meshpilot: Callable[..., MeshpilotServer]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    # Template variables: label_values(METRIC, label) -> METRIC
    exprs += [re.sub(r"^label_values\((\w+),.*", r"\1", v["query"]["query"])
              for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    assert len(exprs) >= 15
    server = start_meshpilot(config_dir)
    status, text = server.get("/metrics")
    assert status == 200
    available = exposed(text)
    assert "meshpilot_xds_pushes_total" in available and "meshpilot_proxy_convergence_seconds_bucket" in available
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= available, (expr, sorted(names - available))
    # Every meshpilot metric family the server defines has a panel.
    families = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE meshpilot_")}
    families = {f for f in families if not f.endswith("_created")}
    used = {n for e in exprs for n in metric_names(e)}
    assert all(any(u.startswith(f) for u in used) for f in families), sorted(
        f for f in families if not any(u.startswith(f) for u in used))
