"""The root path: a page for a plain GET, the same WebSocket as ``/ws`` for an upgrade."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import orjson
import pytest
from conftest import TERMINAL, StackFactory
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


async def _get(url: str) -> tuple[int, bytes]:
    def fetch() -> tuple[int, bytes]:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()

    return await asyncio.to_thread(fetch)


async def test_a_core_client_on_the_root_path_streams_an_answer(make_stack: StackFactory) -> None:
    """``new WebSocket('ws://host:port')`` speaks the whole protocol, as on ``/ws``."""
    stack = await make_stack()
    async with connect(f"ws://127.0.0.1:{stack.bridge.port}", compression=None) as ws:
        await ws.send('{"type":"ai:generate","requestId":"r1","prompt":"hi"}')
        frames = []
        while not frames or frames[-1]["type"] not in TERMINAL:
            frames.append(orjson.loads(await ws.recv()))
    types = [f["type"] for f in frames]
    assert (types[0], types[-1], set(types[1:-1])) == ("ai:start", "ai:done", {"ai:token"})
    assert "".join(f["chunk"] for f in frames[1:-1]) == "tok0 tok1 tok2 tok3 tok4 "


async def test_a_plain_get_of_the_root_still_serves_the_page(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """The page and the socket share ``/``: no Upgrade header, the page."""
    (tmp_path / "index.html").write_text("<!doctype html><title>aistream</title>")
    stack = await make_stack(static_dir=tmp_path)
    status, body = await _get(f"http://127.0.0.1:{stack.bridge.port}/")
    assert (status, body) == (200, b"<!doctype html><title>aistream</title>")


async def test_the_root_path_applies_the_same_checks(make_stack: StackFactory) -> None:
    """A foreign Origin or a missing token is refused on ``/`` exactly as on ``/ws``."""
    stack = await make_stack(auth_token="s3cret")
    root = f"ws://127.0.0.1:{stack.bridge.port}/"
    with pytest.raises(InvalidStatus) as refused:
        await connect(root, additional_headers={"Origin": "http://evil.example"})
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        await connect(root)
    assert refused.value.response.status_code == 401
    async with connect(f"{root}?token=s3cret") as ws:
        await ws.send('{"type":"ai:cancel","requestId":"nothing"}')  # a harmless no-op


async def test_other_paths_do_not_upgrade(make_stack: StackFactory) -> None:
    """Only ``/`` and ``/ws`` open a socket; an upgrade anywhere else is a 404."""
    stack = await make_stack()
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{stack.bridge.port}/elsewhere")
    assert refused.value.response.status_code == 404
