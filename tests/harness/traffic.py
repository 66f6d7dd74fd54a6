"""Talking HTTP to proxies and servers in tests, and waiting for things to become true."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from xds_server.local.processes import http_request

T = TypeVar("T")


def _decode(body: bytes) -> Any:
    text = body.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def request(
    ip: str,
    port: int,
    path: str = "/",
    host_header: str | None = None,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 2.0,
) -> tuple[int, Any]:
    """One HTTP/1.1 request on a new connection: ``(status, body)``.

    The body is parsed JSON when it is JSON (the echo app always answers JSON), else text.
    Connection errors raise (``ConnectionRefusedError``, ``TimeoutError``...).
    """
    status, body_out, _ = request_full(ip, port, path, host_header, method=method, headers=headers, body=body,
                                       timeout=timeout)
    return status, body_out


def request_full(
    ip: str,
    port: int,
    path: str = "/",
    host_header: str | None = None,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 2.0,
) -> tuple[int, Any, dict[str, str]]:
    """Like :func:`request`, plus the response headers (names lower-cased)."""
    all_headers = dict(headers or {})
    if host_header is not None:
        all_headers["Host"] = host_header
    status, data, resp_headers = http_request(ip, port, path, headers=all_headers, timeout=timeout,
                                              method=method, body=body)
    return status, _decode(data), resp_headers


def eventually(
    fn: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.1,
    message: str = "",
) -> T:
    """Call ``fn`` until it passes and return what it returned.

    ``fn`` passes when it neither raises nor returns ``False``, so both styles work::

        eventually(lambda: request(ip, 80, "/", "reviews")[0] == 200)
        def routed(): assert request(...)[1]["version"] == "v2"
        eventually(routed, timeout=5)

    On timeout the last exception is re-raised (an ``AssertionError`` keeps its message),
    or an ``AssertionError`` is raised if ``fn`` kept returning ``False``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
        except Exception as e:
            if time.monotonic() >= deadline:
                if message:
                    raise AssertionError(f"{message} (not true after {timeout}s): {e!r}") from e
                raise
        else:
            if result is not False:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(f"{message or getattr(fn, '__name__', 'condition')} still false after {timeout}s")
        time.sleep(interval)


def assert_share(count: int, n: int, percent: float, context: object = None, *, sigmas: float = 4.5) -> None:
    """Assert that ``count`` of ``n`` independent draws is a ``percent`` share, within
    ``sigmas`` binomial standard deviations.

    A fixed band (say ±5 points) is three standard deviations for some shares and sizes and
    four for others; across a suite with several split tests the three-sigma ones fail about
    once in a hundred runs on a correct proxy. 4.5 sigma is about 7 in a million per check and
    still tells 80/20 from 50/50 at the sizes the tests use.
    """
    p = percent / 100
    band = sigmas * 100 * (p * (1 - p) / n) ** 0.5
    got = 100 * count / n
    assert abs(got - percent) <= band, (
        f"{count} of {n} is {got:.1f}%, not {percent}% ± {band:.1f} ({sigmas} standard deviations): {context}")
