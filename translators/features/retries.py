"""HTTPRetry -> RetryPolicy, and Istio's default policy when a route says nothing.

Istio retries every outbound route twice on connect-failure, refused-stream,
unavailable, cancelled and 503, trying another host each time; ``attempts: 0`` turns
retries off. Numbers in ``retryOn`` are status codes.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2

from translators.features._proto import to_any, u32
from translators.model import HTTPRetry

DEFAULT_ATTEMPTS = 2
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_STATUS_CODES = (503,)


def _previous_hosts() -> rc.RetryPolicy.RetryHostPredicate:
    return rc.RetryPolicy.RetryHostPredicate(
        name="envoy.retry_host_predicates.previous_hosts", typed_config=to_any(previous_hosts_pb2.PreviousHostsPredicate())
    )


def _previous_priorities() -> rc.RetryPolicy.RetryPriority:
    config = previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2)
    return rc.RetryPolicy.RetryPriority(name="envoy.retry_priorities.previous_priorities", typed_config=to_any(config))


def parse_retry_on(retry_on: str) -> tuple[str, list[int]]:
    conditions, codes = [], []
    for part in (p.strip() for p in retry_on.split(",")):
        if part.isdigit():
            codes.append(int(part))
        elif part:
            conditions.append(part)
    return ",".join(conditions), codes


def retry_policy(retries: HTTPRetry | None, consistent_hash: bool = False) -> rc.RetryPolicy | None:
    """The route's retry policy; None when retries are turned off.

    With consistent hashing the retry stays on the hashed host (no previous_hosts predicate).
    """
    out = rc.RetryPolicy(num_retries=u32(DEFAULT_ATTEMPTS), retry_on=DEFAULT_RETRY_ON,
                         host_selection_retry_max_attempts=5)
    if not consistent_hash:
        out.retry_host_predicate.append(_previous_hosts())
    if retries is None:
        out.retriable_status_codes.extend(DEFAULT_STATUS_CODES)
        return out
    if retries.attempts <= 0:
        return None
    out.num_retries.value = retries.attempts
    if retries.retryOn:
        conditions, codes = parse_retry_on(retries.retryOn)
        if codes and "retriable-status-codes" not in conditions:
            conditions = ",".join(c for c in (conditions, "retriable-status-codes") if c)
        out.retry_on = conditions
        out.retriable_status_codes.extend(codes)
    else:
        out.retriable_status_codes.extend(DEFAULT_STATUS_CODES)
    if retries.perTryTimeout is not None:
        out.per_try_timeout.CopyFrom(retries.perTryTimeout.proto())
    if retries.retryIgnorePreviousHosts is not None:
        del out.retry_host_predicate[:]
        if retries.retryIgnorePreviousHosts:
            out.retry_host_predicate.append(_previous_hosts())
    if retries.retryRemoteLocalities:
        out.retry_priority.CopyFrom(_previous_priorities())
    if retries.backoff is not None:
        out.retry_back_off.base_interval.CopyFrom(retries.backoff.proto())
    return out
