"""aistream.bridge.access and .ratelimit: handshake decisions and the frame budget, no sockets."""

from __future__ import annotations

import pytest

from aistream.bridge.access import HostNames, check_handshake, cookie_values
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
        "own_hosts": HostNames.of("127.0.0.1"),
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
        ("/ws", 'prefs={"a":1}; aistream_token=t0k', [], 200),  # another site's cookie first
        ("/ws", "aistream_token=nope; aistream_token=t0k", [], 200),  # two paths, two cookies
        ("/ws", 'aistream_token="t0k"', [], 200),
        ("/ws", "xaistream_token=t0k", [], 401),
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


def test_cookie_values_are_read_as_browsers_send_them() -> None:
    """Pairs split on ';', names trimmed, values as they are; a broken neighbour is skipped."""
    header = 'prefs={"a":1}; =x; junk; a=b=c ; a=2'
    assert cookie_values(header, "a") == ["b=c", "2"]
    assert cookie_values(header, "prefs") == ['{"a":1}']
    assert cookie_values("", "a") == []


@pytest.mark.parametrize(
    ("bind", "public", "host", "allowed"),
    [
        ("127.0.0.1", (), "127.0.0.1:8080", True),
        ("127.0.0.1", (), "localhost:8080", True),
        ("127.0.0.1", (), "127.0.0.2:8080", True),  # all of 127/8 is loopback
        ("127.0.0.1", (), "[::1]:8080", True),
        ("127.0.0.1", (), "evil.example:8080", False),  # DNS rebinding
        ("127.0.0.1", (), "10.0.0.7:8080", False),
        ("127.0.0.1", ("chat.example",), "chat.example", True),
        ("127.0.0.1", ("Chat.Example",), "CHAT.example.:443", True),
        ("0.0.0.0", (), "192.0.2.10:8080", True),  # an IP literal cannot be rebound
        ("0.0.0.0", (), "myhost:8080", True),  # the machine's own name
        ("0.0.0.0", (), "evil.example:8080", False),
        ("192.0.2.10", (), "192.0.2.10:8080", True),
        ("192.0.2.10", (), "192.0.2.11:8080", False),
        ("192.0.2.10", (), "localhost:8080", False),
        ("bridge.internal", (), "bridge.internal:8080", True),
        ("127.0.0.1", (), None, False),
        ("127.0.0.1", (), "[bad:8080", False),
    ],
)
def test_host_names(bind: str, public: tuple[str, ...], host: str | None, allowed: bool) -> None:
    """A Host names the bridge only if it is its address, its names or a public name."""
    assert HostNames.of(bind, public, machine_names=("myhost",)).allows(host) is allowed


def test_same_origin_needs_the_bridges_own_host() -> None:
    """Origin = Host is the bridge's own origin only when the Host really is the bridge."""
    evil = {"origin": "http://evil.example:8080", "host": "evil.example:8080"}
    assert _check(**evil) == 403
    assert _check(**evil, own_hosts=HostNames.of("127.0.0.1", ("evil.example",))) == 200
    assert _check(origin="http://127.0.0.1:8080", host="127.0.0.1:8080") == 200
