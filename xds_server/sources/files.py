"""The file config source: a directory of Istio-style manifests, watched for changes.

Serving rule ("last good config"): a broken edit never takes config away from proxies.

* A file that cannot be read or parsed at all keeps serving every resource it last provided.
* An invalid document keeps serving the last valid version of *that* resource (same file),
  while the valid documents next to it update normally.
* A deleted file, or a document removed from a file, removes its resources.

Errors are returned with every result (they stay until fixed); logging them is the caller's job.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from watchfiles import Change, awatch

from translators.errors import ConfigError
from translators.model import Resource, ResourceKey
from xds_server.sources.parse import parse_text

SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 16 * 1024 * 1024


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
        self._last = LoadResult(MappingProxyType({}))

    # ------------------------------------------------------------ one-shot loading

    def load(self) -> LoadResult:
        """Scan the whole directory; files whose content did not change are not re-parsed."""
        with self._lock:
            if not self.root.is_dir():
                # Likely mid-replacement (mv new old): keep serving, say why.
                why = "config directory does not exist or is not a directory"
                self._dir_errors = (ConfigError(str(self.root), "", "", why),)
                return self._result(set())
            found, unreadable = self._scan()
            # A file in a directory we could not list is not known to be gone: keep it.
            gone = [rel for rel in self._files if rel not in found and not _under(rel, unreadable)]
            changed = {rel for rel in gone if self._drop(rel)}
            changed.update(rel for rel in sorted(found, key=_order) if self._refresh(rel))
            self._dir_errors = tuple(
                ConfigError(d, "", "", f"cannot read directory: {why}")
                for d, why in sorted(unreadable.items())
            )
            return self._result(changed)

    def reload(self, paths: Iterable[Path | str]) -> LoadResult:
        """Re-read only ``paths`` (changed, added or removed); returns the full current state.

        Falls back to a full scan when a path is not a plain manifest file (a directory
        appeared or vanished, or a ConfigMap ``..data`` link was swapped).
        """
        if self._dir_errors:
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
        step_ms: int = 50,
        max_batch_ms: int = 1000,
        check_ms: int = 1000,
    ) -> AsyncIterator[LoadResult]:
        """The current state first, then a new state after each batch of changes that
        changed something (a touch or a no-op save yields nothing).

        A batch is yielded once no change was seen for ``step_ms`` (at most ``max_batch_ms``
        after the first). Every ``check_ms`` the watcher checks that ``root`` is still the
        same directory, and starts over on it when it was replaced or recreated.
        ``force_polling=None`` lets watchfiles decide; if native watching fails, polling is used.
        """
        last: LoadResult | None = None
        polling = force_polling
        while True:
            ident = _identity(self.root)
            if ident is None:  # wait for the directory to (re)appear
                result = await asyncio.to_thread(self.load)
                if last is None or _differs(result, last):
                    last = result
                    yield result
                await asyncio.sleep(check_ms / 1000)
                continue
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
                if last is None or _differs(result, last):
                    last = result
                    yield result
                batch = await first
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
                    batch = await anext(events)
            except (FileNotFoundError, StopAsyncIteration):
                await asyncio.sleep(check_ms / 1000)  # vanished before the watcher started
            except (OSError, RuntimeError):
                # Native watching is not available (watch limits, some network file
                # systems): start over, polling.
                polling = True
                await asyncio.sleep(check_ms / 1000)
            finally:
                if not first.done():
                    first.cancel()
                    await asyncio.wait([first])  # let awatch stop its thread; our own cancel still propagates
                await events.aclose()

    # ------------------------------------------------------------ internals

    def _scan(self) -> tuple[set[str], dict[str, str]]:
        """Manifest files (relative paths), and directories that could not be listed (why)."""
        found: set[str] = set()
        unreadable: dict[str, str] = {}

        def failed(e: OSError) -> None:
            where = Path(e.filename or self.root)
            rel = where.relative_to(self.root).as_posix() if where.is_relative_to(self.root) else str(where)
            unreadable[rel] = e.strerror or str(e)

        seen_dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=failed, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:  # a symlink loop
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if not name.startswith(".") and name.lower().endswith(SUFFIXES):
                    found.add((rel_dir / name).as_posix())
        return found, unreadable

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
        if (self.root / rel).is_dir():
            return "rescan"
        if rel.name.lower().endswith(SUFFIXES):
            return rel.as_posix()
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
        parsed = parse_text(data, rel, self.default_namespace, is_json=rel.lower().endswith(".json"))
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
        resources: dict[ResourceKey, Resource] = {}
        origin: dict[ResourceKey, str] = {}
        errors: list[ConfigError] = list(self._dir_errors)
        for rel in sorted(self._files, key=_order):
            state = self._files[rel]
            errors.extend(state.errors)
            for key, resource in state.provided.items():
                if key in resources:
                    errors.append(_duplicate(rel, key, origin[key]))
                    continue
                resources[key] = resource
                origin[key] = rel
        self._last = LoadResult(MappingProxyType(resources), tuple(errors), frozenset(changed))
        return self._last


def _duplicate(rel: str, key: ResourceKey, first: str) -> ConfigError:
    where = "earlier in this file" if first == rel else f"in {first}"
    return ConfigError(
        rel, str(key), "metadata.name", f"{key} is already defined {where}; the first definition is used"
    )


def _order(rel: str) -> tuple[str, ...]:
    return PurePosixPath(rel).parts


def _under(rel: str, dirs: Mapping[str, str]) -> bool:
    return any(d == "." or rel.startswith(d + "/") for d in dirs)


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
