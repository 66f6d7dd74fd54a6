"""Smoke test of `meshpilot demo --check`: the example mesh, its apps and real sidecars, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import LoopbackAllocator, privileged_ports_allowed

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_demo_check_passes(envoy_binary: str, loopback: LoopbackAllocator, tmp_path: Path) -> None:
    if not privileged_ports_allowed():
        pytest.skip("the example mesh's services listen on port 80: run as root or lower "
                    "net.ipv4.ip_unprivileged_port_start")
    # The example mesh as written, moved off 127.0.10.x/127.0.20.x so that a demo someone
    # is running, or another test session, does not collide with this one.
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    for f in sorted((REPO_ROOT / "examples" / "mesh").glob("*.yaml")):
        text = f.read_text().replace("127.0.10.", f"127.{loopback.octet}.210.")
        (mesh / f.name).write_text(text.replace("127.0.20.", f"127.{loopback.octet}.220."))

    result = subprocess.run(
        [sys.executable, "-m", "xds_server.app.cli", "demo", "--check", "--config-dir", str(mesh),
         "--log-dir", str(tmp_path / "logs"), "--startup-timeout", "60"],
        capture_output=True, text=True, timeout=170, check=False, cwd=REPO_ROOT,
        env={**os.environ, "MESHPILOT_ENVOY": envoy_binary},
    )
    logs = "\n".join(f"--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                     for p in sorted((tmp_path / "logs").glob("*.log")))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    assert "demo check: PASS" in result.stdout
