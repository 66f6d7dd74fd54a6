"""Small value types of the Istio API: durations, percentages, RE2 regexes.

Each validates the way Istio (and Envoy behind it) does, so a value accepted here is one
Envoy accepts: durations of at least 1 ms in millisecond precision, percentages in
[0, 100], and regexes compiled by RE2 itself within Envoy's default program-size limit.
"""

from __future__ import annotations

import re
from typing import Annotated, NamedTuple

import re2
from google.protobuf import duration_pb2
from pydantic import BeforeValidator, Field, PlainSerializer

from translators.model.base import IstioModel

# ---------------------------------------------------------------- durations

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class Duration(NamedTuple):
    """A non-negative duration, in nanoseconds; written like Go's ``1h2m3.5s`` or ``100ms``."""

    nanos: int

    @property
    def seconds(self) -> float:
        return self.nanos / 1e9

    def proto(self) -> duration_pb2.Duration:
        return duration_pb2.Duration(seconds=self.nanos // 1_000_000_000, nanos=self.nanos % 1_000_000_000)

    def __str__(self) -> str:
        if self.nanos % 1_000_000_000 == 0:
            return f"{self.nanos // 1_000_000_000}s"
        return f"{self.nanos // 1_000_000}ms" if self.nanos % 1_000_000 == 0 else f"{self.nanos}ns"


def parse_duration(value: object) -> Duration:
    if isinstance(value, Duration):
        return value
    if isinstance(value, dict) and set(value) <= {"seconds", "nanos"}:  # the protobuf JSON object form
        return Duration(int(value.get("seconds", 0)) * 1_000_000_000 + int(value.get("nanos", 0)))
    if not isinstance(value, str) or not value:
        raise ValueError(f"a duration is a string such as '1.5s' or '100ms' (got {value!r})")
    text = value.strip()
    total, pos = 0.0, 0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"invalid duration {value!r}: write it like '1.5s', '100ms', '2m' or '1h'")
    return Duration(round(total))


def _positive_ms(value: object) -> Duration:
    """Istio's rule for timeouts and intervals: at least 1 ms, in millisecond precision."""
    d = parse_duration(value)
    if d.nanos < 1_000_000:
        raise ValueError(f"duration must be at least 1ms (got {value!r})")
    if d.nanos % 1_000_000:
        raise ValueError(f"duration must be a whole number of milliseconds (got {value!r})")
    return d


def _non_negative(value: object) -> Duration:
    return parse_duration(value)


_SERIALIZE = PlainSerializer(str, return_type=str)

#: A duration of at least 1 ms (timeouts, intervals, ejection times).
PositiveDuration = Annotated[Duration, BeforeValidator(_positive_ms), _SERIALIZE]
#: A duration that may be zero (a route ``timeout: 0s`` disables it; a cookie ``ttl: 0s``).
AnyDuration = Annotated[Duration, BeforeValidator(_non_negative), _SERIALIZE]

# ---------------------------------------------------------------- percentages


class Percent(IstioModel):
    """Istio's ``Percent``: ``{value: 12.5}``, in [0, 100]."""

    value: Annotated[float, Field(ge=0, le=100)] = 0.0


# ---------------------------------------------------------------- regexes

#: Envoy rejects a regex whose compiled RE2 program is larger than this (the default of
#: the runtime key ``re2.max_program_size.error_level``).
ENVOY_MAX_PROGRAM_SIZE = 100

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def check_regex(regex: str) -> str:
    """``regex`` if Envoy's RE2 accepts it, else a ValueError saying why, in RE2's words."""
    try:
        compiled = re2.compile(regex, _RE2_OPTIONS)
    except re2.error as e:
        reason = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"RE2 cannot compile {regex!r}: {reason}") from None
    if compiled.programsize > ENVOY_MAX_PROGRAM_SIZE:
        raise ValueError(f"regex {regex!r} compiles to an RE2 program of size {compiled.programsize}; "
                         f"Envoy rejects programs larger than {ENVOY_MAX_PROGRAM_SIZE}")
    return regex


#: A string that must compile as an RE2 regex Envoy accepts.
Regex = Annotated[str, BeforeValidator(lambda v: check_regex(v) if isinstance(v, str) else v)]
