"""A configuration problem, carrying everything a user needs to find and fix it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ConfigError:
    """One problem with one resource.

    ``file`` is where the resource came from (a path, or ``kubernetes`` in cluster mode);
    ``resource`` is ``Kind namespace/name`` (or a best guess when the document is too
    broken to tell); ``field`` is a dotted path such as ``spec.http[0].route[1].weight``.
    """

    file: str
    resource: str
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}: {self.resource}" if self.resource else self.file
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {
            "file": self.file,
            "resource": self.resource,
            "field": self.field,
            "message": self.message,
            "severity": self.severity,
        }
