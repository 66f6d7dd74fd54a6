"""The debouncer, on a clock the test moves by hand: exact, and no test waits for real time."""

from __future__ import annotations

import asyncio

import pytest

from xds_server.app.debounce import Debouncer


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + seconds, fut))
        await fut

    async def advance(self, seconds: float) -> None:
        self.t += seconds
        for wake, fut in list(self._sleepers):
            if wake <= self.t + 1e-9:
                self._sleepers.remove((wake, fut))
                fut.set_result(None)
        for _ in range(5):  # let woken tasks run to their next await
            await asyncio.sleep(0)


@pytest.fixture
async def harness():
    clock = FakeClock()
    pushes: list[tuple[object, int, float]] = []
    gate = asyncio.Event()
    gate.set()

    async def push(value: object, merged: int) -> None:
        pushes.append((value, merged, clock.now()))
        await gate.wait()

    deb: Debouncer[object] = Debouncer(push, quiet=0.1, max_delay=1.0, clock=clock)
    task = asyncio.create_task(deb.run())
    await asyncio.sleep(0)
    yield deb, clock, pushes, gate
    task.cancel()


async def test_a_lone_change_is_pushed_at_once(harness):
    deb, clock, pushes, _ = harness
    deb.submit("a")
    await clock.advance(0)
    assert pushes == [("a", 1, 0.0)]
    await clock.advance(0.1)  # a quiet period after the push: idle again
    deb.submit("b")
    await clock.advance(0)
    assert pushes[1:] == [("b", 1, pytest.approx(0.1))]


async def test_a_change_soon_after_a_push_waits_for_quiet(harness):
    deb, clock, pushes, _ = harness
    deb.submit("a")
    await clock.advance(0.05)
    deb.submit("b")  # within quiet of the push of "a": the start of a burst
    await clock.advance(0.05)
    assert [p[0] for p in pushes] == ["a"]
    await clock.advance(0.05)
    assert pushes[1:] == [("b", 1, pytest.approx(0.15))]


async def test_burst_is_merged_after_quiet_period(harness):
    deb, clock, pushes, _ = harness
    for i in range(5):
        deb.submit(i)
        await clock.advance(0)  # the debouncer sees it before time moves on
        await clock.advance(0.05)
    assert pushes == [(0, 1, 0.0)]  # the first went at once, the rest are merged
    await clock.advance(0.05)  # 0.1 s after the last submission
    assert pushes[1:] == [(4, 4, pytest.approx(0.30))]


async def test_max_delay_caps_a_change_storm(harness):
    deb, clock, pushes, _ = harness
    for i in range(30):  # never quiet for 0.1 s
        deb.submit(i)
        await clock.advance(0)  # the debouncer sees it before time moves on
        await clock.advance(0.05)
    assert len(pushes) >= 2
    assert pushes[0] == (0, 1, 0.0)
    value, merged, at = pushes[1]
    assert at == pytest.approx(1.05)  # max_delay after the first merged submission (at 0.05)
    assert merged == 20 and value == 20


async def test_one_push_in_flight_and_changes_during_it_are_merged(harness):
    deb, clock, pushes, gate = harness
    gate.clear()  # the push blocks
    deb.submit("a")
    await clock.advance(0)
    assert [p[0] for p in pushes] == ["a"]
    deb.submit("b")
    deb.submit("c")
    await clock.advance(0.5)
    assert [p[0] for p in pushes] == ["a"]  # still in flight: no second push
    gate.set()
    await asyncio.sleep(0)
    await clock.advance(0.1)
    assert [(p[0], p[1]) for p in pushes] == [("a", 1), ("c", 2)]
