"""The file config source: a directory of Istio-style manifests, watched for changes.

Serving rule ("last good config"): a broken edit never takes config away from proxies.

* A file that cannot be read or parsed at all keeps serving every resource it last provided.
* An invalid document keeps serving the last valid version of *that* resource (same file),
  while the valid documents next to it update normally.
* A deleted file, or a document removed from a file, removes its resources.

Symbolic links are followed, but each real file is read once (by its path without links
when it has one), and a link that leads back to a directory it is in is reported and not
followed. Errors are returned with every result (they stay until fixed); logging them is
the caller's job.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from watchfiles import Change, awatch

from translators.errors import ConfigError
from translators.model import Resource, ResourceKey
from xds_server.heap import collector_paused
from xds_server.sources.parse import MAX_BYTES, parse_text

SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = MAX_BYTES
#: Seconds between full rescans, the safety net for changes the watcher did not report.
RESCAN_EVERY = 30.0
#: A failed watcher is started again after this long, doubling up to ``BACKOFF_MAX``;
#: meanwhile the directory is scanned every ``check_ms``.
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0


@dataclass(frozen=True)
class LoadResult:
    """The complete current state of a source.

    ``resources`` is what to serve (``world.evolve(result.resources)``); ``errors`` are all
    current problems, warnings included; ``changed_files`` are the files (relative paths)
    re-parsed or removed to produce this result.
    """

    resources: Mapping[ResourceKey, Resource]
    errors: tuple[ConfigError, ...] = ()
    changed_files: frozenset[str] = frozenset()
    #: Which results came before this one, and the keys each changed (see ``changes_since``).
    serial: int = field(default=0, compare=False)
    log: ChangeLog | None = field(default=None, compare=False, repr=False)

    def changes_since(self, older: LoadResult) -> frozenset[ResourceKey] | None:
        """Every key whose resource may differ between ``older`` and this result (a superset);
        None when that is not known (another source, or too far back)."""
        if self.log is None or older.log is not self.log:
            return None
        return self.log.since(older.serial, self.serial)


class ChangeLog:
    """The keys each of a source's recent results changed, so applying one costs the size of
    the change instead of a diff of every key (tens of ms at 10,000 resources). Both sources
    keep one."""

    KEEP = 64

    def __init__(self) -> None:
        self.serial = 0
        self._entries: collections.deque[tuple[int, frozenset[ResourceKey]]] = collections.deque(maxlen=self.KEEP)

    def add(self, keys: frozenset[ResourceKey] | None) -> int:
        """Record the next result; None: it may have changed anything (breaks the chain)."""
        self.serial += 1
        if keys is None:
            self._entries.clear()
        else:
            self._entries.append((self.serial, keys))
        return self.serial

    def since(self, older: int, newer: int) -> frozenset[ResourceKey] | None:
        if older == newer:
            return frozenset()
        wanted = range(older + 1, newer + 1)
        # (a copy first, in one step: the directory source adds from its reading thread)
        found = [keys for serial, keys in tuple(self._entries) if serial in wanted]
        if len(found) != len(wanted):
            return None
        return frozenset().union(*found)


@dataclass
class _FileState:
    digest: str | None  # None: could not be read, so the next look must read it again
    provided: dict[ResourceKey, Resource] = field(default_factory=dict)  # document order
    errors: tuple[ConfigError, ...] = ()


class DirectorySource:
    """Manifests (``*.yaml``, ``*.yml``, ``*.json``) found recursively under ``root``.

    Hidden files and directories are skipped (editor swap files, ``.git``, and the
    ``..data`` directories of a mounted Kubernetes ConfigMap, whose files are also
    reachable through the symlinks at the top). Calls are serialized by a lock, because
    ``changes()`` reads files in a worker thread.
    """

    def __init__(
        self, root: Path | str, default_namespace: str = "default", *, max_file_bytes: int = MAX_FILE_BYTES
    ):
        self.root = Path(root)
        self.default_namespace = default_namespace
        self.max_file_bytes = max_file_bytes
        self._files: dict[str, _FileState] = {}
        self._lock = threading.Lock()
        self._dir_errors: tuple[ConfigError, ...] = ()  # the directory itself, from the last scan
        self._links: dict[str, str] = {}  # directory symlinks met by the last scan: rel -> real path
        self._last = LoadResult(MappingProxyType({}))
        self._sorted: list[str] = []  # self._files' keys in load order
        self._sorted_keys: set[str] = set()
        self._log = ChangeLog()
        # The last merge: what each file provided to it, and the keys that came twice (by the
        # file that came second).
        self._merged: dict[ResourceKey, Resource] = {}
        self._merged_from: dict[str, tuple[ResourceKey, ...]] = {}
        self._duplicates: dict[str, list[ConfigError]] = {}

    # ------------------------------------------------------------ one-shot loading

    def load(self) -> LoadResult:
        """Scan the whole directory; files whose content did not change are not re-parsed."""
        with self._lock, collector_paused():
            if not self.root.is_dir():
                # Likely mid-replacement (mv new old): keep serving, say why.
                why = "config directory does not exist or is not a directory"
                self._dir_errors = (ConfigError(str(self.root), "", "", why),)
                return self._result(set())
            found, unreadable, loops = self._scan()
            # A file in a directory we could not list is not known to be gone: keep it.
            gone = [rel for rel in self._files if rel not in found and not _under(rel, unreadable)]
            changed = {rel for rel in gone if self._drop(rel)}
            changed.update(rel for rel in sorted(found, key=_order) if self._refresh(rel))
            self._dir_errors = tuple(
                ConfigError(d, "", "", f"cannot read directory: {why}")
                for d, why in sorted(unreadable.items())
            ) + tuple(
                ConfigError(link, "", "", f"symbolic link loop: leads back to {to}; not followed", "warning")
                for link, to in sorted(loops.items())
            )
            return self._result(changed)

    def reload(self, paths: Iterable[Path | str]) -> LoadResult:
        """Re-read only ``paths`` (changed, added or removed); returns the full current state.

        Falls back to a full scan when a path is not a plain manifest file (a directory
        appeared or vanished, or a ConfigMap ``..data`` link was swapped).
        """
        if any(e.severity == "error" for e in self._dir_errors):
            return self.load()  # until the directory itself reads cleanly, only a scan can tell
        rels: set[str] = set()
        for p in paths:
            what = self._classify(Path(p))
            if what == "rescan":
                return self.load()
            if what is not None:
                rels.add(what)
        with self._lock:
            if self.root.is_dir():
                return self._result({rel for rel in sorted(rels, key=_order) if self._refresh(rel)})
        return self.load()  # the directory went away: report it, keep serving

    @property
    def current(self) -> LoadResult:
        """The last result returned."""
        return self._last

    # ------------------------------------------------------------ watching

    async def changes(
        self,
        *,
        force_polling: bool | None = None,
        step_ms: int = 2,
        max_batch_ms: int = 1000,
        check_ms: int = 1000,
        rescan_every: float = RESCAN_EVERY,
        on_failure: Callable[[str, float], None] | None = None,
        on_recovery: Callable[[], None] | None = None,
        on_rescan: Callable[[LoadResult, bool], None] | None = None,
    ) -> AsyncIterator[LoadResult]:
        """The current state first, then a new state after each batch of changes that
        changed something (a touch or a no-op save yields nothing).

        A batch is yielded once no change was seen for ``step_ms`` (at most ``max_batch_ms``
        after the first). ``step_ms`` is short: it only gathers the events of one save
        (an editor's write and rename); merging bursts of saves is the push debouncer's job.
        (watchfiles looks every ``step_ms``: 2 ms costs about 500 cheap wake-ups a second.) Every ``check_ms`` the watcher checks that ``root`` is still the
        same directory, and starts over on it when it was replaced or recreated.
        ``force_polling=None`` lets watchfiles decide; if native watching fails, polling is used.

        This never ends by itself. If the watcher fails, ``on_failure(why, retry_in)`` is
        called, the directory is scanned every ``check_ms`` meanwhile, and the watcher is
        started again after a backoff; ``on_recovery()`` once it runs again. Every
        ``rescan_every`` seconds (0: never) a full scan runs as a safety net, then
        ``on_rescan(result, changed)``: ``changed`` if it found what the watcher had not
        reported (the result is yielded next), else nothing is yielded.
        """
        last: LoadResult | None = None
        polling = force_polling
        failing = False
        backoff = BACKOFF_FIRST
        next_rescan = time.monotonic() + rescan_every
        while True:
            ident = _identity(self.root)
            if ident is None:  # wait for the directory to (re)appear
                result = await asyncio.to_thread(self.load)
                if last is None or _differs(result, last):
                    last = result
                    yield result
                await asyncio.sleep(check_ms / 1000)
                continue
            failure: str | None = None
            events = awatch(
                self.root,
                watch_filter=_watch_filter,
                step=step_ms,
                debounce=max_batch_ms,
                rust_timeout=check_ms,
                yield_on_timeout=True,
                force_polling=polling,
                ignore_permission_denied=True,
            )
            # The generator's first step creates the OS watcher before it first suspends, so
            # after this sleep(0) no change can slip between the scan below and the watch.
            first = asyncio.ensure_future(anext(events))
            try:
                await asyncio.sleep(0)
                result = await asyncio.to_thread(self.load)  # what changed before the watch began
                links = dict(self._links)
                if last is None or _differs(result, last):
                    last = result
                    yield result
                batch = await first
                if failing:
                    failing, backoff = False, BACKOFF_FIRST
                    if on_recovery:
                        on_recovery()
                while True:
                    if _identity(self.root) != ident:  # replaced, or removed and recreated
                        result = await asyncio.to_thread(self.load)
                        if _differs(result, last):
                            last = result
                            yield result
                        break  # watch the new directory
                    if batch:  # an empty batch is a quiet tick, just for the check above
                        result = await asyncio.to_thread(self.reload, _paths(batch))
                        if _differs(result, last):
                            last = result
                            yield result
                    if rescan_every > 0 and time.monotonic() >= next_rescan:
                        result = await asyncio.to_thread(self.load)
                        next_rescan = time.monotonic() + rescan_every
                        changed = _differs(result, last)
                        if on_rescan:
                            on_rescan(result, changed)
                        if changed:
                            last = result
                            yield result
                    if self._links != links:
                        # A directory link came or went: the OS watcher still names files by
                        # the old paths, so watch afresh.
                        break
                    batch = await anext(events)
            except (FileNotFoundError, StopAsyncIteration):
                await asyncio.sleep(check_ms / 1000)  # vanished before the watcher started
            except Exception as e:  # whatever it was: report it and start over
                # OSError/RuntimeError: native watching may be unavailable (watch limits, some
                # network file systems), so the retry polls.
                if _any_of(e, (OSError, RuntimeError)):
                    polling = True
                failure = _describe(e)
            finally:
                if not first.done():
                    first.cancel()
                    await asyncio.wait([first])  # let awatch stop its thread; our own cancel still propagates
                await events.aclose()
            if failure is None:
                continue
            failing = True
            if on_failure:
                on_failure(failure, backoff)
            # Until the watcher runs again, a scan every check_ms keeps config following the files.
            retry_at = time.monotonic() + backoff
            while time.monotonic() < retry_at:
                await asyncio.sleep(check_ms / 1000)
                try:
                    result = await asyncio.to_thread(self.load)
                except Exception:
                    continue  # reported as the failure already; tried again after the backoff
                if last is None or _differs(result, last):
                    last = result
                    yield result
            backoff = min(backoff * 2, BACKOFF_MAX)

    # ------------------------------------------------------------ internals

    def _scan(self) -> tuple[set[str], dict[str, str], dict[str, str]]:
        """Manifest files (relative paths), directories that could not be listed (why), and
        directory links that loop (where to).

        Plain directories are walked first, then linked ones not already walked, so each
        real file is found once and by its path without links when it has one.
        """
        real_root = os.path.realpath(self.root)
        files: dict[str, tuple[bool, tuple[str, ...], str]] = {}  # real path -> (via a link, order, rel)
        unreadable: dict[str, str] = {}
        loops: dict[str, str] = {}
        links: dict[str, str] = {}
        walked = {real_root}
        # (path, rel, real paths of it and its ancestors, reached through a link)
        todo: list[tuple[str, str, tuple[str, ...], bool]] = [(str(self.root), "", (real_root,), False)]
        linked: list[tuple[str, str, tuple[str, ...]]] = []  # directory links, for after the plain walk
        while todo or linked:
            if not todo:
                path, rel, chain = linked.pop(0)
                real = os.path.realpath(path)
                links[rel] = real
                if any(_within(up, real) for up in chain):
                    loops[rel] = _relative(real, real_root)
                    continue
                if real in walked:
                    continue  # its files are read by another path
                walked.add(real)
                todo.append((path, rel, (*chain, real), True))
                continue
            path, rel, chain, via_link = todo.pop()
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError as e:
                unreadable[rel or "."] = e.strerror or str(e)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                child = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    is_dir, is_link = entry.is_dir(), entry.is_symlink()
                except OSError:
                    continue  # gone, or not even stat-able: nothing to read
                if is_dir:
                    if is_link:
                        linked.append((entry.path, child, chain))
                    else:
                        real = os.path.join(chain[-1], entry.name)
                        walked.add(real)
                        todo.append((entry.path, child, (*chain, real), via_link))
                elif entry.name.lower().endswith(SUFFIXES):
                    real = os.path.realpath(entry.path) if is_link else os.path.join(chain[-1], entry.name)
                    candidate = (via_link or is_link, _order(child), child)
                    if real not in files or candidate < files[real]:
                        files[real] = candidate
        self._links = links
        return {rel for _, _, rel in files.values()}, unreadable, loops

    def _classify(self, path: Path) -> str | None:
        """A path from the watcher: its relative name if it is a manifest file, ``"rescan"``
        if only a full scan can tell what it means, None if it does not matter."""
        try:
            rel = PurePosixPath(
                Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).as_posix()
            )
        except ValueError:
            return (
                "rescan" if Path(os.path.abspath(self.root)).is_relative_to(os.path.abspath(path)) else None
            )
        if not rel.parts:
            return "rescan"
        if any(part.startswith("..") for part in rel.parts):
            return "rescan"  # Kubernetes ConfigMap: the ..data symlink was swapped
        if any(part.startswith(".") for part in rel.parts):
            return None
        name = rel.as_posix()
        if any(name == link or name.startswith(link + "/") for link in self._links):
            return "rescan"  # a path through a directory link: only a scan knows which file it is
        if (self.root / rel).is_dir():
            return "rescan"
        if rel.name.lower().endswith(SUFFIXES):
            if os.path.realpath(self.root / rel) != os.path.join(os.path.realpath(self.root), name):
                return "rescan"  # a symlink: it may name a file read by another path
            return name
        prefix = rel.as_posix() + "/"
        if any(known.startswith(prefix) for known in self._files):
            return "rescan"  # a directory we read from was removed or renamed
        return None

    def _drop(self, rel: str) -> bool:
        return self._files.pop(rel, None) is not None

    def _refresh(self, rel: str) -> bool:
        """Re-read one file; True if what it provides or reports may have changed."""
        old = self._files.get(rel)
        try:
            data = self._read(rel)
        except (FileNotFoundError, NotADirectoryError):
            return self._drop(rel)
        except OSError as e:
            return self._fail(rel, old, None, f"cannot read: {e.strerror or e}")
        if data is None:
            return self._fail(rel, old, None, f"file is larger than {self.max_file_bytes} bytes; not read")

        digest = hashlib.sha256(data).hexdigest()
        if old is not None and old.digest == digest:
            return False
        parsed = parse_text(
            data,
            rel,
            self.default_namespace,
            is_json=rel.lower().endswith(".json"),
            max_bytes=self.max_file_bytes,
        )
        if parsed.failed:
            return self._fail(rel, old, digest, parsed.errors)

        previous = old.provided if old else {}
        provided: dict[ResourceKey, Resource] = {}
        errors: list[ConfigError] = []
        for doc in parsed.documents:
            errors.extend(doc.errors)
            key = doc.key
            if key is None:
                continue
            if key in provided:
                errors.append(_duplicate(rel, key, rel))
                continue
            if doc.resource is not None:
                before = self._last.resources.get(key)
                # Reuse the served object when nothing changed, so identity-based memoization holds.
                provided[key] = before if before is not None and before == doc.resource else doc.resource
            elif key in previous:
                provided[key] = previous[key]  # invalid now: keep serving the last valid version
        self._files[rel] = _FileState(digest, provided, tuple(errors))
        return True

    def _fail(
        self, rel: str, old: _FileState | None, digest: str | None, why: str | tuple[ConfigError, ...]
    ) -> bool:
        errors = why if isinstance(why, tuple) else (ConfigError(rel, "", "", why),)
        self._files[rel] = _FileState(digest, dict(old.provided) if old else {}, errors)
        return old is None or old.errors != errors

    def _read(self, rel: str) -> bytes | None:
        # O_NONBLOCK and the regular-file check: a FIFO or device named *.yaml must not hang us.
        fd = os.open(self.root / rel, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(0, "not a regular file")
            data = f.read(self.max_file_bytes + 1)
        return None if len(data) > self.max_file_bytes else data

    def _result(self, changed: set[str]) -> LoadResult:
        if self._files.keys() != self._sorted_keys:  # re-sorted when files came or went, not per edit
            self._sorted = sorted(self._files, key=_order)
            self._sorted_keys = set(self._files)
        keys = self._patch_merge(changed)
        if keys is None:
            keys = self._merge(changed)
        errors: list[ConfigError] = list(self._dir_errors)
        for rel in self._sorted:
            errors.extend(self._files[rel].errors)
            errors.extend(self._duplicates.get(rel, ()))
        serial = self._log.add(keys)
        self._last = LoadResult(MappingProxyType(dict(self._merged)), tuple(errors), frozenset(changed),
                                serial, self._log)
        return self._last

    def _patch_merge(self, changed: set[str]) -> frozenset[ResourceKey] | None:
        """The common edit: files that still provide the same keys, in a merge without
        duplicates, get their new objects swapped in (the order of keys holds). None: merge again."""
        if self._duplicates:
            return None
        patch = []
        for rel in changed:
            state = self._files.get(rel)
            if state is None or tuple(state.provided) != self._merged_from.get(rel):
                return None
            patch.append(state.provided)
        keys: set[ResourceKey] = set()
        for provided in patch:
            self._merged.update(provided)
            keys.update(provided)
        return frozenset(keys)

    def _merge(self, changed: set[str]) -> frozenset[ResourceKey]:
        """Merge every file in load order (the first file to provide a key wins); the keys
        the ``changed`` files provided before or now."""
        keys = {k for rel in changed for k in self._merged_from.get(rel, ())}
        resources: dict[ResourceKey, Resource] = {}
        origin: dict[ResourceKey, str] = {}
        merged_from: dict[str, tuple[ResourceKey, ...]] = {}
        duplicates: dict[str, list[ConfigError]] = {}
        for rel in self._sorted:
            provided = self._files[rel].provided
            merged_from[rel] = tuple(provided)
            for key, resource in provided.items():
                if key in resources:
                    duplicates.setdefault(rel, []).append(_duplicate(rel, key, origin[key]))
                    continue
                resources[key] = resource
                origin[key] = rel
        keys.update(k for rel in changed for k in merged_from.get(rel, ()))
        self._merged, self._merged_from, self._duplicates = resources, merged_from, duplicates
        return frozenset(keys)


def _duplicate(rel: str, key: ResourceKey, first: str) -> ConfigError:
    where = "earlier in this file" if first == rel else f"in {first}"
    return ConfigError(
        rel, str(key), "metadata.name", f"{key} is already defined {where}; the first definition is used"
    )


@functools.lru_cache(maxsize=1 << 16)
def _order(rel: str) -> tuple[str, ...]:
    # Cached: every result sorts all files, and a directory of thousands would otherwise
    # parse thousands of paths again for each one-file edit.
    return PurePosixPath(rel).parts


def _under(rel: str, dirs: Mapping[str, str]) -> bool:
    return any(d == "." or rel.startswith(d + "/") for d in dirs)


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _relative(real: str, real_root: str) -> str:
    if real == real_root:
        return "the config directory"
    if real.startswith(real_root + os.sep):
        return real[len(real_root) + 1 :]
    return real


def _any_of(e: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    if isinstance(e, BaseExceptionGroup):
        return any(_any_of(inner, types) for inner in e.exceptions)
    return isinstance(e, types)


def _describe(e: BaseException) -> str:
    """One line for an operator: watchfiles wraps its errors in exception groups."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in e.exceptions)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _identity(root: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _differs(a: LoadResult, b: LoadResult) -> bool:
    if a.errors != b.errors or a.resources.keys() != b.resources.keys():
        return True
    return any(b.resources[k] is not v for k, v in a.resources.items())


def _watch_filter(change: Change, path: str) -> bool:
    # Everything counts except plain hidden entries (swap files, .git); `..data` counts.
    name = os.path.basename(path)
    return not name.startswith(".") or name.startswith("..")


def _paths(batch: set[tuple[Change, str]]) -> set[Path]:
    return {Path(p) for _, p in batch}
