"""Kubernetes service-account tokens as proof of identity: a TokenReview with the API server.

An injected pod presents its projected token (audience ``istio-ca``) on its xDS stream. The
API server, not the token's claims and never the node metadata, says whose it is: the
review's ``system:serviceaccount:<ns>:<sa>`` is the identity the stream may have a
certificate for (as istiod's ``kubeauth``). A bound token stops reviewing as authenticated
once its pod is deleted, so a deleted pod's token gets no new certificate once the cached
review (``ttl`` seconds) has expired.

Reviews are cached by a hash of the token (never the token itself): many proxies of one
pod template reconnecting at once cost one review each, not one per stream, and failures
are cached briefly too, so a client retrying a bad token cannot flood the API server.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ca import TokenError

AUDIENCE = "istio-ca"
SA_PREFIX = "system:serviceaccount:"

#: Does the review: (token, audience) -> the TokenReview's ``status`` (a dict).
ReviewCall = Callable[[str, str], Mapping[str, Any]]


class ReviewFailed(TokenError):
    """The API server did not authenticate the token (or could not be asked)."""


@dataclass(frozen=True)
class Reviewed:
    namespace: str
    service_account: str
    #: From the review's ``extra`` (bound tokens): for logs.
    pod: str = ""


def identity_from_status(status: Mapping[str, Any], audience: str) -> Reviewed:
    """The service account a TokenReview ``status`` authenticates, or :class:`ReviewFailed`."""
    if not status.get("authenticated"):
        raise ReviewFailed(f"the API server did not authenticate the token: {status.get('error') or 'no reason'}")
    audiences = status.get("audiences")
    if audiences is not None and audience not in audiences:
        raise ReviewFailed(f"the token is not for audience {audience!r}")
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    parts = username.removeprefix(SA_PREFIX).split(":")
    if not username.startswith(SA_PREFIX) or len(parts) != 2 or not all(parts):
        raise ReviewFailed(f"the token is not a service account's (user {username!r})")
    pods = (user.get("extra") or {}).get("authentication.kubernetes.io/pod-name") or [""]
    return Reviewed(parts[0], parts[1], str(pods[0]))


class TokenReviewer:
    def __init__(self, call: ReviewCall, *, audience: str = AUDIENCE, ttl: float = 10.0, failure_ttl: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 10000) -> None:
        self._call = call
        self.audience = audience
        self.ttl, self.failure_ttl = ttl, failure_ttl
        self._clock = clock
        self._max = max_entries
        self._cache: dict[bytes, tuple[float, Reviewed | ReviewFailed]] = {}

    async def review(self, token: str) -> Reviewed:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        hit = self._cache.get(key)
        if hit is None or hit[0] <= now:
            result: Reviewed | ReviewFailed
            try:
                status = await asyncio.to_thread(self._call, token, self.audience)
                result = identity_from_status(status, self.audience)
            except ReviewFailed as e:
                result = e
            except Exception as e:  # the API server unreachable, refused (RBAC), ...: no secrets, say why
                result = ReviewFailed(f"TokenReview failed: {type(e).__name__}: {str(e)[:200]}")
            if len(self._cache) >= self._max:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            ttl = self.ttl if isinstance(result, Reviewed) else self.failure_ttl
            hit = (self._clock() + ttl, result)
            self._cache[key] = hit
        if isinstance(hit[1], ReviewFailed):
            raise hit[1]
        return hit[1]


def kube_review_call(api_client: Any) -> ReviewCall:
    """A :data:`ReviewCall` that POSTs a TokenReview with a ``kubernetes`` ApiClient."""

    def call(token: str, audience: str) -> Mapping[str, Any]:
        from kubernetes import client

        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[audience]))
        answer = client.AuthenticationV1Api(api_client).create_token_review(body, _request_timeout=5)
        status = api_client.sanitize_for_serialization(answer).get("status") or {}
        return dict(status)

    return call
