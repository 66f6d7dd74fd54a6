"""HTTPFaultInjection -> the per-route config of Envoy's fault filter (delay and abort)."""

from __future__ import annotations

from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.v3 import percent_pb2

from translators.features._proto import fraction, whole_percent
from translators.model import HTTPFaultInjection

FILTER = "envoy.filters.http.fault"

#: gRPC status names Istio accepts in ``abort.grpcStatus``.
GRPC_STATUS = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
    "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}


def filter_config() -> fault_pb2.HTTPFault:
    """The listener-level fault filter: inert until a route's config says otherwise."""
    return fault_pb2.HTTPFault()


def http_fault(fault: HTTPFaultInjection) -> fault_pb2.HTTPFault | None:
    out = fault_pb2.HTTPFault()
    delay = fault.delay
    if delay is not None and delay.fixedDelay is not None:
        out.delay.fixed_delay.CopyFrom(delay.fixedDelay.proto())
        if delay.percentage is not None:
            out.delay.percentage.CopyFrom(fraction(delay.percentage))
        else:  # the deprecated integer percent; absent means 0 in Istio's API
            out.delay.percentage.CopyFrom(whole_percent(delay.percent or 0))
    abort = fault.abort
    if abort is not None:
        if abort.httpStatus is not None:
            out.abort.http_status = abort.httpStatus
        elif abort.grpcStatus is not None:
            out.abort.grpc_status = GRPC_STATUS[abort.grpcStatus]
        else:
            return out if out.HasField("delay") else None  # http2Error: Envoy has no such fault
        out.abort.percentage.CopyFrom(
            fraction(abort.percentage) if abort.percentage is not None
            else percent_pb2.FractionalPercent(numerator=0, denominator=percent_pb2.FractionalPercent.MILLION)
        )
    if not out.HasField("delay") and not out.HasField("abort"):
        return None
    return out
