"""aistream.resume: resume tokens, the event log by position, the store's retention and budget."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aistream.resume import (
    MAX_TOKEN_CHARS,
    EventLog,
    InsideAnEvent,
    LogStore,
    Minted,
    hash_secret,
    mint,
    split,
)


def _log(counts: list[int], size: int = 1) -> EventLog[int]:
    """A running log whose event i (its id) covers ``counts[i]`` positions."""
    log: EventLog[int] = EventLog("k" * 32, b"", "r")
    for i, count in enumerate(counts):
        log.append(i, log.next_seq, count, size)
    return log


def _open(store: LogStore[str], rid: str, now: float = 0.0) -> tuple[Minted, EventLog[str]]:
    minted = mint()
    return minted, store.open(rid, minted, now)


def _fill(store: LogStore[str], log: EventLog[str], sizes: list[int]) -> None:
    """Append one event per size, each admitted first."""
    for size in sizes:
        assert store.admit(log, size)
        log.append("e", log.next_seq, 1, size)


def _finish(store: LogStore[str], log: EventLog[str], now: float, size: int = 0) -> None:
    """End ``log``'s generation at ``now`` and tell the store."""
    log.end("done", log.next_seq, size, now)
    store.ended(log, now)


# --- tokens ------------------------------------------------------------------------------------


def test_mint_split_round_trip() -> None:
    """A minted token splits into its key and a secret whose sha256 is the stored digest."""
    minted = mint()
    assert len(minted.key) == 32 and all(c in "0123456789abcdef" for c in minted.key)
    parts = split(minted.token)
    assert parts is not None
    key, secret = parts
    assert key == minted.key
    assert minted.digest == hash_secret(secret) == hashlib.sha256(secret.encode()).digest()
    assert len(minted.token) <= MAX_TOKEN_CHARS


def test_mint_is_fresh() -> None:
    """Two mints share neither key nor token."""
    a, b = mint(), mint()
    assert a.key != b.key and a.token != b.token and a.digest != b.digest


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "a" * 32,
        "a" * 32 + ".",
        "." + "A" * 32,
        "A" * 32 + "." + "s" * 32,  # upper-case key
        "g" * 32 + "." + "s" * 32,  # not hex
        "a" * 31 + "." + "s" * 32,  # key too short
        "a" * 33 + "." + "s" * 32,  # key too long
        "a" * 32 + "." + "s" * 31,  # secret too short
        "a" * 32 + "." + "s" * 33,  # secret too long
        "a" * 32 + "." + "s" * 31 + "=",  # not base64url
        "a" * 32 + "." + "s" * 31 + ".",
        "a" * 32 + ".." + "s" * 31,
        "a" * 32 + "." + "s" * 32 + "\n",
        " " + "a" * 32 + "." + "s" * 32,
        "a" * 32 + "." + "s" * 200,  # over the length limit
        "٣" * 32 + "." + "s" * 32,  # a non-ASCII digit
    ],
)
def test_split_rejects_malformed(token: str) -> None:
    """Anything but ``<32 lowercase hex>.<32 base64url>`` is None, never an exception."""
    assert split(token) is None


@pytest.mark.parametrize("value", [None, 7, b"x" * 65, ["a"]])
def test_split_rejects_non_strings(value: Any) -> None:
    """A token that is not a string (a peer's JSON can hold anything) is None."""
    assert split(value) is None


# --- the event log -----------------------------------------------------------------------------


def test_after_at_every_boundary() -> None:
    """−1 replays all; the end of each event replays what follows; the last position, nothing."""
    log = _log([1, 3, 2, 1])  # positions 0 | 1 2 3 | 4 5 | 6
    assert log.next_seq == 7 and len(log) == 4 and log.bytes == 4
    assert log.after(-1) == [0, 1, 2, 3]
    assert log.after(0) == [1, 2, 3]
    assert log.after(3) == [2, 3]
    assert log.after(5) == [3]
    assert log.after(6) == []


def test_after_past_the_end_is_empty() -> None:
    """A position beyond the log (nothing there yet) replays nothing; an empty log, nothing."""
    assert _log([2, 2]).after(10) == []
    assert _log([]).after(-1) == []
    assert _log([]).after(5) == []


@pytest.mark.parametrize("after_seq", [1, 2, 4])
def test_after_inside_an_event_raises(after_seq: int) -> None:
    """A position strictly inside an event is no client's: a typed error, a ValueError."""
    log = _log([1, 3, 2])  # positions 0 | 1 2 3 | 4 5
    with pytest.raises(InsideAnEvent):
        log.after(after_seq)
    assert issubclass(InsideAnEvent, ValueError)


def test_after_below_minus_one_raises() -> None:
    """−1 is the smallest position a client can hold."""
    with pytest.raises(ValueError, match="-1"):
        _log([1]).after(-2)


@pytest.mark.parametrize(
    ("first", "count", "why"),
    [
        (3, 1, "gap"),
        (1, 1, "overlap"),
        (0, 1, "overlap"),
        (2, 0, "at least 1"),
        (2, -1, "at least"),
    ],
)
def test_append_rejects_gap_overlap_and_empty(first: int, count: int, why: str) -> None:
    """An event that does not start right after the last one, or covers nothing, is refused."""
    log = _log([2])  # next_seq == 2
    with pytest.raises(ValueError, match=why):
        log.append(99, first, count, 1)
    assert log.next_seq == 2 and log.after(-1) == [0] and log.bytes == 1


def test_end_appends_terminal_and_closes() -> None:
    """The terminal event takes one position, records when, and nothing may follow it."""
    log = _log([2])
    assert not log.ended and log.ended_at is None
    log.end(7, 2, 5, now=12.5)
    assert log.ended and log.ended_at == 12.5
    assert log.next_seq == 3 and log.bytes == 6
    assert log.after(1) == [7]
    with pytest.raises(ValueError, match="ended"):
        log.append(8, 3, 1, 1)


@given(
    counts=st.lists(st.integers(min_value=1, max_value=5), max_size=40),
    pick=st.integers(min_value=0),
)
def test_replay_is_exactly_the_tail(counts: list[int], pick: int) -> None:
    """For any log and any position ending an event, the replay is the exact tail of events,
    and every position inside an event is refused."""
    log = _log(counts)
    ends = list(itertools.accumulate(counts, initial=0))  # ends[i] = first of event i
    valid = [end - 1 for end in ends]  # −1 and the last position of each event
    index = pick % len(valid)
    assert log.after(valid[index]) == list(range(len(counts)))[index:]
    inside = sorted(set(range(sum(counts))) - set(valid))
    if inside:
        with pytest.raises(InsideAnEvent):
            log.after(inside[pick % len(inside)])


# --- the store: find ---------------------------------------------------------------------------


def test_find_returns_the_same_log() -> None:
    """The right token and request id open the very log that was opened."""
    store: LogStore[str] = LogStore(retention=60, max_bytes=1000)
    minted, log = _open(store, "r1")
    assert store.find(minted.token, "r1", 1.0) is log
    assert log.key == minted.key and log.digest == minted.digest and log.request_id == "r1"


def test_find_gives_the_same_none_for_every_bad_case() -> None:
    """Unknown key, malformed token, wrong secret, other request, expired, evicted and dropped
    logs all get None."""
    store: LogStore[str] = LogStore(retention=10, max_bytes=100)
    minted, _ = _open(store, "r1")
    other = mint()
    key, secret = minted.token.split(".")
    wrong_secret = f"{key}.{other.token.split('.')[1]}"
    flipped = f"{key}.{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    bad: list[Any] = [
        other.token,  # unknown key
        "nonsense",
        "",
        None,
        minted.token + "x",
        minted.token.upper(),
        wrong_secret,
        flipped,
    ]
    for token in bad:
        assert store.find(token, "r1", 1.0) is None, token
    assert store.find(minted.token, "r2", 1.0) is None  # another request's id
    assert store.find(minted.token, None, 1.0) is None  # type: ignore[arg-type]

    expired_t, expired = _open(store, "e")
    _finish(store, expired, now=0.0)
    assert store.find(expired_t.token, "e", 10.0) is None

    evicted_t, evicted = _open(store, "v")
    _fill(store, evicted, [40])
    _finish(store, evicted, now=11.0)
    running_t, running = _open(store, "run")
    _fill(store, running, [50, 50])  # evicts the ended log "v"
    assert store.find(evicted_t.token, "v", 11.5) is None

    assert not store.admit(running, 1)  # 101 bytes cannot fit: dropped
    assert store.find(running_t.token, "run", 11.5) is None

    assert store.find(minted.token, "r1", 11.5) is not None  # the good one is still there


# --- the store: retention ----------------------------------------------------------------------


def test_retention_counts_from_the_end() -> None:
    """An ended log is found until ``retention`` seconds after it ended, then expires."""
    store: LogStore[str] = LogStore(retention=10, max_bytes=1000)
    minted, log = _open(store, "r")
    _fill(store, log, [3])
    assert store.sweep(now=1_000.0) == 0  # running: no retention applies
    _finish(store, log, now=100.0)
    assert store.find(minted.token, "r", 109.9) is log
    assert store.sweep(now=109.9) == 0 and len(store) == 1
    assert store.sweep(now=110.0) == 1
    assert (len(store), store.bytes, store.expired, store.evicted) == (0, 0, 1, 0)
    assert store.find(minted.token, "r", 110.0) is None


def test_find_expires_lazily() -> None:
    """A log past retention is not found even before a sweep, and is forgotten then."""
    store: LogStore[str] = LogStore(retention=5, max_bytes=1000)
    minted, log = _open(store, "r")
    _fill(store, log, [4])
    _finish(store, log, now=0.0, size=1)
    assert store.bytes == 5
    assert store.find(minted.token, "r", 5.0) is None
    assert (len(store), store.bytes, store.expired) == (0, 0, 1)


def test_sweep_expires_oldest_first_only() -> None:
    """Sweep removes the ended logs past retention and keeps the younger ones."""
    store: LogStore[str] = LogStore(retention=10, max_bytes=1000)
    tokens = []
    for i, when in enumerate([0.0, 3.0, 6.0]):
        minted, log = _open(store, f"r{i}")
        _finish(store, log, now=when)
        tokens.append(minted.token)
    assert store.sweep(now=13.5) == 2
    assert store.find(tokens[2], "r2", 13.5) is not None
    assert store.find(tokens[0], "r0", 13.5) is None and store.find(tokens[1], "r1", 13.5) is None


def test_ended_requires_the_end_and_is_idempotent() -> None:
    """A running log cannot be noted ended; noting it twice keeps its first time."""
    store: LogStore[str] = LogStore(retention=10, max_bytes=1000)
    minted, log = _open(store, "r")
    with pytest.raises(ValueError, match="not ended"):
        store.ended(log, 0.0)
    log.end("done", 0, 1, now=0.0)
    store.ended(log, 0.0)
    store.ended(log, 50.0)
    assert store.find(minted.token, "r", 10.0) is None


# --- the store: byte budget --------------------------------------------------------------------


def test_budget_evicts_oldest_ended_never_running() -> None:
    """Over budget, whole ended logs go oldest first; running logs stay even when over."""
    store: LogStore[str] = LogStore(retention=1_000, max_bytes=100)
    running_t, running = _open(store, "run")
    _fill(store, running, [30])
    ended_tokens = []
    for i in range(3):
        minted, log = _open(store, f"e{i}")
        _fill(store, log, [20])
        _finish(store, log, now=float(i))
        ended_tokens.append(minted.token)
    assert store.bytes == 90 and store.sweep(now=5.0) == 0

    _fill(store, running, [25])  # 115 > 100: the oldest ended log (e0) goes, then 95
    assert (store.bytes, store.evicted, len(store)) == (95, 1, 3)
    assert store.find(ended_tokens[0], "e0", 5.0) is None
    assert store.find(ended_tokens[1], "e1", 5.0) is not None

    store.max_bytes = 40  # as if the budget shrank: sweep evicts every ended log, not "run"
    assert store.sweep(now=5.0) == 2
    assert (store.bytes, store.evicted, len(store)) == (55, 3, 1)
    assert store.find(running_t.token, "run", 5.0) is running


def test_admit_drops_a_running_log_that_cannot_fit() -> None:
    """A running log that cannot fit is dropped, not found again, and costs no ended log."""
    store: LogStore[str] = LogStore(retention=1_000, max_bytes=100)
    kept_t, kept = _open(store, "kept")
    _fill(store, kept, [30])
    _finish(store, kept, now=0.0)
    big_t, big = _open(store, "big")
    _fill(store, big, [60])
    assert not store.admit(big, 80)  # 60 + 80 > 100 even with "kept" gone: no eviction
    assert (store.dropped, store.evicted, store.bytes, len(store)) == (1, 0, 30, 1)
    assert store.find(big_t.token, "big", 1.0) is None
    assert store.find(kept_t.token, "kept", 1.0) is kept

    big.append("late", big.next_seq, 1, 500)  # a stale holder's append no longer counts
    assert store.bytes == 30
    assert not store.admit(big, 1)  # nor is it admitted again
    assert store.dropped == 1


def test_admit_evicts_just_enough() -> None:
    """Admitting evicts ended logs oldest first only until the new bytes fit."""
    store: LogStore[str] = LogStore(retention=1_000, max_bytes=100)
    tokens = []
    for i in range(4):
        minted, log = _open(store, f"e{i}")
        _fill(store, log, [20])
        _finish(store, log, now=float(i))
        tokens.append(minted.token)
    _, running = _open(store, "run")
    assert store.admit(running, 45)  # 80 + 45 > 100: e0 and e1 go, 40 + 45 fits
    assert store.evicted == 2 and store.bytes == 40
    assert [store.find(t, f"e{i}", 5.0) is not None for i, t in enumerate(tokens)] == [
        False,
        False,
        True,
        True,
    ]


def test_admit_refuses_ended_logs() -> None:
    """No bytes are admitted after a log's terminal event."""
    store: LogStore[str] = LogStore(retention=1_000, max_bytes=100)
    _, log = _open(store, "r")
    _finish(store, log, now=0.0)
    assert not store.admit(log, 1)
    assert store.dropped == 0 and len(store) == 1


def test_open_refuses_a_held_key() -> None:
    """A key names one log: opening it twice is an error (a minted key never repeats)."""
    store: LogStore[str] = LogStore(retention=1, max_bytes=1)
    minted, _ = _open(store, "r")
    with pytest.raises(ValueError, match="already"):
        store.open("r2", minted, 0.0)
