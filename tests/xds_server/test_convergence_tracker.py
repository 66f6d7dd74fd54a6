"""The convergence tracker on fake ACKs: pending, NACKed, converged, and the histogram."""

from __future__ import annotations

from prometheus_client import REGISTRY

from xds_server.xds.convergence import ConvergenceTracker


def observed() -> float:
    return REGISTRY.get_sample_value("meshpilot_proxy_convergence_seconds_count") or 0.0


def test_counts_acked_nacked_and_pending_per_change() -> None:
    before = observed()
    t = ConvergenceTracker()
    t.begin(5, 4)
    t.sent(1, 5, ["a", "b"])  # two responses (say CDS and EDS): converged only once both are ACKed
    t.sent(2, 5, ["c"])
    t.sent(3, 5, ["d"])
    t.sent(4, 5, [])  # nothing it subscribes to changed: already there
    t.answered(1, "a", True)
    [change] = t.as_list()
    assert (change["acked"], change["pending"]) == (1, 3)  # only stream 4 so far
    t.answered(1, "b", True)
    t.answered(2, "c", False)
    t.answered(2, "c", True)  # a repeated answer to a nonce already settled changes nothing
    t.answered(3, "zz", True)  # unknown nonce
    t.answered(9, "d", True)  # another stream's nonce
    [change] = t.as_list()
    assert change["version"] == 5 and change["proxies"] == 4
    assert (change["acked"], change["nacked"], change["pending"]) == (2, 1, 1)
    assert change["ack_ms"]["max"] is not None and change["ack_ms"]["p50"] <= change["ack_ms"]["max"]
    assert observed() - before == 2  # one observation per converged proxy, none for the NACK
    t.answered(3, "d", True)
    assert t.as_list()[0]["pending"] == 0 and observed() - before == 3


def test_newest_first_bounded_and_closed_streams_forgotten() -> None:
    t = ConvergenceTracker(keep=3)
    for g in range(1, 6):
        t.begin(g, 1)
    t.begin(5, 1)  # the same generation again is not a new change
    assert [c["version"] for c in t.as_list()] == [5, 4, 3]
    t.sent(1, 2, ["x"])  # a generation no longer kept: ignored
    t.sent(1, 5, ["y"])
    t.closed(1)
    t.answered(1, "y", True)  # the stream is gone: its change stays pending
    assert t.as_list()[0]["pending"] == 1
    assert t.as_list()[0]["ack_ms"] == {"p50": None, "p99": None, "max": None}


def test_a_stream_that_skipped_a_change_settles_it_with_the_newer_one() -> None:
    t = ConvergenceTracker()
    t.begin(1, 2)
    t.begin(2, 2)
    # Stream 1 was told of both before it ran and sent only generation 2; stream 2 sent each.
    t.sent(1, 2, ["a"], notified=[1, 2])
    t.sent(2, 1, ["b"], notified=[1])
    t.sent(2, 2, ["c"], notified=[2])
    t.answered(1, "a", False)
    t.answered(2, "b", True)
    new, old = t.as_list()
    assert (old["version"], old["acked"], old["nacked"], old["pending"]) == (1, 1, 1, 0)
    assert (new["version"], new["acked"], new["nacked"], new["pending"]) == (2, 0, 1, 1)
    t.answered(2, "c", True)
    assert t.as_list()[0]["pending"] == 0


def test_state_stays_bounded_over_many_changes_with_late_answers() -> None:
    """A soak in miniature: many changes, each stream skipping every other one and answering
    only after its change has been forgotten; nothing per change outlives ``keep``."""
    t = ConvergenceTracker(keep=5)
    streams = range(1, 21)
    for g in range(1, 2001):
        t.begin(g, len(streams))
        if g % 2 == 0:
            for s in streams:  # told of g-1 and g, sends g (covering g-1)
                t.sent(s, g, [f"{s}-{g}"], notified=[g - 1, g])
        late = g - 6  # answers arrive once that change is no longer kept
        if late > 0 and late % 2 == 0:
            for s in streams:
                assert t.answered(s, f"{s}-{late}", True) is None
    assert len(t.changes) == len(t._by_generation) == 5
    assert len(t._covers) <= 5 * len(streams)  # only changes still kept, not one per change
    assert sum(map(len, t._nonces.values())) <= 5 * len(streams)
