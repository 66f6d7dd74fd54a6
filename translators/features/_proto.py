"""Proto helpers shared by the feature modules."""

from __future__ import annotations

from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from translators.model.types import Percent


def to_any(msg: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg, deterministic=True)  # map fields in a stable order: the cache versions by bytes
    return out


def u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def fraction(p: Percent) -> percent_pb2.FractionalPercent:
    """Istio's ``Percent`` (0-100 with decimals) as parts per million, the way istiod writes it."""
    return percent_pb2.FractionalPercent(numerator=int(p.value * 10000), denominator=percent_pb2.FractionalPercent.MILLION)


def whole_percent(value: int) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(numerator=value, denominator=percent_pb2.FractionalPercent.HUNDRED)
