"""Per-client shares of the bridge's generations. Pure.

A connection limit per socket (``max_generations_per_connection``) does not stop one client from
opening many sockets and taking every generation the generators will run. So each client — one
key per ``client_key``: its IP address, the first ``X-Forwarded-For`` address behind a proxy, or a
header an authenticating proxy sets — holds at most ``max_generations_per_client`` generations
at once over all its connections; past it a Generate is refused with ``too_many_requests``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ClientShares", "client_key_of"]


class ClientShares:
    """How many generations each client holds, against one limit (0 = no limit), and all of
    them together (``total``: the load the bridge's headroom weighs)."""

    __slots__ = ("_held", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self.total = 0
        """Generations held by every client."""

    def acquire(self, key: str) -> bool:
        """Take one generation for ``key``; False (nothing taken) when it holds its share."""
        held = self._held.get(key, 0)
        if self.limit and held >= self.limit:
            return False
        self._held[key] = held + 1
        self.total += 1
        return True

    def release(self, key: str) -> None:
        """Give one generation of ``key`` back."""
        held = self._held.get(key, 0) - 1
        if held >= 0:
            self.total -= 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, key: str) -> int:
        """Generations ``key`` holds now."""
        return self._held.get(key, 0)

    def __len__(self) -> int:
        """Clients holding at least one generation."""
        return len(self._held)


def client_key_of(mode: str, peer: str, header: Callable[[str], str | None]) -> str:
    """The key of a client for ``mode`` (a ``client_key`` setting), given its peer address and
    its handshake's headers (``header(name)``: the value, or None)."""
    if mode == "forwarded":
        forwarded = header("X-Forwarded-For")
        first = forwarded.split(",", 1)[0].strip() if forwarded else ""
        return first or peer
    if mode.startswith("header:"):
        value = header(mode.removeprefix("header:"))
        return f"{mode}={value}" if value else peer
    return peer
