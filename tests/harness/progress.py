"""Progress lines that get past pytest's output capture: a cold build takes minutes."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest


def progress_printer(config: pytest.Config) -> Callable[[str], None]:
    capman = config.pluginmanager.getplugin("capturemanager")

    def show(line: str) -> None:
        if capman is None:
            print(line, flush=True)
            return
        with capman.global_and_fixture_disabled():
            print(line, file=sys.stderr, flush=True)

    return show
