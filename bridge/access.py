"""Who may open the WebSocket: the Origin allow-list and the optional browser token. Pure.

A page on another site must not be able to drive a user's bridge (cross-site WebSocket
hijacking): browsers always send ``Origin`` on a WebSocket handshake, so a handshake is allowed
when it has no ``Origin`` (not a browser), when the origin is the bridge's own (same host and
port as the ``Host`` header), a localhost origin, or one listed in ``allowed_origins``.

With ``auth_token`` set, the handshake must also carry the token, in one of the three places a
browser can put it: the cookie ``aistream_token``, the query parameter ``token``, or a WebSocket
subprotocol ``aistream.token.<token>``. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Literal
from urllib.parse import parse_qs, urlsplit

__all__ = ["TOKEN_COOKIE", "TOKEN_SUBPROTOCOL_PREFIX", "Verdict", "check_handshake"]

TOKEN_COOKIE = "aistream_token"
TOKEN_SUBPROTOCOL_PREFIX = "aistream.token."
_LOCALHOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to a handshake: allowed, or refused with an HTTP status and a reason."""

    status: Literal[200, 401, 403]
    reason: str = ""

    @property
    def allowed(self) -> bool:
        """Whether the handshake may go on."""
        return self.status == 200


ALLOWED = Verdict(200)


def _origin_allowed(origin: str, host: str | None, allowed: tuple[str, ...]) -> bool:
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if host is not None and parts.netloc.lower() == host.lower():
        return True  # same origin as the page the bridge served
    return (parts.hostname or "") in _LOCALHOSTS


def _presented_tokens(path: str, cookie: str | None, subprotocols: list[str]) -> list[str]:
    tokens = parse_qs(urlsplit(path).query).get("token", [])
    if cookie:
        try:
            jar = SimpleCookie(cookie)
        except CookieError:
            jar = SimpleCookie()
        if TOKEN_COOKIE in jar:
            tokens.append(jar[TOKEN_COOKIE].value)
    tokens += [
        p.removeprefix(TOKEN_SUBPROTOCOL_PREFIX)
        for p in subprotocols
        if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)
    ]
    return tokens


def check_handshake(
    *,
    path: str,
    origin: str | None,
    host: str | None,
    cookie: str | None,
    subprotocols: list[str],
    allowed_origins: tuple[str, ...],
    auth_token: str | None,
) -> Verdict:
    """Decide whether a WebSocket handshake may proceed."""
    if origin is not None and not _origin_allowed(origin, host, allowed_origins):
        return Verdict(403, "origin not allowed")
    if auth_token is not None:
        expected = auth_token.encode()
        if not any(
            hmac.compare_digest(t.encode(), expected)
            for t in _presented_tokens(path, cookie, subprotocols)
        ):
            return Verdict(401, "missing or wrong token")
    return ALLOWED
