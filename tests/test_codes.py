"""aistream.codes: one row per error code, consistent with the schema and the docs."""

from __future__ import annotations

from conftest import ROOT

from aistream import codes
from aistream.v1 import events_pb2 as pb


def test_every_schema_code_has_a_row() -> None:
    """Each ErrorCode value but UNSPECIFIED is in the table, under its JSON name."""
    for name, number in pb.ErrorCode.items():
        if number == pb.ERROR_CODE_UNSPECIFIED:
            assert number not in codes.CODES
            continue
        row = codes.info(number)  # type: ignore[arg-type]
        assert row.json == name.removeprefix("ERROR_CODE_").lower()


def test_protocol_doc_lists_every_code() -> None:
    """docs/protocol.md documents every JSON code."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    for row in codes.CODES.values():
        assert f"| `{row.json}` |" in text, row.json
