from __future__ import annotations

import logging
import pickle

import pytest

from ca import SecretBytes

SECRET = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END PRIVATE KEY-----\n"


def test_every_rendering_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    s = SecretBytes(SECRET)
    rendered = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>40}", "%s %r" % (s, s), repr([s]), repr({"k": s})]  # noqa: UP031
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("key %s %r", s, s)
        logging.getLogger("test").info("in a dict: %s", {"key": s})
    rendered.append(caplog.text)
    for text in rendered:
        assert "PRIVATE KEY" not in text and "c2VjcmV0" not in text, text
    assert repr(s) == f"<redacted {len(SECRET)} bytes>"


def test_reveal_is_the_only_way_out() -> None:
    s = SecretBytes(bytearray(SECRET))
    assert s.reveal() == SECRET
    assert len(s) == len(SECRET) and s
    with pytest.raises(TypeError):
        bytes(s)
    with pytest.raises(TypeError):
        SecretBytes("a str")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s + b"x"  # type: ignore[operator]


def test_equality_hash_and_pickle() -> None:
    a, b = SecretBytes(SECRET), SecretBytes(SECRET)
    assert a == b and hash(a) == hash(b)
    assert a != SecretBytes(b"other")
    assert a != SECRET  # a secret never equals plain bytes by accident
    assert pickle.loads(pickle.dumps(a)) == a
