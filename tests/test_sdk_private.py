"""aistream.generator.sdk_private: what the fast path relies on below the SDK is all there in the
installed packages (these tests fail on an upgrade that moves any of it), each kind of move is
caught by the probe, and a move found at start-up is one warning and the SDK's public path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from conftest import UNIT, settings_for
from openai._base_client import BaseClient
from openai._vendor.httpx_aiohttp.transport import AiohttpResponseStream

from aistream.generator import sdk_private
from aistream.generator.openai_upstream import OpenAIUpstream
from aistream.generator.upstream import Message, UpstreamRequest
from aistream.testing.fake_upstream import FakeUpstream, Script


def _remove_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's protocols as they would be if pausing moved."""
    monkeypatch.delattr(ResponseHandler, "pause_reading")
    monkeypatch.delattr(BaseProtocol, "pause_reading")


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """``startup_problems()`` probes again in this test, and again after it."""
    sdk_private.startup_problems.cache_clear()
    yield
    sdk_private.startup_problems.cache_clear()


def test_every_name_and_attribute_is_where_expected() -> None:
    """The vendored transport, its response stream's attribute and aiohttp's pause/resume."""
    assert sdk_private.check() == []


async def test_the_sdk_behaves_as_relied_on() -> None:
    """In process: the first-attempt header, the transport's stream under the SDK's response,
    headers that do not change, a replayed failure taken as the SDK's own first attempt."""
    assert await sdk_private.probe() == []


def test_the_start_up_probe_finds_nothing_moved(fresh_probe: None) -> None:
    """What OpenAIUpstream asks at start-up (on a thread of its own, no running loop needed)."""
    assert sdk_private.startup_problems() == ()


async def test_a_real_request_goes_through_the_fast_path() -> None:
    """Against the fake upstream, the SDK's request and then a first attempt: each response is
    read straight from aiohttp, its socket pauses and resumes, and abort closes the connection
    at once; the first attempt carries the SDK's very headers."""
    async with FakeUpstream(Script(tokens=50, interval=0.01)) as fake:
        assert await sdk_private.probe(fake.base_url) == []
        records = [await fake.wait_closed(record, 2 * UNIT) for record in fake.records]
    assert len(records) == 2
    assert all(r.outcome == "client_closed" and r.tokens_sent < 50 for r in records)
    by_sdk, by_us = (dict(r.headers) for r in records)
    assert by_us.pop("content-length") and by_sdk.pop("content-length")
    assert by_us == by_sdk
    assert by_us["x-stainless-retry-count"] == "0"


def test_a_moved_response_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vendored response stream keeping aiohttp's response under another name."""

    def init(self: Any, aiohttp_response: Any) -> None:
        self._response = aiohttp_response

    monkeypatch.setattr(AiohttpResponseStream, "__init__", init)
    assert sdk_private.check() == [
        "the vendored AiohttpResponseStream no longer keeps _aiohttp_response"
    ]


def test_a_moved_pause_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's protocol no longer pausing as relied on."""
    _remove_pause(monkeypatch)
    assert sdk_private.check() == ["aiohttp's ResponseHandler has no pause_reading"]


async def test_a_renamed_retry_header_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK marking first attempts some other way: first attempts would never be sent."""
    monkeypatch.setattr(sdk_private, "_RETRY_COUNT", "x-stainless-attempt")
    problems = await sdk_private.probe()
    assert problems == [
        "the sdk's first attempt does not carry x-stainless-attempt: 0 (it has None)"
    ]


async def test_a_per_request_header_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK adding a header of its own to each request (an idempotency key): a template
    would send one request's header with every other."""
    build = BaseClient._build_headers
    counter = iter(range(1_000))

    def with_key(self: Any, options: Any, *, retries_taken: int = 0) -> httpx2.Headers:
        headers = build(self, options, retries_taken=retries_taken)
        headers["idempotency-key"] = f"key-{next(counter)}"
        return headers

    monkeypatch.setattr(BaseClient, "_build_headers", with_key)
    assert await sdk_private.probe() == [
        "the sdk's requests differ beyond their body: idempotency-key"
    ]


async def test_a_lost_body_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An identity body with no aiohttp response under it (after start-up's checks passed) is
    left to the SDK's iterator, with one warning for the process."""
    monkeypatch.setattr(sdk_private, "_body_lost_warned", False)
    response = httpx2.Response(200, stream=httpx2.ByteStream(b""))
    with caplog.at_level(logging.WARNING, logger=sdk_private.__name__):
        assert sdk_private.aiohttp_response(response) is None
        assert sdk_private.aiohttp_response(response) is None
    assert [r.getMessage() for r in caplog.records] == [
        "no aiohttp response under the sdk's (ByteStream): bodies are read through its iterator"
    ]


async def test_a_move_found_at_start_up_is_one_warning_and_the_public_path(
    fresh_probe: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenAIUpstream logs what moved, once, and streams through the SDK's public path."""
    _remove_pause(monkeypatch)
    async with FakeUpstream(Script(tokens=3)) as fake:
        with caplog.at_level(logging.WARNING):
            upstream = OpenAIUpstream(settings_for(fake))
        try:
            assert upstream.path == "public"
            request = UpstreamRequest("r1", (Message("user", "hi"),), None, 100, None)
            async with upstream.stream(request) as deltas:
                assert "".join([d.text async for d in deltas]) == "tok0 tok1 tok2 "
        finally:
            await upstream.aclose()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "aiohttp's ResponseHandler has no pause_reading" in record.getMessage()
    assert "public path" in record.getMessage()
