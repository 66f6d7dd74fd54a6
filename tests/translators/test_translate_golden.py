"""Golden tests: ``testdata/<case>.in.yaml`` -> ``<case>.{clusters,endpoints,listeners,routes,errors}.yaml``.

Regenerate with ``UPDATE_GOLDEN=1 pytest tests/translators`` and review the diff: it is the spec.
"""

from __future__ import annotations

import os

import pytest
from translate_cases import TESTDATA, translate_case

CASES = sorted(p.name.removesuffix(".in.yaml") for p in TESTDATA.glob("*.in.yaml"))


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    texts = translate_case(case)
    for kind, text in texts.items():
        golden = TESTDATA / f"{case}.{kind}.yaml"
        if os.environ.get("UPDATE_GOLDEN"):
            golden.write_text(text)
            continue
        assert golden.exists(), f"{golden.name} missing: run with UPDATE_GOLDEN=1"
        assert text == golden.read_text(), f"{golden.name} differs (UPDATE_GOLDEN=1 to regenerate, then review)"


def test_cases_found() -> None:
    assert len(CASES) >= 10
