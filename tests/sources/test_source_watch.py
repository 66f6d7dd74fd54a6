"""DirectorySource.changes() with a real watcher on real files: every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path

from source_manifests import svc, vs

from translators.model import ResourceKey, VirtualService
from xds_server.sources.files import DirectorySource, LoadResult

REVIEWS = ResourceKey("VirtualService", "default", "reviews")
SVC = ResourceKey("Service", "default", "reviews")


async def until(
    states: AsyncIterator[LoadResult], ok: Callable[[LoadResult], bool], within: float = 1.0
) -> LoadResult:
    async def wait() -> LoadResult:
        async for state in states:
            if ok(state):
                return state
        raise AssertionError("watcher stopped")

    return await asyncio.wait_for(wait(), within)


def route_weights(state: LoadResult) -> list[int | None]:
    resource = state.resources.get(REVIEWS)
    return [d.weight for d in resource.spec.http[0].route] if isinstance(resource, VirtualService) else []


def watch(root: Path, check_ms: int = 5000) -> AsyncIterator[LoadResult]:
    # A long check interval by default: changes must arrive through file events, not the timer.
    return DirectorySource(root).changes(check_ms=check_ms)


async def test_edit_is_seen(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text(vs("reviews"))
    async with aclosing(watch(tmp_path)) as states:
        first = await until(states, lambda s: True)
        assert route_weights(first) == [50, 50]
        f.write_text(vs("reviews", weights=(10, 90)))
        await until(states, lambda s: route_weights(s) == [10, 90])


async def test_touch_yields_nothing_then_edit_does(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text(vs("reviews"))
    async with aclosing(watch(tmp_path)) as states:
        await until(states, lambda s: True)
        await asyncio.sleep(0.3)
        os.utime(f)
        await asyncio.sleep(0.3)
        f.write_text(vs("reviews", weights=(30, 70)))
        state = await until(states, lambda s: True)
        assert route_weights(state) == [30, 70]


async def test_atomic_rename_on_save(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text(vs("reviews"))
    async with aclosing(watch(tmp_path)) as states:
        await until(states, lambda s: True)
        await asyncio.sleep(0.2)  # with the watcher surely running, not just its start-up scan
        tmp = tmp_path / ".mesh.yaml.tmp"
        tmp.write_text(vs("reviews", weights=(40, 60)))
        os.replace(tmp, f)
        state = await until(states, lambda s: route_weights(s) == [40, 60])
        assert state.errors == ()


async def test_new_file_in_new_subdirectory(tmp_path: Path) -> None:
    async with aclosing(watch(tmp_path)) as states:
        assert (await until(states, lambda s: True)).resources == {}
        deep = tmp_path / "team" / "reviews"
        deep.mkdir(parents=True)
        (deep / "svc.yaml").write_text(svc("reviews"))
        state = await until(states, lambda s: SVC in s.resources)
        assert state.resources[SVC].source == "team/reviews/svc.yaml"


async def test_invalid_edit_reports_and_keeps_serving(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text(vs("reviews"))
    async with aclosing(watch(tmp_path)) as states:
        await until(states, lambda s: True)
        f.write_text(vs("reviews", weights=(0, 0)))
        state = await until(states, lambda s: bool(s.errors))
        assert route_weights(state) == [50, 50]
        assert (state.errors[0].field, state.errors[0].message) == (
            "spec.http[0].route", "total destination weight is 0: give at least one destination a weight")


async def test_directory_replaced(tmp_path: Path) -> None:
    root = tmp_path / "cfg"
    root.mkdir()
    (root / "mesh.yaml").write_text(vs("reviews"))
    async with aclosing(watch(root, check_ms=200)) as states:
        await until(states, lambda s: True)
        new = tmp_path / "cfg.new"
        new.mkdir()
        (new / "mesh.yaml").write_text(vs("reviews", weights=(70, 30)))
        (new / "svc.yaml").write_text(svc("reviews"))
        shutil.rmtree(root)
        new.rename(root)
        state = await until(states, lambda s: SVC in s.resources, within=3)
        assert route_weights(state) == [70, 30] and state.errors == ()
        # and the watcher follows the new directory
        (root / "svc.yaml").unlink()
        await until(states, lambda s: SVC not in s.resources)


async def test_directory_appearing_later(tmp_path: Path) -> None:
    root = tmp_path / "cfg"
    async with aclosing(watch(root, check_ms=200)) as states:
        first = await until(states, lambda s: True)
        assert first.resources == {} and "does not exist" in first.errors[0].message
        root.mkdir()
        (root / "svc.yaml").write_text(svc("reviews"))
        state = await until(states, lambda s: SVC in s.resources, within=2)
        assert state.errors == ()
