"""Helpers for end-to-end tests: real Envoys, real upstreams, a real meshpilot server.

    from harness import EnvoyProcess, UpstreamServer, MeshpilotServer, request, eventually

Most tests want the fixtures of ``tests/conftest.py`` (``start_envoy``, ``start_upstream``,
``start_meshpilot``, ``proxy_ip``, ``config_dir``), which stop every process at teardown
and attach the logs of Envoy and meshpilot to a failing test's report.
"""

from harness.config_dir import ConfigDir
from harness.envoy import EnvoyError, EnvoyProcess, validate_bootstrap
from harness.meshpilot import MeshpilotError, MeshpilotServer
from harness.net import LoopbackAllocator, free_port, port_is_free, privileged_ports_allowed
from harness.traffic import eventually, request, request_full
from harness.upstream import UpstreamServer

__all__ = [
    "ConfigDir",
    "EnvoyError",
    "EnvoyProcess",
    "LoopbackAllocator",
    "MeshpilotError",
    "MeshpilotServer",
    "UpstreamServer",
    "eventually",
    "free_port",
    "port_is_free",
    "privileged_ports_allowed",
    "request",
    "request_full",
    "validate_bootstrap",
]
