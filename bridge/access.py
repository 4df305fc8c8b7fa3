"""Who may open the WebSocket: the Origin allow-list, the Host check and the optional browser
token. Pure.

A page on another site must not be able to drive a user's bridge (cross-site WebSocket
hijacking): browsers always send ``Origin`` on a WebSocket handshake, so a handshake is allowed
when it has no ``Origin`` (not a browser), when the origin is the bridge's own (same host and
port as the ``Host`` header), a localhost origin, or one listed in ``allowed_origins``.

"The bridge's own origin" is only as good as the ``Host`` header, which a page on a DNS-rebinding
domain controls (``evil.example`` made to resolve to 127.0.0.1): so a browser's handshake must
also name a host the bridge really answers to (``HostNames``): its public names
(``public_hosts``), an IP address it listens on, and — bound to loopback or to every
interface — the loopback names; bound to every interface, also the machine's own names. An IP
literal cannot be rebound, so any IP literal is the bridge's own when it listens on every
interface.

With ``auth_token`` set, the handshake must also carry the token, in one of the three places a
browser can put it: the cookie ``aistream_token`` (read the way browsers send cookies: pairs
split on ``;``, another site's odd cookie beside it harms nothing), the query parameter
``token``, or a WebSocket subprotocol ``aistream.token.<token>``. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "TOKEN_COOKIE",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "HostNames",
    "Verdict",
    "check_handshake",
    "cookie_values",
]

TOKEN_COOKIE = "aistream_token"
TOKEN_SUBPROTOCOL_PREFIX = "aistream.token."
_LOCALHOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class HostNames:
    """The hosts a bridge answers to, for the ``Host`` header of a browser's handshake."""

    names: frozenset[str]
    """Lower-case DNS names (no port)."""
    any_ip: bool
    """Every IP literal is the bridge's own (it listens on every interface)."""
    ips: frozenset[str]
    """The IP literals it listens on (normalised), when not ``any_ip``."""

    @classmethod
    def of(
        cls, bind_host: str, public_hosts: Iterable[str] = (), machine_names: Iterable[str] = ()
    ) -> HostNames:
        """The names of a bridge bound to ``bind_host`` (an address or a name), reached also as
        ``public_hosts``; ``machine_names`` are this machine's own names (used when bound to
        every interface)."""
        names = {h.lower().rstrip(".") for h in public_hosts if h}
        bound = _ip(bind_host)
        everywhere = bind_host in ("", "0.0.0.0", "::") or (
            bound is not None and bound.is_unspecified
        )
        loopback = (bound is not None and bound.is_loopback) or bind_host.lower() in (
            _LOOPBACK_NAMES
        )
        ips: set[str] = set()
        if everywhere or loopback:
            names |= _LOOPBACK_NAMES
            ips |= {"127.0.0.1", "::1"}
        if everywhere:
            names |= {n.lower().rstrip(".") for n in machine_names if n}
        if bound is not None:
            ips.add(str(bound))
        elif not everywhere:
            names.add(bind_host.lower().rstrip("."))
        return cls(frozenset(names), everywhere, frozenset(ips))

    def allows(self, host_header: str | None) -> bool:
        """Whether a ``Host`` header (``name[:port]``) names this bridge."""
        if not host_header:
            return False
        try:
            hostname = urlsplit(f"//{host_header}").hostname
        except ValueError:
            return False
        if not hostname:
            return False
        ip = _ip(hostname)
        if ip is not None:
            if ip.is_loopback and "127.0.0.1" in self.ips:
                return True  # any of 127.0.0.0/8 reaches a loopback listener
            return self.any_ip or str(ip) in self.ips
        return hostname.rstrip(".") in self.names


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


def _origin_allowed(
    origin: str, host: str | None, allowed: tuple[str, ...], own: HostNames
) -> bool:
    if origin in allowed:
        return True
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname or ""
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if host is not None and parts.netloc.lower() == host.lower():
        # Same origin as the page the bridge served — if the Host really is the bridge.
        return own.allows(host)
    return hostname in _LOCALHOSTS


def cookie_values(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a ``Cookie`` header, read as browsers write it:
    ``a=1; b=2`` pairs, values taken as they are (an unparseable neighbour is skipped, never the
    whole header); a value in double quotes is also tried without them."""
    values: list[str] = []
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            values.append(value)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                values.append(value[1:-1])
    return values


def _presented_tokens(path: str, cookie: str | None, subprotocols: list[str]) -> list[str]:
    tokens = parse_qs(urlsplit(path).query).get("token", [])
    if cookie:
        tokens += cookie_values(cookie, TOKEN_COOKIE)
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
    own_hosts: HostNames,
) -> Verdict:
    """Decide whether a WebSocket handshake may proceed (``own_hosts``: the names the bridge
    answers to, for the same-origin rule)."""
    if origin is not None and not _origin_allowed(origin, host, allowed_origins, own_hosts):
        return Verdict(403, "origin not allowed")
    if auth_token is not None:
        expected = auth_token.encode()
        if not any(
            hmac.compare_digest(t.encode(), expected)
            for t in _presented_tokens(path, cookie, subprotocols)
        ):
            return Verdict(401, "missing or wrong token")
    return ALLOWED
