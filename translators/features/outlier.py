"""OutlierDetection -> Envoy's outlier detection, as istiod sets it: success-rate
ejection off, consecutive 5xx / gateway errors enforced at 100 % when set, and the panic
threshold at minHealthPercent (0 unless set: few pods per service make panic mode
send traffic to ejected hosts)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.type.v3 import percent_pb2

from translators.features._proto import u32
from translators.model import OutlierDetection


def apply_outlier_detection(c: cluster_pb2.Cluster, od: OutlierDetection | None) -> None:
    if od is None:
        return
    out = outlier_detection_pb2.OutlierDetection(enforcing_success_rate=u32(0))
    five = od.consecutive5xxErrors  # the deprecated consecutiveErrors is ignored, as by istiod
    if five is not None:
        out.consecutive_5xx.value = five
        out.enforcing_consecutive_5xx.value = 100 if five > 0 else 0
    if od.consecutiveGatewayErrors is not None:
        out.consecutive_gateway_failure.value = od.consecutiveGatewayErrors
        out.enforcing_consecutive_gateway_failure.value = 100 if od.consecutiveGatewayErrors > 0 else 0
    if od.interval is not None:
        out.interval.CopyFrom(od.interval.proto())
    if od.baseEjectionTime is not None:
        out.base_ejection_time.CopyFrom(od.baseEjectionTime.proto())
    if od.maxEjectionPercent:
        out.max_ejection_percent.value = od.maxEjectionPercent
    if od.splitExternalLocalOriginErrors:
        out.split_external_local_origin_errors = True
        if od.consecutiveLocalOriginFailures:
            out.consecutive_local_origin_failure.value = od.consecutiveLocalOriginFailures
            out.enforcing_consecutive_local_origin_failure.value = 100
        out.enforcing_local_origin_success_rate.value = 0
    c.outlier_detection.CopyFrom(out)
    c.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=float(od.minHealthPercent or 0)))
