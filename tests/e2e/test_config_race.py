"""Config directory edits racing pushes: rapid writes to files that must agree with each other
(a DestinationRule's subsets and the VirtualService routing to them), written atomically and not
(half a file on disk for a moment, truncated then rewritten, deleted then recreated), while big
changes are being pushed to a SotW and a delta Envoy. The end state is the last file contents,
served to every proxy, with no error left over from a state that was only ever on disk for a
moment."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from harness import ConfigDir, eventually

from tests.e2e.test_kill_mid_push import extra_services
from tests.e2e.test_traffic import PORT, Mesh, mesh, reviews_service  # noqa: F401  (mesh: the fixture)

EDITS = 24
EXTRA = 150


def rules(v1_ip: str, v2_ip: str, subset: str) -> list[dict[str, Any]]:
    """reviews with subsets v1 and ``subset`` (the v2 pods)."""
    docs = reviews_service(v1_ip, v2_ip)
    docs[-1]["spec"]["subsets"] = [{"name": "v1", "labels": {"version": "v1"}},
                                   {"name": subset, "labels": {"version": "v2"}}]
    return docs


def routing(subset: str, v1: int) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": v1},
                {"destination": {"host": "reviews", "subset": subset}, "weight": 100 - v1}]}]}}


def _text(content: Any) -> str:
    return yaml.safe_dump_all(content, sort_keys=False) if isinstance(content, list) else yaml.safe_dump(content)


def atomic(config: ConfigDir, name: str, content: Any) -> None:
    config.write(name, _text(content))


def in_two_halves(config: ConfigDir, name: str, content: Any) -> None:
    """An editor that writes in place: half a file (unparseable, or fewer resources) for a moment."""
    text = _text(content)
    with open(config.path / name, "w", encoding="utf-8") as f:
        f.write(text[: len(text) // 2])
        f.flush()
        time.sleep(0.003)
        f.write(text[len(text) // 2:])


def truncated_then_written(config: ConfigDir, name: str, content: Any) -> None:
    path = config.path / name
    path.write_text("", encoding="utf-8")
    time.sleep(0.003)
    path.write_text(_text(content), encoding="utf-8")


def deleted_then_recreated(config: ConfigDir, name: str, content: Any) -> None:
    (config.path / name).unlink(missing_ok=True)
    time.sleep(0.003)
    config.write(name, _text(content))


def renamed_over(config: ConfigDir, name: str, content: Any) -> None:
    """Written elsewhere under a name the watcher reads, then renamed over the file."""
    other = config.path / f"incoming-{name}"
    other.write_text(_text(content), encoding="utf-8")
    os.rename(other, config.path / name)


WRITERS: list[Callable[[ConfigDir, str, Any], None]] = [
    atomic, in_two_halves, truncated_then_written, deleted_then_recreated, renamed_over]


def test_edits_racing_pushes_end_in_the_last_state_on_every_proxy(mesh: Mesh) -> None:  # noqa: F811
    delta_ip = mesh.loopback.allocate()
    delta = mesh.sidecar(delta_ip, delta=True, name="delta-client")
    eventually(lambda: mesh.version("/", via=delta_ip) in ("v1", "v2"), timeout=15)
    envoys = {mesh.client_ip: mesh.client, delta_ip: delta}
    mesh.config.remove("reviews-routing.yaml")
    for k in range(EDITS):
        subset = f"s{k}"
        write = WRITERS[k % len(WRITERS)]
        # Order alternates: a moment where the route names a subset not defined yet, or the other way.
        files: list[tuple[str, Any]] = [("reviews.yaml", rules(mesh.v1.ip, mesh.v2.ip, subset)),
                                        ("routing.yaml", routing(subset, 0 if k == EDITS - 1 else 50))]
        if k % 2:
            files.reverse()
        # A big change in the same burst: EXTRA services come and go.
        files.append(("extra.yaml", extra_services(EXTRA if k % 2 else 0, mesh.v1.ip)))
        for name, content in files:
            write(mesh.config, name, content)
        time.sleep(0.02 * (k % 4))  # some edits land mid-push, some in the debounce window
    last = f"s{EDITS - 1}"
    final_extra = EXTRA if (EDITS - 1) % 2 else 0

    def final(ip: str) -> bool:
        clusters = set(envoys[ip].clusters())
        extra = {c for c in clusters if "||extra" in c}
        return (f"outbound|{PORT}|{last}|reviews.default.svc.cluster.local" in clusters
                and not any(f"|s{k}|" in c for c in clusters for k in range(EDITS - 1))
                and len(extra) == final_extra
                and mesh.split(10, via=ip) == collections.Counter({"v2": 10}))

    for ip in envoys:
        eventually(lambda ip=ip: final(ip), timeout=20, interval=0.1, message=f"{ip} serves the last files")
    # Nothing left over from a state that was on disk for a moment only.
    assert mesh.server.get("/debug/errors")[1] == []
    world = mesh.server.get("/debug/world")[1]["resources"]
    assert "VirtualService default/reviews" in world and sum("Service default/extra" in r for r in world) == final_extra
    # Every proxy has ACKed the latest of every type.
    for stream in mesh.server.get("/debug/syncz")[1]:
        for t, st in stream["types"].items():
            assert st.get("acked_nonce") == st["sent_nonce"], (stream["proxy"], t, st)
    assert not list(Path(mesh.config.path).glob("incoming-*"))
