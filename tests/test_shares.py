"""aistream.bridge.shares: per-client shares of the bridge's generations, without sockets."""

from __future__ import annotations

import pytest

from aistream.bridge.shares import ClientShares, client_key_of


def test_a_client_holds_at_most_its_share_and_gives_it_back() -> None:
    """acquire until the limit, refuse past it, release frees one; others are unaffected."""
    shares = ClientShares(2)
    assert [shares.acquire("a") for _ in range(3)] == [True, True, False]
    assert shares.acquire("b")
    shares.release("a")
    assert shares.held("a") == 1
    assert shares.acquire("a")
    for _ in range(2):
        shares.release("a")
    shares.release("b")
    assert len(shares) == 0  # nothing kept for clients holding nothing


def test_no_limit() -> None:
    """A limit of 0 refuses nothing."""
    shares = ClientShares(0)
    assert all(shares.acquire("a") for _ in range(1000))


@pytest.mark.parametrize(
    ("mode", "headers", "key"),
    [
        ("peer", {"X-Forwarded-For": "10.1.1.1"}, "127.0.0.9"),
        ("forwarded", {"X-Forwarded-For": "10.1.1.1, 10.0.0.2"}, "10.1.1.1"),
        ("forwarded", {}, "127.0.0.9"),
        ("header:X-User", {"X-User": "alice"}, "header:X-User=alice"),
        ("header:X-User", {}, "127.0.0.9"),
    ],
)
def test_client_keys(mode: str, headers: dict[str, str], key: str) -> None:
    """Who a client is, per client_key mode; the peer address when the header is missing."""
    assert client_key_of(mode, "127.0.0.9", headers.get) == key
