"""The control API under ``/_fake/``: how another process reads and drives a running fake.

=========================  ==============================================================
``GET /_fake/records``     every record as JSON (``RequestRecord.to_json``)
``GET /_fake/stats``       open connections (not counting the one asking), responses in
                           progress, requests
``POST /_fake/reset``      forget every record
``GET /_fake/script``      the default script
``POST /_fake/script``     replace the default script (a JSON object; 400 if it is not one)
=========================  ==============================================================

Control requests are not recorded. Anything else under ``/_fake/`` is a 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from aistream.testing.fake_upstream.script import Script

if TYPE_CHECKING:
    from aistream.testing.fake_upstream.server import FakeUpstream

__all__ = ["PREFIX", "control"]

PREFIX = "/_fake/"
"""Paths starting with this are control requests."""


def control(fake: FakeUpstream, method: str, path: str, body: bytes) -> tuple[int, Any]:
    """Act on one control request; return the status and the JSON answer."""
    route = (method, path)
    if route == ("GET", "/_fake/records"):
        return 200, [r.to_json() for r in fake.records]
    if route == ("GET", "/_fake/stats"):
        # the connection asking is open too; it is not one of the connections asked about
        stats = {"connections": fake.connections - 1, "active": len(fake.active())}
        return 200, stats | {"requests": len(fake.records)}
    if route == ("POST", "/_fake/reset"):
        fake.clear()
        return 200, {"cleared": True}
    if route == ("GET", "/_fake/script"):
        return 200, fake.script.to_json()
    if route == ("POST", "/_fake/script"):
        try:
            data = orjson.loads(body)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            fake.script = Script.from_json(data)
        except (ValueError, TypeError) as exc:
            return 400, {"error": f"bad script: {exc}"}
        return 200, fake.script.to_json()
    return 404, {"error": f"no control route {method} {path}"}
