"""The exceptions ``ca`` raises. Messages name files and identities, never key or token bytes."""

from __future__ import annotations


class CAError(Exception):
    """Something the certificate authority cannot do (bad state, bad input, expired signer)."""


class StateError(CAError):
    """The CA state directory is missing, unreadable, corrupt or has unsafe permissions."""


class UnusableKey(CAError, ValueError):
    """A key that cannot be used: unknown type, unreadable PEM, unsupported algorithm."""
