"""Small value types of the Istio API and the checks behind them: durations, percentages,
RE2 regexes, integers of protobuf's sizes, header names and values, DNS names, labels.

Each validates the way Istio (and Envoy behind it) does, so a value accepted here is one
Envoy accepts: durations of at least 1 ms in millisecond precision, percentages in
[0, 100], regexes compiled by RE2 itself within the program-size limit our bootstrap gives Envoy, and
header values that Envoy's substitution formatter can parse.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated, NamedTuple

import re2
from google.protobuf import duration_pb2
from pydantic import BeforeValidator, Field, PlainSerializer

from translators.model.base import IstioModel

# ---------------------------------------------------------------- integers

#: Istio's ``int32`` fields; negative values are refused by Istio's validation anyway.
Int32 = Annotated[int, Field(ge=0, le=2**31 - 1)]
#: ``uint32`` and ``UInt32Value`` fields.
UInt32 = Annotated[int, Field(ge=0, le=2**32 - 1)]

# ---------------------------------------------------------------- durations

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
#: Go's time.Duration is an int64 of nanoseconds (about 2562047h).
MAX_NANOS = 2**63 - 1


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


def _checked(nanos: int, value: object) -> Duration:
    if nanos < 0:
        raise ValueError(f"duration must not be negative (got {value!r})")
    if nanos > MAX_NANOS:
        raise ValueError(f"duration {value!r} is too long (at most 2562047h)")
    return Duration(nanos)


def parse_duration(value: object) -> Duration:
    """Go's duration syntax (``1h``, ``1.5s``, ``100ms``, ``2m30s``, ``0``), or protobuf's
    ``{seconds, nanos}`` object; exact (no float rounding), never negative."""
    if isinstance(value, Duration):
        return value
    if isinstance(value, dict) and set(value) <= {"seconds", "nanos"}:  # the protobuf JSON object form
        seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seconds, nanos)):
            raise ValueError(f"seconds and nanos of a duration are integers (got {value!r})")
        return _checked(seconds * 1_000_000_000 + nanos, value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a duration is a string such as '1.5s' or '100ms' (got {value!r})")
    text = value.strip()
    negative = text[0] == "-"
    body = text[1:] if text[0] in "+-" else text
    if body == "0":
        return Duration(0)
    total, pos = Fraction(0), 0
    for m in _PART.finditer(body):
        if m.start() != pos:
            break
        total += Fraction(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f"invalid duration {value!r}: write it like '1.5s', '100ms', '2m' or '1h'")
    nanos = int(total)  # Go truncates below a nanosecond
    return _checked(-nanos if negative else nanos, value)


def _positive_ms(value: object) -> Duration:
    """Istio's rule for timeouts and intervals: at least 1 ms, in millisecond precision."""
    d = parse_duration(value)
    if d.nanos < 1_000_000:
        raise ValueError(f"duration must be at least 1ms (got {value!r})")
    if d.nanos % 1_000_000:
        raise ValueError(f"duration must be a whole number of milliseconds (got {value!r})")
    return d


def _zero_or_positive_ms(value: object) -> Duration:
    d = parse_duration(value)
    return d if d.nanos == 0 else _positive_ms(value)


_SERIALIZE = PlainSerializer(str, return_type=str)

#: A duration of at least 1 ms (timeouts, intervals, ejection times).
# Written as strings (the input declared for JSON schemas and the CRDs, as in Istio's).
PositiveDuration = Annotated[Duration, BeforeValidator(_positive_ms, json_schema_input_type=str), _SERIALIZE]
#: 0 (meaning "off") or at least 1 ms (a TCP idle timeout).
ZeroOrPositiveDuration = Annotated[Duration, BeforeValidator(_zero_or_positive_ms, json_schema_input_type=str),
                                   _SERIALIZE]
#: Any non-negative duration (a cookie ``ttl: 0s`` makes a session cookie).
AnyDuration = Annotated[Duration, BeforeValidator(parse_duration, json_schema_input_type=str), _SERIALIZE]

# ---------------------------------------------------------------- percentages


class Percent(IstioModel):
    """Istio's ``Percent``: ``{value: 12.5}``, in [0, 100]."""

    value: Annotated[float, Field(ge=0, le=100)] = 0.0


# ---------------------------------------------------------------- regexes

#: Envoy rejects a regex whose compiled RE2 program is larger than the runtime key
#: ``re2.max_program_size.error_level``: 100 by default, which refuses ordinary regexes
#: such as ``[a-z]{50}``. istiod's bootstrap raises it to 32768, and so does
#: ``meshpilot bootstrap`` (xds_server/local/bootstrap.py); this is the limit checked.
ENVOY_MAX_PROGRAM_SIZE = 32768

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def check_regex(regex: str) -> str:
    """``regex`` if Envoy's RE2 accepts it, else a ValueError saying why, in RE2's words."""
    if not regex:
        raise ValueError("regex must not be empty")
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
Regex = Annotated[str, BeforeValidator(lambda v: check_regex(v) if isinstance(v, str) else v, json_schema_input_type=str)]

# ---------------------------------------------------------------- headers

# RFC 7230 token characters: what Istio allows in a header name to match on.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Envoy refuses NUL, CR and LF in header names and in values it writes (redirects, rewrites).
_ENVOY_FORBIDDEN = re.compile(r"[\x00\r\n]")
# Istio refuses every control character but tab in a header value.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# One command of Envoy's substitution format: %NAME%, %NAME(args)%, %NAME(args):LENGTH%.
_COMMAND = re.compile(r"%([A-Z]|[A-Z][A-Z0-9_]*[A-Z0-9])(\((.*?)\))?(:[1-9][0-9]*)?%", re.S)


def is_token(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None


def check_envoy_text(value: str, what: str) -> str:
    """For strings Envoy copies into headers (redirect target, host rewrite...)."""
    if _ENVOY_FORBIDDEN.search(value):
        raise ValueError(f"{what} {value!r} contains NUL, CR or LF, which Envoy refuses")
    return value


def header_value_problem(value: str) -> str | None:
    """Why Envoy would refuse ``value`` as the value of a header it adds, or None.

    Envoy reads it as a substitution format: ``%`` starts a command such as
    ``%DOWNSTREAM_REMOTE_ADDRESS%`` or ``%REQ(x-id)%``, and a literal ``%`` is ``%%``.
    Whether a command name exists is Envoy's business (its list depends on its build).
    """
    if _CONTROL.search(value):
        return f"header value {value!r} contains a control character"
    if len(value.encode()) > 16384:
        return "header value is longer than Envoy's limit of 16384 bytes"
    pos = 0
    while (pos := value.find("%", pos)) >= 0:
        if value.startswith("%%", pos):
            pos += 2
            continue
        m = _COMMAND.match(value, pos)
        if m is None:
            return (f"header value {value!r}: '%' at position {pos} does not start a command such as "
                    "%HOSTNAME% or %REQ(x-name)%; write a literal % as %%")
        pos = m.end()
    return None


# ---------------------------------------------------------------- names

_DNS1123_LABEL = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_WILDCARD_LABEL = re.compile(r"\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_QUALIFIED_NAME = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def is_dns1123_label(value: str) -> bool:
    """Istio's DNS-1123 label (it allows upper case): namespaces, subset names."""
    return len(value) <= 63 and _DNS1123_LABEL.fullmatch(value) is not None


def domain_problem(domain: str) -> str | None:
    """Istio's ValidateWildcardDomain: a DNS name whose first label may be a wildcard."""
    if not domain:
        return "empty host name"
    if len(domain) > 255:
        return f"host name {domain!r} is too long (at most 255 characters)"
    first, _, rest = domain.partition(".")
    if len(first) > 63 or _WILDCARD_LABEL.fullmatch(first) is None:
        return f"host name {domain!r} is invalid (label {first!r})"
    if not rest:
        return None
    labels = rest.split(".")
    if labels[-1].isdigit():
        return f"host name {domain!r} is invalid (the top-level domain {labels[-1]!r} is all digits)"
    for i, label in enumerate(labels):
        if i == len(labels) - 1 and label == "":
            return None  # a trailing dot, as in 'istio.io.'
        if not is_dns1123_label(label):
            return f"host name {domain!r} is invalid (label {label!r})"
    return None


def label_problem(key: str, value: str) -> str | None:
    """Kubernetes label syntax, as Istio checks it (``labels.Instance.Validate``)."""
    prefix, slash, name = key.rpartition("/")
    if not name or len(name) > 63 or _QUALIFIED_NAME.fullmatch(name) is None or (slash and not prefix):
        return f"invalid label key {key!r}"
    if prefix and (len(prefix) > 253 or not all(is_dns1123_label(p) for p in prefix.split("."))):
        return f"invalid label key {key!r} (bad DNS prefix)"
    if value and _QUALIFIED_NAME.fullmatch(value) is None:
        return f"invalid label value {value!r} for {key!r}"
    return None
