"""Bytes that refuse to show themselves: every private key PEM in ``ca`` is held in one.

A key that reaches a log line, a ``/debug/*`` page or an exception message is a leaked key,
and the usual way it gets there is an innocent ``repr()`` of a dataclass or an f-string.
``SecretBytes`` is not a ``bytes`` subclass, so nothing formats, concatenates or encodes it
by accident: ``repr``/``str``/``format`` say ``<redacted N bytes>`` and the value comes out
only through the explicit :meth:`SecretBytes.reveal`, which is easy to grep for.
"""

from __future__ import annotations

import hmac
from typing import NoReturn


class SecretBytes:
    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"SecretBytes holds bytes, not {type(value).__name__}")
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """The secret itself: call it only where the bytes go to their one legitimate use."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"<redacted {len(self._value)} bytes>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        # Constant time: equality on secrets should not time-leak how much matched.
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash((SecretBytes, self._value))

    def __bytes__(self) -> NoReturn:
        # bytes(secret) reads like an accident more often than intent; make intent explicit.
        raise TypeError("SecretBytes does not convert implicitly; call .reveal()")

    def __reduce__(self) -> tuple[type[SecretBytes], tuple[bytes]]:
        # Pickling is allowed (a process pool must ship keys to a worker); it is not display.
        return (SecretBytes, (self._value,))
