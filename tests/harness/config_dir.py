"""A test's directory of mesh manifests, edited the way a user edits files (atomically)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


class ConfigDir:
    """``write("routing.yaml", docs)`` replaces a file in one rename, so a watcher never sees half of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, content: str | dict[str, Any] | Iterable[dict[str, Any]]) -> Path:
        if isinstance(content, dict):
            text = yaml.safe_dump(content, sort_keys=False)
        elif isinstance(content, str):
            text = content
        else:
            text = yaml.safe_dump_all(list(content), sort_keys=False)
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
        return target

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def copy_from(self, source: Path) -> ConfigDir:
        """Copy every manifest of ``source`` (e.g. examples/mesh) here."""
        for f in sorted(source.iterdir()):
            if f.suffix in (".yaml", ".yml"):
                shutil.copy(f, self.path / f.name)
        return self

    def __str__(self) -> str:
        return str(self.path)
