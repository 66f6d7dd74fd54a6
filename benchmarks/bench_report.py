"""Numbers in, a markdown table out: the machine, percentiles, formatting."""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections import Counter
from collections.abc import Sequence
from typing import Any


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu or platform.processor() or "unknown",
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values),
    }


class Latencies:
    """Many latencies in bounded memory: counts per 0.1%-wide bucket (exact min and max), for
    runs whose own memory is measured (the soak: a list of every sample grows with the run,
    and at 2,000 streams a change a second that list alone is ~3.7 MiB a minute). From 1 µs
    to 60 s that is at most ~18,000 buckets, however long the run."""

    STEP = math.log(1.001)
    FLOOR = 1e-6  # seconds; anything faster counts as this

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, values: Sequence[float]) -> None:
        for v in values:
            self.counts[round(math.log(max(v, self.FLOOR)) / self.STEP)] += 1
            self.min, self.max = min(self.min, v), max(self.max, v)
        self.n += len(values)

    def percentile(self, p: float) -> float:
        """Nearest rank, like ``percentile``, within 0.1%."""
        rank = max(1, math.ceil(p / 100 * self.n))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(self.max, max(self.min, math.exp(bucket * self.STEP)))
        return self.max

    def summary(self) -> dict[str, float]:
        if not self.n:
            return {}
        return {"n": self.n, "min": self.min, "p50": self.percentile(50), "p99": self.percentile(99), "max": self.max}


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def kib(n: int | None) -> str:
    return "-" if n is None else size(n * 1024)


def mark(value: float | None, target: float) -> str:
    if value is None:
        return ""
    return " ✅" if value < target else " ❌ (target < " + ms(target) + ")"


def table(r: dict[str, Any]) -> str:
    m, a = r["machine"], r["args"]
    rows: list[tuple[str, str]] = []

    def row(name: str, value: str) -> None:
        rows.append((name, value))

    row("Machine", f"{m['nproc']} × {m['cpu']}, Python {m['python']}, {m['platform']}, {m['date']}")
    row("Mesh", f"{a['services']} services × (Service, 2 Pods, VirtualService, DestinationRule) in `default`; "
        f"{r['mesh']['resources']:,} resources")
    row("Parse manifests (`parse_text`)", ms(r["mesh"]["parse_s"]))

    c = r["cold"]
    row("Cold: `Translator().update(world)`", ms(c["translate_s"]))
    row("Cold: first sidecar view (`XdsCache.view`, serializes everything once)", ms(c["view_s"]))
    row("**Cold total**", f"**{ms(c['total_s'])}**{mark(c['total_s'], 2.0)}")

    s = r["size"]
    for t in ("cds", "eds", "lds", "rds"):
        if t in s["types"]:
            row(f"Config per sidecar: {t.upper()}", f"{s['types'][t]['count']:,} resources, {size(s['types'][t]['bytes'])}")
    row("Config per sidecar: total", f"{s['count']:,} resources, {size(s['bytes'])} "
        f"(delta responses on the wire: {size(s['wire_bytes'])})")

    for kind, label in (("vs", "VirtualService weights 80/20 ⇄ 50/50"), ("dr", "DestinationRule LB policy"),
                        ("pod", "Pod IP (an endpoint)")):
        inc = r["incremental"].get(kind)
        if not inc:
            continue
        u = inc["update_s"]
        row(f"Change, in-process: {label}",
            f"`Pipeline.apply` (evolve, translate, cache) p50 {ms(u['p50'])}, max {ms(u['max'])} "
            f"(n={u['n']}); proxy view changed: {inc['changed']}")

    sc = r.get("scoped")
    if sc:
        t = sc["size"]
        row(f"Sidecar scope: config per proxy, {sc['imported']} of {a['services']} services imported "
            f"({sc['proxies']} proxies, {sc['windows']} Sidecars)",
            f"{t['count']:,} resources, {size(t['bytes'])} (unscoped {size(s['bytes'])}; "
            + ", ".join(f"{k.upper()} {size(v['bytes'])}" for k, v in t["types"].items()) + ")")
        for kind, label in (("vs", "a VirtualService (svc-0)"), ("pod", "a Pod IP (svc-2)")):
            ch = sc["changes"].get(kind)
            if ch:
                row(f"Sidecar scope: push fan-out of {label}",
                    f"{ch['notified']} of {sc['proxies']} proxies; `Pipeline.apply` {ms(ch['apply_s'])}")
    row("RSS: control plane after imports", kib(r["rss"].get("baseline_kb")))
    row("RSS: control plane after cold load", kib(r["rss"].get("cold_kb")))

    p = r.get("push")
    if p:
        k = a["clients"]
        if p.get("error"):
            row("Push", f"**failed**: {p['error']}")
        ramp = f"at most {a['ramp']} connecting at once" if a["ramp"] else "all at once"
        vhds = a.get("vhds", "off") == "on"
        row(f"{k} delta ADS clients ({a['per_channel']} streams per channel, {ramp}"
            f"{', routes over VHDS' if vhds else ''}): time to sync all "
            f"(CDS+EDS+LDS+RDS{'+VHDS' if vhds else ''} ACKed)",
            f"{ms(p.get('sync_s'))} ({p.get('sync_responses', 0):,} responses, {size(p.get('sync_bytes', 0))}; "
            f"CPU: control plane {ms(p.get('sync_server_cpu_s'))}, clients {ms(p.get('sync_clients_cpu_s'))})")
        row(f"RSS: control plane with {k} clients (peak)",
            f"{kib(r['rss'].get('connected_kb'))} ({kib(r['rss'].get('connected_hwm_kb'))})")
        row(f"RSS: client process, {k} clients (peak)",
            f"{kib(r['rss'].get('clients_kb'))} ({kib(r['rss'].get('clients_hwm_kb'))})")
        if p.get("update_s"):
            row(f"Push: `cache.update` with {k} watches (blocks the loop)",
                f"p50 {ms(p['update_s']['p50'])}, max {ms(p['update_s']['max'])}")
        if p.get("recv_s"):
            rv, ak = p["recv_s"], p["ack_s"]
            row(f"Push: change → received, over {k} clients × {p['reps']} reps",
                f"p50 {ms(rv['p50'])}, p99 {ms(rv['p99'])}, max {ms(rv['max'])}")
            row("**Push: change → ACKed (client side)**",
                f"**p50 {ms(ak['p50'])}, p99 {ms(ak['p99'])}, max {ms(ak['max'])}**{mark(ak['p99'], 1.0)}")
        if p.get("ack_max_per_rep_s"):
            row("Push: slowest client's ACK, per rep", ", ".join(ms(v) for v in p["ack_max_per_rep_s"]))
        if p.get("server_all_acked_s"):
            sa = p["server_all_acked_s"]
            row("Push: change → server has every ACK (per rep)", f"p50 {ms(sa['p50'])}, max {ms(sa['max'])}")
        if p.get("server_last_encoded_s"):
            se = p["server_last_encoded_s"]
            row("Push: change → server encoded the last response (per rep)",
                f"p50 {ms(se['p50'])}, max {ms(se['max'])}")
        if p.get("server_cpu_s"):
            row("Push: CPU per change, control plane / client process (p50)",
                f"{ms(p['server_cpu_s']['p50'])} / {ms(p['clients_cpu_s']['p50'])}; "
                f"control plane GC pauses p50 {ms(p['server_gc_s']['p50'])}")
        if p.get("push_bytes"):
            row("Push: bytes sent per change", f"{size(p['push_bytes'])} ({size(p['push_bytes'] / k)} per client)")
    ki = r.get("kube_inject")
    if ki:
        def msv(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f} ms"

        row(f"Sidecar injection: {ki['pods']} Pods created through the real API server and webhook "
            f"({ki['concurrency']} at once; `bench_kube.py --inject-pods`)",
            f"webhook p99 **{msv(ki['meshpilot_inject_p99_ms'])}** (p50 {msv(ki['meshpilot_inject_p50_ms'])}) "
            f"in meshpilot; p99 {msv(ki['apiserver_webhook_p99_ms'])} as the API server waited; Pod create p99 "
            f"{msv(ki['inject_p99_ms'])} injected, {msv(ki['plain_p99_ms'])} without the webhook; "
            f"{ki['injected']} of {ki['pods']} injected")
    row("Whole benchmark", ms(r["elapsed_s"]))

    width = max(len(n) for n, _ in rows)
    lines = [f"| {'Measure':<{width}} | Result |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {n:<{width}} | {v} |" for n, v in rows]
    return "\n".join(lines)
