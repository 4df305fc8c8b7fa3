"""aistream.errors: one tree of exceptions, drawn in its docstring, with codes from the table."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from aistream import codes, errors, lifecycle, settings, validation
from aistream.bridge import translate
from aistream.errors import (
    AistreamError,
    InvalidFrame,
    InvalidRequest,
    Refused,
    RequestError,
    UpstreamFailure,
)
from aistream.generator import upstream
from aistream.v1 import events_pb2 as pb

CLASSES = [getattr(errors, name) for name in errors.__all__]


def _drawn_tree() -> dict[str, str | None]:
    """Class name → parent name, read from the diagram in the module docstring."""
    doc = errors.__doc__ or ""
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in doc.split("::", 1)[1].strip("\n").split("\n\n", 1)[0].splitlines():
        match = re.match(r"^( *(?:[│ ]   )*(?:[├└]── )?)(\w+)", line)
        assert match, line
        depth = (len(match[1]) - 4) // 4
        del path[depth:]
        parents[match[2]] = path[-1] if path else None
        path.append(match[2])
    return parents


def test_the_docstring_draws_the_tree_as_it_is() -> None:
    """Every class is in the drawn tree under its real parent, and nothing else is."""
    drawn = _drawn_tree()
    assert set(drawn) == set(errors.__all__)
    for cls in CLASSES:
        parent = next((b for b in cls.__bases__ if issubclass(b, AistreamError)), None)
        assert drawn[cls.__name__] == (parent.__name__ if parent else None), cls


def test_every_class_derives_from_the_root_and_says_what_it_is() -> None:
    """Each exception is an AistreamError with a one-sentence docstring."""
    for cls in CLASSES:
        assert issubclass(cls, AistreamError)
        doc = (cls.__doc__ or "").strip()
        assert doc.endswith(".") and doc.count(". ") == 0, cls


def test_request_errors_carry_code_message_and_request_id() -> None:
    """Invalid requests, invalid frames and refusals carry their code, message and id."""
    invalid = InvalidRequest("prompt is too long", "r1")
    frame = InvalidFrame("the frame is not valid JSON")
    refused = Refused(pb.ERROR_CODE_TOO_MANY_REQUESTS, "slow down", "r2")
    assert (invalid.code, invalid.message, invalid.request_id) == (
        pb.ERROR_CODE_INVALID_REQUEST,
        "prompt is too long",
        "r1",
    )
    assert (frame.code, frame.request_id) == (pb.ERROR_CODE_INVALID_REQUEST, "")
    assert (refused.code, refused.message, refused.request_id) == (
        pb.ERROR_CODE_TOO_MANY_REQUESTS,
        "slow down",
        "r2",
    )
    assert str(invalid) == "prompt is too long"
    assert isinstance(frame, InvalidRequest)
    assert all(isinstance(e, RequestError) for e in (invalid, frame, refused))
    assert isinstance(invalid, ValueError)  # as before the tree (callers may catch ValueError)
    assert issubclass(errors.SettingsError, ValueError)


def test_a_request_error_is_answered_with_its_error_event() -> None:
    """``event()`` is the Error a client gets: code, message, id and retryable."""
    event = Refused(pb.ERROR_CODE_UNAVAILABLE, "the server is shutting down", "r").event()
    assert event == codes.error_event(pb.ERROR_CODE_UNAVAILABLE, "the server is shutting down", "r")
    assert event.error.retryable is True


@pytest.mark.parametrize("code", list(codes.CODES))
def test_retryable_defaults_to_the_table_and_an_explicit_value_wins(code: codes.Code) -> None:
    """For every code, each error and error event takes retryable from the table unless told."""
    default = codes.info(code).retryable
    assert codes.is_retryable(code) is default
    assert RequestError(code, "m", "r").retryable is default
    assert Refused(code, "m", "r").event().error.retryable is default
    assert UpstreamFailure(code, "m").retryable is default
    assert codes.error_event(code, "m", "r").error.retryable is default
    for explicit in (True, False):
        assert codes.is_retryable(code, explicit) is explicit
        assert RequestError(code, "m", "r", retryable=explicit).retryable is explicit
        assert RequestError(code, "m", retryable=explicit).event().error.retryable is explicit
        assert UpstreamFailure(code, "m", retryable=explicit).retryable is explicit
        assert codes.error_event(code, "m", retryable=explicit).error.retryable is explicit


def test_the_old_import_locations_still_work() -> None:
    """Each class moved here is still importable, the same class, from where it was."""
    assert translate.FrameError is InvalidFrame
    assert translate.InvalidFrame is InvalidFrame
    assert validation.InvalidRequest is InvalidRequest
    assert upstream.UpstreamFailure is UpstreamFailure
    assert settings.SettingsError is errors.SettingsError
    assert lifecycle.LifecycleViolation is errors.LifecycleViolation


def test_the_retryable_rule_is_written_once() -> None:
    """Only ``codes.is_retryable`` turns "not said" into the table's default."""
    rule = re.compile(r"retryable\b.*\bis None\b|\bis None\b.*retryable")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("aistream", "generator", "bridge")
        for path in (ROOT / folder).rglob("*.py")
        if "v1" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if rule.search(line)
    ]
    assert len(found) == 1, found
    assert found[0].startswith("aistream/codes.py:"), found
