"""The CA's state directory: private (0700 dir, 0600 files), atomically written, locked.

``meshpilot serve`` and ``meshpilot bootstrap`` on one machine share this directory by
default (:func:`default_state_dir`), so both see the same root and the same token key. The
rules are the ones ssh applies to ``~/.ssh``: files are created 0600 from the first byte
(never chmod-ed after being written), replaced atomically (a crash leaves the old or the
new file, never half of one), and a secret file that group or others can read is refused
rather than trusted, since its secret may already be gone. Two processes starting at once
serialize on an ``flock`` so exactly one of them creates the root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ca.errors import StateError

STATE_DIR_ENV = "MESHPILOT_STATE_DIR"
_LOCK_NAME = ".lock"


def default_state_dir() -> Path:
    """``$MESHPILOT_STATE_DIR``, else ``$XDG_STATE_HOME/meshpilot/ca`` (``~/.local/state/...``)."""
    if override := os.environ.get(STATE_DIR_ENV):
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshpilot" / "ca"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700; a shared directory would expose the keys."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            try:
                os.chmod(path, 0o700)
            except OSError as e:
                # A read-only mount (a Kubernetes Secret volume): the files' own modes are still
                # checked when read, and nothing can be written here to leak.
                if e.errno != errno.EROFS:
                    raise
    except OSError as e:
        raise StateError(f"cannot create private state directory {path}: {e.strerror}") from None
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (temp file, fsync, rename)."""
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise StateError(f"cannot write {path}: {e.strerror}") from None


def read_private(path: Path) -> bytes:
    """Read a 0600 file; refuse one that group or others could read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise StateError(
                f"{path} has mode {mode:04o}: group or others can access it, so its secret may have "
                f"leaked; check, then `chmod 600 {path}`"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<state_dir>/.lock`` for the duration of a read-or-create."""
    try:
        fd = os.open(state_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno == errno.EROFS:
            yield  # nobody can create anything there either: reading needs no lock
            return
        raise StateError(f"cannot lock {state_dir}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
