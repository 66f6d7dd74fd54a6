"""An injected pod's containers, run on this machine as the kubelet would run them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def container_args(args: Sequence[str], env: Mapping[str, str], files: Mapping[str, Path]) -> list[str]:
    """``args`` with ``$(VAR)`` expanded from ``env`` (the kubelet's substitution) and each
    path in ``files`` (a mount inside the pod) replaced by where the test put that file."""
    out = []
    for arg in args:
        for var, value in env.items():
            arg = arg.replace(f"$({var})", value)
        out.append(str(files[arg]) if arg in files else arg)
    return out
