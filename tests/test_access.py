"""aistream.bridge.access and .ratelimit: handshake decisions and the frame budget, no sockets."""

from __future__ import annotations

import pytest
from aistream.bridge.access import check_handshake
from aistream.bridge.ratelimit import TokenBucket


def _check(**overrides: object) -> int:
    args: dict[str, object] = {
        "path": "/ws",
        "origin": None,
        "host": "127.0.0.1:8080",
        "cookie": None,
        "subprotocols": [],
        "allowed_origins": (),
        "auth_token": None,
    }
    args.update(overrides)
    return check_handshake(**args).status  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 200),
        ("http://127.0.0.1:8080", 200),  # same origin
        ("http://localhost:3000", 200),
        ("http://[::1]:1", 200),
        ("https://chat.example", 200),  # listed
        ("https://evil.example", 403),
        ("http://127.0.0.1.evil.example", 403),
        ("null", 403),
        ("file://", 403),
    ],
)
def test_origins(origin: str | None, status: int) -> None:
    """Same origin, localhost and listed origins pass; anything else is 403."""
    assert _check(origin=origin, allowed_origins=("https://chat.example",)) == status


@pytest.mark.parametrize(
    ("path", "cookie", "subprotocols", "status"),
    [
        ("/ws", None, [], 401),
        ("/ws?token=nope", None, [], 401),
        ("/ws?token=t0k", None, [], 200),
        ("/ws", "a=b; aistream_token=t0k", [], 200),
        ("/ws", "aistream_token=nope", [], 401),
        ("/ws", "garbage;;;=", [], 401),
        ("/ws", None, ["aistream.v1", "aistream.token.t0k"], 200),
        ("/ws", None, ["aistream.token.nope"], 401),
    ],
)
def test_token(path: str, cookie: str | None, subprotocols: list[str], status: int) -> None:
    """The token is accepted from the query, the cookie or a subprotocol; else 401."""
    assert _check(path=path, cookie=cookie, subprotocols=subprotocols, auth_token="t0k") == status


def test_origin_is_checked_before_the_token() -> None:
    """A foreign origin is refused even with a valid token."""
    assert _check(origin="https://evil.example", path="/ws?token=t0k", auth_token="t0k") == 403


def test_token_bucket() -> None:
    """A burst is allowed, then the rate; tokens refill with time, never beyond the burst."""
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one refilled
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
